"""gerbil's encoder-decoders by their recorded config: T5Blender (model/t5.py, a `ModelConfig` with arch
``t5``) and warm-started GPT-J (model/warmstart.py, a `WarmStartConfig`, arch ``gptj-warmstart``).

A checkpoint's meta.json and an export's ``gerbil.model`` record hold ``to_dict()`` of the config; the
``arch`` key says which model it is. This module is the one place that turns such a record into a model
for the verbs that take "any encoder-decoder" (`gerbil finetune --task seq2seq`, `gerbil predict`,
`export.load_model`, which loads checkpoints through `build` and export folders by their model_type), so a new encoder-decoder is one entry here.

    config_from_dict(d)      → ModelConfig (t5) or WarmStartConfig
    build(cfg, device)       → the module with uninitialised weights, to load a checkpoint into
    decoder_start_id(model)  → the token the decoder starts from

(A general by-arch factory for every model — the T5 work's `model/factory.py` — may take this over.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig

if TYPE_CHECKING:
    import torch

#: ``arch`` of each encoder-decoder record
ENCDEC_ARCHS = ("t5", "gptj-warmstart")
#: transformers ``model_type`` of each encoder-decoder export folder
ENCDEC_MODEL_TYPES = ("t5", "gerbil-encdec")


def is_encdec_record(d: Any) -> bool:
    """A model record (``to_dict()`` of a config) of an encoder-decoder."""
    return isinstance(d, dict) and d.get("arch") in ENCDEC_ARCHS


def config_from_dict(d: dict) -> Any:
    """A recorded model config → `ModelConfig` (GPT-J or T5) or `WarmStartConfig`."""
    if isinstance(d, dict) and d.get("arch") == "gptj-warmstart":
        from gerbil.model.warmstart import WarmStartConfig  # lazy: torch

        return WarmStartConfig.from_dict(d)
    return ModelConfig.from_dict(d)


def build(cfg: Any, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The encoder-decoder of ``cfg`` (uninitialised for a warm start, T5's init for T5)."""
    if getattr(cfg, "arch", None) == "gptj-warmstart":
        from gerbil.model.warmstart import empty_model  # lazy: torch

        return empty_model(cfg, device=device)
    if getattr(cfg, "arch", None) == "t5":
        from gerbil.model.t5 import T5  # lazy: torch

        return T5(cfg).to(device)
    raise GerbilError(f"not an encoder-decoder config (arch {getattr(cfg, 'arch', None)!r})")


def decoder_start_id(model: Any) -> int:
    """The decoder start token of an encoder-decoder module (or config)."""
    cfg = getattr(model, "config", model)
    if getattr(cfg, "arch", None) == "gptj-warmstart":
        return int(cfg.decoder_start_id)
    from gerbil.model.t5_hf import DECODER_START_ID  # lazy: torch-free constant beside the T5 mapping

    return int(DECODER_START_ID)


def is_encdec(model: Any) -> bool:
    """An encoder-decoder module (or its compiled wrapper)."""
    model = getattr(model, "_orig_mod", model)
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


__all__ = ["ENCDEC_ARCHS", "ENCDEC_MODEL_TYPES", "is_encdec_record", "config_from_dict", "build",
           "decoder_start_id", "is_encdec"]
