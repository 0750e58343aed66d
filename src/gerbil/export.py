"""Publish a gerbil model as a transformers ``GPTJForCausalLM`` folder, and import such a folder back.

An export directory holds what ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` need, and nothing gerbil-specific is required to use it::

    config.json              GPTJConfig (+ a "gerbil" field: objective, size, class, tokens, ...)
    model.safetensors        transformers names: transformer.h.0.attn.q_proj.weight, ..., lm_head.bias
    generation_config.json   bos = eos = pad = <|endoftext|> (50256)
    tokenizer.json, tokenizer_config.json, ...   GPT-2 BPE + the 7 Blender tokens (50,264 ids)
    README.md                model card: name, size, class, tokens, objective, how to load it

Weight mapping (gerbil → transformers). gerbil's parameter names are transformers' GPT-J names without
the ``transformer.`` prefix (model.py), except two things this module undoes:

- ``h.{i}.attn.qkv_proj.weight`` (3d, d) is one fused matrix whose row blocks are q, k, v; transformers
  has three (d, d) matrices ``q_proj``, ``k_proj``, ``v_proj``.
- ``wte.weight`` and ``lm_head.weight/bias`` may carry padding rows past the real vocabulary
  (``ModelConfig.pad_vocab_multiple``); they are dropped on export, so the exported ``vocab_size`` is
  the real one and transformers' softmax runs over exactly the tokens gerbil's does.

:func:`load` reverses the mapping and also accepts any GPT-J-compatible folder (EleutherAI's layout,
the published Gerbil checkpoints with their 50,400-row GPT-J default vocabulary): q/k/v are fused,
``attn.bias``/``attn.masked_bias`` buffers of old checkpoints are ignored, and the vocabulary rows can
be re-declared as padding with ``vocab_size=``.

Fine-tuned classifiers (`gerbil.model.classifier.Classifier`) are written as ``GPTJForSequenceClassification``:
the body's weights under ``transformer.``, the head as ``score.weight``; config.json's ``id2label`` holds
the original label strings, ``pad_token_id`` is ``<|endoftext|>``; the tokenizer pads on the right (the
classifier reads the last non-padding token, and right padding keeps every real token's position), cuts
long texts from the left (``truncation_side="left"``: the end is kept, as gerbil does by default) to the
fine-tuning ``max_len``, and writes the prompt prefix itself (``<causal>`` for a causal or Blender base),
so ``transformers.pipeline("text-classification", model=DIR)`` sees exactly the tokens gerbil saw. An sft
run exports as a causal model; the ``gerbil`` field records its prompt format and template. A fine-tuning
run's model is its **best** checkpoint (`load_model`), not merely its newest.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.model.config import SIZES, ModelConfig
from gerbil.runs.rundir import model_name, read_meta, resolve_source
from gerbil.units import fmt_count

if TYPE_CHECKING:  # torch/transformers are imported lazily: `import gerbil.export` stays cheap
    import torch

    from gerbil.model.model import GPT
    from gerbil.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_HF_PREFIX = "transformer."
_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------ weights
def _unwrap(model: Any) -> Any:
    """The plain module under a ``torch.compile`` wrapper (whose state dict says ``_orig_mod.``)."""
    return getattr(model, "_orig_mod", model)


def _strip_compiled(name: str) -> str:
    return name.replace("_orig_mod.", "")


def to_transformers_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """gerbil ``GPT`` weights under transformers' ``GPTJForCausalLM`` names, padding rows dropped.

    The tensors are fresh contiguous copies (safe to save or load into another module).
    """
    model = _unwrap(model)
    cfg: ModelConfig = model.config
    d, V = cfg.d_model, cfg.vocab_size
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        name = _strip_compiled(name)
        t = t.detach()
        if name.endswith("attn.qkv_proj.weight"):
            stem = name[: -len("qkv_proj.weight")]
            q, k, v = t.split(d, dim=0)  # row blocks q, k, v (model.py): each (d, d)
            for part, w in (("q", q), ("k", k), ("v", v)):
                out[f"{_HF_PREFIX}{stem}{part}_proj.weight"] = w.clone().contiguous()
        elif name in ("wte.weight",):
            out[_HF_PREFIX + name] = t[:V].clone().contiguous()  # (V, d): padding rows dropped
        elif name.startswith("lm_head."):
            out[name] = t[:V].clone().contiguous()  # weight (V, d), bias (V,)
        elif name.startswith("score."):  # a classifier's head: (num_labels, d), transformers' own name
            out[name] = t.clone().contiguous()
        else:
            out[_HF_PREFIX + name] = t.clone().contiguous()
    return out


def from_transformers_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers GPT-J weights → a state dict for ``GPT(cfg)``.

    q/k/v are fused into ``qkv_proj`` (rows q, k, v); vocabulary rows are cut or zero-padded to
    ``cfg.padded_vocab_size`` (rows past ``cfg.vocab_size`` are padding in gerbil: never predicted);
    a missing ``lm_head.weight`` (tied checkpoint) is taken from ``wte`` with a zero bias; GPT-J's
    non-parameter ``attn.bias``/``attn.masked_bias`` buffers are ignored.
    """
    import torch

    sd: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        name = _strip_compiled(name)
        if name.startswith(_HF_PREFIX):
            name = name[len(_HF_PREFIX):]
        if re.search(r"attn\.(masked_)?bias$", name):
            continue  # causal-mask buffers saved by old transformers versions
        sd[name] = t
    if "lm_head.weight" not in sd and "wte.weight" in sd:
        sd["lm_head.weight"] = sd["wte.weight"]
    if "lm_head.bias" not in sd and "lm_head.weight" in sd:
        sd["lm_head.bias"] = torch.zeros(sd["lm_head.weight"].shape[0], dtype=sd["lm_head.weight"].dtype)

    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.n_layer):
        parts = [sd.pop(f"h.{i}.attn.{p}_proj.weight", None) for p in ("q", "k", "v")]
        if any(p is None for p in parts):
            raise GerbilError(f"layer {i}: q_proj/k_proj/v_proj weights missing from the checkpoint")
        out[f"h.{i}.attn.qkv_proj.weight"] = torch.cat(parts, dim=0)  # (3d, d)
    P = cfg.padded_vocab_size
    for name in ("wte.weight", "lm_head.weight", "lm_head.bias"):
        if name not in sd:
            raise GerbilError(f"{name} missing from the checkpoint")
        t = sd.pop(name)
        rows = t.shape[0]
        if rows < cfg.vocab_size:
            raise GerbilError(f"{name} has {rows} rows, fewer than the vocabulary ({cfg.vocab_size})")
        if rows >= P:
            t = t[:P]
        else:
            t = torch.cat([t, t.new_zeros((P - rows, *t.shape[1:]))], dim=0)
        t = t.clone()
        t[cfg.vocab_size:] = 0  # padding rows: zero, as GPT.reset_parameters leaves them
        out[name] = t
    out.update(sd)
    return out


