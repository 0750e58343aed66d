"""The seed's results table, for any set of runs (`gerbil table`).

Columns and formats follow the seed's README (docs/reference.md §4): Model Name, Parameters (6.7m),
Class (A-Class), Ratio (20), Tokens (134M), Batch Size (Tokens) (131k), Training Loss (4 decimals),
hellaswag acc, lambada acc and winogrande acc in % (26.04, 0, 51.7), lambada ppl (4 decimals).

The evaluation columns are the tasks' own (`Task.columns`, gerbil.eval.tasks: a new task is one module),
and so are their footnotes (`Task.note`). Values come from the run registry (`gerbil.runs.registry`).
A full-set result is never mixed with a `--limit` one: a partial result is shown with `*` and a footnote
giving its item count, a missing one as `pending`, one computed at an older checkpoint than the run's
latest with `†`.
`--reference` appends the seed's published rows and the "scores to beat" (pythia-70m-deduped, with
the v0/v1 note) for side-by-side reading.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError
from gerbil.eval.tasks import TASKS, table_columns
from gerbil.classes import claimed_class
from gerbil.model.config import size_label
from gerbil.runs.registry import RunRecord, read_run, scan
from gerbil.units import fmt_tokens

#: (column, task, metric, kind) of the eval columns, from each task's record (gerbil.eval.tasks)
EVAL_COLUMNS: tuple[tuple[str, str, str, str], ...] = tuple(
    (c.header, t.name, c.metric, c.kind) for c, t in table_columns())
#: the seed's columns: what a run is and how far it trained, then the tasks' columns
COLUMNS: tuple[str, ...] = (
    "Model Name", "Parameters", "Class", "Ratio", "Tokens", "Batch Size (Tokens)", "Training Loss ↓",
    *(col for col, *_ in EVAL_COLUMNS))

# The seed's published rows, verbatim from its README (docs/reference.md §4): harness numbers in %.
SEED_ROWS: tuple[tuple[str, ...], ...] = (
    ("GerbilLab/Gerbil-A-6.7m", "6.7m", "A-Class", "20", "134M", "131k", "6.0741", "26.04", "614655.4052", "0", "51.7"),
    ("GerbilLab/Gerbil-B-6.7m", "6.7m", "B-Class", "42", "281M", "131k", "5.5132", "25.74", "370243.6771", "0", "52.64"),
    ("GerbilLab/Gerbil-C-6.7m", "6.7m", "C-Class", "76", "509M", "131k", "5.1098", "25.54", "199753.1491", "0", "52.72"),
    ("GerbilLab/Gerbil-D-6.7m", "6.7m", "D-Class", "142", "852M", "131k", "4.8186", "25.32", "127810.4082", "0", "52.88"),
    ("GerbilLab/Gerbil-A-15m", "15m", "A-Class", "20", "280M", "131k", "4.9999", "25.56", "190773.1317", "0", "52.17"),
    ("GerbilLab/Gerbil-A-32m", "32m", "A-Class", "20", "640M", "262K", "4.0487", "25.9", "19358.5197", "0.83", "51.14"),
    ("GerbilLab/GerbilBlender-A-6.7m", "6.7m", "A-Class", "20", "134M", "131k", "6.0908", "26", "627506.0021", "0", "50.12"),
    ("GerbilLab/GerbilBlender-D-6.7m", "6.7m", "D-Class", "142", "852M", "131k", "4.838100", "25.55", "151087.4082", "0.02", "51.3"),
    ("GerbilLab/GerbilBlender-E-star-6.7m", "6.7m", "E*-Class", "284", "1704M", "131k-262k", "4.7547", "25.47", "122411.0728", "0.06", "50.59"),
    ("GerbilLab/GerbilBlender-A-15m", "15m", "A-Class", "20", "280M", "131k", "4.9642", "25.8", "203830.1811", "0", "49.96"),
    ("GerbilLab/GerbilBlender-A-32m", "32m", "A-Class", "20", "640M", "262K", "4.127", "25.81", "16491.0141", "2.66", "51.93"),
    ("GerbilLab/GerbilBlender-A-77m", "77m", "A-Class", "20", "1520M", "262K", "3.3334", "26.06", "1908.0661", "18.2", "52.09"),
    ("GerbilLab/GerbilBlender-B-star-77m", "77m", "B*-Class", "40", "3040M", "262K-524K", "3.1879", "26.33", "1766.5002", "18.24", "53.43"),
    ("GerbilLab/GerbilBlender-A-104m", "104m", "A-Class", "20", "2060M", "1M", "3.592", "26.41", "2972.4260", "17.31", "49.6"),
    ("GerbilLab/GerbilCode-6.7m", "6.7m", ".", "~300", "2852M", "131k", "3.98", "25.4", "124001.9108", "0.08", "52.72"),
    # the T5Blender rows the seed keeps in a hidden comment of its table (B* without evals, C* "coming soon")
    ("GerbilLab/T5Blender-A-24m", "24m", "A-class", "20", "460M", "131K", "5.5642", "25.85", "57122770.9237", "0",
     "52.25"),
    ("GerbilLab/T5Blender-B-star-24m", "24m", "B*-Class", "40", "920M", "131K-262K", "5.419"),
    ("GerbilLab/T5Blender-C-star-24m", "24m", "C*-Class", "60", "1380M", "131K-262K", "coming soon"),
)
SCORES_TO_BEAT_COLUMNS = ("Model Name", "Parameters", "Tokens", "hellaswag", "lambada ppl", "lambada acc",
                          "winogrande acc")
#: the results table's column of each of SCORES_TO_BEAT_COLUMNS (for the CSV, which has one header)
_TO_BEAT_IN_TABLE = ("Model Name", "Parameters", "Tokens", "hellaswag acc ↑", "lambada ppl ↓", "lambada acc ↑",
                     "winogrande acc ↑")
SCORES_TO_BEAT: tuple[tuple[str, ...], ...] = (
    ("EleutherAI/pythia-70m-deduped (v0, the seed's numbers)", "70m", "300B(?)", "27.36", "90.5683", "25.25", "52.25"),
    ("EleutherAI/pythia-70m-deduped (v1, current)", "70m", "300B", "—", "138.45", "19.15", "49.17"),
)
SCORES_NOTE = ("The seed's \"scores to beat\" are the original (v0) Pythia numbers; the current (v1) "
               "pythia-70m-deduped scores lambada ppl 138.45 / acc 19.15, winogrande 49.17. Chance: hellaswag 25, "
               "winogrande 50; binomial noise ±0.44 points on hellaswag, ±1.4 on winogrande.")


# ============================================================================================ format
def _num(x: float, decimals: int) -> str:
    """Up to `decimals` decimals without trailing zeros, as the seed writes (26.04, 26, 51.7, 0)."""
    s = f"{x:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def fmt_pct(v: float) -> str:
    return _num(100.0 * v, 2)


def fmt_ppl(v: float) -> str:
    return f"{v:.4f}"


def _size_label(r: RunRecord) -> str:
    return size_label(r.size, params=r.params)  # the ladder's name, else the count ("12m")


def _class(r: RunRecord) -> str | None:
    """The run's class, or None when its tokens fall short of the class's ratio (a `--tokens` budget,
    e.g. the CPU demo): such a run must not be named or shown as a class model (`gerbil.classes`)."""
    return claimed_class(r.cls, r.ratio)


def _values(r: RunRecord) -> dict[str, Any]:
    """Raw (unformatted) values of a run's row, plus the flags that decide its markers."""
    cls = _class(r)
    v: dict[str, Any] = {
        "Model Name": r.name, "Parameters": _size_label(r), "params": r.params,
        # no class claimed before a checkpoint exists; a budget short of its class's ratio is "custom"
        "Class": (f"{cls}-Class" if cls else "custom budget") if r.tokens else "—",
        "Ratio": r.ratio, "Tokens": r.tokens, "Batch Size (Tokens)": r.batch, "Training Loss ↓": r.train_loss,
        "run_dir": str(r.run_dir), "step": r.step,
    }
    for col, task, metric, _ in EVAL_COLUMNS:
        e = r.evals.get(task)
        v[col] = None if e is None else e.metrics.get(metric)
        v[col + " partial"] = bool(e and e.partial)
        v[col + " n_items"] = e.n_items if e else None
        v[col + " stale"] = bool(e and e.stale)
    return v


