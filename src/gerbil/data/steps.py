"""Steps for the training loop: one step's sequences split into micro-batches (and across data-parallel
ranks), built ahead in a background thread.

Off the critical path. `StepPrefetcher` builds the next steps' micro-batches (`step_micro_batches`: the
rule that splits a step into micro-batches, and a step across data-parallel ranks) in a background
thread while the current step trains, and hands each step over with the cursor a checkpoint written
after it must save.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from gerbil.data.loader import Loader
from gerbil.data.tokenizer import IGNORE_INDEX

log = logging.getLogger(__name__)


class StepPlanLike(Protocol):
    """One optimizer step (`gerbil.train.resolve.StepPlan`): `full_sequences` of seq_len tokens plus, on
    the final step only, one shortened sequence of `last_len` tokens (0: none); `tokens` in all."""

    full_sequences: int
    last_len: int
    tokens: int


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")


def step_micro_batches(loader: Loader, plan: StepPlanLike, micro_batch: int, rank: int = 0,
                       world_size: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One step's sequences for one rank, as micro-batches of at most `micro_batch` sequences.

    Every rank draws the whole step — the `plan.full_sequences` full sequences, then the shortened one
    (the first `plan.last_len` positions of the next sequence) if any — so the cursor is global and the
    same on every rank. Of the n full sequences rank r keeps [r·n//W, (r+1)·n//W), in order, cut into
    micro-batches of `micro_batch`; the shortened sequence goes to the last rank, alone in its own final
    micro-batch. A rank may get no micro-batch (n < W). With one rank this is the rule of
    `_micro_batches` in train/loop.py (the same tensors; the cursor counts sequences, not calls).
    """
    _check_rank(rank, world_size)
    if micro_batch <= 0:
        raise ValueError(f"micro_batch must be positive, got {micro_batch}")
    n, out = int(plan.full_sequences), []
    if n > 0:
        batch = loader.next_sequences(n)  # (n, T) inputs and targets (an encoder-decoder's: its rows) for all ranks
        lo, hi = rank * n // world_size, (rank + 1) * n // world_size
        out = [tuple(t[a: min(a + micro_batch, hi)] for t in batch) for a in range(lo, hi, micro_batch)]
    if plan.last_len:  # exact budget: a last sequence of fewer than seq_len tokens
        batch = loader.next_sequences(1)
        if rank == world_size - 1:
            shorten = getattr(loader, "shorten", None)  # an encoder-decoder row: EncDecLoader.shorten
            out.append(shorten(batch, plan.last_len) if shorten else tuple(t[:, : plan.last_len] for t in batch))
    return out


