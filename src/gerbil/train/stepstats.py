"""A step's numbers (loss, gradient norm, skipped) on their way to the host without stopping the GPU.

Reading a CUDA tensor's value (`float(t)`, `.item()`) waits until everything queued before it has run, so
a loop that reads each step's loss as it ends leaves the GPU idle while the host prepares the next step.
`StatsReader.push` instead starts a copy of the step's (3,) stats tensor into pinned host memory and
records a CUDA event after it; `read` waits for that event only — by then the loop has queued the next
step, so the GPU stays busy. The loop reads each step's numbers one step late, and at once where it must
know them: before a validation and before a checkpoint (a non-finite step is never validated or saved).

On a CPU every operation has finished when it returns: `push` keeps the tensor, `read` converts it. The
values are the same fp32 numbers either way (metrics.jsonl is unchanged by reading late).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from gerbil.train.state import NonFiniteLoss
from gerbil.train.step import STEP_STATS


@dataclass
class PendingStep:
    """A trained step whose numbers may still be on the device, with what its record needs."""

    step: int
    tokens: int  # tokens after it
    lr: float
    plan: Any  # its StepPlan (tokens trained; the workload's step_record reads it)
    host: torch.Tensor  # (3,) STEP_STATS: pinned host copy (CUDA, being filled) or the tensor itself
    event: Any = None  # torch.cuda.Event after the copy (CUDA)
    ready_at: float | None = None  # perf_counter when its numbers were known to be final


@dataclass(frozen=True)
class StepNumbers:
    loss: float
    grad_norm: float
    skipped: bool
    ready_at: float  # perf_counter: when the step had finished, as far as the host can tell


class StatsReader:
    """`push` a step's stats tensor right after queueing it; `read` its numbers later (module docstring).
    Pinned buffers are reused: the loop has at most two steps in flight."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._free: list[torch.Tensor] = []

    def push(self, stats: torch.Tensor, step: int, tokens: int, lr: float, plan: Any) -> PendingStep:
        if not self.cuda:  # already computed: nothing to wait for
            return PendingStep(step, tokens, lr, plan, stats, ready_at=time.perf_counter())
        host = self._free.pop() if self._free else torch.empty(len(STEP_STATS), dtype=torch.float32, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return PendingStep(step, tokens, lr, plan, host, event)

    def read(self, p: PendingStep) -> StepNumbers:
        """The step's numbers; waits for that step alone (on CUDA: its copy's event)."""
        if p.event is not None:
            p.event.synchronize()
            p.ready_at = time.perf_counter()
        loss, grad_norm, skipped = p.host.tolist()
        if p.event is not None:
            self._free.append(p.host)
            p.event = None
        return StepNumbers(loss, grad_norm, bool(skipped), float(p.ready_at))


def check_finite(n: StepNumbers, step: int, scaled: bool, last_checkpoint: Any) -> None:
    """Stop the run at a non-finite loss — or, without a GradScaler (which skips such steps itself), a
    non-finite gradient norm, whose update has made the weights non-finite — naming the step and the
    last good checkpoint."""
    what = None
    if not math.isfinite(n.loss):
        what = f"loss is {n.loss}"
    elif not scaled and not math.isfinite(n.grad_norm):
        what = f"gradient norm is {n.grad_norm} (loss {n.loss:.4f})"
    if what is not None:
        where = f"; last good checkpoint: {last_checkpoint}" if last_checkpoint else "; no checkpoint was written"
        raise NonFiniteLoss(f"{what} at step {step}{where}")
