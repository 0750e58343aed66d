"""T5Blender ↔ transformers' `T5ForConditionalGeneration`: the weight mapping, the `T5Config`, and a native
model folder (no custom code) — what `gerbil export` writes for an ``arch="t5"`` model.

Names (gerbil → transformers; ``E`` = ``encoder.block.{i}``, ``D`` = ``decoder.block.{i}``):

    shared.weight                     shared.weight  (rows past the real vocabulary dropped; the encoder and
                                      decoder embeddings and lm_head are tied to it, so they are not written)
    encoder.{i}.ln_attn / ln_ff       E.layer.0.layer_norm / E.layer.1.layer_norm
    encoder.{i}.attn.qkv (3 blocks)   E.layer.0.SelfAttention.q / .k / .v          attn.o → .o
    encoder.{i}.ff.wi (2 blocks)      E.layer.1.DenseReluDense.wi_0 / .wi_1        ff.wo → .wo
    encoder_rel_bias                  encoder.block.0.layer.0.SelfAttention.relative_attention_bias
    encoder_ln                        encoder.final_layer_norm
    decoder.{i}.*                     D.layer.0 (self-attention), D.layer.1 (EncDecAttention: cross.q → .q,
                                      cross.kv → .k / .v, cross.o → .o, ln_cross → layer_norm), D.layer.2 (FF)
    decoder_rel_bias / decoder_ln     decoder.block.0.layer.0.SelfAttention.relative_attention_bias / final norm

Special ids in the folder's config: ``pad_token_id`` = ``eos_token_id`` = ``decoder_start_token_id`` =
``<|endoftext|>`` (50256) — the id every T5Blender decoder sequence starts from (data/encdec.py), the one
that ends every target, and the padding of batched inputs (T5 masks padding with ``attention_mask``, so
its value never matters). GPT-2's vocabulary has no separate pad or start token, and T5's own choice,
id 0, is ``!`` here.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError, OptionError
from gerbil.model.config import ModelConfig
from gerbil.units import DEFAULT_SEQ_LEN

if TYPE_CHECKING:
    import torch

    from gerbil.model.t5 import T5

log = logging.getLogger(__name__)

#: the decoder start id of T5Blender (module docstring); also its pad and end id
DECODER_START_ID = EOT_ID

# (gerbil suffix of a layer, transformers suffix(es) under block.{i}.layer.{k}.) — fused rows split in order
_SELF = {"ln_attn.weight": ("0.layer_norm.weight",), "attn.o.weight": ("0.SelfAttention.o.weight",),
         "attn.qkv.weight": ("0.SelfAttention.q.weight", "0.SelfAttention.k.weight", "0.SelfAttention.v.weight")}
_FF = {"ln_ff.weight": ("{f}.layer_norm.weight",), "ff.wo.weight": ("{f}.DenseReluDense.wo.weight",),
       "ff.wi.weight": ("{f}.DenseReluDense.wi_0.weight", "{f}.DenseReluDense.wi_1.weight")}
_CROSS = {"ln_cross.weight": ("1.layer_norm.weight",), "cross.q.weight": ("1.EncDecAttention.q.weight",),
          "cross.o.weight": ("1.EncDecAttention.o.weight",),
          "cross.kv.weight": ("1.EncDecAttention.k.weight", "1.EncDecAttention.v.weight")}
_TOP = {"encoder_rel_bias.weight": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder_rel_bias.weight": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder_ln.weight": "encoder.final_layer_norm.weight",
        "decoder_ln.weight": "decoder.final_layer_norm.weight"}


def _layer_table(stack: str) -> dict[str, tuple[str, ...]]:
    ff = "2" if stack == "decoder" else "1"
    table = {**_SELF, **{k: tuple(s.format(f=ff) for s in v) for k, v in _FF.items()}}
    return {**table, **_CROSS} if stack == "decoder" else table


_LAYER = re.compile(r"^(encoder|decoder)\.(\d+)\.(.+)$")


def to_hf_state_dict(model: T5) -> dict[str, torch.Tensor]:
    """gerbil `T5` weights under `T5ForConditionalGeneration` names (fresh contiguous copies, padding rows
    of the embedding dropped, fused projections split)."""
    model = getattr(model, "_orig_mod", model)
    V = model.config.vocab_size
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        name, t = name.replace("_orig_mod.", ""), t.detach()
        if name == "shared.weight":
            out[name] = t[:V].clone().contiguous()
            continue
        if name in _TOP:
            out[_TOP[name]] = t.clone().contiguous()
            continue
        m = _LAYER.match(name)
        if not m or m.group(3) not in _layer_table(m.group(1)):
            raise GerbilError(f"T5 parameter {name!r} has no transformers name")
        stack, i, rest = m.groups()
        targets = _layer_table(stack)[rest]
        for hf, part in zip(targets, t.chunk(len(targets), dim=0)):  # row blocks of equal size, in order
            out[f"{stack}.block.{i}.layer.{hf}"] = part.clone().contiguous()
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`T5ForConditionalGeneration` weights → a state dict for ``T5(cfg)`` (fused, the embedding zero-padded to
    ``cfg.padded_vocab_size`` rows). Missing ``shared.weight`` is taken from a tied copy; an untied
    ``lm_head.weight`` that differs from it is refused (T5Blender's head is the embedding)."""
    import torch  # lazy: torch, safetensors and transformers only when a model is converted or saved

    sd = dict(state)
    shared = sd.pop("shared.weight", None)
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        t = sd.pop(alias, None)
        if shared is None and t is not None and alias != "lm_head.weight":
            shared = t
        elif alias == "lm_head.weight" and t is not None and shared is not None and not torch.equal(t, shared[: len(t)]):
            raise GerbilError("this T5 has an untied lm_head; T5Blender ties the head to the embedding")
    sd.pop("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight", None)  # unused in T5
    if shared is None:
        raise GerbilError("shared.weight missing from the T5 checkpoint")
    P, V = cfg.padded_vocab_size, cfg.vocab_size
    if shared.shape[0] < V:
        raise GerbilError(f"shared.weight has {shared.shape[0]} rows, fewer than the vocabulary ({V})")
    emb = shared.new_zeros((P, shared.shape[1]))
    emb[:V] = shared[:V]
    out = {"shared.weight": emb}
    for g, hf in _TOP.items():
        out[g] = sd.pop(hf)
    for stack, n in (("encoder", cfg.n_layer), ("decoder", cfg.n_decoder_layer)):
        for i in range(n):
            for g, hfs in _layer_table(stack).items():
                try:
                    out[f"{stack}.{i}.{g}"] = torch.cat([sd.pop(f"{stack}.block.{i}.layer.{h}") for h in hfs], dim=0)
                except KeyError as e:
                    raise GerbilError(f"T5 checkpoint lacks {e.args[0]}") from None
    if sd:
        raise GerbilError(f"T5 checkpoint has weights T5Blender does not: {sorted(sd)[:3]}")
    return out


