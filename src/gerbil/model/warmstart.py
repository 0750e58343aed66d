"""An encoder-decoder warm-started from a decoder-only Gerbil (GPT-J) checkpoint (Rothe, Narayan and Severyn
2020, "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks"; docs/reference.md §9).

    encoder : the base's embedding and blocks with bidirectional attention, then the base's final norm
    decoder : the base's embedding and blocks, each with a new cross-attention branch, the final norm, and
              the base's head (untied, with bias)

GPT-J's block runs attention and MLP in parallel off one LayerNorm; the cross-attention is a third
parallel branch off the same norm output::

    h = ln_1(x)
    x = x + attn(h) + mlp(h) + cross(h, encoder_output)

``cross`` has q/k/v/out projections without bias and no rotary (encoder and decoder positions are not
comparable); its output projection starts at **zero**, so before any training the decoder computes exactly
the base model's hidden states — bitwise: ``(x + a + m) + 0`` is ``x + a + m`` — whatever the encoder
input (tests/test_warmstart.py). q/k/v start as transformers' GPT-J init, N(0, init_std); they receive
gradient from the first step on, once the output projection has moved off zero.

``share=True`` is Rothe et al.'s "share" variant: encoder and decoder use the same blocks and final norm
(one copy of the base's weights, only the cross-attention is new); ``share=False`` copies the base twice.
The rotary positions restart at 0 in both stacks. The decoder start id is the token the base saw at the
start of its documents in causal mode: ``<causal>`` for a causal or Blender base, ``<|endoftext|>`` for a
plain one (GPT-2 documents follow an EOT).

Interface = T5Blender's (model/t5.py): `forward(encoder_ids, decoder_ids, ...) -> hidden (B, Td, d)`,
``lm_head`` (weight, bias) for `lm_loss`, `logits`, `encode` / `decode`; masks: model/encdec.py. Its
transformers form is model/modeling_gerbil_encdec.py (model/warmstart_hf.py writes the folder).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from gerbil.data.objectives import mode_prefix
from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig
from gerbil.model.encdec import cross_attend, cross_mask, decoder_self_mask, encoder_self_mask
from gerbil.model.model import GPT, Block, rotary_tables


@dataclass
class WarmStartConfig:
    """A warm-started encoder-decoder: the base's GPT-J config, sharing, and the decoder start id."""

    base: ModelConfig
    share: bool = False
    decoder_start_id: int = EOT_ID
    is_encoder_decoder = True  # a class constant, not a field

    def __post_init__(self) -> None:
        if self.base.arch != "gptj":
            raise GerbilError(f"a warm-start base must be a decoder-only GPT-J model, not arch {self.base.arch!r}")

    def __getattr__(self, name: str):  # vocab_size, d_model, n_layer, seq_len, ... of the base
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def arch(self) -> str:
        return "gptj-warmstart"

    def n_params(self, kind: str = "total") -> int:
        """Parameters at the real vocabulary: the base's, the new cross-attention (4d² per layer) and, without
        sharing, a second copy of the blocks and the final norm. "embedding" = wte + head, as for GPT."""
        d, L = self.base.d_model, self.base.n_layer
        if kind == "embedding":
            return self.base.n_params("embedding")
        extra = L * 4 * d * d + (0 if self.share else self.base.n_params("non_embedding"))
        if kind == "non_embedding":
            return self.base.n_params("non_embedding") + extra
        if kind == "total":
            return self.base.n_params("total") + extra
        raise ValueError(f"unknown parameter kind {kind!r} (total, non_embedding, embedding)")

    def to_dict(self) -> dict:
        return {"arch": "gptj-warmstart", "base": self.base.to_dict(), "share": self.share,
                "decoder_start_id": self.decoder_start_id}

    @classmethod
    def from_dict(cls, d: dict) -> WarmStartConfig:
        if d.get("arch") != "gptj-warmstart":
            raise GerbilError(f"not a warm-start config (arch {d.get('arch')!r})")
        return cls(ModelConfig.from_dict(d["base"]), bool(d["share"]), int(d["decoder_start_id"]))


