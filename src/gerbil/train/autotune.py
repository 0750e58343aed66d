"""`loss_impl: auto` and `sdpa_backend: auto`: at the start of a run on CUDA, time the implementations that
exist on the run's real shapes, check that they agree, and keep the fastest.

Why time instead of deciding from a table: which head + cross-entropy wins depends on the width, the
micro-batch, the GPU and the software (docs/performance.md: the fused Triton loss is expected to win at
d ≤ 128 and to lose from d 256 on, the compiled chunks the other way round — an estimate, not a
measurement), and the same holds for the attention kernels at head_dim 16–64. The estimate only orders
the candidates (the expected winner is timed first and wins a tie); the clock decides.

What is timed (a few iterations each after a warm-up that compiles, median):
- the loss: `lm_loss` forward + backward on the run's micro-batch (micro_batch × seq_len rows of the
  model's width, its vocabulary, its autocast dtype and chunk size) for triton, compiled, eager and
  full (full only when its logits fit in half the free memory); each candidate's loss and three
  gradients must agree with the eager loss's (bf16/fp16: 2% relative norm, fp32: 1e-4);
- attention: causal SDPA forward + backward at (micro_batch, heads, seq_len, head_dim) with each backend
  pinned (flash, cudnn, efficient; math is never faster on a GPU and needs T² memory: pin it by name),
  each agreeing with PyTorch's default dispatch.
A candidate that fails (no triton, a width it does not support, no kernel, out of memory, a failed
compile) or disagrees is left out, with its reason in the timings.

Off CUDA nothing is timed: the loss is eager and attention PyTorch's default (the CPU's bits stay those
of every earlier release). The test hook `GERBIL_AUTOTUNE_ON_CPU=1` times on a CPU too, and
`GERBIL_AUTOTUNE_ONLY=eager,full,math,...` limits the candidates (both read at the call).

Data-parallel: rank 0 times and broadcasts its choice. A resumed run reuses the choice recorded in its
config.yaml (`resolved.loss_impl` / `resolved.sdpa_backend`) when it resumes on the same device type, so
its bits do not depend on timing noise; on another device type it chooses again.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gerbil.model.config import ModelConfig
from gerbil.train import sdpa
from gerbil.train.distributed import Dist
from gerbil.train.step import one_line

log = logging.getLogger(__name__)

LOSS_CANDIDATES = ("triton", "compiled", "eager", "full")
SDPA_CANDIDATES = ("flash", "cudnn", "efficient", "math")  # math only when asked by GERBIL_AUTOTUNE_ONLY on CUDA
WARMUP, ITERS = 2, 5
FULL_LOGIT_BYTES = 16  # full: bf16 logits, their fp32 copy, log-softmax and its gradient per logit


@dataclass(frozen=True)
class Choice:
    """What runs, and how it was chosen: `how` is timed | recorded (a resume) | given | default; `timings`
    maps each candidate to its median milliseconds, or to why it was left out (empty when not timed);
    `agreement` each timed candidate's largest relative error against the reference's outputs."""

    name: str
    how: str
    timings: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)


def _time_here(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("GERBIL_AUTOTUNE_ON_CPU", "") not in ("", "0")


def _allowed(names: tuple[str, ...]) -> list[str]:
    only = [x.strip() for x in os.environ.get("GERBIL_AUTOTUNE_ONLY", "").split(",") if x.strip()]
    return [n for n in names if not only or n in only]


def _recorded(recorded: dict, key: str, device: torch.device) -> str | None:
    """The choice a resumed run recorded, when it resumes on the device type it was made on."""
    value = recorded.get(key)
    if value and torch.device(recorded.get("device") or "cpu").type == device.type:
        return str(value)
    return None


def _on_rank0(dist: Dist | None, choose: Callable[[], Choice]) -> Choice:
    """`choose()` on rank 0 only, its result broadcast to every rank (as the micro-batch probe does)."""
    if dist is None or not dist.enabled:
        return choose()
    return dist.broadcast_object(choose() if dist.is_main else None)


# ------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def time_candidates(candidates: dict[str, Callable[[], list[torch.Tensor]]], device: torch.device,
                    reference: str | None, tol: float) -> tuple[str | None, dict, dict]:
    """(fastest candidate that runs and agrees, timings, agreement). Each candidate is a callable doing one
    timed unit of work and returning its outputs; `reference`'s outputs (or, without it, the first
    candidate's that runs) are what the others must agree with, within relative norm `tol` for every
    output; `agreement` holds each one's largest relative error."""
    timings: dict = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    for name, fn in candidates.items():
        try:
            for _ in range(WARMUP):  # the first call compiles (inductor, Triton) when it has to
                out = fn()
            _sync(device)
            times = []
            for _ in range(ITERS):
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 — any failure leaves the candidate out, with its reason
            timings[name] = f"failed: {one_line(e)}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        outputs[name] = [t.detach().clone() if t is not None else None for t in out]
        timings[name] = round(statistics.median(times) * 1e3, 3)
    ref_name = reference if reference in outputs else next(iter(outputs), None)
    agreement: dict = {}
    for name, out in list(outputs.items()):
        errors = [_rel(a, b) for a, b in zip(out, outputs[ref_name]) if a is not None and b is not None]
        agreement[name] = float(f"{max(errors, default=0.0):.3g}")
        if agreement[name] > tol:
            timings[name] = f"disagrees: {agreement[name]:.2e} relative to {ref_name} (ran in {timings[name]} ms)"
            del outputs[name]
    timed = [n for n in candidates if n in outputs]  # candidate order breaks ties
    best = min(timed, key=lambda n: timings[n]) if timed else None
    return best, timings, agreement