def hf_config(cfg: ModelConfig, gerbil_meta: dict | None = None, dtype: str = "float32") -> Any:
    """The `transformers.T5Config` equivalent to ``cfg`` (real vocabulary, gated-GELU, tied head, no dropout)."""
    # lazy: transformers / safetensors: seconds to import, only when a model is converted
    from transformers import T5Config

    if cfg.arch != "t5":
        raise GerbilError(f"a T5 folder needs an arch 't5' model, got {cfg.arch!r}")
    return T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.n_layer, num_decoder_layers=cfg.n_decoder_layer, num_heads=cfg.n_head,
        relative_attention_num_buckets=cfg.rel_buckets, relative_attention_max_distance=cfg.rel_max_distance,
        dropout_rate=0.0, layer_norm_epsilon=cfg.layer_norm_eps, initializer_factor=cfg.init_std,
        feed_forward_proj="gated-gelu", is_encoder_decoder=True, tie_word_embeddings=True, use_cache=True,
        pad_token_id=EOT_ID, eos_token_id=EOT_ID, decoder_start_token_id=DECODER_START_ID, bos_token_id=None,
        architectures=["T5ForConditionalGeneration"], dtype=dtype, gerbil=gerbil_meta or {},
    )


def to_hf(model: T5, gerbil_meta: dict | None = None) -> Any:
    """An in-memory `T5ForConditionalGeneration` with ``model``'s weights (fp32, eval mode)."""
    import torch  # lazy: torch, safetensors and transformers only when a model is converted or saved
    from transformers import T5ForConditionalGeneration

    model = getattr(model, "_orig_mod", model)
    with torch.device("meta"):
        hf = T5ForConditionalGeneration(hf_config(model.config, gerbil_meta))
    state = to_hf_state_dict(model)
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise GerbilError(f"transformers T5 has no parameters {unexpected[:3]}")
    hf.tie_weights()  # the embeddings and lm_head point at `shared`
    left = [n for n, p in hf.named_parameters() if p.is_meta]
    if left:
        raise GerbilError(f"transformers T5 has parameters gerbil did not provide: {left[:3]}")
    return hf.float().eval()


