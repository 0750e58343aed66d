"""Language-model loss: the head (d → vocab) fused with cross-entropy, chunk by chunk.

At these model sizes the 50k-vocabulary head is most of the FLOPs and almost all of the activation
memory: one 2048-token sequence's logits are 200 MB in bf16 (docs/reference.md §6). `lm_loss` never
materializes the logits of a whole micro-batch. With `impl="chunked"` (the default) it computes, for
each chunk of `chunk_tokens` positions, the logits, the log-sum-exp, the loss AND the gradient with
respect to hidden/weight/bias in a single pass (the gradient of mean cross-entropy w.r.t. the logits is
known in closed form: softmax − one_hot, scaled), so backward only rescales stored gradients — no
recomputation of the head and peak memory of one chunk's logits.

`impl="full"` is the plain `F.cross_entropy(hidden @ W.T + b)`: it holds all logits but is what
torch.compile fuses best on big GPUs (measure with benchmarks/train_throughput.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """loss = Σ_i w_i · CE(h_i W^T + b, y_i) / Σ_i w_i, gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, weights, chunk_tokens: int):
        # hidden (N, d); weight (V, d); bias (V,) or None; targets (N,) int64; weights (N,) float32
        N = hidden.shape[0]
        denom = weights.sum().clamp_min(1.0)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        g_hidden = torch.empty_like(hidden) if need_grad else None
        g_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        g_bias = torch.zeros(bias.shape, dtype=torch.float32, device=weight.device) if (need_grad and bias is not None) else None
        for s in range(0, N, chunk_tokens):
            h = hidden[s : s + chunk_tokens]  # (n, d)
            y = targets[s : s + chunk_tokens]
            w = weights[s : s + chunk_tokens]
            logits = F.linear(h, weight, bias).float()  # (n, V): the only per-chunk big tensor
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            y_safe = y.clamp_min(0)
            tgt = logits.gather(1, y_safe[:, None]).squeeze(1)
            loss_sum += ((lse - tgt) * w).sum()
            if need_grad:
                # d(loss)/d(logits) = (softmax − one_hot) · w / denom, computed in place on `logits`
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(y), device=y.device), y_safe] -= 1.0
                probs.mul_((w / denom)[:, None])
                g = probs.to(h.dtype)
                g_hidden[s : s + chunk_tokens] = g @ weight
                g_weight += (g.t() @ h).float()
                if g_bias is not None:
                    g_bias += probs.sum(0)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        ctx.has_bias = bias is not None
        return loss_sum / denom

    @staticmethod
    def backward(ctx, grad_out):
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        gh = g_hidden * grad_out.to(g_hidden.dtype) if ctx.needs_input_grad[0] else None
        gw = (g_weight * grad_out) if ctx.needs_input_grad[1] else None
        gb = (g_bias * grad_out) if (ctx.has_bias and ctx.needs_input_grad[2]) else None
        return gh, gw, gb, None, None, None


def lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    vocab_size: int | None = None,
    chunk_tokens: int = 4096,
    impl: str = "chunked",
) -> torch.Tensor:
    """Mean next-token cross-entropy over positions with mask 1 and target != -100.

    hidden: (B, T, d) or (N, d); weight: (V_padded, d); bias: (V_padded,) or None; targets: (B, T) or (N,).
    vocab_size: only the first `vocab_size` rows of the head are real — padded rows never get a logit,
    so they can neither win nor receive gradient.
    """
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
    if impl != "chunked":
        raise ValueError(f"unknown loss impl {impl!r} (chunked, full)")
    if torch.is_autocast_enabled(h.device.type):
        # run the head in the autocast dtype (bf16/fp16 matmuls); softmax math stays fp32 inside
        dt = torch.get_autocast_dtype(h.device.type)
        h, weight = h.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
        with torch.autocast(h.device.type, enabled=False):
            return _ChunkedLinearCrossEntropy.apply(h, weight, bias, y, w, chunk_tokens)
    return _ChunkedLinearCrossEntropy.apply(h, weight, bias, y, w, chunk_tokens)
