"""Which attention kernel a run's `scaled_dot_product_attention` calls: PyTorch's own dispatch, or one
backend pinned for the whole run (`sdpa_backend`: flash, cudnn, efficient, math).

Why pin: at these sizes the head dimension is small (16 at 6.7m, 32 at 15m/32m, 64 from 77m), and
PyTorch's dispatch picks by eligibility, not by speed: its flash kernel takes head_dim 16 (rounding it up
inside to a 32-wide tile, so half of its tensor-core work is padding), while the memory-efficient and
cuDNN kernels take it too. `sdpa_backend: auto` times the eligible backends on the run's own attention
shape at its start (`gerbil.train.autotune`) and pins the fastest; a name pins that one; `default`
leaves PyTorch's dispatch alone.

The pin is PyTorch's `torch.nn.attention.sdpa_kernel` for the duration of the run (training, validation,
and the graphs torch.compile traces meanwhile); `check_runs` turns "no kernel can run this" into one
line at resolve time instead of a failure at the first step.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from gerbil.errors import GerbilError

#: option value → torch.nn.attention.SDPBackend member name
BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
            "math": "MATH"}
CHOICES = ("auto", "default", *BACKENDS)


def _backend(name: str):
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, BACKENDS[name])


@contextlib.contextmanager
def pinned(name: str | None) -> Iterator[None]:
    """Inside: every SDPA call runs backend `name` (None or "default": PyTorch's own dispatch)."""
    if name in (None, "default"):
        yield
        return
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([_backend(name)]):
        yield


def dispatched(device: torch.device, dtype: torch.dtype, n_head: int, seq_len: int, head_dim: int) -> str:
    """The backend PyTorch's dispatch picks now for a causal call of this shape (flash, cudnn, efficient,
    math), or "unknown" where torch does not say."""
    q = torch.zeros(1, n_head, seq_len, head_dim, device=device, dtype=dtype)
    try:
        index = torch._fused_sdp_choice(q, q, q, is_causal=True)
        from torch.nn.attention import SDPBackend

        member = SDPBackend(index).name
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return "unknown"
    return next((k for k, v in BACKENDS.items() if v == member), member.lower())


def attention_inputs(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int, int],
                     seed: int = 0) -> list[torch.Tensor]:
    """Random q, k, v of `shape` (B, heads, T, head_dim) in `dtype` on `device`, requiring gradients (a
    local generator: the run's RNG streams are untouched)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def attention_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: bool = False) -> list[torch.Tensor]:
    """One forward + backward of causal SDPA: [output, dq, dk, dv] (what the timing compares). masked: a
    boolean causal mask instead of `is_causal` (what packed fine-tuning rows use)."""
    for t in (q, k, v):
        t.grad = None
    if masked:
        T = q.shape[2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y.backward(torch.ones_like(y))
    return [y.detach(), q.grad, k.grad, v.grad]


def check_runs(name: str, device: torch.device, dtype: torch.dtype, n_head: int, head_dim: int,
               masked: bool = False) -> None:
    """A pinned backend that cannot run the run's attention here is a one-line GerbilError now."""
    if name in ("auto", "default"):
        return
    try:
        qkv = attention_inputs(device, dtype, (1, n_head, 16, head_dim))
        with pinned(name):
            attention_call(*qkv)
            if masked:  # packed rows are masked; the others take the causal path above
                attention_call(*qkv, masked=True)
    except RuntimeError as e:
        why = " ".join(str(e).split())[:200]
        raise GerbilError(f"sdpa_backend {name}: no {name} kernel runs this model's attention on {device} "
                          f"({dtype}, head_dim {head_dim}{', masked rows' if masked else ''}): {why}; use auto or "
                          f"default") from None
