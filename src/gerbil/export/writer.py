"""`export`: a gerbil model written as a transformers folder (``GPTJForCausalLM``,
``GPTJForSequenceClassification`` for a fine-tuned classifier, or a T5Blender's native
``T5ForConditionalGeneration``, `model.t5_hf`) with its tokenizer and model card.

The folder is written into ``OUT.tmp-export`` and swapped with an earlier export through ``OUT.old-export``;
both carry a `PARTIAL_MARK` while they exist, and only marked folders holding export files are ever deleted
(a folder of those names that gerbil did not leave is refused).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbil.data.tokenizer import EOT_ID, SPECIAL_TOKENS, Tokenizer
from gerbil.errors import GerbilError, OptionError
from gerbil.export.card import gerbil_field, model_card
from gerbil.export.loading import resolve_model
from gerbil.export.mapping import label_names, to_transformers_state_dict, transformers_config
from gerbil.export.seq2seq import warmstart_card, warmstart_field
from gerbil.model import factory

if TYPE_CHECKING:
    from gerbil.model.model import GPT

log = logging.getLogger(__name__)


def _classifier_tokenizer(hf_tok: Any, ft: dict) -> Any:
    """The exported tokenizer of a classifier: pads on the right with ``<|endoftext|>``, cuts from the
    left to ``max_len``, and writes the fine-tuning prompt prefix (``<causal>``) before every text — so a
    pipeline feeds the model exactly what gerbil fed it (module docstring)."""
    from tokenizers.processors import TemplateProcessing  # lazy: the tokenizers library only for a classifier

    names = {v: k for k, v in SPECIAL_TOKENS.items()}
    prefix = [names[i] for i in ft.get("prefix") or []]
    if prefix:
        hf_tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=" ".join(prefix + ["$A"]), pair=" ".join(prefix + ["$A", "$B"]),
            special_tokens=[(n, SPECIAL_TOKENS[n]) for n in dict.fromkeys(prefix)])
    hf_tok.pad_token = names[EOT_ID]
    hf_tok.padding_side = "right"
    hf_tok.truncation_side = "left"
    hf_tok.model_max_length = int(ft.get("max_len") or hf_tok.model_max_length)
    return hf_tok


#: Files an export writes (config, weights, generation config, tokenizer files, card): an existing
#: folder holding only these, with a gerbil config.json, is an earlier export that may be replaced.
EXPORT_FILES = frozenset({"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                          "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                          "added_tokens.json", "README.md", "chat_template.jinja",
                          "modeling_gerbil_encdec.py"})  # a warm start's remote code (model/warmstart_hf.py)


#: Marks a folder beside an export as gerbil's own: the temporary folder an export is written into
#: (``OUT.tmp-export``) and the earlier export being swapped out (``OUT.old-export``). Only marked ones
#: are ever deleted; the mark leaves the export before it is published.
PARTIAL_MARK = ".gerbil-partial-export"


def is_own_export(path: Path) -> bool:
    """An earlier gerbil export: a gerbil-marked config.json and nothing but export files (no folders)."""
    try:
        marked = isinstance(json.loads((path / "config.json").read_text()).get("gerbil"), dict)
    except (OSError, ValueError, AttributeError):
        return False
    return marked and all(p.is_file() and p.name in EXPORT_FILES | {PARTIAL_MARK} for p in path.iterdir())


def _clear_partial(path: Path) -> None:
    """Delete `path` (an ``.tmp-export`` / ``.old-export`` sibling) if it is gerbil's own: a folder with
    the mark holding nothing but export files. Anything else there is refused, never deleted."""
    if not path.exists() and not path.is_symlink():
        return
    own = path.is_dir() and not path.is_symlink() and (path / PARTIAL_MARK).is_file() and all(
        p.is_file() and p.name in EXPORT_FILES | {PARTIAL_MARK} for p in path.iterdir())
    if not own:
        raise GerbilError(f"{path} exists and was not left by a gerbil export; move it away (an export "
                          f"writes its temporary folders there)")
    shutil.rmtree(path)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished export `tmp` to `out`, replacing an earlier gerbil export there: swap, then
    delete, with both sides marked, so a crash at any point leaves nothing a later export may not clear."""
    if out.exists():
        # replace only an earlier export of gerbil's own: never delete what gerbil did not write
        if not out.is_dir() or (any(out.iterdir()) and not is_own_export(out)):
            shutil.rmtree(tmp)
            raise GerbilError(f"{out} exists and is not an earlier gerbil export (it holds other files); "
                              f"choose another --out or empty it yourself")
        old = out.with_name(out.name + ".old-export")
        _clear_partial(old)
        (out / PARTIAL_MARK).touch()
        out.rename(old)  # a crash after this leaves the old export in .old-export, marked
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    (out / PARTIAL_MARK).unlink()