@dataclass
class PreparedStep:
    """One step ready to train on this rank."""

    plan: Any  # the StepPlanLike it was built for
    micro_batches: list[tuple[torch.Tensor, ...]]  # (inputs, targets, ...) CPU int64, pinned if asked
    counts: list[int]  # scored targets (≠ -100) per micro-batch, counted on the CPU
    loader_state: dict = field(repr=False)  # the loader's state_dict() after this step's sequences


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class StepPrefetcher:
    """Builds the next steps' micro-batches in a background thread (pinned memory on CUDA).

    ``for step in prefetcher`` (or ``next(prefetcher)``) yields a `PreparedStep` per plan, in order,
    built with `step_micro_batches(loader, plan, micro_batch, rank, world_size)` — the same tensors as
    the synchronous path — while the consumer trains on the previous ones; at most `depth` finished
    steps wait. ``step.loader_state`` is what a checkpoint written after training that step must save:
    the cursor right after *its* sequences, not the loader's live position, which the producer has
    already moved on. The loader belongs to the producer thread until `close()`; after it, the loader's
    position is wherever the producer stopped (load a `loader_state` to continue from a step).

    `plans` is the trainer's finite, deterministic step schedule. An exception in the producer is
    raised again by the `__next__` that reaches it (after the steps built before it). `close()` (also
    on leaving a ``with`` block, exception or not) stops the producer within one step's build time.
    ``pin_memory=True`` pins the batches (needs CUDA: used when training on a GPU, never on the CPU),
    so ``.to(device, non_blocking=True)`` copies asynchronously.

    Pacing. The producer shares the GIL with the training loop: numpy releases it in the bulk work, but
    a step's build still holds it for a millisecond or two of Python (the per-chunk draws, numpy call
    overhead). Built right when a step is taken, that lands on the loop's kernel launches, the moment
    the GPU waits for them (measured on the 2-core dev box with a 60 ms step holding the GIL for 10 ms:
    next() itself then took up to 12-17 ms at p95, `benchmarks/loader_throughput.py`). So while at least
    one step is ready, the producer starts the next build half a consumer step after the last
    ``next()`` — typically while the loop waits on the GPU with the GIL released; with none ready it
    builds at once. The steps and their order do not depend on the timing.
    """

    #: Where in the consumer's step (a fraction of the time between two next() calls) builds start
    #: while a step is ready.
    PACE = 0.5

    def __init__(self, loader: Loader, plans: Iterable[StepPlanLike], micro_batch: int,
                 pin_memory: bool = False, depth: int = 2, rank: int = 0, world_size: int = 1):
        _check_rank(rank, world_size)
        if depth < 1 or micro_batch < 1:
            raise ValueError(f"depth and micro_batch must be positive, got {depth}, {micro_batch}")
        self.loader, self.micro_batch, self.pin_memory = loader, int(micro_batch), bool(pin_memory)
        self.rank, self.world_size, self.depth = int(rank), int(world_size), int(depth)
        self._ready: deque[Any] = deque()  # PreparedStep, then _END or a _Failed
        self._cv = threading.Condition()
        self._stop = False
        self._finished = False
        self._last_get: float | None = None  # perf_counter of the last next()
        self._period: float | None = None  # the consumer's step time (moving average)
        self._thread = threading.Thread(target=self._produce, args=(iter(plans),), name="gerbil-step-prefetch",
                                        daemon=True)
        self._thread.start()

    def _prepare(self, plan: StepPlanLike) -> PreparedStep:
        batches = step_micro_batches(self.loader, plan, self.micro_batch, self.rank, self.world_size)
        counts = [int(np.count_nonzero(b[1].numpy() != IGNORE_INDEX)) for b in batches]
        if self.pin_memory:
            batches = [tuple(t.pin_memory() for t in b) for b in batches]
        return PreparedStep(plan, batches, counts, self.loader.state_dict())

    def _wait_turn(self) -> bool:
        """Wait (under the lock) for room and, while a step is ready, for the paced start; False: stop."""
        while not self._stop:
            if len(self._ready) >= self.depth:
                self._cv.wait(0.5)
                continue
            if self._ready and self._last_get is not None and self._period is not None:
                delay = self._last_get + self.PACE * self._period - time.perf_counter()
                if delay > 0:
                    self._cv.wait(min(delay, 0.5))  # woken early by next() or close()
                    continue
            return True
        return False

    def _produce(self, plans: Iterator[StepPlanLike]) -> None:
        try:
            for plan in plans:
                with self._cv:
                    if not self._wait_turn():
                        return
                step = self._prepare(plan)
                with self._cv:
                    self._ready.append(step)
                    self._cv.notify_all()
            item: Any = _END
        except BaseException as e:  # noqa: BLE001 — handed to the consumer, raised there
            item = _Failed(e)
        with self._cv:
            self._ready.append(item)
            self._cv.notify_all()

    def __iter__(self) -> StepPrefetcher:
        return self

    def __next__(self) -> PreparedStep:
        with self._cv:
            while not self._finished and not self._ready:
                if not self._thread.is_alive():  # stopped by close()
                    self._finished = True
                    break
                self._cv.wait(0.5)  # returns as soon as a step is ready
            if self._finished:
                raise StopIteration
            item = self._ready.popleft()
            now = time.perf_counter()
            if self._last_get is not None:
                gap = now - self._last_get
                # a moving average that a long step (validation, a checkpoint) does not raise: pacing
                # errs towards building early
                self._period = gap if self._period is None else min(gap, 0.8 * self._period + 0.2 * gap)
            self._last_get = now
            self._cv.notify_all()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failed):
            self.close()
            raise item.error
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Stop the producer and wait for it (at most `timeout` s); idempotent."""
        with self._cv:
            self._stop = self._finished = True
            self._ready.clear()  # drop prepared steps (pinned memory) now
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("step prefetcher thread still running %.0f s after close()", timeout)

    def __enter__(self) -> StepPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["PreparedStep", "StepPlanLike", "StepPrefetcher", "step_micro_batches"]
