"""`gerbil suite export DIR --out OUT`: every finished run of a suite as a transformers folder, ready for
the hub's upload command (nothing is uploaded; no network needed).

    OUT/<run>/        `gerbil.export.export`: config.json, model.safetensors, tokenizer files, the README
                      model card — here with the run's class, tokens, batch, losses, eval scores and, for a
                      cascade branch or a star run, where it came from
    OUT/README        the suite's results table (the seed's columns, the suite's order, the seed's rows)
    OUT/table (Markdown and .csv)
    OUT/upload.sh     one `hf upload ORG/<run> OUT/<run> .` per model (review, then run it after
                      `hf auth login`; `huggingface-cli upload` takes the same arguments)
    OUT/.gerbil-suite-export.json   the sha256 of each file above: a later export replaces only those
                      (a user's own README.md there, or one edited since, refuses the export)

The card's class says what the model is, by the results table's rule (`gerbil.classes.claimed_class`): a
cascade branch stands for its class (cooled down from the trunk; docs/suites.md); its own token count, or a
budget scaled below its class's (`budget_scale`), is a custom budget (config.json's ``gerbil.class`` null).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from gerbil.data.tokenizer import Tokenizer
from gerbil.errors import GerbilError
from gerbil.eval.table import COLUMNS, render, row_for_record
from gerbil.export import export
from gerbil.export.writer import is_own_export
from gerbil.fsutil import atomic_write_json, atomic_write_text, mkdir, sha256_file
from gerbil.runs.registry import read_run
from gerbil.suite.records import RunSpec, Suite
from gerbil.suite.results import suite_records
from gerbil.suite.state import README, TABLE_CSV, TABLE_MD, SuiteDir, is_trained

log = logging.getLogger(__name__)


@dataclass
class SuiteExport:
    exports: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    readme: Path | None = None
    upload_script: Path | None = None


def _card(spec: RunSpec, suite: Suite, row: dict[str, str], record) -> str:
    """The model card's gerbil section: the run's row of the suite's table and how it was trained."""
    lines = ["## Training", "", "| field | value |", "|---|---|",
             f"| suite | {suite.name} |",
             f"| class | {_class_text(spec, suite)} |",
             f"| tokens | {int(record.tokens or 0):,} ({(record.tokens or 0) / max(1, spec.params):.4g} per parameter) |",
             f"| batch (tokens) | {record.batch or spec.batch} |",
             f"| sequence length | {spec.seq_len} |",
             f"| objective | {spec.options.get('objective', 'plain')} |",
             f"| LR schedule | {spec.options.get('schedule', 'cosine')} |",
             f"| training loss (last 10 steps) | {'—' if record.train_loss is None else f'{record.train_loss:.4f}'} |",
             f"| validation loss | {'—' if record.val_loss is None else f'{record.val_loss:.4f}'} |"]
    if spec.role == "branch":
        lines.append(f"| cascade | branch of the constant-LR trunk {spec.parent}, left at {spec.start:,} tokens and "
                     f"cooled down (1 - sqrt) to 0 over the rest of class {spec.cls_label}'s budget |")
    elif spec.role == "trunk":
        lines.append("| cascade | trunk: constant LR, then its own (1 - sqrt) cooldown over the last 20% |")
    elif spec.parent:
        lines.append(f"| continued from | {spec.parent} at {spec.start:,} tokens (star class) |")
    lines += ["", "## Evaluation", "",
              "lm-evaluation-harness semantics (gerbil's evaluator), in %; `*` = scored on the first items only "
              "(not comparable with full-set numbers).", "",
              "| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |",
              "| " + " | ".join(row.get(c, "") for c in COLUMNS) + " |", ""]
    partial = [f"{t}: {e.n_items} items" for t, e in record.evals.items() if e.partial]
    if partial:
        lines += ["Partial results: " + ", ".join(partial) + ".", ""]
    return "\n".join(lines)


def _class_text(spec: RunSpec, suite: Suite) -> str:
    """The card's class: the table's rule (`RunSpec.class_text`), a branch marked as one."""
    text = spec.class_text(suite.budget_scale)
    return f"{text} (cascade branch)" if spec.role == "branch" else text


#: What `export_suite` writes at the top of OUT, and the manifest naming them with their sha256: a file
#: there is replaced only while it is what an earlier suite export wrote (the manifest says so).
UPLOAD = "upload.sh"
MANIFEST = ".gerbil-suite-export.json"


@dataclass
class _Planned:
    """One run to export: its folder and the model card's gerbil section, all decided before any write."""

    run: Path
    dest: Path
    meta: dict
    card: str


