"""`gerbil suite export DIR --out OUT`: every finished run of a suite as a transformers folder, ready for
the hub's upload command (nothing is uploaded; no network needed).

    OUT/<run>/        `gerbil.export.export`: config.json, model.safetensors, tokenizer files, the README
                      model card — here with the run's class, tokens, batch, losses, eval scores and, for a
                      cascade branch or a star run, where it came from
    OUT/README        the suite's results table (the seed's columns, the suite's order, the seed's rows)
    OUT/table (Markdown and .csv)
    OUT/upload.sh     one `hf upload ORG/<run> OUT/<run> .` per model (review, then run it after
                      `hf auth login`; `huggingface-cli upload` takes the same arguments)

The card's class says what the model is, by the results table's rule (`gerbil.classes.claimed_class`): a
cascade branch stands for its class (cooled down from the trunk; docs/suites.md); its own token count, or a
budget scaled below its class's (`budget_scale`), is a custom budget (config.json's ``gerbil.class`` null).
"""
from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from gerbil.data.tokenizer import Tokenizer
from gerbil.eval.table import COLUMNS, render, row_for_record
from gerbil.export import export
from gerbil.fsutil import atomic_write_text, mkdir
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
             f"| tokens | {record.tokens:,} ({(record.tokens or 0) / max(1, spec.params):.4g} per parameter) |",
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


def export_suite(suite_dir: str | Path, out: str | Path, org: str = "YOUR-ORG", dtype: str = "float32",
                 tokenizer=None) -> SuiteExport:
    """Export every trained run of the suite in `suite_dir` into `out` (see the module docstring)."""
    sdir = SuiteDir(suite_dir)
    suite = sdir.read_suite()
    dest = mkdir(out)
    res = SuiteExport()
    if tokenizer is None:
        tokenizer = Tokenizer.load()
    records, marks = suite_records(sdir, suite)
    by_name = {r.name: r for r in records}
    for spec in suite.runs:
        run = sdir.run_dir(spec.name)
        if not is_trained(sdir, spec, sdir.record(spec.name)):
            res.skipped[spec.name] = "not trained to its budget yet"
            continue
        record = by_name.get(spec.name) or read_run(run.path)
        row = row_for_record(record)
        meta = {"name": spec.name, "class": spec.claimed_class}  # config.json's gerbil.class: a label or null
        path = export(run.path, dest / spec.name, tokenizer=tokenizer, meta=meta, dtype=dtype,
                      extra_card=_card(spec, suite, row, record))
        res.exports.append(path)
    table = render(records, "md", reference=True, marks=marks)
    atomic_write_text(dest / TABLE_MD, table)
    atomic_write_text(dest / TABLE_CSV, render(records, "csv", reference=True, marks=marks))
    names = [p.name for p in res.exports]
    readme = [f"# {suite.name}", "", suite.description or "", "",
              f"{len(names)} models trained with gerbil (`gerbil suite run {Path(suite.source).name}`), each in its own "
              "transformers folder with a model card.", "", table, "",
              "## Upload", "", "```bash", "hf auth login   # once", "bash upload.sh   # or, per model:",
              f"hf upload {org}/MODEL ./MODEL .   # huggingface-cli upload takes the same arguments", "```", ""]
    res.readme = dest / README
    atomic_write_text(res.readme, "\n".join(readme))
    script = ["#!/usr/bin/env bash", "# Upload every exported model (review first; needs `hf auth login`).",
              f"# ORG defaults to {org}: ORG=my-org bash upload.sh", "set -euo pipefail",
              f'ORG="${{ORG:-{org}}}"', 'cd "$(dirname "$0")"']
    script += [f'hf upload "$ORG/{n}" {shlex.quote(n)} . --commit-message "gerbil suite {suite.name}"' for n in names]
    res.upload_script = dest / "upload.sh"
    atomic_write_text(res.upload_script, "\n".join(script) + "\n")
    res.upload_script.chmod(0o755)
    return res
