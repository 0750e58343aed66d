"""Build or load any gerbil model by its architecture: the one place that knows which module class a
recorded model config names.

    config_from_dict(d)            a recorded ``model`` dict (meta.json, config.yaml, an export's
                                   ``gerbil.model``) → `ModelConfig` (arch ``gptj`` / ``t5``) or
                                   `WarmStartConfig` (arch ``gptj-warmstart``); torch-free
    arch_of(cfg_or_model)          "gptj", "t5" or "gptj-warmstart"
    is_encoder_decoder(x)          a config or a module: does it take (encoder_ids, decoder_ids)?
    build(cfg, seed=None, device)  a new module: `GPT`, `T5` or `WarmStartEncDec`; with ``seed`` freshly
                                   initialised from a local generator (no global RNG touched), without it
                                   uninitialised (meta tensors materialised empty: load weights into it)
    from_checkpoint(meta, weights, device)
                                   (model, meta) from a checkpoint's meta.json dict and its safetensors
                                   file: GPT, a fine-tuned `Classifier` (``meta["finetune"]["task"] ==
                                   "classify"``), T5 or a warm start — strict names and shapes
    folder_arch(folder)            the architecture of a transformers folder from its config.json
                                   ("gptj", "t5", "gptj-warmstart"; None if it has none)
    load_folder(folder, device)    (model, meta) of an encoder-decoder folder (a T5Blender export: native
                                   T5ForConditionalGeneration; a warm-start export). GPT-J folders are
                                   `gerbil.export.load`'s (the GPT-J mapping lives in export/mapping.py)

`gerbil.train.checkpoint.load_checkpoint` and `gerbil.export.load_model` (any run / checkpoint / export)
go through these; pretraining builds its model with `build`. Every module has the same surface for
training and scoring: ``forward`` → hidden, ``lm_head`` (weight, bias) for `lm_loss`, ``logits``; an
encoder-decoder's forward takes (encoder_ids, decoder_ids, encoder_segments, decoder_segments,
encoder_mask) (model/encdec.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig

if TYPE_CHECKING:
    import torch

WARMSTART = "gptj-warmstart"


def config_from_dict(d: dict) -> Any:
    """`ModelConfig` for arch gptj / t5, `WarmStartConfig` for a warm start (module docstring)."""
    if not isinstance(d, dict):
        raise GerbilError(f"a model record must be a mapping, got {type(d).__name__}")
    if d.get("arch") == WARMSTART:
        from gerbil.model.warmstart import WarmStartConfig  # lazy: warmstart.py imports torch

        return WarmStartConfig.from_dict(d)
    return ModelConfig.from_dict(dict(d))


def arch_of(x: Any) -> str:
    """The architecture of a config or a module (a compiled or DDP wrapper is looked through)."""
    cfg = getattr(_unwrap(x), "config", x)
    return str(getattr(cfg, "arch", "gptj"))


def is_encoder_decoder(x: Any) -> bool:
    """True for a T5 or warm-start config or module."""
    return arch_of(x) in ("t5", WARMSTART)


def _unwrap(x: Any) -> Any:
    x = getattr(x, "_orig_mod", x)
    return getattr(x, "module", x) if type(x).__name__ == "DistributedDataParallel" else x


def build(cfg: Any, seed: int | None = None, device: str | torch.device = "cpu") -> Any:
    """A new model of ``cfg`` on ``device``: initialised from ``seed`` (a local generator), or, with
    ``seed=None``, allocated but uninitialised (to load a checkpoint into)."""
    import torch  # lazy: torch only when a model is made

    arch = arch_of(cfg)
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    if arch == WARMSTART:
        from gerbil.model.warmstart import empty_model  # lazy: torch

        model = empty_model(cfg, device="cpu")
        if gen is not None:  # a warm start is made from its base (`warm_start`); from scratch: GPT init + cross
            raise GerbilError("a warm-started model is made from its base (gerbil warmstart), not initialised")
        return model.to(device)
    if arch == "t5":
        from gerbil.model.t5 import T5  # lazy: torch

        cls = T5
    else:
        from gerbil.model.model import GPT  # lazy: torch

        cls = GPT
    with torch.device("meta"):
        model = cls(cfg)
    model = model.to_empty(device="cpu")
    _rebuild_buffers(model)
    if gen is not None:
        model.reset_parameters(generator=gen)
    return model.to(device)


def _rebuild_buffers(model: Any) -> None:
    """Non-persistent buffers made on the meta device (GPT's rotary tables) computed for real."""
    if hasattr(model, "rope_cos"):
        from gerbil.model.model import rotary_tables  # lazy: torch

        base = getattr(model.config, "base", model.config)
        model.rope_cos, model.rope_sin = rotary_tables(base.seq_len, base.rotary_dim)


def from_checkpoint(meta: dict, weights: str | Path, device: str | torch.device = "cpu") -> tuple[Any, dict]:
    """(model on ``device``, meta) from a checkpoint's meta.json record and its weights file (strict)."""
    from safetensors.torch import load_file  # lazy: safetensors only when weights are read

    meta = dict(meta)
    if "model" not in meta:
        raise GerbilError(f"{weights}: the checkpoint's meta.json records no model")
    cfg = config_from_dict(meta["model"])
    ft = meta.get("finetune") or {}
    labels = ft.get("label_names") if ft.get("task") == "classify" else None
    if labels:
        from gerbil.model.classifier import Classifier  # lazy: torch

        model = Classifier(cfg, len(labels))
    else:
        model = build(cfg)
    try:
        model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except RuntimeError as e:
        raise GerbilError(f"{weights}: weights do not match the recorded {arch_of(cfg)} model "
                          f"({str(e).splitlines()[0]})") from None
    return model.to(device), meta


def folder_arch(folder: str | Path) -> str | None:
    """"t5", "gptj-warmstart" or "gptj" for a transformers folder (by its config.json), None without one."""
    from transformers.utils import CONFIG_NAME  # lazy: transformers names the folder's files

    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GerbilError(f"{path}: unreadable ({e})") from None
    if hf.get("model_type") == "t5":
        return "t5"
    if ((hf.get("gerbil") or {}).get("model") or {}).get("arch") == WARMSTART:
        return WARMSTART
    return "gptj"


def load_folder(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Any, dict]:
    """(model in eval mode, meta) of an encoder-decoder export folder; meta is config.json's ``gerbil``
    field plus ``source`` and ``objective`` (``plain`` if unrecorded)."""
    arch = folder_arch(folder)
    if arch == "t5":
        from gerbil.model.t5_hf import load_t5_folder  # lazy: torch, transformers

        model, meta = load_t5_folder(folder, device=str(device))
    elif arch == WARMSTART:
        from gerbil.model.warmstart_hf import load_warmstart_folder  # lazy: torch, transformers

        model, meta = load_warmstart_folder(folder, device=str(device))
    else:
        raise GerbilError(f"{folder}: not an encoder-decoder folder (arch {arch}); GPT-J folders: gerbil.export.load")
    meta = dict(meta, source=str(folder))
    meta["objective"] = meta.get("objective") or "plain"
    return model, meta


__all__ = ["WARMSTART", "config_from_dict", "arch_of", "is_encoder_decoder", "build", "from_checkpoint",
           "folder_arch", "load_folder"]
