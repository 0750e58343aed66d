"""Publish a gerbil model as a transformers ``GPTJForCausalLM`` folder, and import such a folder back.

An export directory holds what ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` need, and nothing gerbil-specific is required to use it::

    config.json              GPTJConfig (+ a "gerbil" field: objective, size, class, tokens, ...)
    model.safetensors        transformers names: transformer.h.0.attn.q_proj.weight, ..., lm_head.bias
    generation_config.json   bos = eos = pad = <|endoftext|> (50256)
    tokenizer.json, tokenizer_config.json, ...   GPT-2 BPE + the 7 Blender tokens (50,264 ids)
    README.md                model card: name, size, class, tokens, objective, how to load it

The package's modules: `mapping` (gerbil ↔ transformers weights and config), `card` (config.json's
``gerbil`` field and the README model card), `writer` (`export`: the folder, written beside and swapped
in), `loading` (`load` an export folder, `load_model` any run / checkpoint / export, `random_model`).

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

from __future__ import annotations

from gerbil.export.card import gerbil_field, model_card
from gerbil.export.loading import load, load_model, random_model, read_info
from gerbil.export.mapping import (from_transformers_state_dict, to_transformers, to_transformers_state_dict,
                                   transformers_config)
from gerbil.export.writer import EXPORT_FILES, PARTIAL_MARK, export

__all__ = [
    "EXPORT_FILES", "PARTIAL_MARK", "export", "from_transformers_state_dict", "gerbil_field", "load", "load_model",
    "model_card", "random_model", "read_info", "to_transformers", "to_transformers_state_dict", "transformers_config",
]
