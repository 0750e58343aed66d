"""Attention masks shared by gerbil's encoder-decoders (T5Blender, model/t5.py; warm-started GPT-J,
model/warmstart.py).

Both models take the same inputs: ``encoder_ids`` (B, Te), ``decoder_ids`` (B, Td) and, optionally,

- ``encoder_segments`` (B, Te) / ``decoder_segments`` (B, Td), int: packed rows (data/encdec_loader.py) hold
  several examples; example j's encoder and decoder tokens carry segment j + 1 and padding carries 0. A
  token attends only within its own segment (the decoder causally), and a decoder token only to the
  encoder tokens of its own example. Positions need no restart per segment: T5's relative buckets and
  rotary attention depend only on the distance between two tokens of the same example, so a packed row
  computes what the examples would compute alone (tests/test_t5.py checks it).
- ``encoder_mask`` (B, Te), 1 = real token, 0 = padding (transformers' ``attention_mask``): every query
  attends to the real encoder tokens only. Used by evaluation and generation, not with segments.

Masks are boolean, True where a query may attend to a key, shaped to broadcast against
(B, heads, queries, keys). ``None`` means "no restriction" for the encoder and cross-attention and "plain
causal" for the decoder. No row is ever fully masked (a padding token attends at least to itself, or in
cross-attention to the whole encoder row), so padding never turns into NaNs that a zero loss weight
could not cancel.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def encoder_self_mask(encoder_segments: torch.Tensor | None = None,
                      encoder_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """(B, 1, Te, Te) same-segment mask, (B, 1, 1, Te) key-padding mask, or None (bidirectional)."""
    if encoder_segments is not None:
        s = encoder_segments
        return (s[:, None, :, None] == s[:, None, None, :])  # padding (0) attends to padding: never empty
    if encoder_mask is not None:
        return encoder_mask[:, None, None, :].bool()
    return None


def decoder_self_mask(decoder_segments: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """(B, 1, Td, Td) causal same-segment mask, or None (plain causal)."""
    if decoder_segments is None:
        return None
    s = decoder_segments
    causal = torch.ones(length, length, dtype=torch.bool, device=s.device).tril()
    return (s[:, None, :, None] == s[:, None, None, :]) & causal  # the diagonal is always allowed


def cross_mask(decoder_segments: torch.Tensor | None = None, encoder_segments: torch.Tensor | None = None,
               encoder_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """(B, 1, Td, Te) decoder → encoder mask: a decoder token sees its own example's encoder tokens (padding
    in the decoder sees the whole encoder row, so no row is empty); (B, 1, 1, Te) for padding; or None."""
    if decoder_segments is not None and encoder_segments is not None:
        d, e = decoder_segments, encoder_segments
        return (d[:, None, :, None] == e[:, None, None, :]) | (d == 0)[:, None, :, None]
    if (decoder_segments is None) != (encoder_segments is None):
        raise ValueError("packed rows need both encoder_segments and decoder_segments")
    if encoder_mask is not None:
        return encoder_mask[:, None, None, :].bool()
    return None


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """(1, 1, T, T) lower-triangular boolean mask."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]


def cross_attend(x: torch.Tensor, enc: torch.Tensor, q: nn.Linear, kv: nn.Linear, o: nn.Linear, n_head: int,
                 head_dim: int, mask: torch.Tensor | None, scale: float | None = None) -> torch.Tensor:
    """Decoder → encoder attention: queries ``q(x)`` (x (B, Td, d)), keys and values the row blocks of
    ``kv(enc)`` (enc (B, Te, d)), then ``o``; no position information. ``scale`` None = 1/sqrt(head_dim)."""
    B, T, _ = x.shape
    inner = n_head * head_dim
    qh = q(x).view(B, T, n_head, head_dim).transpose(1, 2)  # (B, h, Td, hd)
    k, v = (t.view(B, enc.shape[1], n_head, head_dim).transpose(1, 2) for t in kv(enc).split(inner, -1))
    y = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, scale=scale)  # (B, h, Td, hd)
    return o(y.transpose(1, 2).reshape(B, T, inner))


__all__ = ["encoder_self_mask", "decoder_self_mask", "cross_mask", "causal_mask", "cross_attend"]