def _cells(v: dict[str, Any], notes: dict[str, str]) -> dict[str, str]:
    """Formatted cells for one row; partial/stale footnotes are collected into `notes`."""
    c = {
        "Model Name": v["Model Name"],
        "Parameters": v["Parameters"],
        "Class": v["Class"],
        "Ratio": "—" if v["Ratio"] is None else (_num(v["Ratio"], 0 if v["Ratio"] >= 10 else 1)
                                                 if v["Ratio"] >= 1 else f"{v['Ratio']:.2g}"),
        "Tokens": "—" if not v["Tokens"] else fmt_tokens(v["Tokens"]),
        "Batch Size (Tokens)": v["Batch Size (Tokens)"] or "—",
        "Training Loss ↓": "—" if v["Training Loss ↓"] is None else f"{v['Training Loss ↓']:.4f}",
    }
    for col, task, _, kind in EVAL_COLUMNS:
        x = v[col]
        if x is None:
            c[col] = "pending"
            continue
        s = fmt_pct(x) if kind == "pct" else fmt_ppl(x)
        if v[col + " partial"]:
            s += "*"
            notes["*"] = "\\* partial: scored on the first items only (`gerbil eval --limit`); not comparable " \
                         "with full-set numbers"
            n = v[col + " n_items"]
            notes[f"*{task}\0{v['Model Name']}"] = f"  {v['Model Name']} {task}: {n} items"
        if v[col + " stale"]:
            s += "†"
            notes["†"] = "† evaluated at an earlier checkpoint than the run's latest (re-run `gerbil eval`)"
        c[col] = s
    return c


