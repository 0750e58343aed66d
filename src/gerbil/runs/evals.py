"""A stored evaluation result as the readers of runs see it (`RunDir.read_evals`, `RunDir.eval_history`).

`gerbil.eval.evaluate` writes one record per task: ``{"task", "metrics", "n_items", "n_items_full",
"partial", "model": {"step", "tokens", ...}, "items": [...]}``; where it goes (``eval/TASK.json``, or
``TASK.partial.json`` for a `--limit` result, under ``eval/step-XXXXXXXX/`` for an older checkpoint) is
`gerbil.runs.rundir`'s. A full-set result and a partial one are never mixed: the readers prefer the
full-set file and keep the partial flag on the other.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class EvalRecord:
    """One task's stored result: headline metrics, item counts, the checkpoint it was computed at."""

    task: str
    metrics: dict[str, float]
    n_items: int
    n_items_full: int
    partial: bool
    step: int | None
    tokens: int | None
    path: Path
    stale: bool = False  # computed at another checkpoint than the run's latest

    def covers(self, limit: int | None) -> bool:
        """A full-set result covers any request; a partial one a `--limit` of at most its item count."""
        if not self.partial:
            return True
        return limit is not None and self.n_items >= min(limit, self.n_items_full)


def read_record(path: Path, task: str, partial: bool) -> EvalRecord | None:
    """The record in `path` (`task` and `partial` as its file name says), or None when it is unreadable
    (logged) or holds no metrics."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("skipping unreadable %s (%s)", path, e)
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("metrics"), dict):
        return None
    n = int(rec.get("n_items") or 0)
    full = int(rec.get("n_items_full") or n)
    model = rec.get("model") or {}
    return EvalRecord(str(rec.get("task") or task), dict(rec["metrics"]), n, full,
                      bool(rec.get("partial", n < full)) or partial, model.get("step"), model.get("tokens"), path)
