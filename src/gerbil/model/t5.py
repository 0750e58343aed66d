"""T5Blender: the T5 encoder-decoder, in one readable file (docs/reference.md §9).

transformers' `T5ForConditionalGeneration` is the reference for the exact math (tests/test_t5.py checks
the logits to 1e-5 in fp32); model/t5_hf.py maps the weights both ways. The choices inside T5's family:

- **gated-GELU feed-forward** (T5 v1.1, ``feed_forward_proj="gated-gelu"``): ``wo(gelu_new(wi_0 x) ·
  wi_1 x)``. Shazeer 2020 ("GLU Variants Improve Transformer") found it better than the original ReLU
  at equal parameters, and its activation is the tanh GELU every Gerbil model uses.
- **one shared embedding matrix** for the encoder input, the decoder input and the head (original T5,
  ``tie_word_embeddings=True``), with T5's d_model^-1/2 rescaling of the decoder output before the head.
  At a 50,264-token vocabulary an untied head would cost another V·d parameters — at the 24m preset's
  width, more than all the blocks together — and tied T5 folders load without warnings in transformers
  4 and 5 alike. The head has no bias (T5 has none).

Layout (pre-norm; norms are T5's RMS norm: weight only, no mean, fp32 variance):

    encoder layer:  x = x + attn(norm(x), bias_enc)            x = x + ff(norm(x))
    decoder layer:  x = x + attn(norm(x), bias_dec, causal)    x = x + cross(norm(x), enc)    x = x + ff(norm(x))

Attention has no 1/sqrt(d) scaling (T5 folds it into the init) and adds a learned relative-position bias:
one (buckets, heads) table per stack, bidirectional buckets in the encoder, causal ones in the decoder,
shared by all layers of that stack; cross-attention has none. Projections are fused for speed (q/k/v
into ``qkv``, cross k/v into ``kv``, ``wi_0``/``wi_1`` into ``wi``); t5_hf.py splits them.

`forward(encoder_ids, decoder_ids, ...) -> hidden (B, Td, d)` already multiplied by d^-1/2, i.e. what
the head sees: ``lm_loss(hidden, model.lm_head.weight, model.lm_head.bias (None), targets)`` is the loss
without the full logits, as for GPT. Packed rows and padding: model/encdec.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gerbil.model.config import ModelConfig
from gerbil.model.encdec import causal_mask, cross_attend, cross_mask, decoder_self_mask, encoder_self_mask


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucket of each (key − query) distance (transformers' `_relative_position_bucket`): half the
    buckets exact for small distances, the rest logarithmic up to `max_distance`; bidirectional splits
    them between the two directions, causal maps every future key to bucket 0."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


class RMSNorm(nn.Module):
    """T5's layer norm: x / rms(x) · weight, no mean and no bias; the variance in fp32."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class RelativeBias(nn.Module):
    """One stack's learned (buckets, heads) table → additive scores (1, heads, Tq, Tk)."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cfg.rel_buckets, cfg.n_head))
        self.bidirectional, self.max_distance = bidirectional, cfg.rel_max_distance

    def forward(self, tq: int, tk: int, device: torch.device) -> torch.Tensor:
        rel = torch.arange(tk, device=device)[None, :] - torch.arange(tq, device=device)[:, None]  # (Tq, Tk)
        b = relative_position_bucket(rel, self.bidirectional, self.weight.shape[0], self.max_distance)
        return F.embedding(b, self.weight).permute(2, 0, 1)[None]  # (1, h, Tq, Tk)


def _scores_mask(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The additive attention mask SDPA gets: the position bias, −inf where `mask` forbids."""
    if mask is None:
        return bias
    return torch.where(mask, bias, float("-inf"))  # (B or 1, h, Tq, Tk)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.d_kv, self.inner = cfg.n_head, cfg.d_kv, cfg.n_head * cfg.d_kv
        self.qkv = nn.Linear(cfg.d_model, 3 * self.inner, bias=False)  # rows: q, k, v
        self.o = nn.Linear(self.inner, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """x (B, T, d); scores: additive (B or 1, h, T, T) = position bias + mask."""
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.d_kv).transpose(1, 2) for t in self.qkv(x).split(self.inner, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=scores.to(q.dtype), scale=1.0)  # (B, h, T, d_kv)
        return self.o(y.transpose(1, 2).reshape(B, T, self.inner))


class CrossAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.d_kv, self.inner = cfg.n_head, cfg.d_kv, cfg.n_head * cfg.d_kv
        self.q = nn.Linear(cfg.d_model, self.inner, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * self.inner, bias=False)  # rows: k, v
        self.o = nn.Linear(self.inner, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, Td, d) queries; enc (B, Te, d) the encoder output; mask bool or None (model/encdec.py)."""
        return cross_attend(x, enc, self.q, self.kv, self.o, self.n_head, self.d_kv, mask, scale=1.0)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_ff = cfg.d_ff
        self.wi = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)  # rows: wi_0 (gated), wi_1 (linear)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, lin = self.wi(x).split(self.d_ff, -1)
        return self.wo(F.gelu(gate, approximate="tanh") * lin)  # gelu_new == the tanh approximation


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_attn, self.attn = RMSNorm(cfg.d_model, cfg.layer_norm_eps), SelfAttention(cfg)
        self.ln_ff, self.ff = RMSNorm(cfg.d_model, cfg.layer_norm_eps), FeedForward(cfg)

    def forward(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), scores)
        return x + self.ff(self.ln_ff(x))


class DecoderLayer(EncoderLayer):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.ln_cross, self.cross = RMSNorm(cfg.d_model, cfg.layer_norm_eps), CrossAttention(cfg)

    def forward(self, x: torch.Tensor, scores: torch.Tensor, enc: torch.Tensor = None,
                xmask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), scores)
        x = x + self.cross(self.ln_cross(x), enc, xmask)
        return x + self.ff(self.ln_ff(x))


class TiedHead:
    """``model.lm_head`` of a tied model: ``.weight`` is the shared embedding, ``.bias`` None. Not a module,
    so the matrix has one name in the state dict (safetensors refuses tensors saved twice)."""

    def __init__(self, embedding: nn.Embedding):
        self._embedding = embedding

    @property
    def weight(self) -> nn.Parameter:
        return self._embedding.weight

    bias = None


class T5(nn.Module):
    """T5Blender. `forward(encoder_ids, decoder_ids, ...) -> hidden (B, Td, d)` (scaled for the head);
    `logits(hidden) -> (..., vocab)`; `encode` / `decode` for generation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "t5":
            raise ValueError(f"T5 needs a ModelConfig with arch 't5', got {cfg.arch!r}")
        self.config = cfg
        self.shared = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)  # rows past vocab_size: padding
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.encoder_rel_bias = RelativeBias(cfg, bidirectional=True)
        self.encoder_ln = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layer))
        self.decoder_rel_bias = RelativeBias(cfg, bidirectional=False)
        self.decoder_ln = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.lm_head = TiedHead(self.shared)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """transformers' T5 init (`T5PreTrainedModel._init_weights`, factor = ``config.init_std``): the
        embedding N(0, f); q N(0, f·(d·d_kv)^-1/2), k, v and wi N(0, f·d^-1/2), o N(0, f·(h·d_kv)^-1/2),
        wo N(0, f·d_ff^-1/2), bias tables N(0, f·d^-1/2); norms 1. Padding rows are zeroed."""
        c = self.config
        f, d, inner = c.init_std, c.d_model, c.n_head * c.d_kv

        def normal(t: torch.Tensor, std: float) -> None:
            t.normal_(0.0, std, generator=generator)

        normal(self.shared.weight, f)
        self.shared.weight[c.vocab_size:].zero_()
        for rb in (self.encoder_rel_bias, self.decoder_rel_bias):
            normal(rb.weight, f * d ** -0.5)
        for layer in [*self.encoder, *self.decoder]:
            attns = [(layer.attn.qkv.weight[:inner], layer.attn.qkv.weight[inner:], layer.attn.o.weight)]
            if isinstance(layer, DecoderLayer):
                attns.append((layer.cross.q.weight, layer.cross.kv.weight, layer.cross.o.weight))
            for q, kv, o in attns:
                normal(q, f * (d * c.d_kv) ** -0.5)
                normal(kv, f * d ** -0.5)
                normal(o, f * inner ** -0.5)
            normal(layer.ff.wi.weight, f * d ** -0.5)
            normal(layer.ff.wo.weight, f * c.d_ff ** -0.5)
        for m in self.modules():
            if isinstance(m, RMSNorm):
                m.weight.fill_(1.0)

    def encode(self, encoder_ids: torch.Tensor, encoder_segments: torch.Tensor | None = None,
               encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """encoder_ids (B, Te) → the encoder's output (B, Te, d) after its final norm."""
        Te = encoder_ids.shape[1]
        bias = self.encoder_rel_bias(Te, Te, encoder_ids.device)  # (1, h, Te, Te), shared by all layers
        scores = _scores_mask(bias, encoder_self_mask(encoder_segments, encoder_mask))
        x = self.shared(encoder_ids)
        for layer in self.encoder:
            x = layer(x, scores)
        return self.encoder_ln(x)

    def decode(self, decoder_ids: torch.Tensor, encoded: torch.Tensor, decoder_segments: torch.Tensor | None = None,
               encoder_segments: torch.Tensor | None = None, encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """decoder_ids (B, Td) attending to `encoded` (B, Te, d) → hidden (B, Td, d), scaled by d^-1/2."""
        Td = decoder_ids.shape[1]
        bias = self.decoder_rel_bias(Td, Td, decoder_ids.device)
        self_mask = decoder_self_mask(decoder_segments, Td)
        scores = _scores_mask(bias, causal_mask(Td, decoder_ids.device) if self_mask is None else self_mask)
        xmask = cross_mask(decoder_segments, encoder_segments, encoder_mask)
        x = self.shared(decoder_ids)
        for layer in self.decoder:
            x = layer(x, scores, encoded, xmask)
        return self.decoder_ln(x) * self.config.d_model ** -0.5  # tied head: T5's rescaling

    def forward(self, encoder_ids: torch.Tensor, decoder_ids: torch.Tensor,
                encoder_segments: torch.Tensor | None = None, decoder_segments: torch.Tensor | None = None,
                encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """encoder_ids (B, Te), decoder_ids (B, Td) → hidden (B, Td, d) as the head sees it.

        encoder_segments / decoder_segments (packed rows) or encoder_mask (padding): model/encdec.py.
        """
        enc = self.encode(encoder_ids, encoder_segments, encoder_mask)
        return self.decode(decoder_ids, enc, decoder_segments, encoder_segments, encoder_mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the tied head: (..., d) → (..., vocab_size) — the padded rows are sliced off."""
        return F.linear(hidden, self.shared.weight)[..., : self.config.vocab_size]

    def n_params(self, kind: str = "total") -> int:
        """Parameter count at the real vocabulary (padding excluded); see ModelConfig.n_params."""
        return self.config.n_params(kind)


__all__ = ["T5", "relative_position_bucket", "RMSNorm", "TiedHead"]