def export_suite(suite_dir: str | Path, out: str | Path, org: str = "YOUR-ORG", dtype: str = "float32",
                 tokenizer=None) -> SuiteExport:
    """Export every trained run of the suite in `suite_dir` into `out` (see the module docstring).

    Everything is checked before anything is written: a run not trained to its budget (or whose final
    checkpoint is gone) is skipped with its reason; a file or folder in `out` that gerbil did not write
    (a per-run folder that is not an earlier export, a README.md, table or upload.sh that is not what an
    earlier suite export wrote, or was edited since) refuses the whole export in one line, writing nothing.
    """
    sdir = SuiteDir(suite_dir)
    suite = sdir.read_suite()
    dest = Path(out)
    res = SuiteExport()
    planned, records, marks = _plan(sdir, suite, dest, res)
    if tokenizer is None:
        tokenizer = Tokenizer.load()
    mkdir(dest)
    for p in planned:
        res.exports.append(export(p.run, p.dest, tokenizer=tokenizer, meta=p.meta, dtype=dtype, extra_card=p.card))
    _write_top(dest, suite, org, [p.name for p in res.exports], records, marks, res)
    return res


def _plan(sdir: SuiteDir, suite: Suite, dest: Path, res: SuiteExport) -> tuple[list[_Planned], list, dict]:
    """The runs to export with their cards (skipped ones into `res.skipped`), the table's records and
    marks — or a one-line refusal naming what in `dest` gerbil did not write. Writes nothing."""
    if dest.exists() and not dest.is_dir():
        raise GerbilError(f"{dest} exists and is not a folder; choose another --out")
    records, marks = suite_records(sdir, suite)
    by_name = {r.name: r for r in records}
    planned, foreign = [], []
    for spec in suite.runs:
        run = sdir.run_dir(spec.name)
        if not is_trained(sdir, spec):
            rec = sdir.record(spec.name) or {}
            res.skipped[spec.name] = ("recorded done, but its final checkpoint is gone" if rec.get("status") == "done"
                                      else "not trained to its budget yet")
            continue
        target = dest / spec.name
        if target.is_symlink() or target.exists() and not (target.is_dir() and (not any(target.iterdir())
                                                                                 or is_own_export(target))):
            foreign.append(spec.name + "/")
        record = by_name.get(spec.name) or read_run(run.path)
        card = _card(spec, suite, row_for_record(record), record)
        planned.append(_Planned(run.path, target, {"name": spec.name, "class": spec.claimed_class}, card))
    foreign += [name for name in (README, TABLE_MD, TABLE_CSV, UPLOAD) if not _ours(dest, name)]
    if foreign:
        raise GerbilError(f"{dest} holds {', '.join(foreign)}, not written by a gerbil suite export (or edited "
                          f"since); move {'it' if len(foreign) == 1 else 'them'} away or choose another --out "
                          f"(nothing was written)")
    return planned, records, marks


def _ours(dest: Path, name: str) -> bool:
    """`dest/name` is absent, or is what an earlier suite export wrote there (its manifest's sha256)."""
    path = dest / name
    if not path.exists() and not path.is_symlink():
        return True
    if path.is_symlink() or not path.is_file():
        return False
    try:
        written = json.loads((dest / MANIFEST).read_text()).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(written, dict) and written.get(name) == sha256_file(path)


def _write_top(dest: Path, suite: Suite, org: str, names: list[str], records: list, marks: dict,
               res: SuiteExport) -> None:
    """OUT's table (Markdown, CSV), README and upload.sh, then the manifest naming them."""
    table = render(records, "md", reference=True, marks=marks)
    readme = [f"# {suite.name}", "", suite.description or "", "",
              f"{len(names)} models trained with gerbil (`gerbil suite run {Path(suite.source).name}`), each in its own "
              "transformers folder with a model card.", "", table, "",
              "## Upload", "", "```bash", "hf auth login   # once", "bash upload.sh   # or, per model:",
              f"hf upload {org}/MODEL ./MODEL .   # huggingface-cli upload takes the same arguments", "```", ""]
    script = ["#!/usr/bin/env bash", "# Upload every exported model (review first; needs `hf auth login`).",
              f"# ORG defaults to {org}: ORG=my-org bash upload.sh", "set -euo pipefail",
              f'ORG="${{ORG:-{org}}}"', 'cd "$(dirname "$0")"']
    script += [f'hf upload "$ORG/{n}" {shlex.quote(n)} . --commit-message "gerbil suite {suite.name}"' for n in names]
    texts = {TABLE_MD: table, TABLE_CSV: render(records, "csv", reference=True, marks=marks),
             README: "\n".join(readme), UPLOAD: "\n".join(script) + "\n"}
    for name, text in texts.items():
        atomic_write_text(dest / name, text)
    (dest / UPLOAD).chmod(0o755)
    res.readme, res.upload_script = dest / README, dest / UPLOAD
    files = {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in texts.items()}
    atomic_write_json(dest / MANIFEST, {"suite": suite.name, "files": files}, indent=1)
