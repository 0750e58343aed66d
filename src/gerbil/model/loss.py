"""Language-model loss: the head (d → vocab) fused with cross-entropy, chunk by chunk.

At these model sizes the 50k-vocabulary head is most of the FLOPs and almost all of the activation
memory: one 2048-token sequence's logits are 200 MB in bf16 (docs/reference.md §6). `lm_loss` never
materializes the logits of a whole micro-batch. With the chunked implementations it computes, for each
chunk of `chunk_tokens` positions, the logits, the log-sum-exp, the loss AND the gradient with respect to
hidden/weight/bias in a single pass (the gradient of cross-entropy w.r.t. the logits is known in closed
form: softmax − one_hot), so backward only rescales stored gradients — no recomputation of the head, and
peak memory of one chunk's logits.

Precision. The gradients are stored *unscaled* and in fp32: the chunk's logit gradient
``w·(softmax − one_hot)`` lies in [−1, 1], so it survives the cast to fp16/bf16 for the two gradient
matmuls; the factor ``grad_out / Σw`` (the GradScaler's scale, the micro-batch weight, the mean's
1/denominator) is applied in backward, in fp32, and the result is cast to the input dtype only then,
when it is already scaled. (Folding 1/Σw in before the fp16 cast, as an earlier version did, underflowed
at 131,072 scored tokens: 9–11% error on the hidden gradient, most head-weight entries zero, and the
scale 65,536 itself overflowed fp16 — tests/test_loss.py keeps those cases.)

Implementations (`impl`):
- ``"chunked"`` (default): the chunked loss, compiled per chunk on CUDA, eager on CPU (see below).
- ``"compiled"``: per chunk one `torch.compile`d function (inductor, ``dynamic=False``): the head matmul,
  then fused fp32 log-sum-exp / softmax − one_hot / cast, then the two gradient matmuls. The chunk shape
  is fixed (the last chunk is padded with ignored rows of weight 0) so it never recompiles within a run.
  If compilation is unavailable or fails, it logs one warning and runs eager.
- ``"eager"``: the chunked loss without compile, written for the CPU: one logits buffer per call reused
  by every chunk (allocating a fresh 200 MB tensor cost more than the kernel on it: measured 84 ms vs
  51 ms for the 1024×50,264 head matmul), in-place log-softmax and exp, and the row weights applied to
  the small (n, d) side of the gradient matmuls instead of the (n, V) logits.
- ``"full"``: the plain ``F.cross_entropy(hidden @ W.T + b)``, all logits at once (a reference; what
  torch.compile of the whole model fuses when memory allows).
- ``"triton"``: the head and cross-entropy fused in two Triton kernels that never write a logit to memory
  (gerbil/model/fused_loss.py; same contract, gradients also computed in forward and scaled in backward).
  CUDA with triton, or CPU tensors under ``TRITON_INTERPRET=1``; anything else raises a one-line
  GerbilError — it never falls back silently.

Why eager on CPU: measured on a 2-core Xeon (benchmarks/loss_throughput.py, 6.7m shapes: d 64, vocab 50,264,
8,192 tokens, chunks of 1,024, fp32, forward + backward), eager 2.2× the tokens/s of the previous chunked
loss and a third of its peak memory, compiled only 1.1× — inductor allocates fresh (n, V) outputs per call
and the page faults of those buffers cost as much as the kernels — and a cold compile takes 10–20 s.
On CUDA the caching allocator makes buffers free and the fused kernels cut the passes over the logits from
about ten to about four (write the logits, read them for the log-sum-exp, read them and write the
gradient in the compute dtype, read it for the bias sum) besides the two gradient matmuls: 14 bytes per
logit in bf16 (docs/performance.md). No GPU was available when this was
written: the CUDA choice is argued, not measured — check with benchmarks/loss_throughput.py --device cuda
and force ``impl="eager"`` if it loses.

fp16 range: the per-chunk weight-gradient matmul Σ_i g_iv h_i comes out of the fp16 matmul in fp16 before
the fp32 accumulation; it stays far below 65,504 unless thousands of a chunk's tokens share one target
and one hidden direction, the same exposure as plain autocast with loss scaling (`impl="full"`).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

from gerbil.data.tokenizer import IGNORE_INDEX  # the unscored target id (re-exported: gerbil.loss)
from gerbil.model.fused_loss import TritonBlocks, scaled_gradients, triton_lm_loss

log = logging.getLogger(__name__)

IMPLS = ("chunked", "compiled", "eager", "full", "triton")

# Compiled per-chunk functions, created lazily; dynamo keys what it compiled by shape/dtype/device (its
# guards), so nothing here depends on which model or call came first. Device types whose compile failed
# fall back to eager for the rest of the process (one warning).
_COMPILED: dict[str, Callable] = {}
_COMPILE_FAILED: set[str] = set()


# ------------------------------------------------------------------------------------ per-chunk math
def _chunk_loss_and_grad(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                         w: torch.Tensor):
    """One chunk, functional (what `torch.compile` fuses). h (n, d) and weight (V, d) in the compute
    dtype; y (n,) int64 in [0, V); w (n,) fp32 row weights (0 = ignored / padding).

    Returns (Σ w·CE (fp32 scalar), g_hidden (n, d), g_weight (V, d), g_bias (V,) fp32), all *unscaled*
    (no 1/Σw): the logit gradient w·(softmax − one_hot) is in [−1, 1], safe to cast to fp16/bf16.
    """
    logits = torch.mm(h, weight.t()).float()  # (n, V) fp32 math from here
    if bias is not None:
        logits = logits + bias.float()
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    tgt = logits.gather(1, y[:, None])[:, 0]  # (n,)
    loss = ((lse - tgt) * w).sum()
    p = torch.exp(logits - lse[:, None])  # (n, V)
    onehot = torch.arange(logits.shape[1], device=y.device)[None, :] == y[:, None]  # (n, V) bool, fused
    g = (torch.where(onehot, p - 1.0, p) * w[:, None]).to(h.dtype)  # (n, V) in [−1, 1], the compute dtype
    # The bias gradient sums the compute-dtype g that the two matmuls read anyway (fp32 accumulation):
    # summing the fp32 g instead made inductor write and re-read an (n, V) fp32 softmax buffer, 8 of the
    # ~22 bytes of traffic per logit (read from inductor's generated code on CPU, bf16).
    g_bias = g.sum(0, dtype=torch.float32)  # (V,) fp32
    return loss, torch.mm(g, weight), torch.mm(g.t(), h), g_bias


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                w: torch.Tensor) -> torch.Tensor:
    """Forward only: Σ w·CE over the chunk (fp32 scalar); never forms a logit gradient."""
    logits = torch.mm(h, weight.t()).float()  # (n, V)
    if bias is not None:
        logits = logits + bias.float()
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    tgt = logits.gather(1, y[:, None])[:, 0]
    return ((lse - tgt) * w).sum()


def _compiled(name: str) -> Callable:
    fn = _COMPILED.get(name)
    if fn is None:
        raw = {"grad": _chunk_loss_and_grad, "loss": _chunk_loss}[name]
        # dynamic=False: one chunk shape per run (the last chunk is padded), so no symbolic shapes.
        # Never mode="max-autotune": it crashed with an illegal memory access on the head matmul on an
        # H200 (torch 2.11).
        fn = _COMPILED[name] = torch.compile(raw, dynamic=False, fullgraph=True)
    return fn


def _compiled_chunk_len(n_tokens: int, chunk_tokens: int) -> int:
    """The fixed row count of every compiled call: `chunk_tokens`, or for a smaller input the next power
    of two ≥ 16, capped at `chunk_tokens` (few shapes, at most 2× padding) rather than a new shape per
    input size."""
    if n_tokens >= chunk_tokens:
        return chunk_tokens
    return min(chunk_tokens, max(16, 1 << (n_tokens - 1).bit_length()))


def _use_compile(impl: str, device: torch.device) -> bool:
    if device.type in _COMPILE_FAILED:
        return False
    if impl == "compiled":
        return True
    return impl == "chunked" and device.type == "cuda"


def compile_failed(device: torch.device) -> bool:
    """True once compiling the chunked loss failed on this device type (it runs eager from then on)."""
    return device.type in _COMPILE_FAILED


def _compile_failed(device: torch.device, exc: BaseException) -> None:
    _COMPILE_FAILED.add(device.type)
    log.warning("lm_loss: torch.compile of the chunked head + cross-entropy failed on %s (%s: %s); "
                "using the eager chunked loss from now on", device.type, type(exc).__name__, exc)


def _padded(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t with zero rows appended up to `rows` (padding rows get weight 0: no loss, no gradient)."""
    if t.shape[0] == rows:
        return t
    out = t.new_zeros((rows,) + tuple(t.shape[1:]))
    out[: t.shape[0]] = t
    return out


