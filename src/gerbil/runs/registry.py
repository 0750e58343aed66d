"""An index of runs: what each run is, how far it trained, and its evaluation results.

The run directory is the source of truth (docs/architecture.md, "Run directory"); the registry reads it
through `gerbil.runs.rundir.RunDir`, without importing torch:

* the resolved configuration — name, size, class, objective, params, resolved batch label;
* the latest checkpoint's meta — step, tokens, train/val loss, size/class/objective again;
* the metrics' tail — the last logged training loss (a fallback when the checkpoint has none);
* the stored evaluation results (`RunDir.read_evals`): a full-set result always wins; a partial
  (`--limit`) one is kept apart and flagged, so the two are never mixed. A result computed at an older
  checkpoint than the latest is flagged `stale`.

`scan(paths)` accepts run directories and folders of runs (e.g. `runs/`). `gerbil table`, `gerbil fit`,
suites and `gerbil plan` read runs through it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig
from gerbil.runs.evals import EvalRecord
from gerbil.runs.rundir import RunDir, kind

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """Everything the results table needs about one run."""

    run_dir: Path
    name: str
    size: str | None = None
    cls: str | None = None
    objective: str | None = None
    params: int | None = None
    tokens: int | None = None
    budget: int | None = None
    batch: str | None = None
    step: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    evals: dict[str, EvalRecord] = field(default_factory=dict)
    task: str | None = None  # a fine-tuning run's task (classify, ...): its loss is no language-model loss

    @property
    def ratio(self) -> float | None:
        """Tokens trained per parameter."""
        if self.tokens and self.params:
            return self.tokens / self.params
        return None

    @property
    def unfinished(self) -> bool:
        """Stopped short of its known budget (killed, or still training): its loss is no end-of-schedule
        point."""
        return bool(self.budget and self.tokens is not None and self.tokens < self.budget)

    @property
    def complete(self) -> bool:
        """Trained to its budget (when the budget is known)."""
        return bool(self.budget and self.tokens and self.tokens >= self.budget)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("name", "size", "cls", "objective", "params", "tokens", "budget",
                                            "batch", "step", "train_loss", "val_loss", "task")}
        d["run_dir"] = str(self.run_dir)
        d["ratio"] = self.ratio
        d["evals"] = {t: {"metrics": e.metrics, "n_items": e.n_items, "n_items_full": e.n_items_full,
                          "partial": e.partial, "step": e.step, "stale": e.stale, "path": str(e.path)}
                      for t, e in self.evals.items()}
        return d


def read_run(run_dir: str | Path) -> RunRecord:
    """The registry record of one run directory."""
    run = RunDir(run_dir)
    try:
        cfg = run.read_config()
    except GerbilError as e:  # a damaged config must not hide the other runs
        log.warning("%s", e)
        cfg = {}
    meta = run.latest_meta()
    resolved = cfg.get("resolved") or {}
    model = meta.get("model") or cfg.get("model") or {}
    params = cfg.get("params")
    if params is None and model:
        try:
            params = ModelConfig.from_dict(model).n_params("total")
        except (TypeError, ValueError):
            params = None
    train_loss = meta.get("train_loss")
    if train_loss is None:  # the last logged loss
        train_loss = next((m["loss"] for m in reversed(run.tail_metrics()) if m.get("loss") is not None), None)
    step = meta.get("step")
    return RunRecord(
        run_dir=run.path,
        name=str(cfg.get("name") or meta.get("run") or run.name),
        size=meta.get("size") or cfg.get("size"),
        cls=meta.get("class") or cfg.get("class"),
        objective=meta.get("objective") or cfg.get("objective"),
        params=int(params) if params is not None else None,
        tokens=meta.get("tokens"),
        budget=meta.get("budget") or resolved.get("budget"),
        batch=resolved.get("batch"),
        step=step,
        train_loss=float(train_loss) if train_loss is not None else None,
        val_loss=meta.get("val_loss"),
        evals=run.read_evals(step),
        task=str(cfg.get("task") or "?") if isinstance(cfg.get("finetune"), dict) else None,
    )


def scan(paths: Iterable[str | Path] | None = None) -> list[RunRecord]:
    """Records for run directories and folders of runs (default `./runs`), sorted by objective,
    size (parameters) and tokens — the seed's table order. A folder that holds no run but a `runs/`
    folder (a suite directory, a project folder) stands for that `runs/`."""
    paths = list(paths) if paths else [Path("runs")]
    dirs: list[Path] = []
    for p in map(Path, paths):
        if kind(p) == "run":
            dirs.append(p)
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if kind(c) == "run")
            if not found and (p / "runs").is_dir():
                found = sorted(c for c in (p / "runs").iterdir() if kind(c) == "run")
            dirs += found
        else:
            raise GerbilError(f"{p}: no such run directory or folder of runs")
    seen, records = set(), []
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            records.append(read_run(d))
    records.sort(key=lambda r: (r.objective == "blender", r.params or 0, r.tokens or 0, r.name))
    return records
