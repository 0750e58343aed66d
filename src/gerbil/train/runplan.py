"""`RunPlan`: the training loop's contract — everything `gerbil.train.loop.run_workload` reads of a run.

Every verb that trains decides its run first and builds one `RunPlan` (`gerbil.train.resolve.resolve`
for pretraining, `gerbil.finetune.finetune.resolve_finetune` for fine-tuning), beside what only its own
workload needs (a token store; labelled examples). The plan holds the run's identity and budget, the
LR schedule, the optimizer, where and how it executes, when it validates, when it checkpoints and
which checkpoints it keeps (`gerbil.train.checkpoint.CheckpointPolicy`), where it starts (its own
latest checkpoint, or a continuation's `Parent`) and what config.yaml records.

`execution(options)` decides device, precision and compilation from the `Runtime` options both verbs
share, and `resume_point` is what `--resume auto` means for every verb: continue the run's latest
intact checkpoint as the run was configured (`gerbil.options.resumed`), or start the run when it has none.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import torch

from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig
from gerbil.options import Optimization, Options, Runtime, resumed
from gerbil.runs.rundir import RunDir
from gerbil.schedules import Schedule
from gerbil.train.checkpoint import CheckpointPolicy
from gerbil.train.device import choose_precision, pick_device

log = logging.getLogger(__name__)
O = TypeVar("O", bound=Options)


@dataclass(frozen=True)
class AdamW:
    """The optimizer's settings (`gerbil.train.loop.configure_optimizer`); the LR is the schedule's."""

    weight_decay: float
    betas: tuple[float, float]
    grad_clip: float

    @classmethod
    def of(cls, opts: Optimization) -> "AdamW":
        return cls(opts.weight_decay, (opts.beta1, opts.beta2), opts.grad_clip)


@dataclass(frozen=True)
class Parent:
    """A continuation's parent: the checkpoint a fresh continuation starts from (weights, optimizer, data
    position) and what the run records of it (config.yaml / meta.json / result.json ``parent``: run,
    checkpoint, tokens, step, class, lr)."""

    checkpoint: Path
    record: dict

    @property
    def tokens(self) -> int:
        """Tokens the parent trained: where the continuation's own tokens start."""
        return int(self.record["tokens"])

    @classmethod
    def from_record(cls, record: dict | None) -> "Parent | None":
        return cls(Path(record["checkpoint"]), record) if record else None


class Execution(NamedTuple):
    """Where and how a run executes, decided from its `Runtime` options."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None
    use_scaler: bool  # fp16: GradScaler
    compile: bool


def execution(opts: Runtime) -> Execution:
    """Device (`auto`: CUDA when there is one), precision (`gerbil.train.device.choose_precision`) and
    torch.compile (default: on CUDA only)."""
    device = pick_device(opts.device)
    precision, autocast_dtype, use_scaler = choose_precision(device, opts.precision)
    compile_ = bool(opts.compile) if opts.compile is not None else device.type == "cuda"
    return Execution(device, precision, autocast_dtype, use_scaler, compile_)


@dataclass
class RunPlan:
    """A run decided: what `run_workload`, `run_locked` and the checkpoints read (module docstring)."""

    name: str
    run: RunDir
    model_config: ModelConfig
    size: str  # a ladder name, or the custom model's name
    cls: str | None  # None: no class (a custom token budget, a fine-tuning run)
    budget: int  # tokens at the end, a continuation's parent's included
    batch_label: str  # the batch as the table shows it (131k, 131k-262k, 16 examples)
    schedule: Schedule
    optimizer: AdamW
    eval_every: int  # tokens between validations (and one at the end)
    checkpoints: CheckpointPolicy  # when it writes checkpoints and which it keeps
    seed: int
    deterministic: bool
    device: torch.device
    precision: str
    autocast_dtype: torch.dtype | None
    use_scaler: bool
    compile: bool
    micro_batch: int
    eval_micro_batch: int
    log: str | None  # loggers mirroring metrics.jsonl (tensorboard, wandb)
    log_every: int
    progress: bool | None
    flops_per_token: int
    peak_flops: float | None
    record: dict  # what config.yaml holds (the loop adds resolved.world_size)
    resume_from: Path | None = None  # this run's own latest checkpoint: continue it exactly
    parent: Parent | None = None  # a continuation (fresh: start from its checkpoint; resumed: its record)
    loss_impl: str | None = None  # the workload's lm_loss implementation (None: the workload's own)
    sdpa_backend: str | None = None  # the attention backend pinned for the run (None: PyTorch's dispatch)
    # how the run executes, for env.json and result.json's info: loss_impl, loss_impl_timings,
    # sdpa_backend, sdpa_timings (`gerbil.train.autotune`)
    tuning: dict = dataclasses.field(default_factory=dict)

    def mfu(self, tok_s: float) -> float | None:
        if not self.peak_flops:
            return None
        return round(self.flops_per_token * tok_s / self.peak_flops, 4)


class Planned(Protocol):
    """A verb's resolved run: its plan, and what its workload needs besides."""

    plan: RunPlan


