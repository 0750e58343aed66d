"""Generation through a model's modes: causal `sample`, fill-in-the-middle `infill`, masked-LM `unmask`.

The prompts are the training formats of `gerbil.data.objectives` cut where the model takes over:

* `sample`:  ``[<causal>] prompt`` → continuation (``<causal>`` only for causal/Blender models);
* `infill`:  ``<fitm_start> prefix <multiple_tok_mask> suffix <fitm_result>`` → middle, until ``<|endoftext|>``;
* `unmask`:  ``<mlm_start> text with <single_tok_mask>s <mlm_end>`` → one token per mask, in order.

An encoder-decoder (T5Blender, a warm start) runs the same three modes in its own split of those formats
(data/encdec.py): the encoder reads the prompt up to its result token, the decoder writes from its start
id — ``<causal> prompt`` → continuation, ``<fitm_start> prefix <multiple_tok_mask> suffix`` →
``<fitm_result>`` middle, ``<mlm_start> text with masks`` → ``<mlm_end>`` answers (`encdec_prompt`).

No KV cache: the models are tiny, so every step re-runs the (cropped) context; the context is cut to
the model's ``seq_len`` from the left. ``temperature=0`` is greedy decoding; otherwise logits / T,
optionally restricted to the ``top_k`` most likely tokens, sampled with a generator seeded by ``seed``
(no global RNG is touched).

Text and spaces follow the reading documented in `gerbil.data.display`: a GPT-2 word carries its leading
space, so one space just before a special token is a separator, not a token (``"an <single_tok_mask>"``
masks the token `` example`` of ``"an example"``), and trailing spaces of an infill prefix move into
the middle (``"this is an "`` + `` example``), as lm-evaluation-harness moves a context's trailing
spaces into the continuation.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from gerbil.data.display import from_display
from gerbil.data.objectives import FITM_RESULT, MLM_END, FillInMiddle, MaskedLM, mode_prefix
from gerbil.data.tokenizer import EOT_ID, SPECIAL_TOKENS
from gerbil.errors import OptionError
from gerbil.model.factory import is_encoder_decoder
from gerbil.model.t5_hf import DECODER_START_ID

log = logging.getLogger(__name__)

SINGLE_TOK_MASK = "<single_tok_mask>"
_SPECIAL_IDS = sorted(SPECIAL_TOKENS.values())


# -------------------------------------------------------------------------------------- core loop
def _check_options(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if int(max_new_tokens) < 0:
        raise OptionError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not float(temperature) >= 0:  # also rejects NaN
        raise OptionError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and int(top_k) < 1:
        raise OptionError(f"top_k must be >= 1, got {top_k}")


@torch.no_grad()
def generate_ids(
    model: Any,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop_ids: tuple[int, ...] = (EOT_ID,),
    banned_ids: list[int] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[int]:
    """Continue ``prompt_ids`` by up to ``max_new_tokens`` tokens; the new tokens only.

    Stops early (without returning it) at a token in ``stop_ids``, or after a token for which
    ``stop(new_tokens)`` is true (e.g. the decoded text contains a stop string; the token is returned).
    ``banned_ids`` are never produced.
    An empty prompt starts from ``<|endoftext|>``, the boundary every training document follows.
    An encoder-decoder (T5Blender, a warm start) gets the prompt cut as its training examples are
    (`encdec_prompt`): the encoder reads it up to its result token, the decoder continues from its start
    id and the rest.
    """
    _check_options(max_new_tokens, temperature, top_k)
    param = next(model.parameters())
    device = param.device
    seq_len = int(model.config.seq_len)
    ids = list(int(i) for i in prompt_ids) or [EOT_ID]
    encoded = None
    if is_encoder_decoder(model):
        enc_ids, ids = encdec_prompt(ids, int(getattr(model.config, "decoder_start_id", DECODER_START_ID)))
        encoded = model.eval().encode(torch.tensor([enc_ids[-seq_len:]], dtype=torch.long, device=device))
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
    banned = torch.tensor(sorted(set(banned_ids or ())), dtype=torch.long)
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        for _ in range(int(max_new_tokens)):
            ctx = torch.tensor([ids[-seq_len:]], dtype=torch.long, device=device)  # (1, T)
            # (1, d): only the last position is needed
            hidden = (model(ctx) if encoded is None else model.decode(ctx, encoded))[:, -1, :]
            logits = model.logits(hidden)[0].float().cpu()  # (V,)
            if len(banned):
                logits[banned] = float("-inf")
            if temperature == 0:
                nxt = int(torch.argmax(logits))
            else:
                logits = logits / float(temperature)
                if top_k is not None and int(top_k) < logits.numel():
                    kth = torch.topk(logits, int(top_k)).values[-1]
                    logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
                probs = torch.softmax(logits, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            if nxt in stop_ids:
                break
            out.append(nxt)
            ids.append(nxt)
            if stop is not None and stop(out):
                break
    finally:
        model.train(was_training)
    return out


def encdec_prompt(ids: list[int], start_id: int) -> tuple[list[int], list[int]]:
    """(encoder ids, decoder ids) of a decoder-only prompt, split as data/encdec.py splits training
    examples: at its last result token (``<fitm_result>``, ``<mlm_end>``), which begins the decoder behind
    the start id; a prompt without one (causal: ``<causal> prompt``) is all encoder."""
    cut = max((k for k, t in enumerate(ids) if t in (FITM_RESULT, MLM_END)), default=len(ids))
    return ids[:cut] or [EOT_ID], [start_id] + ids[cut:]


def _check_special(text: str, what: str, allow_special: bool, allowed: tuple[str, ...] = ()) -> None:
    """Refuse raw special-token strings in user text unless allowed."""
    if allow_special:
        return
    for name in SPECIAL_TOKENS:
        if name in allowed:
            continue
        if name in text:
            raise OptionError(f"{what} contains the special token {name}; pass allow_special=True "
                             f"(--allow-special) to use special tokens in it")


def _encode(tokenizer: Any, text: str, allow_special: bool) -> list[int]:
    """Token ids of user text; with special tokens allowed, read in the seed's display convention."""
    if not text:
        return []
    return from_display(text, tokenizer) if allow_special else list(tokenizer.encode(text))


