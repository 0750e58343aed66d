"""Metrics along the way: evaluate every checkpoint of a run (`gerbil eval RUN --all-checkpoints`) and
print them as a step × task table, each task's headline metric beside its task loss (the results at every checkpoint are read back with
`gerbil.runs.rundir.RunDir.eval_history`, e.g. for `gerbil suite plot`'s curves).

`checkpoints: log` (Pythia-style: steps 1, 2, 4, 8, ... never pruned) and `checkpoint_at` keep the
checkpoints worth evaluating. Each checkpoint's results go where `gerbil.eval.evaluate.evaluate` puts
them: the latest checkpoint's in ``RUN/eval/TASK.json``, an older one's in ``RUN/eval/step-XXXXXXXX/``
(``TASK.partial.json`` with a limit). A checkpoint that already has a result for a task (with at least
the asked number of items) is not evaluated again, so an interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from gerbil.errors import GerbilError
from gerbil.eval.evaluate import evaluate
from gerbil.eval.tasks import METRIC_KINDS, TASKS, resolve_tasks
from gerbil.runs.rundir import RunDir, checkpoint_name, resolve_source, verify_checkpoint

log = logging.getLogger(__name__)


def _have(run: RunDir, checkpoint: Path, task: str, limit: int | None) -> bool:
    """A result for `task` at `checkpoint` that covers `limit` is on disk (`EvalRecord.covers`)."""
    for partial in (False, True):
        e = run.read_eval(task, partial, checkpoint)
        if e is not None and e.covers(limit):
            return True
    return False


def evaluate_checkpoints(run_dir: str | Path, tasks: str | Iterable[str] | None = None, *, limit: int | None = None,
                         device: str | None = None, dtype: str | None = "fp32", progress: bool = True,
                         batch_size: int | None = None, skipped: list[tuple[str, str]] | None = None
                         ) -> dict[int, dict[str, dict]]:
    """Evaluate every intact checkpoint of a run on `tasks` (default: all), oldest first; returns
    {step: {task: metrics}} for every checkpoint (results already on disk are read, not recomputed).

    A damaged checkpoint (incomplete, truncated, failing its hash or its load) is skipped, logged and
    appended to `skipped` as (checkpoint name, reason): the curve goes on without it."""
    if limit is not None and limit <= 0:
        raise GerbilError(f"--limit must be positive, got {limit}")
    src = resolve_source(run_dir, require_checkpoint=False, check_hash=False)
    if src.kind != "run" or src.run is None:
        raise GerbilError(f"{run_dir}: --all-checkpoints needs a run directory (it evaluates each of its checkpoints)")
    run = src.run
    task_list = resolve_tasks(tasks)
    skipped = skipped if skipped is not None else []
    checkpoints = run.list_checkpoints()
    if not checkpoints:
        raise GerbilError(f"{run.path}: no complete checkpoint to evaluate")
    for c in checkpoints:
        reason = verify_checkpoint(c, check_hash=False)
        missing = [t for t in task_list if not _have(run, c, t, limit)] if reason is None else []
        if missing:
            log.info("evaluating %s on %s", c.name, ", ".join(missing))
            try:
                evaluate(str(c), missing, limit=limit, device=device, dtype=dtype, progress=progress,
                         batch_size=batch_size)
            except GerbilError as e:  # damaged past the size check (hash, weights): skip it, keep the curve
                reason = str(e)
        if reason is not None:
            log.warning("skipping checkpoint %s: %s", c.name, reason)
            skipped.append((c.name, reason))
    if len(skipped) == len(checkpoints):
        raise GerbilError(f"{run.path}: all {len(checkpoints)} checkpoints are damaged (first: {skipped[0][0]}: "
                          f"{skipped[0][1]})")
    bad = {name for name, _ in skipped}
    out: dict[int, dict[str, dict]] = {}
    for e in run.eval_history():
        if e.task in task_list and checkpoint_name(int(e.step)) not in bad:
            out.setdefault(int(e.step), {})[e.task] = e.metrics
    return dict(sorted(out.items()))


def format_curves(results: dict[int, dict[str, dict]], skipped: list[tuple[str, str]] = ()) -> str:
    """A step × task table of each task's headline metric and its task loss in bits per byte (what
    `gerbil eval --all-checkpoints` prints: at tiny scale the loss moves while the accuracy sits at chance),
    then how many damaged checkpoints were skipped and one line each."""
    tasks = [t for t in TASKS if any(t in r for r in results.values())]
    cols = [(t, k) for t in tasks for k in (TASKS[t].metrics[0], "bpb")
            if k in TASKS[t].metric_keys and any(k in r.get(t, {}) for r in results.values())]
    header = ["step"] + [f"{t} {k}" for t, k in cols]
    rows = []
    for step, res in results.items():
        cells = [str(step)]
        for t, k in cols:
            m = res.get(t, {}).get(k)
            cells.append("" if m is None else (f"{100 * m:.2f}" if METRIC_KINDS[k] == "pct" else f"{m:.4f}"))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    if skipped:
        lines.append(f"skipped {len(skipped)} damaged checkpoint{'s' if len(skipped) > 1 else ''}:")
        lines += [f"  {name}: {reason}" for name, reason in skipped]
    return "\n".join(lines)
