"""Model configuration and the Gerbil size ladder, with every per-size default in one table.

Pure Python (no torch import): `gerbil plan` and the registry read these without touching a GPU.

The ladder is GPT-J shaped (docs/reference.md §1): parallel attention + MLP off one LayerNorm, rotary on
the first `rotary_dim` dims of each head, untied embedding and head, head with bias. Each rung also
carries the defaults that depend on size: the seed's global batch, the peak learning rate, and the MFU
assumed for time estimates (`default_mfu`).

`arch="t5"` is the T5Blender encoder-decoder (model/t5.py, docs/reference.md §9): transformers'
`T5ForConditionalGeneration` with gated-GELU feed-forwards and one embedding matrix shared by the encoder,
the decoder and the head. Its presets are `T5_SIZES`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gerbil.data.tokenizer import VOCAB_SIZE
from gerbil.errors import GerbilError, OptionError
from gerbil.units import DEFAULT_SEQ_LEN, fmt_params

ARCHS = ("gptj", "t5")
# Fields only an encoder-decoder uses; a GPT-J config's to_dict() leaves them out, so every gptj record
# (config.yaml, meta.json, exports) stays exactly what it was before T5 existed.
_T5_FIELDS = ("n_decoder_layer", "d_ff", "d_kv", "rel_buckets", "rel_max_distance")


@dataclass
class ModelConfig:
    """Architecture of one model: GPT-J (``arch="gptj"``) or T5 (``arch="t5"``). Serializable primitives only.

    For T5, ``n_layer`` is the encoder's depth and ``n_decoder_layer`` the decoder's; ``d_kv`` the width of
    one head (``n_head · d_kv`` the attention width), ``d_ff`` the gated-GELU inner width, ``rel_buckets`` /
    ``rel_max_distance`` the relative-position buckets; ``rotary_dim`` is 0 and ``init_std`` is transformers'
    ``initializer_factor`` (T5 scales every init by fan-in, model/t5.py).
    """

    d_model: int = 64
    n_layer: int = 4
    n_head: int = 4
    rotary_dim: int = 8
    vocab_size: int = VOCAB_SIZE
    # Maximum context; rotary has no learned positions, so this only bounds the rope cache and exports.
    seq_len: int = DEFAULT_SEQ_LEN
    # Pad the embedding/head rows to a multiple of this for tensor-core friendly shapes (1 = no padding).
    # Padded rows are never counted as parameters and their logits are masked to -inf.
    pad_vocab_multiple: int = 1
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    arch: str = "gptj"
    name: str = ""
    # encoder-decoder (arch "t5") only; see the class docstring
    n_decoder_layer: int = 0
    d_ff: int = 0
    d_kv: int = 0
    rel_buckets: int = 32
    rel_max_distance: int = 128

    def __post_init__(self) -> None:
        for f in ("d_model", "n_layer", "n_head", "vocab_size", "seq_len", "pad_vocab_multiple"):
            if int(getattr(self, f)) <= 0:
                raise OptionError(f"ModelConfig.{f} must be positive, got {getattr(self, f)}")
        if self.arch not in ARCHS:
            raise OptionError(f"unknown arch {self.arch!r} (supported: {', '.join(ARCHS)})")
        if self.arch == "t5":
            self._check_t5()
            return
        if self.d_model % self.n_head:
            raise OptionError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim or self.rotary_dim < 0:
            raise OptionError(f"rotary_dim {self.rotary_dim} must be even and <= head_dim {self.head_dim}")

    def _check_t5(self) -> None:
        for f in ("n_decoder_layer", "d_ff", "d_kv"):
            if int(getattr(self, f)) <= 0:
                raise OptionError(f"ModelConfig.{f} must be positive for arch t5, got {getattr(self, f)}")
        if self.rotary_dim != 0:
            raise OptionError(f"rotary_dim must be 0 for arch t5 (T5 has relative position buckets), "
                             f"got {self.rotary_dim}")
        # transformers' bucketing: half the buckets per direction in the encoder, half of those exact
        if self.rel_buckets < 4 or self.rel_buckets % 2 or self.rel_max_distance <= self.rel_buckets // 2:
            raise OptionError(f"rel_buckets must be even and >= 4 and rel_max_distance > rel_buckets / 2, got "
                             f"{self.rel_buckets}, {self.rel_max_distance}")

    @property
    def is_encoder_decoder(self) -> bool:
        return self.arch == "t5"

    @property
    def head_dim(self) -> int:
        return self.d_kv if self.arch == "t5" else self.d_model // self.n_head

    @property
    def shape(self) -> tuple:
        """What makes two configs the same model (a rung, a continuation's parent): the architecture and
        its dimensions — not the name, the context (`seq_len` only bounds rope tables), padding or init."""
        t5 = (self.n_decoder_layer, self.d_ff, self.d_kv) if self.arch == "t5" else ()
        return (self.arch, self.d_model, self.n_layer, self.n_head, self.rotary_dim, self.vocab_size) + t5

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return ((self.vocab_size + m - 1) // m) * m

    def n_params(self, kind: str = "total") -> int:
        """Parameter count at the real (unpadded) vocabulary.

        kind: "total" (everything), "non_embedding" (blocks + final LayerNorm; excludes the token
        embedding and the head weight+bias, the convention of docs/reference.md §1), or "embedding".
        """
        d, L, V = self.d_model, self.n_layer, self.vocab_size
        if self.arch == "t5":
            non_emb, emb = self._t5_params(), V * d  # one matrix: encoder + decoder embedding and the head
        else:
            # per block: ln (2d) + q,k,v,out (4d², no bias) + fc_in (4d²+4d) + fc_out (4d²+d)
            block = 2 * d + 4 * d * d + (4 * d * d + 4 * d) + (4 * d * d + d)
            non_emb = L * block + 2 * d  # + final LayerNorm
            emb = V * d + (V * d + V)  # wte + lm_head (weight + bias)
        if kind == "total":
            return non_emb + emb
        if kind == "non_embedding":
            return non_emb
        if kind == "embedding":
            return emb
        raise OptionError(f"unknown parameter kind {kind!r} (total, non_embedding, embedding)")

    def _t5_params(self) -> int:
        """T5 blocks: RMS norms (weight only), bias-free projections, one relative-bias table per stack."""
        d, inner, ff = self.d_model, self.n_head * self.d_kv, self.d_ff
        attn, ffn = 4 * d * inner, 3 * d * ff  # q,k,v,o; gated FF wi_0, wi_1, wo
        enc = self.n_layer * (2 * d + attn + ffn)
        dec = self.n_decoder_layer * (3 * d + 2 * attn + ffn)  # + cross-attention and its norm
        return enc + dec + 2 * d + 2 * self.rel_buckets * self.n_head  # + two final norms, two bias tables

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if self.arch == "gptj":
            for f in _T5_FIELDS:
                out.pop(f)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise OptionError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class SizeSpec:
    """One rung of the ladder: architecture + the seed's default global batch in tokens."""

    name: str
    d_model: int
    n_layer: int
    n_head: int
    rotary_dim: int
    batch_tokens: int  # the seed's global batch in tokens (docs/reference.md §3)
    lr: float  # default peak learning rate (see SIZES)
    source: str = ""

    def model_config(self, **overrides) -> ModelConfig:
        kw = dict(d_model=self.d_model, n_layer=self.n_layer, n_head=self.n_head,
                  rotary_dim=self.rotary_dim, name=self.name)
        kw.update(overrides)
        return ModelConfig(**kw)


# The six ladder sizes (docs/reference.md §1 and §3). Batch sizes: 65.5k = 32×2048, 131k = 64×2048, ...
# Peak learning rates are starting points, not tuned optima: Pythia-70m used 1e-3 and narrower models
# tolerate larger steps (μP-style ∝ 1/width), so the tiny rungs get more.
SIZES: dict[str, SizeSpec] = {
    s.name: s
    for s in [
        SizeSpec("3.3m", 32, 4, 4, 8, 65_536, 3e-3, "published config.json"),
        SizeSpec("6.7m", 64, 4, 4, 8, 131_072, 3e-3, "inferred from the param count"),
        SizeSpec("15m", 128, 6, 8, 16, 131_072, 2e-3, "inferred (A budget 280M in the seed)"),
        SizeSpec("32m", 256, 8, 8, 16, 262_144, 1.5e-3, "published config.json"),
        SizeSpec("77m", 512, 8, 8, 64, 262_144, 1e-3, "published config.json"),
        SizeSpec("104m", 640, 8, 10, 64, 1_048_576, 8e-4, "inferred from the param count"),
    ]
}
#: Peak LR for a model that is not a ladder rung (a custom shape).
CUSTOM_LR = 1e-3

PRESETS: dict[str, ModelConfig] = {name: spec.model_config() for name, spec in SIZES.items()}


@dataclass(frozen=True)
class T5SizeSpec:
    """One T5Blender preset: the encoder-decoder's shape + its default batch and peak learning rate."""

    name: str
    d_model: int
    n_layer: int  # encoder
    n_decoder_layer: int
    n_head: int
    d_kv: int
    d_ff: int
    batch_tokens: int
    lr: float
    source: str = ""

    def model_config(self, **overrides) -> ModelConfig:
        kw = dict(arch="t5", d_model=self.d_model, n_layer=self.n_layer, n_decoder_layer=self.n_decoder_layer,
                  n_head=self.n_head, d_kv=self.d_kv, d_ff=self.d_ff, rotary_dim=0, layer_norm_eps=1e-6,
                  init_std=1.0, name=self.name)
        kw.update(overrides)
        return ModelConfig(**kw)


# T5Blender presets (docs/reference.md §9). 24m: the seed's T5Blender rows trained 460M tokens at ratio 20,
# so ≈ 23.0M counted (total) parameters: d_model 256 (Gerbil-32m's width: a 12.87M tied embedding, 56%
# of the model), 6 + 6 layers and 4 heads of 64 (t5-small's depth and head width), and the gated-GELU
# width d_ff = 576 as the one free knob that lands the count at 22,903,040 (0.4% under 23.0M). The seed's
# batch, 131k; the learning rate is the 15m rung's starting point, not tuned.
T5_SIZES: dict[str, T5SizeSpec] = {
    s.name: s for s in [
        T5SizeSpec("24m", 256, 6, 6, 4, 64, 576, 131_072, 2e-3, "chosen: 20 x params = the seed's 460M"),
    ]
}


def get_arch_size(arch: str, name: str) -> SizeSpec | T5SizeSpec:
    """A preset of ``arch``: the GPT-J ladder (`get_size`) or `T5_SIZES`; a size without a preset for that
    architecture is a one-line GerbilError."""
    if arch == "gptj":
        return get_size(name)
    if arch != "t5":
        raise GerbilError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    key = str(name).strip().lower()
    if key not in T5_SIZES:
        raise GerbilError(f"size {name!r} has no T5 preset (T5 sizes: {', '.join(T5_SIZES)})")
    return T5_SIZES[key]


def arch_model_config(arch: str, size: str, **overrides) -> ModelConfig:
    """ModelConfig of a preset of either architecture, with field overrides."""
    return get_arch_size(arch, size).model_config(**overrides)


def get_size(name: str) -> SizeSpec:
    """Look up a ladder size by name ("6.7m", also accepts "6.7M")."""
    key = name.strip().lower()
    if key not in SIZES:
        raise OptionError(f"unknown size {name!r} (known: {', '.join(SIZES)})")
    return SIZES[key]


def model_config(size: str, **overrides) -> ModelConfig:
    """ModelConfig for a ladder size, with field overrides (e.g. vocab_size, pad_vocab_multiple)."""
    return get_size(size).model_config(**overrides)


def default_lr(size: str | None, arch: str = "gptj") -> float:
    """The default peak learning rate of a preset of ``arch`` (`CUSTOM_LR` for anything else)."""
    spec = (T5_SIZES if arch == "t5" else SIZES).get(str(size or "").strip().lower())
    return spec.lr if spec else CUSTOM_LR


def size_names() -> str:
    """The ladder's names for help texts: '3.3m 6.7m 15m 32m 77m 104m'."""
    return " ".join(SIZES)


# MFU of plain compiled PyTorch GPT-J (bf16, seq 2048) measured on one H200 on 2026-11-26
# (docs/reference.md §6) — not gerbil's own throughput, so time estimates that use it are estimates.
# Tiny models are launch- and memory-bound, so MFU climbs steeply with size; a flat 30% would make the
# 6.7m estimate five times too optimistic.
REFERENCE_MFU: dict[str, float] = {"6.7m": 0.06, "32m": 0.23, "77m": 0.37}


def default_mfu(model: ModelConfig) -> float:
    """MFU assumed for a time estimate: `REFERENCE_MFU` interpolated in log(total parameters).

    Clamped to the measured range outside it (3.3m → 6%, 104m → 37%): no extrapolation. The same MFU
    is assumed on every GPU — a rough estimate: the consumer cards have about the same bytes per
    FLOP as an H200, so their MFU at these sizes should be similar; measure and pass `mfu` to refine.
    """
    pts = sorted((SIZES[n].model_config().n_params(), u) for n, u in REFERENCE_MFU.items())
    x = math.log(model.n_params())
    if x <= math.log(pts[0][0]):
        return pts[0][1]
    for (n0, u0), (n1, u1) in zip(pts, pts[1:]):
        x0, x1 = math.log(n0), math.log(n1)
        if x <= x1:
            return u0 + (u1 - u0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


# ---------------------------------------------------------------------------- context, rung, shape
def context_len(seq_len: int | None = None) -> int:
    """The context of a preset model trained at `seq_len`: the ladder's `DEFAULT_SEQ_LEN`, or `seq_len`
    when longer (rotary has no learned positions: the context only bounds rope tables and exports, so a
    shorter training context keeps the ladder's model)."""
    return max(DEFAULT_SEQ_LEN, int(seq_len or DEFAULT_SEQ_LEN))


def ladder_model(size: str, seq_len: int | None = None, arch: str = "gptj") -> ModelConfig:
    """A preset's model (the GPT-J ladder's, or a T5 preset with ``arch="t5"``) at the context for
    `seq_len` (`context_len`): the one rule of train, plan, suites and `gerbil plan`'s custom model."""
    return arch_model_config(arch, size, seq_len=context_len(seq_len))


def rung(model: ModelConfig) -> str | None:
    """The preset a model is — the ladder's (or, for a T5 model, `T5_SIZES`') rung of the same
    architecture and dimensions (`ModelConfig.shape`, at any vocabulary) — else None (a custom shape)."""
    presets = T5_SIZES if model.arch == "t5" else SIZES
    mine = model.shape[:5] + model.shape[6:]  # the vocabulary left out: a rung at a test vocabulary is that rung
    for name, spec in presets.items():
        theirs = spec.model_config().shape
        if theirs[:5] + theirs[6:] == mine:
            return name
    return None


def rung_by_params(params: float | None = None, non_embedding: float | None = None) -> ModelConfig | None:
    """The ladder model whose total (or non-embedding) parameter count is exactly `params`
    (`non_embedding`) — for sources that record counts, not shapes (a CSV of runs)."""
    for spec in SIZES.values():
        m = spec.model_config()
        if params is not None and int(round(params)) == m.n_params("total"):
            return m
        if non_embedding is not None and int(round(non_embedding)) == m.n_params("non_embedding"):
            return m
    return None


def nearest_rung(model: ModelConfig) -> SizeSpec:
    """The ladder rung nearest in total parameters (log scale): a custom model's default batch."""
    n = math.log(model.n_params())
    return min(SIZES.values(), key=lambda s: abs(math.log(s.model_config().n_params()) - n))


def size_label(size: str | None = None, model: ModelConfig | None = None, params: int | None = None) -> str:
    """The ladder name of a model — a recorded one, else the rung its shape is (`rung`) — or, for a custom
    shape, its parameter count the seed's way ("12m"); the recorded name, else "—", when nothing is known."""
    if size and str(size).strip().lower() in (*SIZES, *T5_SIZES):  # a ladder rung or a T5Blender preset
        return str(size).strip().lower()
    found = rung(model) if model is not None else None
    if found:
        return found
    if params is None and model is not None:
        params = model.n_params("total")
    return fmt_params(params) if params else str(size or "—")