# -------------------------------------------------------------------------------------- the three modes
def sample(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = 50,
    seed: int | None = 0,
    allow_special: bool = False,
    objective: str | None = None,
) -> str:
    """Causal generation: the text that follows ``prompt`` (until ``<|endoftext|>`` or the token limit).

    objective: the model's training objective; ``causal``/``blender`` models get ``<causal>`` in front
        of the prompt, the mode they were trained in (`gerbil.data.objectives.mode_prefix`).
    allow_special: let special-token strings in ``prompt`` become their ids; otherwise they are an error.
    """
    _check_special(prompt, "prompt", allow_special)
    ids = mode_prefix(objective) + _encode(tokenizer, prompt, allow_special)
    new = generate_ids(model, ids, max_new_tokens, temperature, top_k, seed)
    return tokenizer.decode(new)


def infill(
    model: Any,
    tokenizer: Any,
    prefix: str,
    suffix: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = 0,
    allow_special: bool = False,
    spm: bool = False,
) -> str:
    """Fill in the middle between ``prefix`` and ``suffix``; returns the middle text.

    The prompt is the FIM training format up to ``<fitm_result>`` (PSM, or SPM with ``spm=True`` for a
    model trained with ``spm_rate > 0``); the model writes the middle and ends it with ``<|endoftext|>``.
    Trailing spaces of ``prefix`` are left to the middle (see the module docstring), so the full text is
    ``prefix.rstrip(" ") + middle + suffix``. Special tokens are never generated in the middle.
    """
    _check_special(prefix, "prefix", allow_special)
    _check_special(suffix, "suffix", allow_special)
    p = _encode(tokenizer, prefix.rstrip(" "), allow_special)
    s = _encode(tokenizer, suffix, allow_special)
    ids = FillInMiddle.prompt(p, s, spm=spm).tolist()
    banned = [i for i in _SPECIAL_IDS if i != EOT_ID]
    new = generate_ids(model, ids, max_new_tokens, temperature, top_k, seed, banned_ids=banned)
    return tokenizer.decode(new)


def unmask(
    model: Any,
    tokenizer: Any,
    text_with_masks: str,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = 0,
    allow_special: bool = False,
) -> tuple[str, list[str]]:
    """Predict the token behind every ``<single_tok_mask>`` in ``text_with_masks``.

    Returns ``(filled text, [the predicted token of each mask, in order])``. The prompt is the MLM
    training format ``<mlm_start> text <mlm_end>``; the model then writes one ordinary token per mask
    (special tokens are never produced). One space before a mask is a separator, so
    ``"this is an <single_tok_mask> text"`` → ``"this is an example text"`` when the answer is `` example``.
    """
    _check_special(text_with_masks, "text", allow_special, allowed=(SINGLE_TOK_MASK,))
    if SINGLE_TOK_MASK not in text_with_masks:
        raise OptionError(f"text has no {SINGLE_TOK_MASK} to fill")
    # after the check above the only special token left is the mask (unless allowed): the seed's display
    # convention applies (`from_display`: the space before a special token is a separator)
    masked = from_display(text_with_masks, tokenizer)
    n_masks = sum(1 for t in masked if t == SPECIAL_TOKENS[SINGLE_TOK_MASK])
    ids = MaskedLM.prompt(masked).tolist()
    answers = generate_ids(model, ids, n_masks, temperature, top_k, seed, stop_ids=(),
                           banned_ids=_SPECIAL_IDS)
    filled = np.asarray(masked, dtype=np.int64)
    filled[filled == SPECIAL_TOKENS[SINGLE_TOK_MASK]] = answers
    return tokenizer.decode(filled.tolist()), [tokenizer.decode([a]) for a in answers]


__all__ = ["generate_ids", "encdec_prompt", "sample", "infill", "unmask"]