class CrossAttention(nn.Module):
    """Decoder → encoder attention, GPT-J style (bias-free projections), no rotary; out_proj starts at zero."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv_proj = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)  # rows: k, v
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, h: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """h (B, Td, d) the decoder's normed states; enc (B, Te, d); mask bool (model/encdec.py) or None."""
        return cross_attend(h, enc, self.q_proj, self.kv_proj, self.out_proj, self.n_head, self.head_dim, mask)


_ALL = torch.ones(1, 1, 1, 1, dtype=torch.bool)  # "attend everywhere": GPT-J's Attention treats None as causal


class WarmStartEncDec(nn.Module):
    """Encoder-decoder from GPT-J blocks (module docstring). Parameter names: GPT's ``wte``, ``h.{i}`` (the
    encoder's blocks, and the decoder's when shared), ``ln_f`` and ``lm_head``; ``dec_h.{i}`` and ``ln_enc``
    (the decoder's blocks and the encoder's final norm) only without sharing; ``cross.{i}``."""

    def __init__(self, cfg: WarmStartConfig):
        super().__init__()
        base = cfg.base
        self.config = cfg
        self.wte = nn.Embedding(base.padded_vocab_size, base.d_model)
        self.h = nn.ModuleList(Block(base) for _ in range(base.n_layer))
        self.dec_h = None if cfg.share else nn.ModuleList(Block(base) for _ in range(base.n_layer))
        self.cross = nn.ModuleList(CrossAttention(base) for _ in range(base.n_layer))
        self.ln_enc = None if cfg.share else nn.LayerNorm(base.d_model, eps=base.layer_norm_eps)
        self.ln_f = nn.LayerNorm(base.d_model, eps=base.layer_norm_eps)
        self.lm_head = nn.Linear(base.d_model, base.padded_vocab_size, bias=True)
        cos, sin = rotary_tables(base.seq_len, base.rotary_dim)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def reset_cross(self, generator: torch.Generator | None = None) -> None:
        """The new branches: q/k/v N(0, init_std), the output projection zero (a no-op at start)."""
        for c in self.cross:
            c.q_proj.weight.normal_(0.0, self.config.base.init_std, generator=generator)
            c.kv_proj.weight.normal_(0.0, self.config.base.init_std, generator=generator)
            c.out_proj.weight.zero_()

    def _rope(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if T > self.rope_cos.shape[0] or self.rope_cos.device != device:
            self.rope_cos, self.rope_sin = rotary_tables(max(T, self.config.base.seq_len),
                                                         self.config.base.rotary_dim, device=device)
        return self.rope_cos[:T], self.rope_sin[:T]

    def encode(self, encoder_ids: torch.Tensor, encoder_segments: torch.Tensor | None = None,
               encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """encoder_ids (B, Te) → (B, Te, d): the base's blocks, bidirectional, then the encoder's final norm."""
        cos, sin = self._rope(encoder_ids.shape[1], encoder_ids.device)
        mask = encoder_self_mask(encoder_segments, encoder_mask)
        mask = _ALL.to(encoder_ids.device) if mask is None else mask
        x = self.wte(encoder_ids)
        for block in self.h:
            x = block(x, cos, sin, mask)
        return (self.ln_f if self.ln_enc is None else self.ln_enc)(x)

    def decode(self, decoder_ids: torch.Tensor, encoded: torch.Tensor, decoder_segments: torch.Tensor | None = None,
               encoder_segments: torch.Tensor | None = None, encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """decoder_ids (B, Td) attending to `encoded` (B, Te, d) → hidden (B, Td, d) after the final norm."""
        cos, sin = self._rope(decoder_ids.shape[1], decoder_ids.device)
        self_mask = decoder_self_mask(decoder_segments, decoder_ids.shape[1])  # None: causal
        xmask = cross_mask(decoder_segments, encoder_segments, encoder_mask)
        x = self.wte(decoder_ids)
        for block, cross in zip(self.h if self.dec_h is None else self.dec_h, self.cross):
            h = block.ln_1(x)
            x = x + block.attn(h, cos, sin, self_mask) + block.mlp(h) + cross(h, encoded, xmask)
        return self.ln_f(x)

    def forward(self, encoder_ids: torch.Tensor, decoder_ids: torch.Tensor,
                encoder_segments: torch.Tensor | None = None, decoder_segments: torch.Tensor | None = None,
                encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """encoder_ids (B, Te), decoder_ids (B, Td) → the decoder's hidden states (B, Td, d)."""
        enc = self.encode(encoder_ids, encoder_segments, encoder_mask)
        return self.decode(decoder_ids, enc, decoder_segments, encoder_segments, encoder_mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the head: (..., d) → (..., vocab_size) — the padded rows are sliced off."""
        return self.lm_head(hidden)[..., : self.config.base.vocab_size]

    def n_params(self, kind: str = "total") -> int:
        return self.config.n_params(kind)


def decoder_start_for(objective: str | None) -> int:
    """The decoder start id for a base trained with ``objective``: its causal mode token, else EOT."""
    prefix = mode_prefix(objective)
    return int(prefix[0]) if prefix else EOT_ID


def warm_start(base: nn.Module, meta: dict | None = None, share: bool = False, decoder_start_id: int | None = None,
               seed: int = 0) -> WarmStartEncDec:
    """A `WarmStartEncDec` from a decoder-only GPT (its weights copied; ``base`` is not changed).

    meta: the base's checkpoint/export meta (`export.load_model`): its ``objective`` picks the decoder start
    id (`decoder_start_for`) unless one is given; a fine-tuned classifier is refused. The new
    cross-attention is drawn from ``seed`` with a local generator (no global RNG is touched). A classifier,
    a T5 or another encoder-decoder is a one-line GerbilError.
    """
    base = getattr(base, "_orig_mod", base)
    meta = meta or {}
    if hasattr(base, "score") or (meta.get("finetune") or {}).get("task") == "classify":
        raise GerbilError("cannot warm-start from a classifier: it has no language-model head (use a pretrained "
                          "Gerbil, GerbilBlender or sft run)")
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        raise GerbilError("the base is already an encoder-decoder (T5 or warm-started); warm-start from a "
                          "decoder-only Gerbil model")
    if not isinstance(base, GPT):
        raise GerbilError(f"cannot warm-start from a {type(base).__name__}: need a decoder-only Gerbil (GPT-J) model")
    start = decoder_start_for(meta.get("objective")) if decoder_start_id is None else int(decoder_start_id)
    cfg = WarmStartConfig(dataclasses.replace(base.config), share=bool(share), decoder_start_id=start)
    with torch.device("meta"):
        model = WarmStartEncDec(cfg)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    if not share:
        state.update({f"dec_{k}": v.clone() for k, v in state.items() if k.startswith("h.")})
        state.update({k.replace("ln_f.", "ln_enc."): v.clone() for k, v in state.items() if k.startswith("ln_f.")})
    device = base.wte.weight.device
    d = cfg.base.d_model
    for i in range(cfg.base.n_layer):
        state[f"cross.{i}.q_proj.weight"] = torch.empty(d, d, device=device)
        state[f"cross.{i}.kv_proj.weight"] = torch.empty(2 * d, d, device=device)
        state[f"cross.{i}.out_proj.weight"] = torch.empty(d, d, device=device)
    model.load_state_dict(state, strict=True, assign=True)
    model.rope_cos, model.rope_sin = rotary_tables(cfg.base.seq_len, cfg.base.rotary_dim, device=device)
    model.reset_cross(torch.Generator(device=device).manual_seed(int(seed)))
    return model


def empty_model(cfg: WarmStartConfig, device: str | torch.device = "cpu") -> WarmStartEncDec:
    """A `WarmStartEncDec` of ``cfg`` with uninitialized weights, to load a checkpoint into."""
    with torch.device("meta"):
        model = WarmStartEncDec(copy.deepcopy(cfg))
    model = model.to_empty(device=device)
    model.rope_cos, model.rope_sin = rotary_tables(cfg.base.seq_len, cfg.base.rotary_dim, device=device)
    return model


__all__ = ["WarmStartConfig", "WarmStartEncDec", "CrossAttention", "warm_start", "decoder_start_for", "empty_model"]