class _EagerBuffers:
    """The per-call (n, V) buffers every chunk reuses: fp32 for the softmax math, plus one in the compute
    dtype (logits out of the matmul, then the logit gradient into the gradient matmuls) when that is not
    fp32. Freed when the call returns: memory is one chunk's logits, never the micro-batch's."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        self.f32 = torch.empty((rows, vocab), dtype=torch.float32, device=device)  # (n, V)
        self.low = None if dtype == torch.float32 else torch.empty((rows, vocab), dtype=dtype, device=device)
        self.rows = torch.arange(rows, device=device)


def _eager_logprobs(h, weight, bias, buf: _EagerBuffers) -> torch.Tensor:
    """log-softmax of the chunk's logits, in place in the fp32 buffer; returns the (m, V) view."""
    m = h.shape[0]
    out = buf.f32[:m] if buf.low is None else buf.low[:m]  # (m, V)
    if bias is not None:
        torch.addmm(bias, h, weight.t(), out=out)
    else:
        torch.mm(h, weight.t(), out=out)
    lp = buf.f32[:m]
    if buf.low is not None:
        lp.copy_(out)  # fp32 math from here
    if lp.device.type == "cpu":
        # in place: no second (m, V) tensor and no page faults (checked equal to log_softmax on CPU; the
        # CUDA kernels are not documented as alias-safe, and there the caching allocator makes a temp cheap)
        torch.ops.aten._log_softmax.out(lp, -1, False, out=lp)
        return lp
    return torch.log_softmax(lp, dim=-1)


