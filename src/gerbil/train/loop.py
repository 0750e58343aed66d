"""The training loop: one `train(config) -> RunResult`; `run_workload` trains any `Workload`.

    config ─► run.resolve (size, class → token budget; batch schedule; micro-batch; precision; the loss
              implementation and attention kernel, timed on CUDA: train/autotune.py)
           ─► run dir (config.yaml, env.json) ─► model + AdamW + loader (+ resume / --from parent)
           ─► loop: train_step (accumulate micro-batches, clip, step) · log · validate · checkpoint
           ─► final validation + checkpoint ─► RunResult

Everything is counted in tokens: the budget (ratio × total parameters, docs/reference.md §3), the batch
(micro_batch × seq_len × accumulation), the LR schedule position, eval and checkpoint intervals. The run
stops at exactly the budget: the last step takes only the tokens that remain (down to a shortened final
sequence), so a Gerbil-A-6.7m run sees 20 × 6,682,584 = 133,651,680 tokens
(1,019 full 131k batches + a last step of 43 sequences and 1,248 tokens), not a multiple of the batch.

No host syncs per step: `train_step` (train/step.py) returns its numbers as a device tensor and the loop
reads them one step late (train/stepstats.py), after the next step is queued — at once only before a
validation or a checkpoint, where a non-finite step stops the run before anything of it is kept.

Exact resume: a checkpoint holds the weights, the optimizer and GradScaler state, step, tokens, the
skipped-step count, every RNG state and the loader cursor; the LR is a pure function of tokens. On CPU a
resumed run is bitwise identical to an uninterrupted one (tests/test_train.py kills a run with SIGKILL).

One loop, several workloads (train/state.py `Workload`): pretraining's (train/pretraining.py) and
fine-tuning's (`gerbil.finetune.workloads`) run through the same `run_workload` — precision, compile
(with an eager fallback when compiling fails), checkpoints, exact resume, metrics, progress and the run
lock are this module's, for all of them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gerbil.errors import GerbilError
from gerbil.lock import Lock
from gerbil.runs.env import env_info
from gerbil.runs.rundir import RunDir, checkpoint_name, clean_temporaries, read_meta
from gerbil.schedules import lr_at
from gerbil.train import checkpoint as ckpt
from gerbil.train import distributed, sdpa
from gerbil.train.config import TrainConfig
from gerbil.train.distributed import Dist
from gerbil.train.loggers import close_all, make_loggers
from gerbil.train.pretraining import pretraining_workload
from gerbil.train.progress import Progress
from gerbil.train.resolve import resolve, run_name
from gerbil.train.runplan import Planned, RunPlan
from gerbil.train.state import NonFiniteLoss, RunResult, TrainState, Workload
from gerbil.train.device import is_compile_failure
from gerbil.train.step import configure_optimizer, one_line, train_step, wrap_model
from gerbil.train.stepstats import PendingStep, StatsReader, check_finite

log = logging.getLogger(__name__)

__all__ = ["train", "run_workload", "run_locked", "train_step", "RunResult", "TrainState", "NonFiniteLoss",
           "Workload", "TrainConfig"]


# ------------------------------------------------------------------------------------ the loop
def train(config: TrainConfig | dict) -> RunResult:
    """Train one run to its token budget (or continue it), writing the run directory; see module doc.

    Under torchrun (WORLD_SIZE > 1) every process calls this: the process group is joined here
    (`gerbil.train.distributed`), the global batch is split across ranks, and only rank 0 locks and
    writes the run directory; every rank returns the same result.

    Process-wide state the run needs is set for its duration only and restored afterwards
    (`_process_state`): the global RNGs (seeded, and restored from a checkpoint on resume), TF32 matmuls
    on CUDA, deterministic algorithms with `deterministic`, and the pinned attention backend.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dist, device = distributed.init(cfg.device)
    if dist.enabled:
        cfg = dataclasses.replace(cfg, device=device)
    try:
        # resolve validates everything and decides budget, batches, device, precision, paths
        return run_locked(RunDir(Path(cfg.runs) / run_name(cfg)), dist, lambda: resolve(cfg, dist),
                          lambda r, lock: run_workload(r.plan, pretraining_workload(r, dist), lock, dist))
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
        with _process_state(plan.device, plan.seed, plan.deterministic), sdpa.pinned(plan.sdpa_backend):
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
    optimizer = configure_optimizer(work.model, r.optimizer.weight_decay, r.optimizer.betas,
                                    fused=r.device.type == "cuda")
    scaler = torch.amp.GradScaler(r.device.type) if r.use_scaler else None
    state = TrainState(work.model, optimizer, scaler, work.data)
    _restore(r, state, dist)
    if dist.is_main:
        record = dict(r.record, resolved=dict(r.record["resolved"], world_size=dist.world_size))
        r.run.write_config(record)
        r.run.write_env({**env_info(r.device), **r.tuning})
        if r.resume_from is None:
            r.run.start_metrics()
    session = _Session(r, work, state, lock, dist)
    try:
        session.run()
    finally:
        session.close()
    return _finish(r, work, state, session.metrics, session.last_ckpt, dist,
                   {"compile_fallback": session.compile_fallback})


