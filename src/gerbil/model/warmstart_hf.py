"""A warm-started encoder-decoder as a transformers folder with its own modeling code (``trust_remote_code``).

transformers has no GPT-J with cross-attention, so the folder carries ``modeling_gerbil_encdec.py`` (a
verbatim copy of gerbil/model/modeling_gerbil_encdec.py: torch + transformers only) and config.json maps
``AutoConfig`` / ``AutoModelForSeq2SeqLM`` to it through ``auto_map``. The weights keep gerbil's names
(`model.warmstart.WarmStartEncDec`); only vocabulary padding rows are dropped. pad / eos =
``<|endoftext|>``; the decoder start id is the model's own (``<causal>`` for a Blender base).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError, OptionError

if TYPE_CHECKING:
    import torch

    from gerbil.model.warmstart import WarmStartEncDec

MODELING_FILE = Path(__file__).with_name("modeling_gerbil_encdec.py")
_PADDED = ("wte.weight", "lm_head.weight", "lm_head.bias")


def to_hf_state_dict(model: WarmStartEncDec) -> dict[str, torch.Tensor]:
    """The model's weights as the modeling file names them (fresh copies, padding rows dropped)."""
    model = getattr(model, "_orig_mod", model)
    V = model.config.base.vocab_size
    return {k: (v[:V] if k in _PADDED else v).detach().clone().contiguous() for k, v in model.state_dict().items()}


def hf_config_dict(model: WarmStartEncDec, gerbil_meta: dict | None = None, dtype: str = "float32") -> dict:
    """config.json of the folder: `GerbilEncDecConfig`'s fields, ``auto_map`` and the ``gerbil`` record."""
    cfg = model.config
    b = cfg.base
    return {
        "model_type": "gerbil-encdec", "architectures": ["GerbilEncDecForConditionalGeneration"],
        "auto_map": {"AutoConfig": "modeling_gerbil_encdec.GerbilEncDecConfig",
                     "AutoModelForSeq2SeqLM": "modeling_gerbil_encdec.GerbilEncDecForConditionalGeneration"},
        "vocab_size": b.vocab_size, "d_model": b.d_model, "n_layer": b.n_layer, "n_head": b.n_head,
        "rotary_dim": b.rotary_dim, "layer_norm_eps": b.layer_norm_eps, "n_positions": b.seq_len, "share": cfg.share,
        "is_encoder_decoder": True, "tie_word_embeddings": False, "use_cache": False,
        "pad_token_id": EOT_ID, "eos_token_id": EOT_ID, "decoder_start_token_id": cfg.decoder_start_id,
        "dtype": dtype, "gerbil": {**(gerbil_meta or {}), "model": cfg.to_dict()},
    }


def save_warmstart_folder(model: WarmStartEncDec, folder: str | Path, gerbil_meta: dict | None = None,
                          dtype: str = "float32") -> Path:
    """Write config.json, model.safetensors, generation_config.json and the modeling file into ``folder``
    (the caller adds the tokenizer and the card, as for a GPT-J export)."""
    import torch  # lazy: torch
    from safetensors.torch import save_file
    from transformers.utils import CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_NAME  # transformers' files

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise OptionError(f"unknown dtype {dtype!r} (float32, bfloat16, float16)")
    model = getattr(model, "_orig_mod", model)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(device="cpu", dtype=torch_dtype) for k, v in to_hf_state_dict(model).items()}
    save_file(state, str(out / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    conf = hf_config_dict(model, gerbil_meta, dtype)
    (out / CONFIG_NAME).write_text(json.dumps(conf, indent=2) + "\n")
    gen = {"decoder_start_token_id": conf["decoder_start_token_id"], "eos_token_id": EOT_ID, "pad_token_id": EOT_ID,
           "use_cache": False}
    (out / GENERATION_CONFIG_NAME).write_text(json.dumps(gen, indent=2) + "\n")
    shutil.copyfile(MODELING_FILE, out / MODELING_FILE.name)
    return out


def load_warmstart_folder(folder: str | Path, device: str = "cpu") -> tuple[WarmStartEncDec, dict]:
    """(WarmStartEncDec in eval mode, the ``gerbil`` record) from a folder written by `save_warmstart_folder`."""
    import torch  # lazy: torch
    from safetensors.torch import load_file
    from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

    from gerbil.model.warmstart import WarmStartConfig, empty_model  # lazy: torch

    folder = Path(folder)
    try:
        conf = json.loads((folder / CONFIG_NAME).read_text())
        cfg = WarmStartConfig.from_dict((conf.get("gerbil") or {})["model"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GerbilError(f"{folder}: not a gerbil warm-start export ({type(e).__name__}: {e})") from None
    state = {k: v.float() for k, v in load_file(str(folder / SAFE_WEIGHTS_NAME)).items()}
    P, V = cfg.base.padded_vocab_size, cfg.base.vocab_size
    for k in _PADDED:  # re-pad the vocabulary rows with zeros
        t = state[k]
        state[k] = torch.cat([t, t.new_zeros((P - V, *t.shape[1:]))]) if P > V else t
    model = empty_model(cfg, device="cpu")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), dict(conf.get("gerbil") or {})


def to_hf(model: WarmStartEncDec) -> Any:
    """An in-memory `GerbilEncDecForConditionalGeneration` (imported from gerbil's copy of the file)."""
    # lazy: torch and transformers
    from gerbil.model.modeling_gerbil_encdec import GerbilEncDecConfig, GerbilEncDecForConditionalGeneration

    conf = hf_config_dict(model)
    for k in ("model_type", "architectures", "auto_map", "dtype"):
        conf.pop(k)
    hf = GerbilEncDecForConditionalGeneration(GerbilEncDecConfig(**conf))
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    return hf.float().eval()


__all__ = ["MODELING_FILE", "to_hf_state_dict", "hf_config_dict", "save_warmstart_folder", "load_warmstart_folder",
           "to_hf"]
