"""What a warm-started encoder-decoder's export says about itself: config.json's ``gerbil`` field and the
README model card (`export.writer` writes the folder through `gerbil.model.warmstart_hf`). No torch.

The folder loads with ``AutoModelForSeq2SeqLM.from_pretrained(DIR, trust_remote_code=True)``: it carries
``modeling_gerbil_encdec.py`` and config.json's ``auto_map`` points at it (docs/warmstart.md).
"""
from __future__ import annotations

import json

from gerbil.export.card import gerbil_field
from gerbil.units import fmt_count


def warmstart_field(cfg, meta: dict, objective: str) -> dict:
    """The ``gerbil`` field of a warm start's config.json: the GPT-J field of its base's shape (size,
    objective, tokens of the base's pretraining) with the warm start's own model record, parameter counts,
    sharing, decoder start id and, fine-tuned, its ``finetune`` record."""
    field = gerbil_field(cfg.base, meta, objective)
    field.update(params=cfg.n_params("total"), non_embedding_params=cfg.n_params("non_embedding"),
                 model=cfg.to_dict(), eval_prefix=None, warmstart=meta.get("warmstart"),
                 decoder_start_id=cfg.decoder_start_id, architecture="gptj-warmstart")
    if not meta.get("name") and not meta.get("run"):
        field["name"] = f"{field['name']}-warmstart{'-shared' if cfg.share else ''}"
    return field


def warmstart_card(info: dict, extra: str | None = None) -> str:
    """README.md of a warm start's export."""
    base = (info.get("model") or {}).get("base") or {}
    ws = info.get("warmstart") or {}
    ft = info.get("finetune") or {}
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text2text-generation",
        "tags: [gerbil, gpt-j, encoder-decoder, warm-start, tiny-language-model]", "---",
        f"# {info['name']}", "",
        f"An encoder-decoder warm-started with gerbil from the {info['size']} decoder-only GPT-J model "
        f"`{(ws.get('base') or {}).get('name') or '—'}` (Rothe et al. 2020): the encoder is the base's blocks "
        "with bidirectional attention, the decoder the base's blocks with a new cross-attention in each "
        "(its output projection started at zero, so the untrained decoder is exactly the base model).", "",
        "| field | value |", "|---|---|",
        f"| parameters | {info['params']:,} ({info['non_embedding_params']:,} non-embedding) |",
        f"| encoder / decoder weights | {'shared' if (info.get('model') or {}).get('share') else 'separate copies'} |",
        f"| base | {info['objective']}, {fmt_count(info.get('tokens'))} pretraining tokens |",
        f"| architecture | d_model {base.get('d_model')}, {base.get('n_layer')} layers each side, "
        f"{base.get('n_head')} heads, rotary_dim {base.get('rotary_dim')} |",
        f"| decoder start token | {info.get('decoder_start_id')} |", "",
    ]
    if ft.get("task") == "seq2seq":
        lines += [f"Fine-tuned sequence to sequence: the encoder reads the template "
                  f"`{json.dumps(ft.get('template'))}` filled with the source; the decoder writes the target "
                  "and then `<|endoftext|>`. `gerbil predict PATH --input FILE` does this for you.", ""]
    lines += [
        "## How to load", "", "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer", "",
        'tok = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)',
        'model = AutoModelForSeq2SeqLM.from_pretrained("PATH", trust_remote_code=True)',
        'enc = tok(["3rd of March, 2021"], return_tensors="pt")',
        "print(tok.decode(model.generate(**enc, max_new_tokens=20)[0], skip_special_tokens=True))", "```", "",
        "Or with gerbil: `gerbil.export.load_model(\"PATH\")`.", "",
    ]
    if extra:
        lines += [extra.rstrip(), ""]
    return "\n".join(lines)


__all__ = ["warmstart_field", "warmstart_card"]