class _Session:
    """One session of training a run: the steps from where the run stands to its budget (or an early
    stop), with their records, validations and checkpoints. Each step is queued first and its numbers
    read one step later (`StatsReader`); `pending` is the step queued but not yet read."""

    def __init__(self, r: RunPlan, work: Workload, state: TrainState, lock: Lock | None, dist: Dist):
        self.r, self.work, self.state, self.lock, self.dist = r, work, state, lock, dist
        self.main = dist.is_main
        self.loggers: list = []
        if self.main and r.log:  # optional mirrors of metrics.jsonl (tensorboard, wandb): optional extras
            self.loggers = make_loggers(r.log, r.run.path, r.record)
        self.compiled = r.compile
        self.compile_fallback: str | None = None  # why compiling fell back to eager (None: it did not)
        self.run_model = wrap_model(work.model, r.device, dist, r.compile)
        self.progress = Progress(r.budget, state.tokens, r.progress if self.main else False, r.name)
        self.last_ckpt = r.resume_from or (r.parent.checkpoint if r.parent else None)
        self.clock = r.checkpoints.start(state.tokens)
        self.next_eval = _next_multiple(state.tokens, r.eval_every)
        self.metrics: dict = _checkpoint_validation(r.resume_from)  # the last validation's
        self.reader = StatsReader(r.device)
        self.pending: PendingStep | None = None
        self.t_mark = time.perf_counter()  # end of the last step read (or of the last pause)
        self.improved = False

    def close(self) -> None:
        close_all(self.loggers)  # a logger failing to close is logged, never raised: the run is recorded
        self.progress.close()

    def run(self) -> None:
        state, work = self.state, self.work
        if work.validate_first and self.r.resume_from is None and state.step == 0 and work.validate is not None:
            first = {"step": 0, "tokens": 0, **self._validate()}  # the untrained model's scores, for comparison
            if self.main:
                self.r.run.append_metrics(first)
        work.model.train()
        steps = work.steps(state.tokens) if not state.stopped else contextlib.nullcontext(iter(()))
        with steps as prefetch:
            self.t_mark = time.perf_counter()
            for prepared in prefetch:
                if self._step(prepared):
                    break
        if self.pending is not None:  # (the last step is read at once: it validates and checkpoints)
            self._book(self.pending)

    def _step(self, prepared) -> bool:
        """Queue one step, read the previous one, validate and checkpoint when due; True: stop early."""
        r, state, work = self.r, self.state, self.work
        plan, cpu_batches = prepared.plan, prepared.micro_batches
        if work.pad is not None:  # one shape for the compiled graph
            cpu_batches = [work.pad(b) for b in cpu_batches]
        micro = [tuple(t.to(r.device, non_blocking=True) for t in b) for b in cpu_batches]
        lr = lr_at(state.tokens, r.schedule, plan.tokens)
        stats = self._train(micro, lr, prepared.counts)
        state.step += 1
        state.tokens += plan.tokens
        state.loader_state = prepared.loader_state
        queued = self.reader.push(stats, state.step, state.tokens, lr, plan)
        if self.pending is not None:
            self._book(self.pending)  # the previous step, read while this one runs
        self.pending = queued
        done = state.tokens >= r.budget
        validated = done or state.tokens >= self.next_eval
        self.improved = False
        if validated:
            self._book(queued, validate=True, done=done)
        write, keep = self.clock.due(state.step, state.tokens, done=done, validated=validated,
                                     improved=self.improved, stopped=state.stopped)
        if write:
            if self.pending is not None:
                self._book(self.pending)
            self.last_ckpt = self._save(lr, self.metrics if validated else None, state.train_loss, keep=keep)
        if self.lock is not None:
            self.lock.beat()
        if state.stopped:
            log.info("%s: stopping early at step %d: %s has not improved for %d validations (best %.4f at "
                     "step %d)", r.name, state.step, work.select[0], state.since_best, state.best["value"],
                     state.best["step"])
            return True
        if validated or write:
            self.t_mark = time.perf_counter()  # validation and checkpoint time is not training throughput
        return False

    def _book(self, p: PendingStep, validate: bool = False, done: bool = False) -> None:
        """Read step `p`'s numbers (stopping the run if they are not finite), account for it, validate
        after it when asked, and write its record."""
        r, state, work = self.r, self.state, self.work
        n = self.reader.read(p)
        self.pending = None if p is self.pending else self.pending
        check_finite(n, p.step, r.use_scaler, self.last_ckpt)
        seconds = max(n.ready_at - self.t_mark, 1e-9)  # this step's training only
        self.t_mark = n.ready_at
        state.skipped_steps += int(n.skipped)
        state.recent_losses = (state.recent_losses + [n.loss])[-10:]
        state.seconds += seconds
        tok_s = p.plan.tokens / seconds
        record = {"step": p.step, "tokens": p.tokens, "loss": round(n.loss, 6), "lr": p.lr,
                  "tok_s": round(tok_s, 1), "mfu": r.mfu(tok_s), "grad_norm": round(n.grad_norm, 6),
                  "batch_tokens": p.plan.tokens, "skipped_steps": state.skipped_steps}
        if work.step_record is not None:
            record.update(work.step_record(p.plan))
        if validate:
            self.metrics = self._validate()
            record.update(self.metrics if self.metrics else {"val_loss": None})
            self.next_eval = _next_multiple(state.tokens, r.eval_every)
            if work.select and self.metrics:
                self.improved = _improved(state, work.select, self.metrics)
                state.stopped = bool(work.patience) and state.since_best >= work.patience and not done
        if self.main and (done or p.step % r.log_every == 0 or validate):
            r.run.append_metrics(record)
            for logger in self.loggers:
                logger.log(record)
        self.progress.update(p.plan.tokens, n.loss, tok_s, record.get("val_loss"))

    # ---------------------------------------------------------------- the model calls (compile fallback)
    def _train(self, micro: list, lr: float, counts: list) -> torch.Tensor:
        r = self.r
        args = (self.state.optimizer, self.state.scaler, micro, lr, r.autocast_dtype, r.optimizer.grad_clip,
                self.work.loss)
        try:
            return train_step(self.run_model, *args, counts=counts, dist=self.dist, idle_batch=self.work.idle_batch)
        except Exception as e:
            if not self._fall_back(e):
                raise
        return train_step(self.run_model, *args, counts=counts, dist=self.dist, idle_batch=self.work.idle_batch)

    def _validate(self) -> dict[str, float]:
        if self.work.validate is None:
            return {}
        try:
            return self.work.validate(self.run_model)
        except Exception as e:
            if not self._fall_back(e):
                raise
        return self.work.validate(self.run_model)

    def _fall_back(self, e: BaseException) -> bool:
        """After torch.compile failed: the eager model from now on (one warning; result.json's
        `compile_fallback` says why). False for any other error (it propagates)."""
        if not (self.compiled and is_compile_failure(e)):
            return False
        self.compile_fallback = one_line(e)
        log.warning("%s: torch.compile failed (%s); training continues with the eager model", self.r.name,
                    self.compile_fallback)
        self.compiled = False
        self.state.optimizer.zero_grad(set_to_none=True)  # a half-done backward's gradients
        self.work.model.train()  # a half-done validation's eval mode
        self.run_model = wrap_model(self.work.model, self.r.device, self.dist, compile=False)
        return True

    def _save(self, lr: float, metrics: dict | None, train_loss: float | None = None, keep: bool = False) -> Path:
        """A checkpoint after the current step. `lr`: the last step's LR, where a continuation of this
        checkpoint re-warms from; `keep`: a log-spaced or requested checkpoint the policy never prunes."""
        r, state, work, dist = self.r, self.state, self.work, self.dist
        val_loss = metrics.get("val_loss") if metrics else None
        meta = dict(work.meta, tokens=state.tokens, budget=r.budget, val_loss=val_loss, train_loss=train_loss,
                    lr=lr, keep=keep, world_size=dist.world_size)
        if work.select:
            meta.update(val=metrics or None, best=state.best, stopped=state.stopped)
        sd = state.state_dict()
        sd["rng_ranks"] = dist.gather_objects(sd["rng"])  # every rank's RNG states, in rank order (rank 0)
        path = r.run.checkpoint_path(state.step)
        if self.main:
            path = r.checkpoints.save(r.run.checkpoints, state.step, work.model, sd, meta,
                                      best=state.best["checkpoint"] if state.best else None)
        dist.barrier()  # no rank runs ahead of a checkpoint that may yet fail
        return path


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


def _finish(r: RunPlan, work: Workload, state: TrainState, metrics: dict, last_ckpt: Path | None, dist: Dist,
            session_info: dict) -> RunResult:
    """The RunResult (written to result.json by rank 0). A run that selects its best checkpoint reports
    that checkpoint and its validation metrics; others their last checkpoint and validation. `info` also
    holds how the run executed: `r.tuning` (loss_impl, sdpa_backend and their timings) and the
    session's `session_info` (compile_fallback)."""
    run: RunDir = r.run
    run_start_tokens = r.parent.tokens if r.parent else 0  # a continuation's parent's tokens are not its own
    checkpoint, val_loss = last_ckpt, metrics.get("val_loss")
    info = {"size": r.size, "class": r.cls, "objective": work.meta.get("objective"), "budget": r.budget,
            "batch": r.batch_label, "device": str(r.device), "precision": r.precision,
            "micro_batch": r.micro_batch, "compile": r.compile, "parent": r.parent.record if r.parent else None,
            **r.tuning, **session_info, **work.info}
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


def _next_multiple(tokens: int, every: int) -> int:
    return (tokens // every + 1) * every
