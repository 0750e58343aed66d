"""Mirror a run's metrics to the loggers people already use: TensorBoard and Weights & Biases.

metrics.jsonl stays the source of truth (docs/architecture.md, "Run directory"); a logger only receives a
copy of each line right after it is written (`Logger.log(record)`), so a missing or failing logger can
never lose or change a run's record. Both are optional extras:

* ``tensorboard`` — event files in ``RUN/tensorboard/`` (torch's `SummaryWriter`, which needs the
  `tensorboard` package); view with ``tensorboard --logdir RUN/tensorboard``;
* ``wandb`` — a W&B run with its files in ``RUN/wandb/``, named like the run, its id derived from the run
  directory (a resumed run continues the same W&B run). ``WANDB_MODE=offline`` logs without a network;
  ``wandb sync RUN/wandb/offline-run-*`` uploads later. Project: ``$WANDB_PROJECT`` (default ``gerbil``).

`make_loggers("tensorboard,wandb", run_dir, config)` builds them (an unknown name or a missing package is a
one-line error before training starts). Every numeric field of a record is logged as ``train/<key>``
(``val/loss`` for the validation loss) at the record's ``step``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from gerbil.errors import OptionError
from gerbil.extras import require
from gerbil.fsutil import json_safe
from gerbil.runs.rundir import RunDir

log = logging.getLogger(__name__)

#: logger name → (pip package it needs, the extra that installs it)
KNOWN = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class Logger:
    """Receives each metrics.jsonl record; `close()` flushes."""

    name = "logger"

    def log(self, record: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


def _scalars(record: dict) -> dict[str, float]:
    """Numeric fields of a record under their logger names (the step itself is the x axis)."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            continue
        out["val/loss" if k == "val_loss" else f"train/{k}"] = float(v)
    return out


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict):
        writer = require("torch.utils.tensorboard", "--log tensorboard", "tensorboard", "tensorboard").SummaryWriter
        self.dir = RunDir(run_dir).tensorboard_dir
        self.writer = writer(log_dir=str(self.dir))
        name = config.get("name") or Path(run_dir).name
        self.writer.add_text("config", f"run {name}\n\n```\n{_short_config(config)}\n```", 0)

    def log(self, record: dict) -> None:
        step = int(record.get("step") or 0)
        for k, v in _scalars(record).items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbLogger(Logger):
    name = "wandb"

    def __init__(self, run_dir: Path, config: dict):
        wandb = require("wandb", "--log wandb", extra="wandb", hint="; WANDB_MODE=offline logs without a network")
        run_dir = Path(run_dir)
        name = config.get("name") or run_dir.name
        # one W&B run per run directory: a resumed run continues it instead of starting another
        run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "gerbil"), name=name, id=run_id,
                              resume="allow", dir=str(run_dir), config=json_safe(config), reinit="create_new"
                              if _wandb_supports_create_new(wandb) else True)
        # wandb.init(dir=RUN) writes into RUN/wandb (`RunDir.wandb_dir`); the run reports where exactly
        self.dir = Path(self.run.dir).parent if getattr(self.run, "dir", None) else RunDir(run_dir).wandb_dir

    def log(self, record: dict) -> None:
        self.run.log(_scalars(record), step=int(record.get("step") or 0))

    def close(self) -> None:
        self.run.finish()


def _wandb_supports_create_new(wandb: Any) -> bool:
    try:
        major, minor = (int(x) for x in wandb.__version__.split(".")[:2])
    except (ValueError, AttributeError):
        return False
    return (major, minor) >= (0, 19)


def _short_config(config: dict) -> str:
    return json.dumps(json_safe(config), indent=1, default=str)[:20000]


_CLASSES = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def check_spec(spec: str | None) -> list[str]:
    """The logger names of a spec ("tensorboard,wandb"); an unknown one is a one-line OptionError."""
    names = [s.strip().lower() for s in (spec or "").split(",") if s.strip()]
    for n in names:
        if n not in KNOWN:
            raise OptionError(f"log: unknown logger {n!r} (known: {', '.join(KNOWN)})")
    return list(dict.fromkeys(names))


def make_loggers(spec: str | None, run_dir: Path, config: dict) -> list[Logger]:
    """The loggers named in `spec` (None or "" → none), writing under `run_dir`; `config` is recorded
    with them (the run's resolved configuration)."""
    out: list[Logger] = []
    try:
        for n in check_spec(spec):
            out.append(_CLASSES[n](Path(run_dir), dict(config or {})))
    except BaseException:
        for lg in out:
            lg.close()
        raise
    return out


def close_all(loggers: list[Logger]) -> None:
    """Close every logger; one that fails to close is logged, never raised (the run is already safe)."""
    for lg in loggers:
        try:
            lg.close()
        except Exception as e:  # noqa: BLE001
            log.warning("closing the %s logger failed: %s", lg.name, e)
