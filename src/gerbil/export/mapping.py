"""gerbil ↔ transformers: GPT-J weights under transformers' names and back, and the ``GPTJConfig``.

gerbil's parameter names are transformers' GPT-J names without the ``transformer.`` prefix (model.py),
except two things this module undoes:

- ``h.{i}.attn.qkv_proj.weight`` (3d, d) is one fused matrix whose row blocks are q, k, v; transformers
  has three (d, d) matrices ``q_proj``, ``k_proj``, ``v_proj``.
- ``wte.weight`` and ``lm_head.weight/bias`` may carry padding rows past the real vocabulary
  (``ModelConfig.pad_vocab_multiple``); they are dropped on export, so the exported ``vocab_size`` is
  the real one and transformers' softmax runs over exactly the tokens gerbil's does.

`from_transformers_state_dict` reverses the mapping and also accepts any GPT-J-compatible folder's weights
(EleutherAI's layout, the published Gerbil checkpoints with their 50,400-row GPT-J default vocabulary): q/k/v
are fused, ``attn.bias``/``attn.masked_bias`` buffers of old checkpoints are ignored, and the vocabulary
rows can be re-declared as padding (`config_from_transformers`'s ``vocab_size``). A classifier's head is
``score.weight`` under both names.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig
from gerbil.units import DEFAULT_SEQ_LEN

if TYPE_CHECKING:  # lazy: torch is imported in the functions that need it (`import gerbil.export` stays cheap)
    import torch

    from gerbil.model.model import GPT

_HF_PREFIX = "transformer."


# ------------------------------------------------------------------------------------------ weights
def unwrap(model: Any) -> Any:
    """The plain module under a ``torch.compile`` wrapper (whose state dict says ``_orig_mod.``)."""
    return getattr(model, "_orig_mod", model)


def _strip_compiled(name: str) -> str:
    return name.replace("_orig_mod.", "")


def to_transformers_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """gerbil ``GPT`` weights under transformers' ``GPTJForCausalLM`` names, padding rows dropped.

    The tensors are fresh contiguous copies (safe to save or load into another module).
    """
    model = unwrap(model)
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
    import torch  # lazy: torch only when weights are mapped

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
    from transformers import GPTJConfig  # lazy: transformers is import-heavy (seconds)

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
    import torch  # lazy: torch and transformers only when a model is converted
    from transformers import GPTJForCausalLM, GPTJForSequenceClassification
    from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions

    labels = label_names(unwrap(model), gerbil_meta)
    hf_cfg = transformers_config(unwrap(model).config, gerbil_meta, label_names=labels)
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



# ----------------------------------------------------------------------------------- reading a folder
def read_transformers_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers folder: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    import torch  # lazy: torch and safetensors only when weights are read
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


def config_from_transformers(hf: dict, vocab_size: int | None, pad_vocab_multiple: int | None) -> ModelConfig:
    """The gerbil ModelConfig of a transformers GPT-J config.json (``vocab_size``: re-declare rows past it as
    padding; ``pad_vocab_multiple``: default the recorded run's, else the folder's rows kept)."""
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
        vocab_size=V, seq_len=int(hf.get("n_positions", DEFAULT_SEQ_LEN)), pad_vocab_multiple=int(pad_vocab_multiple),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        init_std=float(hf.get("initializer_range", 0.02)), name=str(saved.get("name", "")),
    )



def label_names(model: Any, meta: dict | None) -> list[str] | None:
    """A classifier's labels in id order (from the fine-tuning record, else "0".."K-1"); None for a LM."""
    k = getattr(model, "num_labels", None)
    if not k:
        return None
    names = ((meta or {}).get("finetune") or {}).get("label_names")
    return list(names) if names and len(names) == k else [str(i) for i in range(k)]
