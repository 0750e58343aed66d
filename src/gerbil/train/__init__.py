"""Training: the run's configuration (config), schedules, checkpoints and their policy (checkpoint),
settings decided once (resolve) and the loop (loop); the run directory itself is `gerbil.runs`'s.

`gerbil.train.train(config)` and `gerbil.train.TrainConfig` are the documented entry points; they are
resolved lazily so that torch-free modules (`gerbil.train.config`, `gerbil.train.checkpoint`) and
`from gerbil.train import TrainConfig` do not import torch.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # PEP 562
    if name == "train":
        from gerbil.train import loop

        return loop.train
    if name in ("train_step", "evaluate_loss"):
        from gerbil.train import step

        return getattr(step, name)
    if name in ("RunResult", "TrainState", "NonFiniteLoss"):
        from gerbil.train import state

        return getattr(state, name)
    if name == "TrainConfig":  # torch-free
        from gerbil.train import config

        return config.TrainConfig
    raise AttributeError(f"module 'gerbil.train' has no attribute {name!r}")
