"""Loading models back: `load` (a transformers GPT-J folder, gerbil's or any compatible one), `load_model`
(a run — its model checkpoint, the best one of a run that keeps its best —, a checkpoint or an export, of
any architecture: checkpoints and encoder-decoder folders through `gerbil.model.factory`),
`read_info` (an export's ``gerbil`` field, no torch) and `random_model` (a fresh ladder model)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbil.errors import GerbilError
from gerbil.export.mapping import (config_from_transformers, from_transformers_state_dict, read_transformers_weights,
                                   unwrap)
from gerbil.model import factory
from gerbil.model.config import T5_SIZES, arch_model_config, model_config
from gerbil.runs.rundir import resolve_source
from gerbil.train import checkpoint as ckpt

if TYPE_CHECKING:  # lazy: torch is imported in the functions that need it (`import gerbil.export` stays cheap)
    import torch

    from gerbil.model.model import GPT


def load_model(source: str | Path, device: str = "cpu") -> tuple[GPT, dict]:
    """(model in eval mode, meta) from a run directory (its model checkpoint: the latest intact one, or the
    best one of a run that keeps its best), a checkpoint directory or an export folder — what the path
    is comes from `gerbil.runs.rundir.resolve_source`.

    The model is a GPT (or a fine-tuned classifier), a T5Blender or a warm-started encoder-decoder
    (`gerbil.model.factory.is_encoder_decoder`). ``meta["objective"]`` tells which modes the model was
    trained with (``plain`` if unknown).
    """
    from gerbil.train.device import pick_device  # lazy: it imports torch

    device = str(pick_device(device))  # a device this machine lacks: one line, before anything loads
    src = resolve_source(source)
    if src.kind == "export" and factory.folder_arch(src.export) != "gptj":
        model, meta = factory.load_folder(src.export, device=device)  # T5Blender, warm start
    elif src.kind == "export":
        model, meta = load(src.export, device=device)
    else:
        path = src.run.model_checkpoint(src.checkpoint) if src.kind == "run" else src.checkpoint
        model, meta = ckpt.load_checkpoint(path, device=device)
    meta = dict(meta)
    meta["objective"] = meta.get("objective") or "plain"
    return model.eval(), meta


def resolve_model(source: Any) -> tuple[GPT, dict]:
    """A model module (GPT, T5, warm start, or a compiled wrapper of one) or anything `load_model` reads →
    (model, meta)."""
    import torch  # lazy: torch

    if isinstance(unwrap(source), torch.nn.Module):
        return unwrap(source), {}
    return load_model(source)


def load(
    export_dir: str | Path,
    vocab_size: int | None = None,
    pad_vocab_multiple: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[GPT, dict]:
    """Import a transformers GPT-J folder (a gerbil export or any GPT-J-compatible one) → ``(GPT, meta)``.

    vocab_size: the real vocabulary. Default: the one a gerbil export recorded, else the folder's
        ``vocab_size`` — exactly transformers' semantics (every row gets a logit). Pass e.g. 50264 for a
        checkpoint with GPT-J's 50,400 rows to declare rows 50,264+ padding (never predicted).
    pad_vocab_multiple: padding of the loaded model's embedding/head; default keeps the checkpoint's
        rows (gerbil exports: the run's recorded padding).
    meta: the ``gerbil`` field of config.json (objective, eval_prefix, size, class, tokens, ...) plus
        ``source`` (the folder) and ``transformers_vocab_size``; empty fields for foreign folders.
    """
    import torch  # lazy: torch only when a model is loaded

    from gerbil.model.model import GPT, rotary_tables  # lazy: torch

    folder = Path(export_dir)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a transformers model folder)")
    hf = json.loads(cfg_path.read_text())
    cfg = config_from_transformers(hf, vocab_size, pad_vocab_multiple)
    weights = read_transformers_weights(folder)
    score = weights.pop("score.weight", None)  # a sequence classifier's head
    classify = "GPTJForSequenceClassification" in (hf.get("architectures") or [])
    if classify and score is None:
        raise GerbilError(f"{folder}: a GPTJForSequenceClassification folder without score.weight")
    state = from_transformers_state_dict(weights, cfg)
    state = {k: v.float() for k, v in state.items()}  # gerbil keeps fp32 master weights
    if classify:
        from gerbil.model.classifier import Classifier  # lazy: torch

        state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
        state["score.weight"] = score.float()
        with torch.device("meta"):
            model = Classifier(cfg, int(score.shape[0]))
    else:
        with torch.device("meta"):
            model = GPT(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise GerbilError(f"{folder}: weights do not match the config "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    # rotary tables are non-persistent buffers created on the meta device: rebuild them for real
    model.rope_cos, model.rope_sin = rotary_tables(cfg.seq_len, cfg.rotary_dim)
    model = model.to(device).eval()
    meta = dict(hf.get("gerbil") or {})
    meta["objective"] = meta.get("objective") or "plain"  # a foreign GPT-J folder: plain causal LM
    if classify and not (meta.get("finetune") or {}).get("label_names"):  # a foreign classifier: its id2label
        id2label = hf.get("id2label") or {}
        names = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(int(score.shape[0]))]
        meta["finetune"] = dict(meta.get("finetune") or {}, task="classify", label_names=names)
    meta["source"] = str(folder)
    meta["transformers_vocab_size"] = int(hf["vocab_size"])
    return model, meta


def read_config(export_dir: str | Path) -> dict:
    """An export folder's whole config.json ({} when it is missing or unreadable). Reads JSON only."""
    try:
        conf = json.loads((Path(export_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return conf if isinstance(conf, dict) else {}


def read_info(export_dir: str | Path) -> dict:
    """The ``gerbil`` field of an export's config.json (objective, eval_prefix, size, class, tokens,
    params, model config); ``{}`` for a foreign GPT-J folder. Reads JSON only: no torch."""
    cfg_path = Path(export_dir) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{export_dir}: no config.json (not a transformers model folder)")
    return dict(json.loads(cfg_path.read_text()).get("gerbil") or {})


def random_model(size: str, seed: int = 0, **overrides) -> GPT:
    """A freshly initialized preset model (``gerbil export --size S --random-init``): a ladder size, or a
    T5Blender preset (`T5_SIZES`, e.g. 24m); seeded locally (no global RNG is touched)."""
    arch = "t5" if str(size).strip().lower() in T5_SIZES else "gptj"
    cfg = arch_model_config(arch, size, **overrides) if arch == "t5" else model_config(size, **overrides)
    return factory.build(cfg, seed=seed)