def _partial_notes(notes: dict[str, str]) -> list[str]:
    """The item counts of partial results: one line per task when every partial row of it has the same
    count (a suite evaluated with one limit), else one line per row."""
    by_task: dict[str, list[str]] = {}
    for k in sorted(notes):
        if k.startswith("*") and k != "*":
            by_task.setdefault(k[1:].split("\0")[0], []).append(notes[k])
    out = []
    for task, lines in by_task.items():
        counts = {ln.rsplit(": ", 1)[1] for ln in lines}
        if len(lines) > 1 and len(counts) == 1:
            out.append(f"  {task}: {counts.pop()} each ({len(lines)} rows)")
        else:
            out += lines
    return out


def _task_notes(values: list[dict[str, Any]]) -> list[str]:
    """The caveat of each task with a value in the table (`Task.note`), once."""
    shown = dict.fromkeys(task for col, task, *_ in EVAL_COLUMNS if any(v[col] is not None for v in values))
    return [f"{task}: {TASKS[task].note}." for task in shown if TASKS[task].note]


def row_for_record(record: RunRecord) -> dict[str, str]:
    """The seed-format row of one registry record, column → formatted cell."""
    return _cells(_values(record), {})


def row_for_run(run_dir: str | Path) -> dict[str, str]:
    """The seed-format row of one run, column → formatted cell (eval columns filled from
    `RUN/eval/*.json`; `pending` where a task was not evaluated, `*` marks a `--limit` result)."""
    return row_for_record(read_run(run_dir))


