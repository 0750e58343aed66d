"""Data-parallel training on the standard engine: torchrun + DistributedDataParallel (NCCL on GPUs, gloo
on CPUs). One process per device; `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR, and
every process runs the same `gerbil train` (docs/distributed.md).

What gerbil distributes, and how (train/loop.py):
- a step's global batch stays the class's batch in tokens: every rank draws the same global sequences
  (the loader's cursor is global, identical on every rank) and trains a disjoint contiguous slice;
- the loss is weighted exactly over the global step: the scored-target counts are all-reduced, and each
  micro-batch's mean loss is scaled by its share of the global count (× world size, since DDP averages);
- gradients are all-reduced by DDP's buckets, overlapped with backward, and not at all on the
  accumulation micro-batches before the last (`no_sync`);
- validation is sharded by window and all-reduced; only rank 0 writes (metrics, checkpoints, the lock).

`Dist` describes this process's place in the job; the helpers are no-ops in a single process, so the
loop has one code path.
"""
from __future__ import annotations

import codecs
import datetime
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch

from gerbil.errors import GerbilError

#: A collective that waits longer than this (a rank died or hangs) raises instead of hanging forever.
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------ collectives
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of `t` over ranks, in place (a no-op in one process)."""
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def sum_floats(self, *values: float, device: torch.device | str = "cpu") -> list[float]:
        """Sums over ranks of a few Python floats, in float64 (one collective)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        return self.all_reduce_sum(t).tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def from_env() -> Dist:
    """This process's place, from torchrun's environment (one process when WORLD_SIZE is unset or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Dist, str]:
    """Join the job torchrun started (if any): the process group (NCCL for CUDA, gloo otherwise, with a
    timeout so a dead or hung rank ends the job with an error instead of a hang) and this rank's device
    (cuda:LOCAL_RANK). Returns (Dist, device string)."""
    d = from_env()
    if not d.enabled:
        return d, device
    cuda = device in ("auto", "cuda") and torch.cuda.is_available() or str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(d.local_rank)
        device = f"cuda:{d.local_rank}"
    elif device == "auto":
        device = "cpu"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                             timeout=datetime.timedelta(seconds=timeout_s))
    return d, device


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank_slice(n: int, d: Dist) -> tuple[int, int]:
    """[start, stop) of rank d.rank's contiguous share of n items (the first ranks get one more when n
    does not divide)."""
    base, extra = divmod(n, d.world_size)
    start = d.rank * base + min(d.rank, extra)
    return start, start + base + (1 if d.rank < extra else 0)


def launch(nproc: int, argv: list[str], target: list[str] | None = None) -> int:
    """`gerbil train|eval --nproc N ...`: run the same command (`argv`, without --nproc) under torchrun on
    this machine (one node); `target` is what torchrun starts (default ``-m gerbil``). torchrun's output
    passes through as it comes; when the job fails, a one-line GerbilError follows its tracebacks: which
    rank failed and how, and the command that continues (`failure_summary`)."""
    if nproc < 1:
        raise GerbilError(f"--nproc must be at least 1, got {nproc}")
    if shutil.which("torchrun") is None and not _has_module("torch.distributed.run"):
        raise GerbilError("torchrun is not available (it comes with PyTorch)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           *(target or ["-m", "gerbil"]), *argv]
    rc, tail = _run_passing_stderr(cmd)
    if rc != 0:
        raise GerbilError(failure_summary(tail, nproc, argv, rc))
    return 0


def _run_passing_stderr(cmd: list[str], keep: int = 1 << 16) -> tuple[int, str]:
    """Run `cmd`, copying its stderr to ours as it comes (progress bars included); returns its exit
    status and the last `keep` bytes of its stderr."""
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    try:
        while chunk := p.stderr.read1(1 << 14):
            text = decode.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            tail = (tail + text)[-keep:]
    except KeyboardInterrupt:  # Ctrl-C reached torchrun too: let it stop its ranks
        p.wait()
        raise
    return p.wait(), tail


def failure_summary(stderr: str, nproc: int, argv: list[str], rc: int) -> str:
    """One line after torchrun's report of a failed job: the rank that failed first (its "Root Cause"
    block), how, and the command that continues — ``gerbil train --nproc N ... --resume auto`` (the run
    continues from its latest checkpoint), the same command for another verb."""
    block = stderr[stderr.rfind("Root Cause"):] if "Root Cause" in stderr else ""
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    code = re.search(r"exitcode\s*:\s*(-?\d+)\s*(?:\(pid:\s*(\d+)\))?", block)
    who = f"rank {rank.group(1)} of {nproc}" if rank else f"one of the {nproc} processes"
    if code and int(code.group(1)) < 0:
        num = -int(code.group(1))
        try:
            what = f"{who} was killed by signal {num} ({signal.Signals(num).name})"
        except ValueError:
            what = f"{who} was killed by signal {num}"
    elif code:
        what = f"{who} exited with status {code.group(1)} (its error is above)"
    else:
        what = f"torchrun exited with status {rc}"
    if code and code.group(2):
        what += f" (pid {code.group(2)})"
    verb, rest = (argv[0], argv[1:]) if argv else ("train", [])
    again = ["gerbil", verb, "--nproc", str(nproc), *rest]
    if verb == "train":
        if "--resume" not in rest and not any(a.startswith("--resume=") for a in rest):
            again += ["--resume", "auto"]
        return (f"{what}, and torchrun stopped the job; the run keeps its latest checkpoint — continue it "
                f"with: {shlex.join(again)}")
    return f"{what}, and torchrun stopped the job; run it again with: {shlex.join(again)}"


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
