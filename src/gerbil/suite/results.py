"""A suite's results: its table (the seed's columns, the suite's order, a cascade branch shown as the class
it stands for) and the measured cascade accounting — what `gerbil suite run` writes when it finishes,
`gerbil suite table` prints and `gerbil suite export` publishes."""
from __future__ import annotations

from pathlib import Path

from gerbil.eval.table import render
from gerbil.fsutil import atomic_write_text
from gerbil.runs.registry import RunRecord, read_run
from gerbil.suite.planning import cascade_savings
from gerbil.suite.records import Suite
from gerbil.suite.state import TABLE_CSV, TABLE_MD, SuiteDir


def suite_records(sdir: SuiteDir, suite: Suite) -> tuple[list, dict[str, tuple[str, str]]]:
    """Registry records of every run of the suite, in the suite's order, and the table marks: a cascade
    branch shows the class it stands for, marked ‡ (its trunk is the largest class's own model, with its
    own cooldown: no mark). A run without a checkpoint is a bare record (shown "not started"; its
    directory, if any, is not read: it may be a stranger's), one short of its budget shows "unfinished"."""
    records, marks = [], {}
    for spec in suite.runs:
        run = sdir.run_dir(spec.name)
        if not run.path.is_dir() or run.latest_checkpoint(check_hash=False) is None:
            r = RunRecord(run_dir=run.path, name=spec.name, size=spec.size or None, params=spec.params or None,
                          budget=spec.budget or None)
        else:
            r = read_run(run.path)
        if spec.role == "branch":
            r.cls = spec.cls_label  # a branch stands for its class (its checkpoints say "A*": continued)
            marks[spec.name] = ("‡", f"cascade branch: cooled down from the constant-LR trunk {spec.parent} at "
                                     f"{spec.start:,} tokens (docs/suites.md)")
        records.append(r)
    return records, marks


#: the extra columns of a suite's table (`gerbil table --metrics`): every evaluated task's loss in bits per
#: byte, which still moves at sizes where the accuracies sit at chance
SUITE_METRICS = "bpb"


def write_tables(sdir: SuiteDir, suite: Suite) -> tuple[Path, Path]:
    """The suite's results table as Markdown and CSV in DIR (with the seed's rows for reference, and the
    task losses `SUITE_METRICS`)."""
    records, marks = suite_records(sdir, suite)
    md = sdir.path / TABLE_MD
    csv = sdir.path / TABLE_CSV
    atomic_write_text(md, f"# suite {suite.name}\n\n" + render(records, "md", reference=True, marks=marks,
                                                                 metrics=SUITE_METRICS))
    atomic_write_text(csv, render(records, "csv", reference=True, marks=marks, metrics=SUITE_METRICS))
    return md, csv


def cascade_report(sdir: SuiteDir, suite: Suite) -> list[dict]:
    """For each cascade: tokens and training seconds its runs took (result.json) against independent runs
    of every class — tokens: every class budget; seconds: those tokens at the trunk's measured rate."""
    out = []
    for c in cascade_savings(suite):
        members = [r for r in suite.runs if r.cascade == c.trunk]
        results = {r.name: sdir.run_dir(r.name).read_result() for r in members}
        done = all(results.values())
        trunk = results.get(c.trunk) or {}
        seconds = sum(float((results[r.name] or {}).get("seconds") or 0) for r in members)
        rate = float(trunk.get("tokens_per_second") or 0)
        d = c.to_dict()
        d.update(complete=done, seconds=seconds if done else None, trunk_tokens_per_second=rate or None,
                 independent_seconds_estimate=(c.independent_tokens / rate) if rate else None)
        if done and rate:
            d["seconds_ratio"] = seconds / (c.independent_tokens / rate)
        out.append(d)
    return out
