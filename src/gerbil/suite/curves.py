"""Metrics along the way: evaluate every checkpoint of a run (`gerbil eval RUN --all-checkpoints`) and read
the results back as curves of metric vs tokens trained.

`checkpoints: log` (Pythia-style: steps 1, 2, 4, 8, ... never pruned) and `checkpoint_at` keep the
checkpoints worth evaluating. Each checkpoint's results go where `gerbil.eval.evaluate.evaluate` puts
them: the latest checkpoint's in ``RUN/eval/TASK.json``, an older one's in ``RUN/eval/step-XXXXXXXX/``
(``TASK.partial.json`` with a limit). A checkpoint that already has a result for a task (with at least
the asked number of items) is not evaluated again, so an interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from gerbil.errors import GerbilError
from gerbil.train import checkpoint as ckpt
from gerbil.train.rundir import RunDir, resolve_source

log = logging.getLogger(__name__)


@dataclass
class CurvePoint:
    """One task's result at one checkpoint."""

    step: int
    tokens: int
    task: str
    metrics: dict
    n_items: int
    partial: bool


def _result(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "metrics" in data else None


def _have(run: RunDir, checkpoint: Path, task: str, limit: int | None) -> bool:
    full = _result(run.eval_path(task, False, checkpoint))
    if full is not None:
        return True
    if limit is None:
        return False
    part = _result(run.eval_path(task, True, checkpoint))
    return part is not None and int(part.get("n_items") or 0) >= min(limit, int(part.get("n_items_full") or limit))


def evaluate_checkpoints(run_dir: str | Path, tasks: str | Iterable[str] | None = None, *, limit: int | None = None,
                         device: str | None = None, dtype: str | None = "fp32", progress: bool = True,
                         batch_size: int | None = None) -> dict[int, dict[str, dict]]:
    """Evaluate every intact checkpoint of a run on `tasks` (default: all), oldest first; returns
    {step: {task: metrics}} for every checkpoint (results already on disk are read, not recomputed)."""
    from gerbil.eval.evaluate import evaluate
    from gerbil.eval.tasks import resolve_tasks

    src = resolve_source(run_dir, require_checkpoint=False, check_hash=False)
    if src.kind != "run" or src.run is None:
        raise GerbilError(f"{run_dir}: --all-checkpoints needs a run directory (it evaluates each of its checkpoints)")
    run = src.run
    task_list = resolve_tasks(tasks)
    checkpoints = [c for c in run.list_checkpoints() if ckpt.verify_checkpoint(c, check_hash=False) is None]
    if not checkpoints:
        raise GerbilError(f"{run.path}: no complete checkpoint to evaluate")
    for c in checkpoints:
        missing = [t for t in task_list if not _have(run, c, t, limit)]
        if missing:
            log.info("evaluating %s on %s", c.name, ", ".join(missing))
            evaluate(str(c), missing, limit=limit, device=device, dtype=dtype, progress=progress,
                     batch_size=batch_size)
    out: dict[int, dict[str, dict]] = {}
    for p in read_curves(run.path):
        if p.task in task_list:
            out.setdefault(p.step, {})[p.task] = p.metrics
    return dict(sorted(out.items()))


def read_curves(run_dir: str | Path) -> list[CurvePoint]:
    """Every stored result of a run at every checkpoint (latest and older), as points (step, tokens, task,
    metrics); a full-set result wins over a partial one at the same checkpoint."""
    run = RunDir(run_dir)
    points: dict[tuple[int, str], CurvePoint] = {}
    folders = [run.eval_dir] + sorted(p for p in run.eval_dir.glob("step-*") if p.is_dir()) if run.eval_dir.is_dir() else []
    for folder in folders:
        for f in sorted(folder.glob("*.json")):
            rec = _result(f)
            if rec is None:
                continue
            model = rec.get("model") or {}
            step, tokens = model.get("step"), model.get("tokens")
            if step is None:
                continue
            partial = bool(rec.get("partial")) or f.name.endswith(".partial.json")
            key = (int(step), str(rec.get("task")))
            if key in points and not points[key].partial:
                continue
            points[key] = CurvePoint(int(step), int(tokens or 0), str(rec.get("task")), dict(rec["metrics"]),
                                     int(rec.get("n_items") or 0), partial)
    return sorted(points.values(), key=lambda p: (p.task, p.step))


def format_curves(results: dict[int, dict[str, dict]]) -> str:
    """A step × task table of each task's headline metric (what `gerbil eval --all-checkpoints` prints)."""
    from gerbil.eval.tasks import TASKS

    tasks = [t for t in TASKS if any(t in r for r in results.values())]
    header = ["step"] + [f"{t} {TASKS[t].metrics[0]}" for t in tasks]
    rows = []
    for step, res in results.items():
        cells = [str(step)]
        for t in tasks:
            m = res.get(t, {}).get(TASKS[t].metrics[0])
            cells.append("" if m is None else (f"{m:.4f}" if TASKS[t].metrics[0] == "perplexity" else f"{100 * m:.2f}"))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows)
