"""A plain PyTorch GPT-J — the model a user would write in an afternoon (nanoGPT style) — as the
"fast hand-written baseline" of the throughput benchmarks: the same shapes and math as gerbil's model
(parallel attention + MLP off one LayerNorm, interleaved rotary, untied head with bias), full-vocabulary
logits and `F.cross_entropy`, meant to run under `torch.compile` with bf16 autocast and fused AdamW.

Only for benchmarks; it is not part of the package (gerbil's own model is `gerbil.model.model.GPT`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PlainGPTJ(nn.Module):
    def __init__(self, vocab: int, d: int, n_layer: int, n_head: int, rotary_dim: int, seq_len: int):
        super().__init__()
        self.n_head, self.rot = n_head, rotary_dim
        self.wte = nn.Embedding(vocab, d)
        self.ln = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_layer))
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d, bias=False) for _ in range(n_layer))
        self.out = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n_layer))
        self.fc_in = nn.ModuleList(nn.Linear(d, 4 * d) for _ in range(n_layer))
        self.fc_out = nn.ModuleList(nn.Linear(4 * d, d) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        inv = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
        f = torch.outer(torch.arange(seq_len).float(), inv)
        self.register_buffer("cos", f.cos(), persistent=False)
        self.register_buffer("sin", f.sin(), persistent=False)

    def _rope(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, nh, T, hs), interleaved pairs
        T = x.shape[2]
        xr, xp = x[..., : self.rot], x[..., self.rot:]
        a, b = xr[..., 0::2], xr[..., 1::2]
        c, s = self.cos[:T], self.sin[:T]
        r = torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)
        return torch.cat((r.to(x.dtype), xp), dim=-1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx)
        for ln, qkv, out, fi, fo in zip(self.ln, self.qkv, self.out, self.fc_in, self.fc_out):
            h = ln(x)
            q, k, v = qkv(h).view(B, T, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)  # 3 × (B, nh, T, hs)
            y = F.scaled_dot_product_attention(self._rope(q), self._rope(k), v, is_causal=True)
            x = x + out(y.transpose(1, 2).reshape(B, T, -1)) + fo(F.gelu(fi(h), approximate="tanh"))
        logits = self.head(self.ln_f(x))  # (B, T, V): full logits, as a user would
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