class ResumePoint(NamedTuple):
    """What `--resume auto` decided for a run (`resume_point`)."""

    options: Options  # the effective options
    checkpoint: Path | None  # the run's own latest checkpoint, to continue; None: the run starts
    recorded: dict  # the run's config.yaml when it continues ({} when it starts)
    restart: bool  # asked to resume, but no checkpoint yet: the run starts (again), over a killed start's files


def resume_point(cfg: O, run: RunDir, section: str) -> ResumePoint:
    """`--resume auto`, the same for every verb.

    With `cfg.resume` and a checkpoint in `run`: the run's own options from config.yaml's `section`
    (``train``, ``finetune``), continued with `cfg`'s runtime options, a changed fixed one refused
    (`gerbil.options.resumed`). Without a checkpoint yet the run starts, so the same command can be rerun
    after any interruption: a run killed before its first checkpoint as it was configured (its
    config.yaml's options, the same rule), one never started as given; `resume` off, `restart` on (its
    files may be replaced: `fresh_start`). Without `cfg.resume`: `cfg` as given, no checkpoint.
    """
    if not getattr(cfg, "resume", False):
        return ResumePoint(cfg, None, {}, False)
    latest = run.latest_checkpoint() if run.path.is_dir() else None
    try:
        recorded = run.read_config()
    except GerbilError:  # not a run's config.yaml: `fresh_start` refuses to replace it
        recorded = {}
    if latest is not None:
        return ResumePoint(resumed(cfg, recorded.get(section) or {}, run.path), latest, recorded, False)
    if recorded.get(section):
        log.info("no checkpoint in %s yet: starting the run again as it was configured", run.path)
        cfg = resumed(cfg, recorded[section], run.path)
    else:
        log.info("no checkpoint in %s yet: starting the run", run.path)
    return ResumePoint(dataclasses.replace(cfg, resume=False), None, {}, True)


def fresh_start(run: RunDir, restart: bool, alternative: str) -> None:
    """Before a run starts from nothing in `run`: never over its checkpoints (``--resume auto`` continues
    them), never over files gerbil did not write, and over the files of a run killed before its first
    checkpoint only with `restart` (``--resume auto`` asked; `resume_point`). `alternative` says where
    else to start it (``--name for a new run``, ``another --out``). Each refusal is one line."""
    if run.list_checkpoints():
        raise GerbilError(f"run {run.path} already has checkpoints: pass --resume auto to continue it, or "
                          f"{alternative}")
    found = run.run_files()
    if not found:
        return
    try:
        ours = "resolved" in run.read_config()  # config.yaml is a gerbil run record
    except GerbilError:
        ours = False
    if not ours:
        raise GerbilError(f"{run.path} holds files that are not a gerbil run's ({', '.join(found)}); choose "
                          f"another folder")
    if not restart:
        raise GerbilError(f"{run.path} holds a run that has no checkpoint yet ({', '.join(found)}; killed before "
                          f"its first?): pass --resume auto to start it again, or {alternative}")
