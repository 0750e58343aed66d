"""Points for the task law — (parameters, tokens, task loss, metric) — from CSV files and from runs'
evaluation records (every checkpoint's, not only the latest).

A CSV has one row per point with columns `params`, `tokens`, the task loss (`--loss-col`) and the
metric (`--metric-col`, an accuracy as a fraction in [0, 1]), optionally `run` (rows of one run are
resampled together; its row with the most tokens is the run's final point) and `name`.

Runs are read through the run readers — `gerbil.runs.registry.scan` (what each run is: its parameter
count) and `gerbil.runs.rundir.RunDir.eval_history` (every stored eval record, latest and older
checkpoints, with the tokens each checkpoint had seen) — and one small function, `task_record_values`,
that picks the task loss and the metric out of a record's `metrics`. The task-loss keys are those
`gerbil.eval.evaluate` writes (`gerbil.eval.tasks.LOSSES`: ``bpb``, ``nll_per_token``; lambada's
``log_perplexity``), in the order of `TASK_LOSS_KEYS`.

Missing values are skipped and counted, as for the loss law (`gerbil.fit.sources`); impossible ones
(a non-positive count or loss, a metric outside [0, 1]) are refused in one line.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gerbil.errors import GerbilError
from gerbil.fit.sources import Columns, _number, read_table

log = logging.getLogger(__name__)

#: Task-loss keys of an eval record's `metrics`, in order of preference: bits per byte of the gold
#: continuation (comparable across tokenizers), lambada's log-perplexity (derived from `perplexity` when
#: absent), the gold continuation's negative log-likelihood per token.
TASK_LOSS_KEYS = ("bpb", "log_perplexity", "nll_per_token")
#: The default loss column name means "the task's loss, chosen by TASK_LOSS_KEYS" for runs.
AUTO_LOSS = Columns().loss


@dataclass
class TaskPoints:
    """All points of a task law, one entry per point in each array; `final` marks each run's point
    with the most tokens (step 1 fits only those; step 2 fits all)."""

    name: list[str]
    run: list[str]  # bootstrap group: points of one run are resampled together
    N: np.ndarray
    D: np.ndarray
    L: np.ndarray  # task loss
    M: np.ndarray  # metric, in [0, 1]
    final: np.ndarray  # bool
    loss_name: str = "loss"
    metric_name: str = "metric"
    chance: float = 0.0
    task: str | None = None
    sources: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # caveats of the data, shown with the fit's warnings

    def __len__(self) -> int:
        return len(self.L)

    def subset(self, mask: np.ndarray) -> "TaskPoints":
        """The points where `mask` is true (finals stay the finals of their runs)."""
        idx = np.flatnonzero(mask)
        return TaskPoints([self.name[i] for i in idx], [self.run[i] for i in idx], self.N[idx], self.D[idx],
                          self.L[idx], self.M[idx], self.final[idx], self.loss_name, self.metric_name,
                          self.chance, self.task, self.sources, self.skipped, self.notes)

    def records(self) -> list[dict]:
        """The points as plain dicts (fit.json "data")."""
        return [{"name": self.name[i], "run": self.run[i], "params": float(self.N[i]), "tokens": float(self.D[i]),
                 "loss": float(self.L[i]), "metric": float(self.M[i]), "final": bool(self.final[i])}
                for i in range(len(self))]


# ------------------------------------------------------------------------------------------- chance
def task_name(task: str) -> str:
    """The canonical name of an eval task (aliases accepted); unknown → one-line GerbilError."""
    from gerbil.eval.tasks import get_task

    return get_task(task).name


def chance_for(task: str | None, chance: float | None) -> float:
    """The metric at random guessing: `chance` if given, else the task's (`Task.chance`, its one home).
    Without either, a one-line GerbilError asks for --chance."""
    if chance is None and task is not None:
        from gerbil.eval.tasks import get_task

        chance = get_task(task).chance
    if chance is None:
        raise GerbilError("the task law needs the metric's chance level: give --chance (0.25 for four "
                          "choices, 0.5 for two, 0 for lambada) or --task TASK")
    if not (math.isfinite(chance) and 0 <= chance < 1):
        raise GerbilError(f"--chance must be in [0, 1), got {chance:g}")
    return float(chance)


# -------------------------------------------------------------------------------------------- record
def task_record_values(metrics: dict, loss_key: str, metric_key: str) -> tuple[float | None, float | None]:
    """(task loss, metric) of one eval record's `metrics`, None where absent. `log_perplexity` falls
    back to ln(`perplexity`) (lambada's perplexity is exp of the mean per-item NLL, so its log is that
    NLL)."""
    loss = metrics.get(loss_key)
    if loss is None and loss_key == "log_perplexity" and metrics.get("perplexity"):
        loss = math.log(float(metrics["perplexity"]))
    metric = metrics.get(metric_key)
    return (None if loss is None else float(loss)), (None if metric is None else float(metric))


def pick_loss_key(all_metrics: Sequence[dict], task: str) -> str:
    """The first of `TASK_LOSS_KEYS` any record has (one key for all points: the units must agree)."""
    for key in TASK_LOSS_KEYS:
        if any(task_record_values(m, key, "")[0] is not None for m in all_metrics):
            return key
    raise GerbilError(f"the {task} evaluations report no task loss ({', '.join(TASK_LOSS_KEYS)}): "
                      f"re-evaluate with a gerbil that reports task losses, or fit a CSV")


def _check_values(where: str, N: float, D: float, L: float, M: float) -> None:
    for k, v in (("params", N), ("tokens", D), ("task loss", L)):
        if not math.isfinite(v) or v <= 0:
            raise GerbilError(f"{where}: {k} {v:g} is not a positive number")
    if not (0.0 <= M <= 1.0):
        raise GerbilError(f"{where}: metric {M:g} is outside [0, 1] (accuracies are fractions: 0.263, not 26.3)")


# ----------------------------------------------------------------------------------------------- CSV
def read_task_csv(path: str | Path, cols: Columns, metric_col: str) -> tuple[list[dict], list[dict]]:
    """(rows, skipped) of one CSV: each row a dict name, run, N, D, L, M."""
    path = Path(path)
    header, rows = read_table(path, ((cols.params, "--params-col"), (cols.tokens, "--tokens-col"),
                                     (cols.loss, "--loss-col"), (metric_col, "--metric-col")))
    out, skipped = [], []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            v = [_number(row.get(c)) for c in (cols.params, cols.tokens, cols.loss, metric_col)]
        except ValueError as e:
            raise GerbilError(f"{path}: line {i}: {str(e)!r} is not a number") from None
        run = (row.get(cols.run) or "").strip() if cols.run in header else ""
        label = (row.get(cols.name) or "").strip() or (f"{run}@{v[1]:.3g}" if run else f"{path.name}:{i}")
        missing = [c for c, x in zip(("params", "tokens", "loss", "metric"), v) if math.isnan(x)]
        if missing:
            skipped.append({"source": str(path), "row": i, "name": label, "reason": f"missing {', '.join(missing)}"})
            continue
        _check_values(f"{path}: line {i}", *v)
        out.append({"name": label, "run": f"{path}:{run or label}", "N": v[0], "D": v[1], "L": v[2], "M": v[3]})
    return out, skipped


# ---------------------------------------------------------------------------------------------- runs
def _run_records(path: str | Path, task: str) -> list[tuple[Any, list[Any]]]:
    """(registry record, that run's eval records of `task` at every checkpoint) per run under `path`."""
    from gerbil.runs.registry import scan
    from gerbil.runs.rundir import RunDir

    records = scan([path])
    if not records:
        raise GerbilError(f"{path}: no runs found (a run directory has config.yaml or checkpoints/)")
    return [(rec, [e for e in RunDir(rec.run_dir).eval_history() if e.task == task]) for rec in records]


def _limit_rule(pts: list[Any], task: str) -> tuple[int | None, str | None]:
    """Which records of `task` a fit may use, as the item count every used point shares: None (full sets
    only) when any record is a full-set one; else the most common `--limit` count, with a note — points
    scored on the same first items are comparable with each other, never with full-set numbers."""
    if not pts or any(not p.partial for p in pts):
        return None, None
    counts: dict[int, int] = {}
    for p in pts:
        counts[p.n_items] = counts.get(p.n_items, 0) + 1
    n = max(counts, key=lambda c: (counts[c], c))
    return n, (f"every {task} point was scored on its first {n} items (--limit), not the full set: the points "
               f"are comparable with each other, not with full-set numbers")


def read_task_runs(path: str | Path, task: str, loss_key: str,
                   metric_key: str) -> tuple[list[dict], list[dict], list[str]]:
    """(rows, skipped, notes) of the runs under `path`: one row per checkpoint with a result for `task`
    (full-set results; partial ones only when no point has a full-set one and then only those with one
    item count, `_limit_rule`). `loss_key` AUTO_LOSS picks the first of TASK_LOSS_KEYS the records have."""
    runs = _run_records(path, task)
    if loss_key == AUTO_LOSS:
        loss_key = pick_loss_key([p.metrics for _, pts in runs for p in pts], task)
    limit, note = _limit_rule([p for _, pts in runs for p in pts], task)
    out, skipped = [], []
    for rec, pts in runs:
        if not pts:
            skipped.append({"source": str(rec.run_dir), "name": rec.name, "reason": f"no {task} evaluation"})
        for p in pts:
            name = f"{rec.name}@{p.step}"
            loss, metric = task_record_values(p.metrics, loss_key, metric_key)
            why = ("evaluated on a subset only (--limit)" if p.partial and limit is None
                   else f"scored on {p.n_items} items, the other points on {limit}" if p.partial and p.n_items != limit
                   else f"no {loss_key}" if loss is None
                   else f"no {metric_key}" if metric is None else "no parameter count" if not rec.params
                   else "no token count" if not p.tokens else None)
            if why:
                skipped.append({"source": str(rec.run_dir), "name": name, "reason": why})
                continue
            _check_values(f"{rec.run_dir} step {p.step}", float(rec.params), float(p.tokens), loss, metric)
            out.append({"name": name, "run": str(Path(rec.run_dir).resolve()), "N": float(rec.params),
                        "D": float(p.tokens), "L": loss, "M": metric, "loss_key": loss_key})
    return out, skipped, [note] if note and out else []


# ---------------------------------------------------------------------------------------------- load
def load_task_points(sources: Sequence[str | Path], *, task: str | None = None, columns: Columns | None = None,
                     metric_col: str = "acc", chance: float | None = None) -> TaskPoints:
    """All points of `sources` (CSV files; run directories, folders of runs and suites with `task`)."""
    cols = columns or Columns()
    if not sources:
        raise GerbilError("no sources: give CSV files, run directories or folders of runs")
    task = task_name(task) if task else None
    chance = chance_for(task, chance)
    rows: list[dict] = []
    skipped: list[dict] = []
    notes: list[str] = []
    for src in map(Path, sources):
        if src.is_file():
            if src.suffix.lower() not in (".csv", ".tsv", ".txt"):
                raise GerbilError(f"{src}: not a CSV file or run directory")
            r, s = read_task_csv(src, cols, metric_col)
        elif src.is_dir():
            if task is None:
                raise GerbilError(f"{src}: runs need --task TASK (which evaluation's loss and {metric_col} to fit)")
            r, s, n = read_task_runs(src, task, cols.loss, metric_col)
            notes += [x for x in n if x not in notes]
        else:
            raise GerbilError(f"{src}: no such file or directory")
        if not r:
            raise GerbilError(f"{src}: no usable points ({len(s)} skipped: {s[0]['reason'] if s else 'empty'})")
        rows += r
        skipped += s
    for s in skipped:
        log.warning("skipped %s: %s", s.get("name") or s.get("source"), s["reason"])
    keys = sorted({r.get("loss_key", cols.loss) for r in rows})
    loss_name = f"{task} {'/'.join(keys)}" if task else "/".join(keys)
    pts = _points(rows, loss_name, f"{task} {metric_col}" if task else metric_col, chance, task,
                  [str(s) for s in sources], skipped)
    pts.notes = notes
    return pts


def _points(rows: list[dict], loss_name: str, metric_name: str, chance: float, task: str | None,
            sources: list[str], skipped: list[dict]) -> TaskPoints:
    col = lambda k: np.array([r[k] for r in rows], float)  # noqa: E731
    runs = [r["run"] for r in rows]
    D = col("D")
    last = {}
    for i, (run, d) in enumerate(zip(runs, D)):
        if run not in last or d > D[last[run]]:
            last[run] = i
    final = np.zeros(len(rows), bool)
    final[list(last.values())] = True
    return TaskPoints([r["name"] for r in rows], runs, col("N"), D, col("L"), col("M"), final, loss_name,
                      metric_name, chance, task, sources, skipped)