def export(
    model_or_path: Any,
    out_dir: str | Path,
    tokenizer: Tokenizer | bool | None = None,
    objective: str | None = None,
    extra_card: str | None = None,
    meta: dict | None = None,
    dtype: str = "float32",
) -> Path:
    """Write ``model_or_path`` as a transformers ``GPTJForCausalLM`` folder in ``out_dir`` (a T5Blender: a
    ``T5ForConditionalGeneration`` folder that ``AutoModelForSeq2SeqLM`` loads without custom code).

    model_or_path: a ``GPT`` (or its compiled wrapper), a run directory (its latest checkpoint), a
        checkpoint directory, or another export folder.
    tokenizer: the gerbil ``Tokenizer`` whose files go into the folder; ``None`` loads the default
        (GPT-2 + Blender, from the verified asset cache); ``False`` writes no tokenizer files.
    objective: training objective ("plain", "causal", "fim", "mlm", "blender"); default: the one in the
        checkpoint's meta.json, else "plain". "blender"/"causal" record the `<causal>` eval prefix.
    extra_card: markdown appended to the README.md model card.
    meta: extra facts for config.json's ``gerbil`` field and the card (size, class, tokens, name,
        step); they override the checkpoint's meta.json.
    dtype: "float32" (default), "bfloat16" or "float16" for the saved weights.

    Returns the output directory. Files are written into a temporary sibling directory that is renamed
    into place when complete, so an interrupted export never looks like a finished one (`_publish`).
    """
    model, src_meta = resolve_model(model_or_path)
    info = {**src_meta, **(meta or {})}
    objective = objective or info.get("objective") or "plain"
    cfg = model.config
    warm = factory.arch_of(model) == factory.WARMSTART  # an encoder-decoder with its own modeling file
    gerbil_meta = warmstart_field(cfg, info, objective) if warm else gerbil_field(cfg, info, objective)
    if dtype not in _DTYPES:
        raise OptionError(f"unknown dtype {dtype!r} (float32, bfloat16, float16)")
    if tokenizer is None:
        tokenizer = Tokenizer.load()

    out = Path(out_dir).resolve()
    if out.exists() and out.is_dir() and any(out.iterdir()) and not is_own_export(out):
        raise GerbilError(f"{out} exists and is not an earlier gerbil export (it holds other files); "
                          f"choose another --out or empty it yourself")
    tmp = out.with_name(out.name + ".tmp-export")
    for leftover in (tmp, out.with_name(out.name + ".old-export")):  # an interrupted export's, or refused
        _clear_partial(leftover)
    tmp.mkdir(parents=True)
    (tmp / PARTIAL_MARK).touch()

    labels = _write_model(model, tmp, info, gerbil_meta, dtype)
    if tokenizer:
        hf_tok = tokenizer.to_transformers(model_max_length=cfg.seq_len)
        if labels:
            hf_tok = _classifier_tokenizer(hf_tok, gerbil_meta.get("finetune") or {})
        elif factory.is_encoder_decoder(model):  # encoder batches are padded: <|endoftext|>, config's pad_token_id
            hf_tok.pad_token = {v: k for k, v in SPECIAL_TOKENS.items()}[EOT_ID]
        hf_tok.save_pretrained(str(tmp))
        _portable_tokenizer_config(tmp / "tokenizer_config.json", classifier=bool(labels))
    card = warmstart_card(gerbil_meta, extra_card) if warm else model_card(gerbil_meta, extra_card)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    for f in tmp.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; an export is meant to be shared
    _publish(tmp, out)
    log.info("exported %s (%s) to %s", gerbil_meta["name"], objective, out)
    return out


_DTYPES = ("float32", "bfloat16", "float16")


def _write_model(model: Any, tmp: Path, info: dict, gerbil_meta: dict, dtype: str) -> list[str] | None:
    """config.json, model.safetensors and generation_config.json into ``tmp``: a GPT-J folder (a classifier's
    ``GPTJForSequenceClassification``: returns its label names), or a T5Blender's native
    ``T5ForConditionalGeneration`` folder (`model.t5_hf.save_t5_folder`), or a warm start's folder with its
    own modeling file (`model.warmstart_hf.save_warmstart_folder`)."""
    import torch  # lazy: torch, safetensors and transformers only when an export is written
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    if factory.arch_of(model) == "t5":
        from gerbil.model.t5_hf import save_t5_folder  # lazy: torch, transformers

        save_t5_folder(model, tmp, gerbil_meta, dtype=dtype)
        return None
    if factory.arch_of(model) == factory.WARMSTART:
        from gerbil.model.warmstart_hf import save_warmstart_folder  # lazy: torch, transformers

        save_warmstart_folder(model, tmp, gerbil_meta, dtype=dtype)  # + modeling_gerbil_encdec.py, auto_map
        return None
    if factory.is_encoder_decoder(model):
        raise GerbilError(f"gerbil export does not write a {factory.arch_of(model)} model yet")
    torch_dtype = getattr(torch, dtype)
    labels = label_names(model, info)
    state = {k: v.to(device="cpu", dtype=torch_dtype) for k, v in to_transformers_state_dict(model).items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    transformers_config(model.config, gerbil_meta, dtype=dtype, label_names=labels).save_pretrained(str(tmp))
    if not labels:
        GenerationConfig(bos_token_id=EOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID).save_pretrained(str(tmp))
    return labels


def _portable_tokenizer_config(path: Path, classifier: bool = False) -> None:
    """Make tokenizer_config.json loadable by transformers 4.x as well as 5.x.

    transformers 5 names its tokenizer.json-backed class ``TokenizersBackend`` and lists extra special
    tokens under ``extra_special_tokens``; 4.x knows neither. ``PreTrainedTokenizerFast`` (which reads
    tokenizer.json) and ``additional_special_tokens`` are understood by both. A classifier's padding and
    truncation sides are written out explicitly (transformers 5.24 does not save sides set after
    construction, and its default truncation side is the right one).
    """
    conf = json.loads(path.read_text())
    conf["tokenizer_class"] = "PreTrainedTokenizerFast"
    if classifier:
        conf.update(padding_side="right", truncation_side="left")
    extra = conf.get("extra_special_tokens") or conf.get("additional_special_tokens")
    if isinstance(extra, list):
        conf["additional_special_tokens"] = extra
    path.write_text(json.dumps(conf, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------- load
