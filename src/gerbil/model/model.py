"""The GPT-J model, in one readable file.

Block (docs/reference.md §1, transformers' `GPTJBlock` is the reference for the exact math):

    h = ln_1(x)
    x = x + attn(h) + mlp(h)          # attention and MLP in parallel off ONE LayerNorm

- attention: q/k/v/out projections without bias; rotary embedding on the first `rotary_dim` dims of
  each head in GPT-J's interleaved layout (pairs (x0,x1), (x2,x3), ... are rotated), causal SDPA.
- MLP: fc_in (d→4d, bias) → gelu_new (tanh approximation) → fc_out (4d→d, bias).
- final LayerNorm `ln_f`; untied `lm_head` with bias.

`forward(idx)` returns hidden states (after ln_f), not logits: the training loss applies the head
chunk by chunk (loss.py) so a micro-batch's full-vocabulary logits never exist at once, and
evaluation applies `logits()` only where it scores tokens.

Parameter names are transformers' GPT-J names without the `transformer.` prefix, except that
q/k/v are one fused `qkv_proj` (one matmul instead of three: fewer kernel launches, which matters at
d_model 32-640); export/mapping.py splits it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gerbil.model.config import ModelConfig


def rotary_tables(seq_len: int, rotary_dim: int, device=None, base: float = 10000.0):
    """cos/sin tables of shape (seq_len, rotary_dim // 2), in fp32 (GPT-J's `create_sinusoidal_positions`)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # (T, rot/2)
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotate the first `rotary_dim` dims of each head, interleaved ("rotate every two") layout.

    x: (B, nh, T, hs); cos/sin: (T, rot/2). Pair (x[2i], x[2i+1]) becomes
    (x[2i]·cos_i − x[2i+1]·sin_i, x[2i+1]·cos_i + x[2i]·sin_i).
    """
    if rotary_dim == 0:
        return x
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    xr = x_rot.float().unflatten(-1, (rotary_dim // 2, 2))  # (B, nh, T, rot/2, 2)
    x0, x1 = xr[..., 0], xr[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)
    return torch.cat((out.to(x.dtype), x_pass), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.rotary_dim = cfg.n_head, cfg.head_dim, cfg.rotary_dim
        self.qkv_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # rows: q, k, v
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, d); cos/sin: (T, rot/2) or per row (B, 1, T, rot/2); attn_mask: None (causal) or a
        boolean (B, 1, T, T) mask, True where a query may attend to a key."""
        B, T, C = x.shape
        q, k, v = self.qkv_proj(x).split(C, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin, self.rotary_dim)  # contiguous (B, nh, T, hs): a fixed summation order
        k = apply_rotary(k, cos, sin, self.rotary_dim)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.out_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.fc_out = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))  # gelu_new == tanh approximation


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        return x + self.attn(h, cos, sin, attn_mask) + self.mlp(h)


class GPT(nn.Module):
    """GPT-J language model. `forward(idx) -> hidden (B, T, d)`; `logits(hidden) -> (..., vocab)`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "gptj":
            raise ValueError(f"GPT needs a ModelConfig with arch 'gptj', got {cfg.arch!r} (T5: gerbil.model.t5)")
        self.config = cfg
        V = cfg.padded_vocab_size  # rows past cfg.vocab_size are padding (never predicted, never counted)
        self.wte = nn.Embedding(V, cfg.d_model)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, V, bias=True)
        # rotary tables are buffers (not parameters, not saved): rebuilt for any device/length.
        cos, sin = rotary_tables(cfg.seq_len, cfg.rotary_dim)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-J/GPT-2 style init: N(0, init_std) weights, zero biases, unit LayerNorms.

        Output projections (out_proj, fc_out) are scaled by 1/sqrt(2·n_layer) as in GPT-2, since two
        residual branches per block add into the stream. Padded vocabulary rows are zeroed.
        """
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "ln" in name:
                p.fill_(1.0)
            else:
                s = std / math.sqrt(2 * self.config.n_layer) if name.endswith(("out_proj.weight", "fc_out.weight")) else std
                p.normal_(0.0, s, generator=generator)
        V = self.config.vocab_size
        self.wte.weight[V:].zero_()
        self.lm_head.weight[V:].zero_()
        self.lm_head.bias[V:].zero_()

    def _rope(self, T: int, device: torch.device):
        if T > self.rope_cos.shape[0] or self.rope_cos.device != device:
            cos, sin = rotary_tables(max(T, self.config.seq_len), self.config.rotary_dim, device=device)
            self.rope_cos, self.rope_sin = cos, sin
        return self.rope_cos[:T], self.rope_sin[:T]

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids → hidden states (B, T, d) after the final LayerNorm.

        positions: (B, T) rotary positions (default 0…T-1 in every row); attn_mask: (B, 1, T, T) bool,
        True where query a may attend to key b (default causal). Together they let evaluation put an
        item's shared context once in a row followed by each request's own suffix, every suffix
        attending to the context and itself with positions continuing from the context — the same
        computation as separate rows (gerbil.eval.scoring).
        """
        B, T = idx.shape
        if positions is None:
            cos, sin = self._rope(T, idx.device)  # (T, rot/2)
        else:
            cos_t, sin_t = self._rope(int(positions.max()) + 1, idx.device)
            cos, sin = cos_t[positions].unsqueeze(1), sin_t[positions].unsqueeze(1)  # (B, 1, T, rot/2)
        x = self.wte(idx)  # (B, T, d)
        for block in self.h:
            x = block(x, cos, sin, attn_mask)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the head: (..., d) → (..., vocab_size) — the padded rows are sliced off."""
        return self.lm_head(hidden)[..., : self.config.vocab_size]

    def n_params(self, kind: str = "total") -> int:
        """Parameter count at the real vocabulary (padding excluded); see ModelConfig.n_params."""
        return self.config.n_params(kind)