def _eager_chunk_loss(h, weight, bias, y, w, buf: _EagerBuffers) -> torch.Tensor:
    lp = _eager_logprobs(h, weight, bias, buf)
    return -(lp[buf.rows[: h.shape[0]], y] * w).sum()


def _eager_chunk_loss_and_grad(h, weight, bias, y, w, buf: _EagerBuffers, g_hidden, g_weight, g_bias):
    """Eager twin of `_chunk_loss_and_grad`, accumulating into the fp32 buffers g_hidden (m, d) (a slice),
    g_weight (V, d), g_bias (V,) or None. The row weights multiply the (m, d) sides, not the (m, V) one."""
    m = h.shape[0]
    rows = buf.rows[:m]
    lp = _eager_logprobs(h, weight, bias, buf)  # (m, V) fp32 log-probabilities
    loss = -(lp[rows, y] * w).sum()
    g = lp.exp_()  # (m, V): softmax, in place
    g[rows, y] -= 1.0  # softmax − one_hot, fp32, exact where it matters (the target's 1 − p)
    if buf.low is not None:
        g_low = buf.low[:m]
        g_low.copy_(g)  # cast for the gradient matmuls; values in [−1, 1]
    else:
        g_low = g
    w_col = w[:, None]  # (m, 1)
    if g_hidden is not None:
        g_hidden.copy_(torch.mm(g_low, weight)).mul_(w_col)  # (m, d)
    if g_weight is not None:
        hw = h * w_col.to(h.dtype)  # (m, d)
        if g_low.dtype == torch.float32:
            g_weight.addmm_(g_low.t(), hw)  # (V, d)
        else:
            g_weight.add_(torch.mm(g_low.t(), hw))
    if g_bias is not None:
        g_bias.add_(w @ g)  # (V,) fp32
    return loss