def _tolerance(dtype: torch.dtype | None) -> float:
    return 1e-4 if dtype in (None, torch.float32) else 2e-2


# ------------------------------------------------------------------------------------ the loss
def loss_order(d_model: int) -> tuple[str, ...]:
    """The candidates in the order the design estimate expects them to finish (docs/performance.md):
    the fused kernel first up to d 128, the compiled chunks first from d 256 on."""
    if d_model <= 128:
        return ("triton", "compiled", "eager", "full")
    return ("compiled", "eager", "triton", "full")


def choose_loss_impl(requested: str, model_cfg: ModelConfig, device: torch.device, micro_batch: int, seq_len: int,
                     autocast_dtype: torch.dtype | None, chunk_tokens: int, recorded: dict,
                     dist: Dist | None = None) -> Choice:
    """The loss implementation a run uses (module docstring): `requested` when not auto; auto → the
    resumed run's recorded choice, eager off CUDA, else the fastest that agrees on the run's shape."""
    if requested != "auto":
        return Choice(requested, "given")
    prev = _recorded(recorded, "loss_impl", device)
    if prev is not None:
        return Choice(prev, "recorded")
    if not _time_here(device):
        return Choice("eager", "default")

    def choose() -> Choice:
        name, timings, agreement = _time_losses(model_cfg, device, micro_batch * seq_len, autocast_dtype,
                                                chunk_tokens)
        if name is None:
            log.warning("loss_impl auto: no implementation could be timed (%s); using eager", timings)
            return Choice("eager", "default", timings, agreement)
        log.info("loss_impl auto: %s (ms per forward + backward of %d tokens: %s)", name, micro_batch * seq_len,
                 timings)
        return Choice(name, "timed", timings, agreement)

    return _on_rank0(dist, choose)