# ============================================================================================ render
def _seed_row(row: tuple[str, ...]) -> tuple[str, ...]:
    """A published seed row under this table's columns: a task the seed did not report gets "—"."""
    return row + ("—",) * (len(COLUMNS) - len(row))


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(runs: Iterable[str | Path | RunRecord] | None = None, fmt: str = "md",
           reference: bool = False, marks: dict[str, tuple[str, str]] | None = None) -> str:
    """The table for `runs` (run directories, folders of runs, or records; default `./runs`) as
    Markdown (`md`), `csv` or `json`; with `reference`, the seed's rows and the scores to beat too.

    Records are shown in the order given (a suite passes its own order); paths are scanned and sorted
    the seed's way. `marks` maps a run name to (symbol, footnote): the symbol follows the model name
    (e.g. a suite's cascade branches) and each footnote is printed once under the table."""
    if fmt not in ("md", "csv", "json"):
        raise GerbilError(f"unknown format {fmt!r} (md, csv, json)")
    runs = list(runs) if runs is not None else None
    records = [r for r in (runs or []) if isinstance(r, RunRecord)]
    paths = [r for r in (runs or []) if not isinstance(r, RunRecord)]
    if paths or runs is None or not runs:
        records += scan(paths or None)
    values = [_values(r) for r in records]
    notes: dict[str, str] = {}
    cells = [_cells(v, notes) for v in values]
    marks = marks or {}
    mark_notes: dict[str, str] = {}
    for v, c in zip(values, cells):
        m = marks.get(v["Model Name"])
        if m:
            c["Model Name"] = f"{c['Model Name']} {m[0]}"
            mark_notes.setdefault(m[0], m[1])

    if fmt == "json":
        out = {"columns": list(COLUMNS),
               "runs": [{**{k: v[k] for k in COLUMNS}, "cells": c,
                         "partial": {col: v[col + " partial"] for col, *_ in EVAL_COLUMNS},
                         "n_items": {col: v[col + " n_items"] for col, *_ in EVAL_COLUMNS},
                         "stale": {col: v[col + " stale"] for col, *_ in EVAL_COLUMNS},
                         "run_dir": v["run_dir"], "step": v["step"], "params": v["params"],
                         **({"mark": marks[v["Model Name"]][0]} if v["Model Name"] in marks else {})}
                        for v, c in zip(values, cells)]}
        if reference:
            out["seed"] = [dict(zip(COLUMNS, _seed_row(r))) for r in SEED_ROWS]
            out["scores_to_beat"] = [dict(zip(SCORES_TO_BEAT_COLUMNS, r)) for r in SCORES_TO_BEAT]
            out["notes"] = [SCORES_NOTE]
        return json.dumps(out, indent=1, ensure_ascii=False)

    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["Source", *COLUMNS, "Partial"])
        for c, v in zip(cells, values):
            partial = ";".join(dict.fromkeys(t for col, t, *_ in EVAL_COLUMNS if v[col + " partial"]))
            w.writerow(["gerbil", *[c[k] for k in COLUMNS], partial])
        if reference:
            for r in SEED_ROWS:
                w.writerow(["seed", *_seed_row(r), ""])
            for r in SCORES_TO_BEAT:
                cells = dict(zip(_TO_BEAT_IN_TABLE, r))
                w.writerow(["to beat", *[cells.get(c, "") for c in COLUMNS], ""])
        return buf.getvalue()

    parts = [_md_table(COLUMNS, ([c[k] for k in COLUMNS] for c in cells)) if cells
             else "_no runs found_"]
    foot = [f"{sym} {text}" for sym, text in mark_notes.items()]
    foot += [notes[k] for k in ("*", "†") if k in notes]
    foot += _partial_notes(notes)
    foot += _task_notes(values)
    if foot:
        parts.append("\n".join(foot))
    if reference:
        parts.append("Seed (GerbilLab, published; lm-evaluation-harness, %):\n\n"
                     + _md_table(COLUMNS, map(_seed_row, SEED_ROWS)))
        parts.append("Scores to beat:\n\n" + _md_table(SCORES_TO_BEAT_COLUMNS, SCORES_TO_BEAT) + "\n\n" + SCORES_NOTE)
    return "\n\n".join(parts) + "\n"
