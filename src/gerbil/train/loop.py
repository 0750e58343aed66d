"""The training loop: one `train(config) -> RunResult`, an explicit `TrainState`, pure step helpers.

    config ─► run.resolve (size, class → token budget; batch schedule; micro-batch; precision)
           ─► run dir (config.yaml, env.json) ─► model + AdamW + loader (+ resume / --from parent)
           ─► loop: train_step (accumulate micro-batches, clip, step) · log · validate · checkpoint
           ─► final validation + checkpoint ─► RunResult

Everything is counted in tokens: the budget (ratio × total parameters, docs/reference.md §3), the batch
(micro_batch × seq_len × accumulation), the LR schedule position, eval and checkpoint intervals. The run
stops at exactly the budget: the last step takes only the tokens that remain (down to a shortened final
sequence), so a Gerbil-A-6.7m run sees 20 × 6,682,584 = 133,651,680 tokens
(1,019 full 131k batches + a last step of 43 sequences and 1,248 tokens), not a multiple of the batch.

Exact resume: a checkpoint holds the weights, the optimizer and GradScaler state, step, tokens, the
skipped-step count, every RNG state and the loader cursor; the LR is a pure function of tokens. On CPU a
resumed run is bitwise identical to an uninterrupted one (tests/test_train.py kills a run with SIGKILL).

One loop, several workloads. What is trained and how it is scored is a `Workload`: the module (a GPT,
or a GPT with a classification head), the steps' data (prefetched `PreparedStep`s and a cursor that
checkpoints save), the loss of one micro-batch, and validation (a dict of metrics; optionally the metric
that picks the best checkpoint and stops early). Pretraining's workload is built here (`_pretraining`);
fine-tuning's come from `gerbil.finetune.workloads` and run through the same `run_workload` — precision,
compile, checkpoints, exact resume, metrics, progress and the run lock are this module's, for all of them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import torch

from gerbil.data.loader import Loader, PreparedStep, StepPrefetcher, eval_batches
from gerbil.data.objectives import get_objective, mode_prefix
from gerbil.errors import GerbilError
from gerbil.lock import Lock
from gerbil.model.loss import lm_loss
from gerbil.model.model import GPT
from gerbil.runs.env import env_info
from gerbil.runs.rundir import RunDir, checkpoint_name, clean_temporaries, read_meta
from gerbil.schedules import lr_at
from gerbil.train import checkpoint as ckpt
from gerbil.train import distributed
from gerbil.train.config import TrainConfig
from gerbil.train.distributed import Dist, rank_slice
from gerbil.train.resolve import Pretraining, resolve, run_name
from gerbil.train.runplan import Planned, RunPlan

log = logging.getLogger(__name__)


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
    """The loss became NaN/inf; the run stops and its last good checkpoint is kept."""


# ------------------------------------------------------------------------------------ pure helpers
def configure_optimizer(model: torch.nn.Module, weight_decay: float, betas: tuple[float, float],
                        fused: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: every 2-D weight (projections, MLP, the embedding and
    the head) decays; biases and LayerNorm gains do not (nanoGPT / litgpt convention; decaying a gain
    pulls it toward 0, not toward its init of 1). The LR is set per step by the schedule."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=0.0, betas=betas, eps=1e-8, **kw)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
               micro_batches: list[tuple[torch.Tensor, ...]], lr: float, autocast_dtype: torch.dtype | None,
               grad_clip: float, loss_fn: Callable[[torch.nn.Module, tuple], torch.Tensor],
               counts: list[float] | None = None, dist: Dist = Dist(),
               idle_batch: tuple[torch.Tensor, ...] | None = None) -> dict:
    """One optimizer step over `micro_batches` (already on the model's device); returns step stats.

    A micro-batch is a tuple of tensors whose first two are ``(inputs, targets)`` (targets -100 where
    nothing is scored); `loss_fn(model, micro_batch)` is its mean loss over its scored targets (the
    workload's `Workload.loss`, e.g. next-token cross-entropy).

    Each micro-batch's mean loss is weighted by its share of the step's counted targets — over all ranks
    when data-parallel (`dist`: the counts are all-reduced, and the weight is multiplied by the world size
    since DDP averages gradients) — so the step minimises the exact mean over every scored target of the
    global batch whatever the number of processes. With DDP (`model` wrapped in it), gradients are
    all-reduced only on the last micro-batch (`no_sync` before); a rank with no sequence this step runs
    `idle_batch` (nothing scored) so it still joins that all-reduce. Returns ``{"loss", "grad_norm",
    "skipped"}``; the loss is the global mean, a Python float (one device sync per step).
    counts: targets counted per micro-batch (pass them from the CPU copies to avoid device syncs).
    """
    if not micro_batches:
        if idle_batch is None:
            raise ValueError("a rank without micro-batches needs an idle_batch to join the all-reduce")
        micro_batches, counts = [idle_batch], [0]
    device = micro_batches[0][0].device
    if counts is None:
        counts = [int((b[1] != -100).sum()) for b in micro_batches]
    total = dist.sum_floats(float(sum(counts)), device=device)[0] if dist.enabled else float(sum(counts))
    total = max(1.0, total)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    last = len(micro_batches) - 1
    for i, (batch, n) in enumerate(zip(micro_batches, counts)):
        sync = contextlib.nullcontext() if (i == last or not hasattr(model, "no_sync")) else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = loss_fn(model, batch) * (n / total)
            grad_loss = loss * dist.world_size if dist.enabled else loss  # DDP averages over ranks
            (scaler.scale(grad_loss) if scaler is not None else grad_loss).backward()
        loss_sum += loss.detach().float()
    if dist.enabled:
        dist.all_reduce_sum(loss_sum)
    loss_value = float(loss_sum)  # sync point: needed for the NaN check and the log anyway
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_value, "grad_norm": float("nan"), "skipped": True}
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    skipped = False
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)  # skips the update when any gradient is inf/NaN (the same on every rank)
        scaler.update()
        skipped = scaler.get_scale() < scale  # the scale only drops after an overflow
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_value, "grad_norm": float(grad_norm), "skipped": skipped}


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, head: torch.nn.Linear, windows, micro_batch: int,
                  device: torch.device, autocast_dtype: torch.dtype | None, vocab_size: int,
                  chunk_tokens: int = 4096, pad_fill: int | None = None, dist: Dist = Dist()) -> float:
    """Mean next-token loss over the scored targets, every one counted once, in fp32 accumulation.

    windows: raw windows (N, T+1) (every target scored), or ``(inputs, targets)`` of shape (N, T) with
    -100 where a target is not scored (`loader.eval_batches`, e.g. the ``<causal>`` mode tokens).
    pad_fill: pad a short last micro-batch to (micro_batch, T) with this input id and unscored targets
    (a compiled model then keeps its one evaluation graph; `pad_batch`).
    dist: data-parallel — each rank scores its contiguous share of the windows and the sums are
    all-reduced, so every rank returns the same mean over the whole set.
    """
    if isinstance(windows, torch.Tensor):
        inputs, targets = windows[:, :-1], windows[:, 1:]
    else:
        inputs, targets = windows
    if dist.enabled:
        lo, hi = rank_slice(len(inputs), dist)
        inputs, targets = inputs[lo:hi], targets[lo:hi]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(inputs), micro_batch):
        y_cpu = targets[s : s + micro_batch]
        n = int((y_cpu != -100).sum())  # counted on the CPU copy: no device sync
        if n == 0:  # nothing scored here (lm_loss would return 0 for it; skip the forward pass)
            continue
        x_cpu = inputs[s : s + micro_batch]
        if pad_fill is not None:
            x_cpu, y_cpu = pad_batch(x_cpu, y_cpu, micro_batch, inputs.shape[1], pad_fill)
        x = x_cpu.to(device, non_blocking=True)
        y = y_cpu.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = lm_loss(model(x), head.weight, head.bias, y, vocab_size=vocab_size, chunk_tokens=chunk_tokens)
        total += float(loss) * n  # lm_loss is the mean over this micro-batch's scored targets
        count += n
    model.train(was_training)
    if dist.enabled:
        total, count = dist.sum_floats(total, float(count), device=device)
    return total / max(1, count)


# ------------------------------------------------------------------------------------ workloads
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


def _pretraining(r: Pretraining, dist: Dist) -> Workload:
    """Pretraining: a seeded GPT, the token store's packed sequences (`Loader`), next-token
    cross-entropy, and the fixed validation set's loss."""
    cfg, plan = r.cfg, r.plan
    device, model_cfg = plan.device, plan.model_config
    model = GPT(model_cfg)
    model.reset_parameters(generator=torch.Generator().manual_seed(cfg.seed))
    model.to(device)
    objective = get_objective(cfg.objective, **cfg.objective_options()) if cfg.objective != "plain" else "plain"
    loader = Loader(r.train_split, cfg.seq_len, plan.micro_batch, objective=objective, seed=cfg.seed,
                    eot_id=r.store.eot_id)
    # the fixed validation set: the same N·T val tokens for every objective, presented in causal mode
    # (`<causal>` at each document start, never scored) for causal/blender models — loader.eval_batches
    val = (eval_batches(r.val_split, cfg.seq_len, cfg.val_tokens, objective=cfg.objective, eot_id=r.store.eot_id)
           if r.val_split is not None else None)
    chunk = 4096 if device.type == "cuda" else 1024  # CPU: keep one chunk's fp32 logits ≈ 200 MB
    head, vocab, fill = model.lm_head, model_cfg.vocab_size, r.store.eot_id

    def loss(run_model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        x, y = batch  # (B, T) inputs and next-token targets
        return lm_loss(run_model(x), head.weight, head.bias, y, vocab_size=vocab, chunk_tokens=chunk,
                       impl=cfg.loss_impl)

    def validate(run_model: torch.nn.Module) -> dict[str, float]:
        return {"val_loss": evaluate_loss(run_model, head, val, plan.eval_micro_batch, device, plan.autocast_dtype,
                                          vocab, chunk, pad_fill=fill if plan.compile else None, dist=dist)}

    def steps(tokens: int) -> StepPrefetcher:
        # the next steps' micro-batches are built in a background thread while this one trains (pinned on
        # CUDA); each arrives with the loader cursor a checkpoint written after it must hold
        return StepPrefetcher(loader, r.steps.plans(tokens), plan.micro_batch, pin_memory=device.type == "cuda",
                              rank=dist.rank, world_size=dist.world_size)

    return Workload(
        model=model, data=loader, steps=steps, loss=loss, validate=validate if val is not None else None,
        meta={"model": model_cfg.to_dict(), "size": plan.size, "class": plan.cls, "objective": cfg.objective,
              "objective_options": cfg.objective_options(), "parent": plan.parent.record if plan.parent else None,
              "run": plan.name, "seq_len": cfg.seq_len, "seed": cfg.seed},
        # one shape for the compiled graph: pad short micro-batches with unscored rows
        pad=(lambda b: pad_batch(*b, plan.micro_batch, cfg.seq_len, fill)) if plan.compile else None,
        idle_batch=(torch.full((1, cfg.seq_len), fill, device=device),
                    torch.full((1, cfg.seq_len), -100, device=device)),
        # how validation presented the (objective-independent) scored tokens: loader.eval_batches
        info={"val_mode": "causal" if mode_prefix(cfg.objective) else "plain"},
    )


# ------------------------------------------------------------------------------------ the loop
def train(config: TrainConfig | dict) -> RunResult:
    """Train one run to its token budget (or continue it), writing the run directory; see module doc.

    Under torchrun (WORLD_SIZE > 1) every process calls this: the process group is joined here
    (`gerbil.train.distributed`), the global batch is split across ranks, and only rank 0 locks and
    writes the run directory; every rank returns the same result.

    Process-wide state the run needs is set for its duration only and restored afterwards
    (`_process_state`): the global RNGs (seeded, and restored from a checkpoint on resume), TF32 matmuls
    on CUDA, and deterministic algorithms with `deterministic`.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dist, device = distributed.init(cfg.device)
    if dist.enabled:
        cfg = dataclasses.replace(cfg, device=device)
    try:
        # resolve validates everything and decides budget, batches, device, precision, paths
        return run_locked(RunDir(Path(cfg.runs) / run_name(cfg)), dist, lambda: resolve(cfg, dist),
                          lambda r, lock: run_workload(r.plan, _pretraining(r, dist), lock, dist))
    finally:
        if dist.enabled and owns_group:
            distributed.shutdown()


def run_locked(run: RunDir, dist: Dist, prepare: Callable[[], Planned],
               body: Callable[[Any, Lock | None], RunResult]) -> RunResult:
    """`body(prepare(), lock)` while holding `run`'s lock, inside the run's process state.

    `prepare()` decides everything about the run (a verb's resolved run; its `plan`'s seed, deterministic,
    device and run directory are read here) and `body` trains it. One process per run: a second `train` (or
    `--resume auto` while the first runs) is refused, naming the holder; a dead holder's lock is taken over.
    The lock is taken before anything is decided, so what `prepare` reads (the latest checkpoint) cannot
    change under it. In a data-parallel job rank 0 holds it for every rank (the others are not a second
    process on the run).
    """
    existed = run.path.exists()
    lock, refused = None, None
    if dist.is_main:
        try:
            lock = Lock(run.lock, f"run {run.path}").acquire()
        except OSError as e:
            refused = f"cannot write run directory {run.path}: {e.strerror or e}"
        except GerbilError as e:
            refused = str(e)
    refused = dist.broadcast_object(refused)
    if refused:
        raise GerbilError(refused)
    try:
        r = prepare()
        plan = r.plan
        if dist.is_main:
            clean_temporaries(plan.run.checkpoints)  # leftovers of killed writers (no live writer: locked)
        dist.barrier()
        with _process_state(plan.device, plan.seed, plan.deterministic):
            return body(r, lock)
    finally:
        if lock is not None:
            lock.release()
            if not existed and run.path.is_dir() and not any(run.path.iterdir()):
                run.path.rmdir()  # refused before anything was written: leave no empty run directory


@contextlib.contextmanager
def _process_state(device: torch.device, seed: int, deterministic: bool):
    """Seed the global RNGs, allow TF32 on CUDA (fp32 leftovers — optimizer, norms — on tensor cores),
    and with `deterministic` ask for deterministic algorithms (cuBLAS workspace config included: what
    bitwise-exact resume on a GPU needs); everything is put back as it was on exit."""
    rng = ckpt.rng_state()
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags[0], flags[1]
        torch.use_deterministic_algorithms(flags[2])
        if flags[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        ckpt.set_rng_state(rng)


def _restore(r: RunPlan, state: TrainState, dist: Dist) -> None:
    """Continue from the run's own latest checkpoint (resume), or start from a star continuation's parent
    (its weights, optimizer and data position)."""
    run: RunDir = r.run
    if r.resume_from is not None:  # this run's own checkpoint: continue exactly
        ckpt.load_weights(state.model, r.resume_from, device=str(r.device))
        # state on the CPU: RNG states must stay CPU tensors; the optimizer moves its state to the params
        state.load_state_dict(ckpt.load_train_state(r.resume_from, map_location="cpu"), rank=dist.rank)
        if dist.is_main:
            run.truncate_metrics(state.step)
        if not state.recent_losses:  # a 0.1.0 checkpoint: the last losses from metrics.jsonl instead
            state.recent_losses = [float(m["loss"]) for m in run.read_metrics() if m.get("loss") is not None][-10:]
        log.info("resuming %s from %s (step %d, %d tokens)", r.name, r.resume_from.name, state.step, state.tokens)
    elif r.parent is not None:  # star continuation: weights, optimizer and data position of the parent
        ckpt.load_weights(state.model, r.parent.checkpoint, device=str(r.device))
        parent_state = ckpt.load_train_state(r.parent.checkpoint, map_location="cpu")
        state.load_state_dict(parent_state, rank=dist.rank)
        state.seconds, state.recent_losses = 0.0, []  # this run's own time and losses start here
        log.info("continuing %s from %s at %d tokens", r.name, r.parent.checkpoint, state.tokens)


def _wrap(model: torch.nn.Module, r: RunPlan, dist: Dist) -> torch.nn.Module:
    """The module the steps run: DDP-wrapped when data-parallel, compiled when asked. Checkpoints still
    save `model` itself (no `module.` / `_orig_mod.` names)."""
    run_model = model
    if dist.enabled:  # gradients all-reduced in buckets during backward; no buffer broadcasts (rotary
        # tables are rebuilt on every rank), so evaluation forwards need no collective
        run_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[r.device.index] if r.device.type == "cuda" else None, broadcast_buffers=False,
            gradient_as_bucket_view=True)
    if r.compile:
        run_model = torch.compile(run_model)
    return run_model


def _improved(state: TrainState, select: tuple[str, str], metrics: dict) -> bool:
    """Record a validation in `state.best` / `state.since_best`; True when it is the best so far (a NaN
    metric never is)."""
    name, mode = select
    value = metrics.get(name)
    if value is None:
        raise GerbilError(f"validation reported no {name!r} (metrics: {', '.join(metrics)})")
    best = state.best
    better = best is None or (value > best["value"] if mode == "max" else value < best["value"])
    if better and value == value:  # NaN compares false anyway; `value == value` keeps it explicit
        state.best = {"metric": name, "value": value, "step": state.step, "tokens": state.tokens,
                      "checkpoint": checkpoint_name(state.step), "metrics": dict(metrics)}
        state.since_best = 0
        return True
    state.since_best += 1
    return False


def run_workload(r: RunPlan, work: Workload, lock: Lock | None, dist: Dist = Dist()) -> RunResult:
    """Train `work` as the run plan `r` says (`gerbil.train.runplan.RunPlan`: pretraining's or
    fine-tuning's), from scratch, from a continuation's parent or from the run's latest checkpoint;
    returns the RunResult, also written to result.json.

    When to write checkpoints and which to keep: `r.checkpoints` (a `CheckpointPolicy`: interval, newest
    kept, log-spaced, requested token counts; a fine-tuning run's keeps the newest and the best).
    """
    recorded = _recorded_result(r)
    if recorded is not None:  # a finished run resumed: nothing to train, its result kept as it is
        return recorded
    run: RunDir = r.run
    device = r.device
    main = dist.is_main
    model = work.model
    optimizer = configure_optimizer(model, r.optimizer.weight_decay, r.optimizer.betas, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type) if r.use_scaler else None
    state = TrainState(model, optimizer, scaler, work.data)
    _restore(r, state, dist)
    if main:
        record = dict(r.record, resolved=dict(r.record["resolved"], world_size=dist.world_size))
        run.write_config(record)
        run.write_env(env_info(device))
        if r.resume_from is None:
            run.start_metrics()
    loggers = []
    if main and r.log:  # optional mirrors of metrics.jsonl (tensorboard, wandb): optional extras
        from gerbil.train.loggers import make_loggers

        loggers = make_loggers(r.log, run.path, r.record)
    run_model = _wrap(model, r, dist)

    def validate() -> dict[str, float]:
        return work.validate(run_model) if work.validate is not None else {}

    policy: ckpt.CheckpointPolicy = r.checkpoints  # when to write checkpoints, which to keep

    def save(lr: float, metrics: dict | None, train_loss: float | None = None, keep: bool = False) -> Path:
        # `lr`: the last step's LR, where a continuation of this checkpoint re-warms from; `keep`: a
        # log-spaced or requested checkpoint the policy never prunes
        val_loss = metrics.get("val_loss") if metrics else None
        meta = dict(work.meta, tokens=state.tokens, budget=r.budget, val_loss=val_loss, train_loss=train_loss,
                    lr=lr, keep=keep, world_size=dist.world_size)
        if work.select:
            meta.update(val=metrics or None, best=state.best, stopped=state.stopped)
        sd = state.state_dict()
        sd["rng_ranks"] = dist.gather_objects(sd["rng"])  # every rank's RNG states, in rank order (rank 0)
        path = run.checkpoint_path(state.step)
        if main:
            path = policy.save(run.checkpoints, state.step, model, sd, meta,
                               best=state.best["checkpoint"] if state.best else None)
        dist.barrier()  # no rank runs ahead of a checkpoint that may yet fail
        return path

    if work.validate_first and r.resume_from is None and state.step == 0 and work.validate is not None:
        first = {"step": 0, "tokens": 0, **validate()}  # the untrained model's scores, for comparison
        if main:
            run.append_metrics(first)

    progress = _Progress(r.budget, state.tokens, r.progress if main else False, r.name)
    last_ckpt = r.resume_from or (r.parent.checkpoint if r.parent else None)
    clock = policy.start(state.tokens)
    next_eval = _next_multiple(state.tokens, r.eval_every)
    # tokens this run trains itself (a continuation's parent's tokens are not its own)
    run_start_tokens = r.parent.tokens if r.parent else 0
    metrics: dict = _checkpoint_validation(r.resume_from)  # the last validation's
    model.train()
    steps = work.steps(state.tokens) if not state.stopped else contextlib.nullcontext(iter(()))
    with steps as prefetch:
        t_last = time.perf_counter()
        for prepared in prefetch:
            plan = prepared.plan
            cpu_batches = prepared.micro_batches
            if work.pad is not None:  # one shape for the compiled graph
                cpu_batches = [work.pad(b) for b in cpu_batches]
            micro = [tuple(t.to(device, non_blocking=True) for t in b) for b in cpu_batches]
            lr = lr_at(state.tokens, r.schedule, plan.tokens)
            stats = train_step(run_model, optimizer, scaler, micro, lr, r.autocast_dtype, r.optimizer.grad_clip,
                               work.loss, counts=prepared.counts, dist=dist, idle_batch=work.idle_batch)
            if not math.isfinite(stats["loss"]):
                progress.close()
                where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was written"
                raise NonFiniteLoss(f"loss is {stats['loss']} at step {state.step + 1}{where}")
            state.step += 1
            state.tokens += plan.tokens
            state.loader_state = prepared.loader_state
            state.skipped_steps += int(stats["skipped"])
            state.recent_losses = (state.recent_losses + [stats["loss"]])[-10:]
            state.seconds += time.perf_counter() - t_last
            tok_s = plan.tokens / max(time.perf_counter() - t_last, 1e-9)  # this step's training only
            record = {"step": state.step, "tokens": state.tokens, "loss": round(stats["loss"], 6), "lr": lr,
                      "tok_s": round(tok_s, 1), "mfu": r.mfu(tok_s), "grad_norm": round(stats["grad_norm"], 6),
                      "batch_tokens": plan.tokens, "skipped_steps": state.skipped_steps}
            if work.step_record is not None:
                record.update(work.step_record(plan))
            done = state.tokens >= r.budget
            validated = improved = False
            if done or state.tokens >= next_eval:
                metrics = validate()
                validated = True
                record.update(metrics if metrics else {"val_loss": None})
                next_eval = _next_multiple(state.tokens, r.eval_every)
                if work.select and metrics:
                    improved = _improved(state, work.select, metrics)
                    state.stopped = bool(work.patience) and state.since_best >= work.patience and not done
            if main and (done or state.step % r.log_every == 0 or validated):
                run.append_metrics(record)
                for logger in loggers:
                    logger.log(record)
            progress.update(plan.tokens, stats["loss"], tok_s, record.get("val_loss"))
            if lock is not None:
                lock.beat()
            write, keep = clock.due(state.step, state.tokens, done=done, validated=validated, improved=improved,
                                    stopped=state.stopped)
            if write:
                last_ckpt = save(lr, metrics if validated else None, state.train_loss, keep=keep)
            if state.stopped:
                log.info("%s: stopping early at step %d: %s has not improved for %d validations (best %.4f at "
                         "step %d)", r.name, state.step, work.select[0], state.since_best, state.best["value"],
                         state.best["step"])
                break
            t_last = time.perf_counter()  # validation and checkpoint time is not training throughput
    for logger in loggers:
        logger.close()
    progress.close()
    return _finish(r, work, state, metrics, last_ckpt, run_start_tokens, dist)


def _recorded_result(r: RunPlan) -> RunResult | None:
    """The result.json of a run resumed with nothing left to train (its budget reached, or stopped early),
    its paths in the run's present folder (a moved run); None when there is training left or no readable
    result (then `_finish` writes it again, from the checkpoint's validation: never nulls)."""
    if r.resume_from is None:
        return None
    meta = read_meta(r.resume_from)
    if int(meta.get("tokens") or 0) < r.budget and not meta.get("stopped"):
        return None
    rec = r.run.read_result()
    try:
        rec = {f.name: rec[f.name] for f in dataclasses.fields(RunResult)}
        rec["checkpoint"] = r.run.checkpoint_path(Path(rec["checkpoint"]).name) if rec["checkpoint"] else None
        result = RunResult(**dict(rec, run_dir=r.run.path, name=r.name))
    except (TypeError, KeyError):
        return None
    log.info("%s is finished (%d tokens); its result is kept as recorded", r.name, int(meta["tokens"]))
    return result


def _checkpoint_validation(path: Path | None) -> dict:
    """The validation metrics a checkpoint recorded ({} for none): what a resumed run reports until it
    validates again."""
    if path is None:
        return {}
    meta = read_meta(path)
    if meta.get("val"):
        return dict(meta["val"])
    return {"val_loss": meta["val_loss"]} if meta.get("val_loss") is not None else {}


def _finish(r: RunPlan, work: Workload, state: TrainState, metrics: dict, last_ckpt: Path | None, run_start_tokens: int,
            dist: Dist) -> RunResult:
    """The RunResult (written to result.json by rank 0). A run that selects its best checkpoint reports
    that checkpoint and its validation metrics; others their last checkpoint and validation."""
    run: RunDir = r.run
    checkpoint, val_loss = last_ckpt, metrics.get("val_loss")
    info = {"size": r.size, "class": r.cls, "objective": work.meta.get("objective"), "budget": r.budget,
            "batch": r.batch_label, "device": str(r.device), "precision": r.precision,
            "micro_batch": r.micro_batch, "compile": r.compile, "parent": r.parent.record if r.parent else None,
            **work.info}
    if work.select:
        if state.best is not None:
            checkpoint = run.checkpoint_path(state.best["checkpoint"])
            val_loss = state.best["metrics"].get("val_loss")
        info.update(best=state.best, last_validation=metrics or None, stopped_early=state.stopped)
        if work.validate_first:
            info["initial_validation"] = next((m for m in run.read_metrics() if m.get("step") == 0), None)
    result = RunResult(
        run_dir=run.path, name=r.name, steps=state.step, tokens=state.tokens,
        train_loss=state.train_loss, val_loss=val_loss, checkpoint=checkpoint, seconds=state.seconds,
        tokens_per_second=(state.tokens - run_start_tokens) / max(state.seconds, 1e-9),
        skipped_steps=state.skipped_steps, n_params=r.model_config.n_params("total"), info=info,
    )
    if state.skipped_steps and dist.is_main:
        log.warning("%d fp16 steps were skipped by the loss scaler (gradient overflow)", state.skipped_steps)
    if dist.is_main:
        run.write_result(dataclasses.asdict(result))
    return result


# ------------------------------------------------------------------------------------ small helpers
def pad_batch(x: torch.Tensor, y: torch.Tensor, B: int, T: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x, y)` of shape (b ≤ B, t ≤ T) padded to (B, T): inputs with `fill`, targets with -100 (never
    scored). What a compiled model needs to keep one graph: a smaller micro-batch (the end of a step or
    of the validation set) or the shortened last sequence of an exact budget would each compile a new
    graph. The real rows are unchanged (rows are independent; padding columns come after them, and
    attention is causal), so losses and gradients are exactly those of the unpadded batch."""
    b, t = x.shape
    if (b, t) == (B, T):
        return x, y
    xp = torch.full((B, T), fill, dtype=x.dtype)
    yp = torch.full((B, T), -100, dtype=y.dtype)
    xp[:b, :t], yp[:b, :t] = x, y
    return xp, yp


def _next_multiple(tokens: int, every: int) -> int:
    return (tokens // every + 1) * every


class _Progress:
    """tqdm bar (tokens, loss, tok/s, ETA) on a terminal; otherwise a log line every ~30 s."""

    def __init__(self, total: int, initial: int, enabled: bool | None, name: str):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.done, self.name = total, initial, name
        self.t0, self.t_log, self.start = time.perf_counter(), 0.0, initial
        self.train_s = 0.0  # this session's training time: tok/s is training only, as in the summary and tok_s
        self.bar = None
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=name,
                            dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int, loss: float, tok_s: float, val_loss: float | None) -> None:
        self.done += n
        self.train_s += n / max(tok_s, 1e-9)
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:,.0f}"}
            if val_loss is not None:
                post["val"] = f"{val_loss:.4f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.t_log >= 30 or self.done >= self.total or val_loss is not None:
            self.t_log = now
            rate = (self.done - self.start) / max(self.train_s, 1e-9)
            wall = (self.done - self.start) / max(now - self.t0, 1e-9)  # the ETA counts validations too
            eta = (self.total - self.done) / max(wall, 1e-9)
            log.info("%s: %d/%d tokens (%.1f%%), loss %.4f%s, %.0f tok/s, ETA %s", self.name, self.done,
                     self.total, 100 * self.done / self.total, loss,
                     f", val {val_loss:.4f}" if val_loss is not None else "", rate, _hms(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
