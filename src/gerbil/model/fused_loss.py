"""`lm_loss(impl="triton")`: the head (d → vocab) and cross-entropy fused in two Triton kernels that never
write a logit to global memory.

Why. At these sizes the 50,264-row head is most of the work (72% of the FLOPs at 6.7m), and a chunked loss
built from library kernels moves ~16–22 bytes of HBM traffic per logit (logits written, re-read for the
log-sum-exp, the softmax gradient written and read by two matmuls). At d ≤ 640 a block of logits fits in
registers, so here the HBM traffic is the inputs and the fp32 gradients only; the vocabulary matrix is
re-read once per token block, from L2 at the ladder's sizes (docs/performance.md has the estimate).

How (gerbil/model/_triton_kernels.py):
1. token pass, one program per BLOCK_N token rows: over the vocabulary in blocks of BLOCK_V, the online
   log-sum-exp and the target's logit (→ lse (N,), the per-row loss); then, when a gradient is needed, a
   second sweep recomputes each logit block and accumulates dh = Σ_v w·(p − y)_v · W_v in fp32 registers;
2. vocabulary pass, one program per BLOCK_V vocabulary rows (× a few token splits when the vocabulary has
   too few blocks to fill the GPU): recompute the logits of its rows against every token block, accumulate
   dW and the bias gradient in fp32 registers, write them once. No atomics: deterministic.
Five head-sized matmuls instead of three (the logits are computed three times) — the price of writing no
(N, V) tensor; it is the faster trade at small d, where the head is bound by memory traffic, not by FLOPs.

Contract (the same as the chunked implementations in gerbil/model/loss.py): weighted mean of the
cross-entropy (row weight 0 for ignored targets / masked rows), gradients computed in forward, stored
*unscaled* in fp32 and multiplied by grad_out / Σw in backward in fp32 (the GradScaler's 65,536 never
meets fp16), forward-only (one pass, no gradient buffers) when no gradient is needed.

Where it runs: CUDA with the `triton` package (the `gpu` extra), or CPU tensors under the Triton
interpreter (`TRITON_INTERPRET=1`, for tests — slow). Anything else — no triton, another device, a width
no block configuration fits — raises a one-line `GerbilError`; `impl="triton"` never falls back silently.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

from gerbil.errors import GerbilError

MAX_WIDTH = 640  # the ladder's widest head; the block table below is measured up to it

NUM_WARPS = 8


@dataclass(frozen=True)
class TritonBlocks:
    """Block sizes of the two kernels (powers of two, ≥ 16: `tl.dot`'s smallest tile).

    token_rows × token_cols: the token pass holds token_rows hidden rows and streams the vocabulary
    token_cols rows at a time. vocab_rows × vocab_cols: the vocabulary pass holds vocab_rows head rows and
    streams the tokens vocab_cols rows at a time. vocab_splits: token splits of the vocabulary pass (its
    partial dW are summed; None = enough to give every SM two programs)."""

    token_rows: int
    token_cols: int
    vocab_rows: int
    vocab_cols: int
    num_warps: int = NUM_WARPS
    num_stages: int = 2
    vocab_splits: int | None = None

    def __post_init__(self):
        for name in ("token_rows", "token_cols", "vocab_rows", "vocab_cols"):
            n = getattr(self, name)
            if n < 16 or n & (n - 1):
                raise GerbilError(f"triton loss: {name} must be a power of two >= 16, not {n}")


def width_blocks(d: int) -> tuple[int, int]:
    """The two power-of-two column blocks (DA, DB) covering width d: DA the largest power of two ≤ d
    (at least 16), DB the next power of two ≥ d − DA (at least 16), or 0 when DA covers d.
    640 → (512, 128); 64 → (64, 0); 96 → (64, 32); 100 → (64, 64) (28 masked columns)."""
    da = max(16, 1 << (d.bit_length() - 1))
    rest = d - da
    return da, (max(16, 1 << (rest - 1).bit_length()) if rest > 0 else 0)


# Default blocks by the columns the kernels cover (DA + DB ≥ d), bf16/fp16 operands, 8 warps, 2 stages:
# (token_rows, token_cols, vocab_rows, vocab_cols). Chosen from benchmarks/triton_compile_check.py --sweep
# (Triton 3.9 compiling for sm_90a, ptxas 13.4, no GPU needed): among the configurations with no register
# spills (and, in the sweep, fewer than 255 registers), the most held rows — each streamed block is reused by that many rows, and the streamed operand is re-read from L2
# once per held block: L2 bytes per token ≈ V·d·2·(2/token_rows + 1/vocab_rows) — then the most streamed
# rows. Registers, not shared memory (≤ 132 KB here of 227), are what limits every width: the fp32
# accumulator (held × d), the held operand and the fp32 logit tile all live in registers. Widths up to 128
# get 128-row blocks and Hopper's wgmma; from 256 on only 16–32-row blocks fit and the dots fall back to
# mma.sync (the fused loss is then likely slower than the compiled chunks: the device check measures it).
_TABLE = {  # cols: (token_rows, token_cols, vocab_rows, vocab_cols)   registers token / vocab, final code
    32: (128, 128, 128, 32),  # 231 / 142
    64: (128, 128, 128, 32),  # 239 / 204
    128: (128, 64, 64, 32),  # 247 / 176
    256: (32, 32, 32, 32),  # 223 / 182
    512: (32, 32, 32, 16),  # 255 / 177
    640: (16, 32, 16, 32),  # 206 / 204
}


def default_blocks(d: int, dtype: torch.dtype) -> TritonBlocks | None:
    """The measured default blocks for width d (see _TABLE), None above MAX_WIDTH. fp32 operands take
    twice the registers of bf16/fp16 ones: their blocks are halved (at least 16 rows)."""
    cols = sum(width_blocks(d))
    if d > MAX_WIDTH or cols > max(_TABLE):
        return None
    rows = _TABLE[min(c for c in _TABLE if c >= cols)]
    if dtype == torch.float32:
        rows = tuple(max(16, r // 2) for r in rows)
    return TritonBlocks(*rows, num_warps=NUM_WARPS, num_stages=2)


# ------------------------------------------------------------------------------------ availability
def interpreting() -> bool:
    """True when Triton would run kernels on the CPU now (TRITON_INTERPRET=1, read as Triton reads it)."""
    try:
        from triton import knobs
    except ImportError:  # no triton, or one older than its knobs module: read the variable as it did
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    return bool(knobs.runtime.interpret)


_LAST_COMPILED: dict[str, object] = {}  # kernel name → the last triton CompiledKernel launched (GPU only)


def last_compiled() -> dict[str, object]:
    """The Triton CompiledKernel objects last launched on a GPU, by kernel name (their `.asm` holds the
    TTGIR/PTX, `.n_regs` / `.n_spills` what ptxas made of them): what the device check records."""
    return dict(_LAST_COMPILED)


def _remember(name: str, kernel: object) -> None:
    if kernel is not None and hasattr(kernel, "asm"):
        _LAST_COMPILED[name] = kernel


def _stdlib_interpreted() -> bool:
    """Whether triton's own jit'd helpers (tl.zeros, tl.sum, …) were built for the interpreter: they are
    wrapped once, when triton is first imported, so TRITON_INTERPRET must be set before that import."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """(token_pass, vocab_pass), jitted for the GPU or for the interpreter (one pair per mode)."""
    from gerbil.model import _triton_kernels

    return _triton_kernels.build()


def check_supported(hidden: torch.Tensor, weight: torch.Tensor, compute_dtype: torch.dtype,
                    blocks: TritonBlocks | None) -> TritonBlocks:
    """The blocks to run with, or a one-line GerbilError saying why the triton loss cannot run here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise GerbilError("loss impl 'triton' needs the triton package (pip install 'gerbil-lab[gpu]'); "
                          "use impl 'chunked' on this machine") from None
    dev = hidden.device
    if dev.type != "cuda" and not (dev.type == "cpu" and interpreting()):
        raise GerbilError(f"loss impl 'triton' runs on CUDA (or on CPU tensors under TRITON_INTERPRET=1), "
                          f"not on {dev.type}; use impl 'chunked'")
    if dev.type == "cpu" and not _stdlib_interpreted():
        raise GerbilError("TRITON_INTERPRET=1 was set after triton was imported: set it before the first "
                          "`import triton` (triton's own helpers such as tl.sum must be interpreted too)")
    if weight.device != dev:
        raise GerbilError(f"loss impl 'triton': hidden on {dev} but the head on {weight.device}")
    if compute_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise GerbilError(f"loss impl 'triton' computes in fp32, fp16 or bf16, not {compute_dtype}")
    d = hidden.shape[-1]
    chosen = blocks or default_blocks(d, compute_dtype)
    if chosen is None:
        raise GerbilError(f"loss impl 'triton' supports head widths up to {MAX_WIDTH}, not d_model {d}; "
                          "use impl 'chunked'")
    return chosen


# ------------------------------------------------------------------------------------ launching
def _dot_precision(compute_dtype: torch.dtype, device: torch.device) -> str:
    """fp32 operands: IEEE fp32 products unless torch itself allows TF32 matmuls (what `impl="full"` does
    on the same device); bf16/fp16 operands ignore it."""
    if compute_dtype == torch.float32 and device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32" if device.type == "cuda" else "ieee"


@contextlib.contextmanager
def _resources(blocks: TritonBlocks):
    """A kernel that does not fit this GPU (shared memory, registers) is a one-line error, not a traceback:
    the default blocks are sized for an H100/H200 (a T4 has 64 KB of shared memory per SM, not 227)."""
    from triton.runtime.errors import OutOfResources

    try:
        yield
    except OutOfResources as e:
        raise GerbilError(f"loss impl 'triton': blocks {blocks.token_rows}x{blocks.token_cols}/{blocks.vocab_rows}x"
                          f"{blocks.vocab_cols} need more {e.name} than this GPU has ({e.required} > {e.limit}); "
                          "pass smaller triton_blocks or use impl 'chunked'") from None


def _launch_token_pass(h, W, b, y, w, blocks: TritonBlocks, dh: torch.Tensor | None):
    """lse (N,) and the unweighted per-row loss (N,), fp32; fills dh (N, d) fp32 when given."""
    N, d = h.shape
    V = W.shape[0]
    lse = torch.empty(N, dtype=torch.float32, device=h.device)
    row_loss = torch.empty(N, dtype=torch.float32, device=h.device)
    if N == 0:
        return lse, row_loss
    token_pass, _ = _kernels(interpreting())
    da, db = width_blocks(d)
    with _resources(blocks):
        k = token_pass[(cdiv(N, blocks.token_rows),)](
            h, W, b if b is not None else lse, y, w, lse, row_loss, dh if dh is not None else lse,
            N, V, d, h.stride(0), W.stride(0), dh.stride(0) if dh is not None else 0,
            HAS_BIAS=b is not None, COMPUTE_DH=dh is not None, BLOCK_N=blocks.token_rows, BLOCK_V=blocks.token_cols,
            DA=da, DB=db, UPCAST=interpreting(), DOT_PRECISION=_dot_precision(h.dtype, h.device),
            num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    _remember("token_pass", k)
    return lse, row_loss


def _vocab_splits(N: int, V: int, blocks: TritonBlocks, device: torch.device) -> int:
    """Token splits of the vocabulary pass: enough programs for two per SM (the head's 50,264 rows in
    blocks of ≤ 128 already give ≥ 393, so this matters for small heads such as a K-class score head)."""
    if blocks.vocab_splits is not None:
        return max(1, min(blocks.vocab_splits, cdiv(N, blocks.vocab_cols)))
    if device.type != "cuda":
        return 1
    programs = cdiv(V, blocks.vocab_rows)
    want = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(cdiv(want, programs), cdiv(N, blocks.vocab_cols)))


def _launch_vocab_pass(h, W, b, y, w, lse, blocks: TritonBlocks):
    """(dW (V, d) fp32, db (V,) fp32 or None), unscaled."""
    N, d = h.shape
    V = W.shape[0]
    if N == 0:
        return (torch.zeros((V, d), dtype=torch.float32, device=h.device),
                torch.zeros(V, dtype=torch.float32, device=h.device) if b is not None else None)
    splits = _vocab_splits(N, V, blocks, h.device)
    rows_per_split = cdiv(cdiv(N, blocks.vocab_cols), splits) * blocks.vocab_cols
    splits = cdiv(N, rows_per_split)
    dW = torch.empty((splits, V, d), dtype=torch.float32, device=h.device)
    db = torch.empty((splits, V), dtype=torch.float32, device=h.device) if b is not None else None
    _, vocab_pass = _kernels(interpreting())
    da, dbk = width_blocks(d)
    with _resources(blocks):
        k = vocab_pass[(cdiv(V, blocks.vocab_rows), splits)](
            h, W, b if b is not None else lse, y, w, lse, dW, db if db is not None else lse,
            N, V, d, rows_per_split, h.stride(0), W.stride(0),
            HAS_BIAS=b is not None, BLOCK_V=blocks.vocab_rows, BLOCK_N=blocks.vocab_cols, DA=da, DB=dbk,
            UPCAST=interpreting(), DOT_PRECISION=_dot_precision(h.dtype, h.device),
            num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    _remember("vocab_pass", k)
    if splits == 1:
        return dW[0], (db[0] if db is not None else None)
    return dW.sum(0), (db.sum(0) if db is not None else None)  # fixed order: deterministic


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _TritonLinearCrossEntropy(torch.autograd.Function):
    """loss = Σ w_i·CE(h_i Wᵀ + b, y_i) / Σ w_i; the gradients are computed by the kernels in forward
    (fp32, unscaled) and multiplied by grad_out / Σw in backward, in fp32, then cast to the callers' dtypes."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, weights, compute_dtype: torch.dtype, blocks: TritonBlocks):
        # hidden (N, d), weight (V, d), bias (V,) or None — the callers' tensors and dtypes
        need = ctx.needs_input_grad
        h, W, b = _operands(hidden, weight, bias, compute_dtype)
        denom = weights.sum().clamp_min(1.0)
        dh = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need[0] else None
        lse, row_loss = _launch_token_pass(h, W, b, targets, weights, blocks, dh)
        dW = db = None
        if need[1] or (b is not None and need[2]):
            dW, db = _launch_vocab_pass(h, W, b, targets, weights, lse, blocks)
        ctx.save_for_backward(dh, dW if need[1] else None, db if need[2] else None, denom)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return (row_loss * weights).sum() / denom

    @staticmethod
    def backward(ctx, grad_out):
        g_hidden, g_weight, g_bias, denom = ctx.saved_tensors
        return (*scaled_gradients((g_hidden, g_weight, g_bias), ctx.dtypes, grad_out, denom),
                None, None, None, None)


def scaled_gradients(grads, dtypes, grad_out: torch.Tensor, denom: torch.Tensor) -> list:
    """The backward of a loss that computed its gradients in forward (this one and the chunked loss in
    gerbil/model/loss.py): each stored fp32 gradient (or None) times grad_out / denom, in fp32 — grad_out
    may be the GradScaler's 65,536 (inf in fp16) — and cast to its caller's dtype only then."""
    k = grad_out.float() / denom
    return [(g * k).to(dt) if g is not None else None for g, dt in zip(grads, dtypes)]


def _operands(hidden, weight, bias, compute_dtype):
    """The kernels' operands: contiguous rows in the compute dtype (bias too, as the chunked paths)."""
    h = hidden.to(compute_dtype).contiguous()
    W = weight.to(compute_dtype).contiguous()
    b = bias.to(compute_dtype).contiguous() if bias is not None else None
    return h, W, b


def triton_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                   weights: torch.Tensor, compute_dtype: torch.dtype, needs_grad: bool,
                   blocks: TritonBlocks | None = None) -> torch.Tensor:
    """The weighted mean cross-entropy of `hidden @ weight.T + bias` (what `lm_loss` dispatches to).

    hidden (N, d); weight (V, d) — only the real vocabulary rows; bias (V,) or None; targets (N,) int64
    in [0, V) (ignored rows clamped, weight 0); weights (N,) fp32 row weights. Raises a one-line
    GerbilError where the kernels cannot run (see `check_supported`). Call with autocast disabled."""
    blocks = check_supported(hidden, weight, compute_dtype, blocks)
    y = targets.contiguous()
    w = weights.float().contiguous()
    if not needs_grad:
        with torch.no_grad():
            h, W, b = _operands(hidden, weight, bias, compute_dtype)
            _, row_loss = _launch_token_pass(h, W, b, y, w, blocks, None)
            return (row_loss * w).sum() / w.sum().clamp_min(1.0)
    return _TritonLinearCrossEntropy.apply(hidden, weight, bias, y, w, compute_dtype, blocks)


__all__ = ["TritonBlocks", "default_blocks", "width_blocks", "check_supported", "triton_lm_loss", "interpreting",
           "last_compiled", "MAX_WIDTH"]