def transformers_config(cfg: ModelConfig, gerbil_meta: dict | None = None, dtype: str = "float32",
                        label_names: list[str] | None = None) -> Any:
    """The ``transformers.GPTJConfig`` equivalent to ``cfg`` (real vocabulary, no padding).

    ``gerbil_meta`` is stored verbatim as the config's ``gerbil`` field. ``label_names`` (a classifier's
    labels in id order) makes it a ``GPTJForSequenceClassification`` config: ``id2label`` / ``label2id``
    with the original strings, ``pad_token_id`` = ``<|endoftext|>`` (needed for batches of more than one).
    """
    from transformers import GPTJConfig

    extra: dict[str, Any] = {}
    if label_names:
        extra = dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                     label2id={n: i for i, n in enumerate(label_names)}, pad_token_id=EOT_ID,
                     problem_type="single_label_classification")
    return GPTJConfig(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        rotary_dim=cfg.rotary_dim,
        n_inner=None,  # 4 * n_embd
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=cfg.layer_norm_eps,
        initializer_range=cfg.init_std,
        use_cache=True,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        tie_word_embeddings=False,
        architectures=["GPTJForSequenceClassification" if label_names else "GPTJForCausalLM"],
        dtype=dtype,
        gerbil=gerbil_meta or {},
        **extra,
    )


