"""What an export says about its model: config.json's ``gerbil`` field and the README model card. No torch.

The class on both follows the results table's rule (`gerbil.classes.claimed_class`): a budget short of its
class's tokens per parameter is a custom budget (``gerbil.class`` null, "custom budget" on the card).
"""
from __future__ import annotations

import json

import gerbil
from gerbil.classes import claimed_class, class_text
from gerbil.data.objectives import mode_prefix, supports
from gerbil.data.tokenizer import SPECIAL_TOKENS
from gerbil.model.config import ModelConfig, size_label
from gerbil.runs.rundir import model_name
from gerbil.units import fmt_count

_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------- metadata
def gerbil_field(cfg: ModelConfig, meta: dict, objective: str) -> dict:
    """The ``gerbil`` field of config.json: what the model is and how to evaluate it. Its class is the one
    the run's budget claims (`gerbil.classes.claimed_class`; a checkpoint recorded before the rule, with a
    class its budget falls short of, exports as a custom budget)."""
    size = meta.get("size") or size_label(model=cfg)
    budget = meta.get("budget")
    cls = claimed_class(meta.get("class"), budget / cfg.n_params("total") if budget else None)
    names = {v: k for k, v in SPECIAL_TOKENS.items()}
    # an encoder-decoder is scored like lm-eval's seq2seq backend: no mode token (docs/reference.md §9)
    prefix = "" if cfg.is_encoder_decoder else "".join(names[t] for t in mode_prefix(objective))
    return {
        "format_version": _FORMAT_VERSION,
        "gerbil_version": gerbil.__version__,
        # the run's own name (as in its directory and the results table), else the model name
        "name": meta.get("name") or meta.get("run") or model_name(objective, cls, size, cfg.arch),
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
        "encoder_len": meta.get("encoder_len"),  # an encoder-decoder's encoder positions per training row
        # a fine-tuned model: task, labels, prompt format and tokens, template, max_len (gerbil predict)
        "finetune": meta.get("finetune"),
    }


def model_card(info: dict, extra: str | None) -> str:
    name = info["name"]
    prefix = info.get("eval_prefix")
    prompt = f"{prefix} " if prefix else ""
    ft = info.get("finetune") or {}
    if ft.get("task") == "classify":
        return classifier_card(info, ft, extra)
    if info["model"].get("arch") == "t5":
        return t5_card(info, extra)
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
        f"| class | {class_text(info.get('class')) if info.get('tokens') else '—'} |",
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
    modes = [how for capability, how in (("infills", "fill in a middle (`gerbil infill`)"),
                                         ("unmasks", "predict masked tokens (`gerbil unmask`)"))
             if supports(info["objective"], capability)]
    if modes and not ft:
        lines += [f"It was also trained to {' and to '.join(modes)}.", ""]
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


def classifier_card(info: dict, ft: dict, extra: str | None) -> str:
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


def t5_card(info: dict, extra: str | None) -> str:
    """The model card of a T5Blender export (a native ``T5ForConditionalGeneration`` folder)."""
    m = info["model"]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text2text-generation",
        "tags: [gerbil, t5, encoder-decoder, tiny-language-model]",
        "---",
        f"# {info['name']}",
        "",
        f"A {info['size']} T5 encoder-decoder (T5Blender) trained with gerbil on the Blender formats split for "
        "encoder-decoders: causal (a prefix LM), fill-in-the-middle and masked language modelling.",
        "",
        "| field | value |",
        "|---|---|",
        f"| size | {info['size']} ({info['params']:,} parameters, {info['non_embedding_params']:,} non-embedding) |",
        f"| class | {class_text(info.get('class')) if info.get('tokens') else '—'} |",
        f"| training tokens | {fmt_count(info.get('tokens'))} (encoder + decoder) |",
        f"| objective | {info['objective']} |",
        f"| vocabulary | {info['vocab_size']:,} (GPT-2 BPE + 7 Blender special tokens) |",
        f"| architecture | d_model {m['d_model']}, {m['n_layer']} encoder + {m['n_decoder_layer']} decoder layers, "
        f"{m['n_head']} heads of {m['d_kv']}, gated-GELU d_ff {m['d_ff']}, tied embedding and head |",
        "| decoder start / pad / end | `<|endoftext|>` (50256) |",
        "",
        "Formats (encoder → decoder): `<causal> prefix` → `rest <|endoftext|>`; `<fitm_start> prefix "
        "<multiple_tok_mask> suffix` → `<fitm_result> middle <|endoftext|>`; `<mlm_start> text with "
        "<single_tok_mask>s` → `<mlm_end> masked tokens <|endoftext|>`. Benchmarks score it as lm-eval's "
        "seq2seq backend does: context → encoder (no mode token), continuation → decoder.",
        "",
        "## How to load",
        "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        "",
        'tok = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForSeq2SeqLM.from_pretrained("PATH")  # T5ForConditionalGeneration, fp32',
        'ids = tok("<causal>The meaning of life is", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=20)[0]))",
        "```",
        "",
        "Or back into gerbil: `model, meta = gerbil.export.load_model(\"PATH\")`.",
        "",
    ]
    if extra:
        lines += [extra.rstrip(), ""]
    return "\n".join(lines)