def _time_losses(model_cfg: ModelConfig, device: torch.device, tokens: int, autocast_dtype: torch.dtype | None,
                 chunk_tokens: int) -> tuple[str | None, dict, dict]:
    from gerbil.model import loss as losslib

    V, d = model_cfg.vocab_size, model_cfg.d_model
    g = torch.Generator().manual_seed(0)  # local: the run's own RNG streams are untouched
    h = (torch.randn(tokens, d, generator=g)).to(device).requires_grad_()  # fp32, as ln_f gives it under autocast
    W = (torch.randn(V, d, generator=g) * model_cfg.init_std).to(device).requires_grad_()
    b = torch.zeros(V, device=device, requires_grad=True)
    y = torch.randint(0, V, (tokens,), generator=g).to(device)

    def run(impl: str) -> Callable[[], list[torch.Tensor]]:
        def once() -> list[torch.Tensor]:
            h.grad = W.grad = b.grad = None
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = losslib.lm_loss(h, W, b, y, chunk_tokens=chunk_tokens, impl=impl)
            loss.backward()
            if impl == "compiled" and losslib.compile_failed(device):  # it would have run eager: not a candidate
                raise RuntimeError("torch.compile of the chunked loss failed (logged above)")
            return [loss.detach(), h.grad, W.grad, b.grad]
        return once

    allowed = _allowed(loss_order(d))
    cands: dict = {}
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 2 * 2**30
    skipped: dict = {}
    for impl in allowed:
        if impl == "full" and tokens * V * FULL_LOGIT_BYTES > free / 2:
            skipped[impl] = f"left out: its logits need {tokens * V * FULL_LOGIT_BYTES / 2**30:.1f} GiB"
            continue
        cands[impl] = run(impl)
    name, timings, agreement = time_candidates(cands, device, "eager", _tolerance(autocast_dtype))
    del h, W, b, y
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return name, {**timings, **skipped}, agreement


# ------------------------------------------------------------------------------------ attention
def choose_sdpa(requested: str, model_cfg: ModelConfig, device: torch.device, micro_batch: int, seq_len: int,
                autocast_dtype: torch.dtype | None, recorded: dict, dist: Dist | None = None,
                may_time: bool = True, masked: bool = False) -> Choice:
    """The attention backend a run pins ("default": PyTorch's dispatch): `requested` when it names one
    (checked to run here, with masked rows too when the workload has them: `masked`); auto → the resumed
    run's recorded choice, PyTorch's default off CUDA or when `may_time` is False, else the fastest that
    agrees on causal attention at the run's shape."""
    dtype = autocast_dtype or torch.float32
    if requested not in ("auto", "default"):
        sdpa.check_runs(requested, device, dtype, model_cfg.n_head, model_cfg.head_dim, masked=masked)
        return Choice(requested, "given")
    if requested == "default":
        return Choice("default", "given")
    prev = _recorded(recorded, "sdpa_backend", device)
    if prev is not None:
        return Choice(prev, "recorded")
    if not (may_time and _time_here(device)):
        return Choice("default", "default")

    def choose() -> Choice:
        shape = (micro_batch, model_cfg.n_head, seq_len, model_cfg.head_dim)
        names = [n for n in SDPA_CANDIDATES if n != "math" or device.type != "cuda"
                 or "math" in os.environ.get("GERBIL_AUTOTUNE_ONLY", "")]
        qkv = sdpa.attention_inputs(device, dtype, shape)

        def run(name: str) -> Callable[[], list[torch.Tensor]]:
            def once() -> list[torch.Tensor]:
                with sdpa.pinned(name):
                    return sdpa.attention_call(*qkv)
            return once

        cands = {"default": run("default"), **{n: run(n) for n in _allowed(tuple(names))}}
        _, timings, agreement = time_candidates(cands, device, "default", _tolerance(autocast_dtype))
        reference = timings.pop("default", None)
        agreement.pop("default", None)
        timed = [n for n in cands if n != "default" and isinstance(timings.get(n), float)]
        if not timed:
            return Choice("default", "default", timings, agreement)
        best = min(timed, key=lambda n: timings[n])
        log.info("sdpa_backend auto: %s (ms per forward + backward at %s: %s; default dispatch %s ms)", best, shape,
                 timings, reference)
        return Choice(best, "timed", {**timings, "default dispatch": reference}, agreement)

    return _on_rank0(dist, choose)


def describe(choice: Choice, device: torch.device, model_cfg: ModelConfig, seq_len: int,
             autocast_dtype: torch.dtype | None) -> str:
    """What a run records as its sdpa_backend: the pinned backend, or ``default (flash)`` — the kernel
    PyTorch's dispatch picks for the run's attention."""
    if choice.name != "default":
        return choice.name
    picked = sdpa.dispatched(device, autocast_dtype or torch.float32, model_cfg.n_head, seq_len, model_cfg.head_dim)
    return f"default ({picked})"