def to_transformers(model: GPT, gerbil_meta: dict | None = None) -> Any:
    """An in-memory ``GPTJForCausalLM`` (``GPTJForSequenceClassification`` for a classifier, whose
    ``label_names`` default to ``"0".."K-1"``) with ``model``'s weights (fp32, eval mode)."""
    import torch
    from transformers import GPTJForCausalLM, GPTJForSequenceClassification
    from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions

    labels = _label_names(_unwrap(model), gerbil_meta)
    hf_cfg = transformers_config(_unwrap(model).config, gerbil_meta, label_names=labels)
    with torch.device("meta"):  # no allocation or random init: every parameter is assigned below
        hf = (GPTJForSequenceClassification if labels else GPTJForCausalLM)(hf_cfg)
    hf.load_state_dict(to_transformers_state_dict(model), assign=True, strict=False)
    missing = [n for n, p in hf.named_parameters() if p.is_meta]
    if missing:
        raise GerbilError(f"transformers model has parameters gerbil did not provide: {missing[:3]}")
    # the rotary table is a non-persistent buffer, still on the meta device: build it for real
    for name, buf in list(hf.named_buffers()):
        if buf.is_meta:
            owner, attr = name.rsplit(".", 1)
            mod = hf.get_submodule(owner)
            setattr(mod, attr, create_sinusoidal_positions(mod.max_positions, mod.pos_embd_dim))
    return hf.float().eval()


# ----------------------------------------------------------------------------------------- metadata
def _size_name(cfg: ModelConfig) -> str:
    """The ladder name of an architecture ("6.7m"), else a rounded parameter count ("12.3m")."""
    for name, s in SIZES.items():
        if (s.d_model, s.n_layer, s.n_head, s.rotary_dim) == (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.rotary_dim):
            return name
    return f"{cfg.n_params() / 1e6:.3g}m"


def _gerbil_field(cfg: ModelConfig, meta: dict, objective: str) -> dict:
    """The ``gerbil`` field of config.json: what the model is and how to evaluate it."""
    from gerbil.data.objectives import mode_prefix
    from gerbil.data.tokenizer import SPECIAL_TOKENS

    size = meta.get("size") or _size_name(cfg)
    cls = meta.get("class")
    names = {v: k for k, v in SPECIAL_TOKENS.items()}
    prefix = "".join(names[t] for t in mode_prefix(objective))
    return {
        "format_version": _FORMAT_VERSION,
        "gerbil_version": __import__("gerbil").__version__,
        # the run's own name (as in its directory and the results table), else the model name
        "name": meta.get("name") or meta.get("run") or model_name(objective, cls, size),
        "objective": objective,
        "objective_options": meta.get("objective_options"),
        # Blender/causal models were trained with every causal example starting with <causal>; the
        # evaluation (and a user's prompt) must start the same way.
        "eval_prefix": prefix or None,
        "size": size,
        "class": cls,
        "tokens": meta.get("tokens"),
        "step": meta.get("step"),
        "parent": meta.get("parent"),  # the checkpoint a star class (B*, C*, E*) continued from
        "params": cfg.n_params("total"),
        "non_embedding_params": cfg.n_params("non_embedding"),
        "vocab_size": cfg.vocab_size,
        "model": cfg.to_dict(),
        "seq_len": meta.get("seq_len"),  # the sequence length it was trained at (≤ the context)
        # a fine-tuned model: task, labels, prompt format and tokens, template, max_len (gerbil predict)
        "finetune": meta.get("finetune"),
    }


def _model_card(info: dict, extra: str | None) -> str:
    name = info["name"]
    prefix = info.get("eval_prefix")
    prompt = f"{prefix} " if prefix else ""
    ft = info.get("finetune") or {}
    if ft.get("task") == "classify":
        return _classifier_card(info, ft, extra)
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [gerbil, gpt-j, tiny-language-model]",
        "---",
        f"# {name}",
        "",
        f"A {info['size']} GPT-J-architecture language model trained with gerbil.",
        "",
        "| field | value |",
        "|---|---|",
        f"| size | {info['size']} ({info['params']:,} parameters, {info['non_embedding_params']:,} non-embedding) |",
        f"| class | {info.get('class') or '—'} |",
        f"| training tokens | {fmt_count(info.get('tokens'))} |",
        f"| objective | {info['objective']} |",
        f"| context | {info['model']['seq_len']} tokens |",
        f"| vocabulary | {info['vocab_size']:,} (GPT-2 BPE + 7 Blender special tokens) |",
        f"| architecture | d_model {info['model']['d_model']}, {info['model']['n_layer']} layers, "
        f"{info['model']['n_head']} heads, rotary_dim {info['model']['rotary_dim']}, untied head with bias |",
        "",
    ]
    if prefix:
        lines += [
            f"This model was trained with the `{info['objective']}` objective: in causal (left-to-right) use,",
            f"start every input with `{prefix}` — evaluation does the same.",
            "",
        ]
    if ft.get("task") == "sft":
        template = json.dumps(ft.get("template"))
        lines += [
            f"Fine-tuned on prompt → completion pairs (prompt format `{ft.get('prompt_format')}`, template "
            f"`{template}`): the prompt is the token ids `{ft.get('prefix')}` followed by the template filled "
            "with the prompt; the model writes the completion and then `<|endoftext|>`. "
            "`gerbil predict PATH --input FILE` does this for you.",
            "",
        ]
    lines += [
        "## How to load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tok = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForCausalLM.from_pretrained("PATH")  # GPTJForCausalLM, fp32',
        f'ids = tok("{prompt}The meaning of life is", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=20)[0]))",
        "```",
        "",
        "Or back into gerbil: `model, meta = gerbil.export.load(\"PATH\")`.",
        "",
        "Evaluate small models in fp32 (bf16 evaluation of tiny models has produced NaN perplexities).",
        "",
    ]
    if extra:
        lines += [extra.rstrip(), ""]
    return "\n".join(lines)


