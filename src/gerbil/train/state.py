"""What a run is and holds: its `Workload` (what is trained, on what, and how it is scored), its mutable
`TrainState` (everything a checkpoint must hold to continue exactly) and the `RunResult` it reports.

`gerbil.train.loop.run_workload` trains a workload; pretraining's is built in `gerbil.train.pretraining`,
fine-tuning's in `gerbil.finetune.workloads`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import torch

from gerbil.data.loader import Loader
from gerbil.data.steps import PreparedStep
from gerbil.errors import GerbilError
from gerbil.model.model import GPT
from gerbil.train import checkpoint as ckpt


@dataclass
class RunResult:
    """What a finished run reports (also in the run directory's files)."""

    run_dir: Path
    name: str
    steps: int
    tokens: int
    train_loss: float  # mean loss of the last (up to) 10 steps
    val_loss: float | None
    checkpoint: Path | None
    seconds: float  # training time of the whole run, all sessions (validation and checkpoint writes not counted)
    tokens_per_second: float
    skipped_steps: int
    n_params: int
    info: dict = field(default_factory=dict)


@dataclass
class TrainState:
    """The mutable state of a run: everything a checkpoint must hold to continue exactly."""

    model: GPT
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loader: Loader
    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0  # fp16 steps skipped by the GradScaler (inf/NaN gradients)
    # whole-run bookkeeping, carried over resumes so result.json describes the whole run, not the last
    # session: training seconds so far and the losses of the last (up to) 10 steps
    seconds: float = 0.0
    recent_losses: list[float] = field(default_factory=list)
    # the loader's cursor after the last *trained* step (the prefetcher has already drawn further ahead)
    loader_state: dict | None = None
    # a workload that selects its best checkpoint (`Workload.select`): the best validation so far
    # ({"metric", "value", "step", "tokens", "checkpoint", "metrics"}), validations since it, and whether
    # the run stopped early (a resumed run that stopped early trains no further)
    best: dict | None = None
    since_best: int = 0
    stopped: bool = False

    def state_dict(self) -> dict:
        sd = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step, "tokens": self.tokens, "skipped_steps": self.skipped_steps,
            "seconds": self.seconds, "recent_losses": list(self.recent_losses),
            "loader": self.loader_state if self.loader_state is not None else self.loader.state_dict(),
            "rng": ckpt.rng_state(),
        }
        if self.best is not None or self.stopped:  # only runs that select a best checkpoint have these
            sd.update(best=self.best, since_best=self.since_best, stopped=self.stopped)
        return sd

    def load_state_dict(self, sd: dict, rank: int = 0) -> None:
        """Continue from `sd`; `rank`: this process's place in a data-parallel job (its own RNG states
        when the checkpoint holds them for that many ranks, else rank 0's)."""
        self.optimizer.load_state_dict(sd["optimizer"])
        if self.scaler is not None and sd.get("scaler"):
            self.scaler.load_state_dict(sd["scaler"])
        self.loader.load_state_dict(sd["loader"])
        self.step, self.tokens = int(sd["step"]), int(sd["tokens"])
        self.skipped_steps = int(sd.get("skipped_steps", 0))
        self.seconds = float(sd.get("seconds", 0.0))  # checkpoints of 0.1.0 have none
        self.recent_losses = [float(x) for x in sd.get("recent_losses", [])]
        self.loader_state = None
        self.best, self.since_best = sd.get("best"), int(sd.get("since_best", 0))
        self.stopped = bool(sd.get("stopped", False))
        ranks = sd.get("rng_ranks") or []
        ckpt.set_rng_state(ranks[rank] if rank < len(ranks) else sd["rng"])

    @property
    def train_loss(self) -> float:
        """Mean loss of the last (up to) 10 steps."""
        return sum(self.recent_losses) / len(self.recent_losses) if self.recent_losses else float("nan")


class NonFiniteLoss(GerbilError):
    """The loss (or, without loss scaling, the gradient norm) became NaN/inf; the run stops and its last
    good checkpoint is kept."""


@dataclass
class Workload:
    """What one run trains, on what, and how it is scored: everything `run_workload` does not decide.

    The loop owns the rest, the same for every workload: the optimizer, precision and loss scaling, DDP and
    torch.compile wrapping, the LR schedule and the step budget (`RunPlan`), checkpoints and exact
    resume, metrics.jsonl, the progress bar and the run lock.
    """

    model: torch.nn.Module  # on the device; trained, and saved by checkpoints (its state_dict)
    data: Any  # the steps' cursor: state_dict() / load_state_dict() (checkpoints save it)
    # the remaining steps after `tokens` trained, as `PreparedStep`s built ahead of time; a context
    # manager that stops its builder on exit (`StepPrefetcher`)
    steps: Callable[[int], ContextManager[Iterator[PreparedStep]]]
    # the mean loss of one micro-batch over its scored targets (`train_step`'s loss_fn), on the wrapped
    # (DDP / compiled) model
    loss: Callable[[torch.nn.Module, tuple], torch.Tensor]
    # metrics of the validation set (None: no validation set), e.g. {"val_loss": 3.2}; its argument is the
    # wrapped model, and it leaves the model in training mode
    validate: Callable[[torch.nn.Module], dict[str, float]] | None
    meta: dict  # facts every checkpoint's meta.json holds (model, size, objective, ...)
    pad: Callable[[tuple], tuple] | None = None  # a compiled model's one shape for every micro-batch
    idle_batch: tuple | None = None  # data-parallel: a micro-batch with nothing scored (on the device)
    # keep the best checkpoint by this validation metric: (name, "max" | "min"); None: the newest is the result
    select: tuple[str, str] | None = None
    patience: int = 0  # with `select`: stop after this many validations without improvement (0: never)
    validate_first: bool = False  # also validate the untrained model (a step-0 line in metrics.jsonl)
    step_record: Callable[[Any], dict] | None = None  # extra metrics.jsonl fields of a step (its plan)
    info: dict = field(default_factory=dict)  # extra RunResult.info