# ------------------------------------------------------------------------------------ autograd
class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """loss = Σ_i w_i · CE(h_i W^T + b, y_i) / Σ_i w_i, gradients computed in forward (unscaled, fp32)
    and scaled by grad_out / Σ w in backward.

    Receives the caller's tensors (e.g. the fp32 LayerNorm output and fp32 parameters under autocast)
    and casts chunk by chunk to `compute_dtype`, so the gradients it returns are in the callers' dtypes
    without an extra fp16 round trip."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, weights, chunk_tokens: int, compute_dtype: torch.dtype,
                use_compile: bool):
        # hidden (N, d); weight (V, d); bias (V,) or None; targets (N,) int64 ≥ 0; weights (N,) fp32
        N, d = hidden.shape
        V = weight.shape[0]
        dev = hidden.device
        denom = weights.sum().clamp_min(1.0)
        need = ctx.needs_input_grad
        W = weight.to(compute_dtype)  # (V, d): small, cast once per call
        b = bias.to(compute_dtype) if bias is not None else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
        g_hidden = torch.zeros((N, d), dtype=torch.float32, device=dev) if need[0] else None
        g_weight = torch.zeros((V, d), dtype=torch.float32, device=dev) if need[1] else None
        g_bias = torch.zeros((V,), dtype=torch.float32, device=dev) if (bias is not None and need[2]) else None
        done = 0
        if use_compile:
            done, loss_sum = _compiled_grad_chunks(hidden, W, b, targets, weights, chunk_tokens, compute_dtype,
                                                   g_hidden, g_weight, g_bias)
        if done < N:  # eager (chosen, or the rest after a failed compile)
            buf = _EagerBuffers(min(chunk_tokens, N - done), V, compute_dtype, dev)
            for s in range(done, N, chunk_tokens):
                e = min(s + chunk_tokens, N)
                loss_sum += _eager_chunk_loss_and_grad(
                    hidden[s:e].to(compute_dtype), W, b, targets[s:e], weights[s:e], buf,
                    g_hidden[s:e] if g_hidden is not None else None, g_weight, g_bias)
            del buf
        ctx.save_for_backward(g_hidden, g_weight, g_bias, denom)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss_sum / denom

    @staticmethod
    def backward(ctx, grad_out):
        g_hidden, g_weight, g_bias, denom = ctx.saved_tensors
        return (*scaled_gradients((g_hidden, g_weight, g_bias), ctx.dtypes, grad_out, denom),
                None, None, None, None, None)




def _compiled_grad_chunks(hidden, W, b, targets, weights, chunk_tokens, compute_dtype, g_hidden, g_weight,
                          g_bias) -> tuple[int, torch.Tensor]:
    """Run the compiled per-chunk function over all chunks; returns (rows done, Σ w·CE). Stops early (and
    marks compile failed) if compiling fails, so the caller finishes the remaining rows eagerly."""
    N = hidden.shape[0]
    n = _compiled_chunk_len(N, chunk_tokens)
    fn = _compiled("grad")
    loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for s in range(0, N, n):
        e = min(s + n, N)
        h = _padded(hidden[s:e].to(compute_dtype), n)
        try:
            loss, gh, gw, gb = fn(h, W, b, _padded(targets[s:e], n), _padded(weights[s:e], n))
        except Exception as exc:  # noqa: BLE001 — any compile/backend failure: fall back, never crash
            _compile_failed(hidden.device, exc)
            return s, loss_sum
        loss_sum += loss
        if g_hidden is not None:
            g_hidden[s:e] = gh[: e - s]
        if g_weight is not None:
            g_weight += gw
        if g_bias is not None:
            g_bias += gb
    return N, loss_sum


def _forward_only(h, weight, bias, y, w, chunk_tokens: int, compute_dtype: torch.dtype,
                  use_compile: bool) -> torch.Tensor:
    """Mean loss without any gradient work (validation): one head matmul and a log-sum-exp per chunk."""
    N = h.shape[0]
    dev = h.device
    W = weight.to(compute_dtype)
    b = bias.to(compute_dtype) if bias is not None else None
    denom = w.sum().clamp_min(1.0)
    loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
    done = 0
    if use_compile:
        n = _compiled_chunk_len(N, chunk_tokens)
        fn = _compiled("loss")
        for s in range(0, N, n):
            e = min(s + n, N)
            try:
                loss_sum += fn(_padded(h[s:e].to(compute_dtype), n), W, b, _padded(y[s:e], n), _padded(w[s:e], n))
            except Exception as exc:  # noqa: BLE001
                _compile_failed(dev, exc)
                break
            done = e
    if done < N:
        buf = _EagerBuffers(min(chunk_tokens, N - done), W.shape[0], compute_dtype, dev)
        for s in range(done, N, chunk_tokens):
            e = min(s + chunk_tokens, N)
            loss_sum += _eager_chunk_loss(h[s:e].to(compute_dtype), W, b, y[s:e], w[s:e], buf)
    return loss_sum / denom


# ------------------------------------------------------------------------------------ public
def default_chunk_tokens(device: torch.device) -> int:
    """Rows per chunk of the chunked losses in training: 4,096 on CUDA; 1,024 on a CPU (one chunk's fp32
    logits ≈ 200 MB there). `loss_impl: auto` times the losses with the same chunks."""
    return 4096 if device.type == "cuda" else 1024


def lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    vocab_size: int | None = None,
    chunk_tokens: int = 4096,
    impl: str = "chunked",
    triton_blocks: TritonBlocks | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over positions with mask 1 and target != -100.

    hidden: (B, T, d) or (N, d); weight: (V_padded, d); bias: (V_padded,) or None; targets: (B, T) or (N,).
    vocab_size: only the first `vocab_size` rows of the head are real — padded rows never get a logit,
    so they can neither win nor receive gradient.
    impl: "chunked" (default: compiled per chunk on CUDA, eager on CPU), "compiled", "eager", "full"
    (see the module docstring), "triton" (gerbil/model/fused_loss.py: CUDA + the triton package, or CPU
    under TRITON_INTERPRET=1; anything else raises a one-line GerbilError, never a silent fallback).
    triton_blocks: the triton kernels' block sizes (default: chosen by width; tests use small ones). Under autocast the head runs in the autocast dtype with fp32 softmax math.
    When no gradient is needed (``torch.no_grad()``, or nothing requires grad) the chunked paths compute
    the loss only: no gradient buffers, no gradient matmuls.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown loss impl {impl!r} ({', '.join(IMPLS)})")
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d)
    y = targets.reshape(-1)
    if vocab_size is not None and vocab_size < weight.shape[0]:
        weight = weight[:vocab_size]
        bias = bias[:vocab_size] if bias is not None else None
    w = (y != IGNORE_INDEX).float()
    if loss_mask is not None:
        w = w * loss_mask.reshape(-1).float()
    if impl == "full":
        logits = F.linear(h, weight, bias).float()
        per = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
        return (per * w).sum() / w.sum().clamp_min(1.0)
    y = y.clamp_min(0)  # ignored positions have weight 0; any valid index will do
    dev = h.device
    if torch.is_autocast_enabled(dev.type):
        compute_dtype = torch.get_autocast_dtype(dev.type)  # bf16/fp16 matmuls; softmax math stays fp32
    else:
        compute_dtype = torch.promote_types(h.dtype, weight.dtype)
    use_compile = _use_compile(impl, dev)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    with torch.autocast(dev.type, enabled=False):
        if impl == "triton":
            return triton_lm_loss(h, weight, bias, y, w, compute_dtype, needs_grad, triton_blocks)
        if not needs_grad:
            with torch.no_grad():
                return _forward_only(h, weight, bias, y, w, chunk_tokens, compute_dtype, use_compile)
        return _ChunkedLinearCrossEntropy.apply(h, weight, bias, y, w, chunk_tokens, compute_dtype, use_compile)