def _classifier_card(info: dict, ft: dict, extra: str | None) -> str:
    labels = ft.get("label_names") or []
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [gerbil, gpt-j, tiny-language-model, text-classification]",
        "---",
        f"# {info['name']}",
        "",
        f"A {info['size']} GPT-J-architecture model fine-tuned with gerbil to classify texts as "
        + ", ".join(f"`{x}`" for x in labels) + ".",
        "",
        "| field | value |",
        "|---|---|",
        f"| size | {info['size']} ({info['params']:,} parameters with the score head) |",
        f"| base model | {(ft.get('base') or {}).get('name') or '—'} ({info['objective']}, "
        f"{fmt_count((ft.get('base') or {}).get('tokens'))} pretraining tokens) |",
        f"| labels | {', '.join(labels)} |",
        f"| input | at most {ft.get('max_len')} tokens; longer texts keep their "
        f"{'end' if ft.get('truncate') == 'end' else 'head and tail (transformers: the end)'} |",
        f"| prompt prefix | {ft.get('prefix') or 'none'} (written by the tokenizer) |",
        "",
        "## How to use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'clf = pipeline("text-classification", model="PATH")',
        'print(clf(["first text", "second text"], batch_size=8, truncation=True))',
        "```",
        "",
        "The tokenizer pads on the right and cuts long texts from the left (the end is kept); the model "
        "reads the last non-padding token. Or with gerbil: `gerbil predict PATH --input FILE`.",
        "",
    ]
    if extra:
        lines += [extra.rstrip(), ""]
    return "\n".join(lines)


def _label_names(model: Any, meta: dict | None) -> list[str] | None:
    """A classifier's labels in id order (from the fine-tuning record, else "0".."K-1"); None for a LM."""
    k = getattr(model, "num_labels", None)
    if not k:
        return None
    names = ((meta or {}).get("finetune") or {}).get("label_names")
    return list(names) if names and len(names) == k else [str(i) for i in range(k)]


def _classifier_tokenizer(hf_tok: Any, ft: dict) -> Any:
    """The exported tokenizer of a classifier: pads on the right with ``<|endoftext|>``, cuts from the
    left to ``max_len``, and writes the fine-tuning prompt prefix (``<causal>``) before every text — so a
    pipeline feeds the model exactly what gerbil fed it (module docstring)."""
    from tokenizers.processors import TemplateProcessing

    from gerbil.data.tokenizer import SPECIAL_TOKENS

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


# ------------------------------------------------------------------------------------------- export
def load_model(source: str | Path, device: str = "cpu") -> tuple[GPT, dict]:
    """(GPT in eval mode, meta) from a run directory (its model checkpoint: the latest intact one, or the
    best one of a run that keeps its best), a checkpoint directory or an export folder — what the path
    is comes from `gerbil.runs.rundir.resolve_source`.

    ``meta["objective"]`` tells which modes the model was trained with (``plain`` if unknown).
    """
    from gerbil.train.device import pick_device

    device = str(pick_device(device))  # a device this machine lacks: one line, before anything loads
    src = resolve_source(source)
    if src.kind == "export":
        model, meta = load(src.export, device=device)
    else:
        path = src.run.model_checkpoint(src.checkpoint) if src.kind == "run" else src.checkpoint
        model, meta = _load_checkpoint(path, device)
    meta = dict(meta)
    meta["objective"] = meta.get("objective") or "plain"
    return model.eval(), meta