def save_t5_folder(model: T5, folder: str | Path, gerbil_meta: dict | None = None, dtype: str = "float32") -> Path:
    """Write config.json, model.safetensors and generation_config.json of a native T5 folder into ``folder``
    (created if needed; the caller — `gerbil export` — adds the tokenizer and the card and renames the
    folder into place). ``AutoModelForSeq2SeqLM.from_pretrained(folder)`` loads it without custom code."""
    import torch  # lazy: torch, safetensors and transformers only when a model is converted or saved
    from safetensors.torch import save_file
    from transformers import GenerationConfig
    from transformers.utils import SAFE_WEIGHTS_NAME  # the folder's files are transformers' (model.safetensors)

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise OptionError(f"unknown dtype {dtype!r} (float32, bfloat16, float16)")
    model = getattr(model, "_orig_mod", model)
    if model.config.n_layer != model.config.n_decoder_layer:
        # transformers 5.24 sizes generate()'s key/value cache by the encoder's depth (num_layers)
        log.warning("T5 with %d encoder and %d decoder layers: transformers' generate() needs use_cache=False",
                    model.config.n_layer, model.config.n_decoder_layer)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(device="cpu", dtype=torch_dtype) for k, v in to_hf_state_dict(model).items()}
    save_file(state, str(out / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    gerbil = {**(gerbil_meta or {})}
    gerbil.setdefault("model", model.config.to_dict())  # what load_t5_folder rebuilds (seq_len, padding)
    hf_config(model.config, gerbil, dtype=dtype).save_pretrained(str(out))
    GenerationConfig(eos_token_id=EOT_ID, pad_token_id=EOT_ID, decoder_start_token_id=DECODER_START_ID,
                     ).save_pretrained(str(out))
    return out


def config_from_hf(hf: dict, pad_vocab_multiple: int = 1) -> ModelConfig:
    """The ModelConfig of a T5 folder's config.json (a T5Blender export or a compatible tied gated-GELU T5)."""
    if hf.get("model_type") != "t5":
        raise GerbilError(f"model_type {hf.get('model_type')!r} is not T5")
    if hf.get("feed_forward_proj", "relu") != "gated-gelu":
        raise GerbilError(f"feed_forward_proj {hf.get('feed_forward_proj')!r}: T5Blender is gated-gelu")
    if hf.get("tie_word_embeddings") is False:
        raise GerbilError("an untied T5: T5Blender ties the head to the embedding")
    saved = (hf.get("gerbil") or {}).get("model") or {}
    return ModelConfig(
        arch="t5", d_model=int(hf["d_model"]), n_layer=int(hf["num_layers"]),
        n_decoder_layer=int(hf.get("num_decoder_layers") or hf["num_layers"]), n_head=int(hf["num_heads"]),
        d_kv=int(hf["d_kv"]), d_ff=int(hf["d_ff"]), rotary_dim=0, vocab_size=int(hf["vocab_size"]),
        rel_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        rel_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)), init_std=float(hf.get("initializer_factor", 1.0)),
        seq_len=int(saved.get("seq_len", DEFAULT_SEQ_LEN)), pad_vocab_multiple=int(saved.get("pad_vocab_multiple", pad_vocab_multiple)),
        name=str(saved.get("name", "")),
    )


def load_t5_folder(folder: str | Path, device: str = "cpu") -> tuple[T5, dict]:
    """(T5 in eval mode, the config's ``gerbil`` field) from a native T5 folder written by `save_t5_folder`."""
    import torch  # lazy: torch, safetensors and transformers only when a model is converted or saved
    from safetensors.torch import load_file
    from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

    from gerbil.model.t5 import T5

    folder = Path(folder)
    try:
        hf = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as e:
        raise GerbilError(f"{folder}: no readable {CONFIG_NAME} ({e})") from None
    cfg = config_from_hf(hf)
    weights = folder / SAFE_WEIGHTS_NAME
    if not weights.is_file():
        raise GerbilError(f"{folder}: no {SAFE_WEIGHTS_NAME}")
    state = from_hf_state_dict({k: v.float() for k, v in load_file(str(weights)).items()}, cfg)
    with torch.device("meta"):
        model = T5(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval(), dict(hf.get("gerbil") or {})


__all__ = ["DECODER_START_ID", "to_hf_state_dict", "from_hf_state_dict", "hf_config", "to_hf", "save_t5_folder",
           "config_from_hf", "load_t5_folder"]