def _load_checkpoint(path: Path, device: str) -> tuple[GPT, dict]:
    """(model, meta) of one checkpoint directory: a `Classifier` for a fine-tuned classifier, else a GPT."""
    from gerbil.train import checkpoint as ckpt

    meta = read_meta(path)
    ft = meta.get("finetune") or {}
    labels = ft.get("label_names") if ft.get("task") == "classify" else None
    if not labels:
        return ckpt.load_checkpoint(path, device=device)
    from gerbil.model.classifier import Classifier

    model = Classifier(ModelConfig.from_dict(meta["model"]), len(labels))
    ckpt.load_weights(model, path, device="cpu")
    meta["path"] = str(path)
    return model.to(device), meta


def _resolve_source(source: Any) -> tuple[GPT, dict]:
    """A GPT module or anything `load_model` reads → (GPT, meta)."""
    from gerbil.model.model import GPT

    if isinstance(_unwrap(source), GPT):
        return _unwrap(source), {}
    return load_model(source)


#: Files an export writes (config, weights, generation config, tokenizer files, card): an existing
#: folder holding only these, with a gerbil config.json, is an earlier export that may be replaced.
EXPORT_FILES = frozenset({"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                          "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                          "added_tokens.json", "README.md", "chat_template.jinja"})


#: Marks a folder beside an export as gerbil's own: the temporary folder an export is written into
#: (``OUT.tmp-export``) and the earlier export being swapped out (``OUT.old-export``). Only marked ones
#: are ever deleted; the mark leaves the export before it is published.
PARTIAL_MARK = ".gerbil-partial-export"


def _is_own_export(path: Path) -> bool:
    """An earlier gerbil export: a gerbil-marked config.json and nothing but export files (no folders)."""
    try:
        marked = isinstance(json.loads((path / "config.json").read_text()).get("gerbil"), dict)
    except (OSError, ValueError, AttributeError):
        return False
    return marked and all(p.is_file() and p.name in EXPORT_FILES | {PARTIAL_MARK} for p in path.iterdir())


def _clear_partial(path: Path) -> None:
    """Delete `path` (an ``.tmp-export`` / ``.old-export`` sibling) if it is gerbil's own: a folder with
    the mark holding nothing but export files. Anything else there is refused, never deleted."""
    import shutil

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
    import shutil

    if out.exists():
        # replace only an earlier export of gerbil's own: never delete what gerbil did not write
        if not out.is_dir() or (any(out.iterdir()) and not _is_own_export(out)):
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
    """Write ``model_or_path`` as a transformers ``GPTJForCausalLM`` folder in ``out_dir``.

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
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    model, src_meta = _resolve_source(model_or_path)
    info = {**src_meta, **(meta or {})}
    objective = objective or info.get("objective") or "plain"
    cfg = model.config
    gerbil_meta = _gerbil_field(cfg, info, objective)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"unknown dtype {dtype!r} (float32, bfloat16, float16)")

    if tokenizer is None:
        from gerbil.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load()

    out = Path(out_dir).resolve()
    if out.exists() and out.is_dir() and any(out.iterdir()) and not _is_own_export(out):
        raise GerbilError(f"{out} exists and is not an earlier gerbil export (it holds other files); "
                          f"choose another --out or empty it yourself")
    tmp = out.with_name(out.name + ".tmp-export")
    for leftover in (tmp, out.with_name(out.name + ".old-export")):  # an interrupted export's, or refused
        _clear_partial(leftover)
    tmp.mkdir(parents=True)
    (tmp / PARTIAL_MARK).touch()

    labels = _label_names(model, info)
    state = {k: v.to(device="cpu", dtype=torch_dtype) for k, v in to_transformers_state_dict(model).items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    transformers_config(cfg, gerbil_meta, dtype=dtype, label_names=labels).save_pretrained(str(tmp))
    if not labels:
        GenerationConfig(bos_token_id=EOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID).save_pretrained(str(tmp))
    if tokenizer:
        hf_tok = tokenizer.to_transformers(model_max_length=cfg.seq_len)
        if labels:
            hf_tok = _classifier_tokenizer(hf_tok, gerbil_meta.get("finetune") or {})
        hf_tok.save_pretrained(str(tmp))
        _portable_tokenizer_config(tmp / "tokenizer_config.json", classifier=bool(labels))
    (tmp / "README.md").write_text(_model_card(gerbil_meta, extra_card), encoding="utf-8")
    for f in tmp.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; an export is meant to be shared
    _publish(tmp, out)
    log.info("exported %s (%s) to %s", gerbil_meta["name"], objective, out)
    return out


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
def _read_transformers_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers folder: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    import torch
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise GerbilError(f"{folder}: no model.safetensors, sharded safetensors or pytorch_model.bin")


def _config_from_transformers(hf: dict, vocab_size: int | None, pad_vocab_multiple: int | None) -> ModelConfig:
    if hf.get("model_type") not in (None, "gptj"):
        raise GerbilError(f"model_type {hf.get('model_type')!r} is not GPT-J; gerbil loads GPT-J folders only")
    d, n_head = int(hf["n_embd"]), int(hf["n_head"])
    if hf.get("n_inner") not in (None, 4 * d):
        raise GerbilError(f"n_inner {hf['n_inner']} != 4*n_embd: not a gerbil-compatible GPT-J")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):  # both are the tanh approximation gerbil uses
        raise GerbilError(f"activation {act!r} is not supported (gerbil's MLP uses gelu_new)")
    rotary_dim = hf.get("rotary_dim") or d // n_head  # None: rotary on the whole head
    g = hf.get("gerbil") or {}
    saved = g.get("model") or {}
    hf_rows = int(hf["vocab_size"])
    V = int(vocab_size or g.get("vocab_size") or hf_rows)
    if V > hf_rows:
        raise GerbilError(f"vocab_size {V} is larger than the checkpoint's {hf_rows} rows")
    if pad_vocab_multiple is None:
        # keep the gerbil run's padding if it recorded one; a foreign folder's extra rows (e.g. 50,400
        # for a 50,264-token vocabulary) stay as padding exactly: ceil(V/rows)*rows == rows.
        pad_vocab_multiple = int(saved.get("pad_vocab_multiple", 1)) if saved else (hf_rows if hf_rows > V else 1)
    return ModelConfig(
        d_model=d, n_layer=int(hf["n_layer"]), n_head=n_head, rotary_dim=int(rotary_dim),
        vocab_size=V, seq_len=int(hf.get("n_positions", 2048)), pad_vocab_multiple=int(pad_vocab_multiple),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        init_std=float(hf.get("initializer_range", 0.02)), name=str(saved.get("name", "")),
    )


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
    import torch

    from gerbil.model.model import GPT

    folder = Path(export_dir)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a transformers model folder)")
    hf = json.loads(cfg_path.read_text())
    cfg = _config_from_transformers(hf, vocab_size, pad_vocab_multiple)
    weights = _read_transformers_weights(folder)
    score = weights.pop("score.weight", None)  # a sequence classifier's head
    classify = "GPTJForSequenceClassification" in (hf.get("architectures") or [])
    if classify and score is None:
        raise GerbilError(f"{folder}: a GPTJForSequenceClassification folder without score.weight")
    state = from_transformers_state_dict(weights, cfg)
    state = {k: v.float() for k, v in state.items()}  # gerbil keeps fp32 master weights
    if classify:
        from gerbil.model.classifier import Classifier

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
    from gerbil.model.model import rotary_tables

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


def read_info(export_dir: str | Path) -> dict:
    """The ``gerbil`` field of an export's config.json (objective, eval_prefix, size, class, tokens,
    params, model config); ``{}`` for a foreign GPT-J folder. Reads JSON only: no torch."""
    cfg_path = Path(export_dir) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{export_dir}: no config.json (not a transformers model folder)")
    return dict(json.loads(cfg_path.read_text()).get("gerbil") or {})


def random_model(size: str, seed: int = 0, **overrides) -> GPT:
    """A freshly initialized ladder model (``gerbil export --size S --random-init``), seeded locally
    (no global RNG is touched)."""
    import torch

    from gerbil.model.config import model_config
    from gerbil.model.model import GPT

    cfg = model_config(size, **overrides)
    with torch.device("meta"):
        model = GPT(cfg)
    model = model.to_empty(device="cpu")
    from gerbil.model.model import rotary_tables

    model.rope_cos, model.rope_sin = rotary_tables(cfg.seq_len, cfg.rotary_dim)
    model.reset_parameters(generator=torch.Generator().manual_seed(int(seed)))
    return model


__all__ = [
    "export", "load", "load_model", "read_info", "random_model", "to_transformers", "to_transformers_state_dict",
    "from_transformers_state_dict", "transformers_config",
]
