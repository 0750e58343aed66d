"""Blender for encoder-decoders: the seed's three formats split at their result token (docs/reference.md §9).

A decoder-only Blender example (objectives.py) is one sequence; for T5Blender each is cut in two — what
comes up to the task's result token goes to the encoder, the rest (what the model must produce) to the
decoder, which ends with ``<|endoftext|>``::

    causal  encoder  <causal> this is an example text
            decoder  for causal language modelling <|endoftext|>                 (a prefix LM)
    FIM     encoder  <fitm_start> this is an <multiple_tok_mask> for fill-in-the-middle
            decoder  <fitm_result> example text <|endoftext|>
    MLM     encoder  <mlm_start> this is an <single_tok_mask> text for masked language modelling
            decoder  <mlm_end> example <|endoftext|>

(the seed's display: a space around each special token is a separator, objectives.py.) So the encoder
tokens followed by the decoder tokens without their EOT are exactly the decoder-only example of the same
chunk and generator. FIM and MLM make the very draws the decoder-only objectives make (`FillInMiddle.draw`,
`MaskedLM.positions`, `Blender.choose` — the same code); causal adds one: its split point
``s = ⌊u·n⌋ ∈ {0, …, n−1}`` (the prefix may be empty: plain generation; the decoder always gets at least
one text token), where the loader takes ``u`` from a counter-based hash of (seed, chunk index)
(`split_uniform`), so that it draws whole batches of examples at once with the decoder-only code. SPM-ordered FIM puts ``<fitm_start> <multiple_tok_mask> suffix`` in the encoder and
``<fitm_result> prefix middle`` in the decoder.

Every decoder sequence is fed shifted right behind the decoder start id (``<|endoftext|>``,
model/t5_hf.py): decoder input ``[start] + dec[:-1]``, targets ``dec``. Loss mask: ``loss_on="all"`` (the
default) scores every decoder token (the result token included: it is predictable from the encoder's mode
token); ``"target"`` drops the result token and, in SPM, the prefix. Encoder tokens are never targets —
unlike the decoder-only ``"all"``, which also predicts the context.

Plain (no mode token, no split) is not an encoder-decoder objective: `check_objective` refuses it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gerbil.data.objectives import (CAUSAL, FITM_RESULT, FITM_START, MLM_END, MLM_START, MULTIPLE_TOK_MASK,
                                    SINGLE_TOK_MASK, TOKEN_DTYPE, Blender, Causal, FillInMiddle, MaskedLM,
                                    Objective, get_objective)
from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError

#: objectives an encoder-decoder trains with
ENCDEC_OBJECTIVES = ("causal", "fim", "mlm", "blender")

Example = tuple[np.ndarray, np.ndarray, np.ndarray]  # (encoder ids, decoder ids with EOT, decoder loss mask)


def check_objective(objective: str | Objective, **options: Any) -> Objective:
    """The `Objective` for an encoder-decoder (a name with options, or an instance); plain, unknown names
    and other callables are a one-line GerbilError."""
    if isinstance(objective, str):
        name = objective.strip().lower()
        if name not in ENCDEC_OBJECTIVES:
            raise GerbilError(f"objective {objective!r} has no encoder-decoder format "
                              f"(T5 trains with {', '.join(ENCDEC_OBJECTIVES)})")
        try:
            return get_objective(name, **options)
        except ValueError as e:
            raise GerbilError(str(e)) from None
    if type(objective) not in (Causal, FillInMiddle, MaskedLM, Blender):
        raise GerbilError(f"objective {getattr(objective, 'name', objective)!r} has no encoder-decoder format "
                          f"(T5 trains with {', '.join(ENCDEC_OBJECTIVES)})")
    return objective


def _ids(*parts: Any) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=TOKEN_DTYPE).reshape(-1) for p in parts])


def _mask(n: int, first_target: int, loss_on: str) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    if loss_on == "target":
        mask[:first_target] = False
    return mask


def split_uniform(seed: int, chunk_index: Any) -> np.ndarray:
    """u ∈ [0, 1) per chunk index: splitmix64 of (seed, index) — a pure function, vectorized, resumable."""
    x = (np.uint64(int(seed) & 0xFFFFFFFF) << np.uint64(32)) + np.asarray(chunk_index, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as in C
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def example(objective: Objective, doc_tokens: Any, rng: np.random.Generator, u: float | None = None,
            eot_id: int = EOT_ID) -> Example:
    """One chunk → (encoder ids, decoder ids ending with ``eot_id``, decoder loss mask) (module docstring).

    ``objective`` is a Causal, FillInMiddle, MaskedLM or Blender (`check_objective`); the chunk must not
    be empty. ``u``: the causal split's uniform (default: drawn from ``rng`` after the task's draws)."""
    doc = np.asarray(doc_tokens, dtype=TOKEN_DTYPE).reshape(-1)
    n = len(doc)
    if n == 0:
        raise ValueError("an encoder-decoder example needs at least one token")
    task = objective.choose(rng) if isinstance(objective, Blender) else objective
    loss_on = task.loss_on
    if isinstance(task, FillInMiddle):
        p, m, s, spm = task.draw(doc, rng)
        if spm:
            return (_ids([FITM_START, MULTIPLE_TOK_MASK], s),
                    _ids([FITM_RESULT], p, m, [eot_id]), _mask(len(p) + len(m) + 2, 1 + len(p), loss_on))
        return _ids([FITM_START], p, [MULTIPLE_TOK_MASK], s), _ids([FITM_RESULT], m, [eot_id]), \
            _mask(len(m) + 2, 1, loss_on)
    if isinstance(task, MaskedLM):
        pos = np.sort(task.positions(n, rng))
        text = doc.copy()
        text[pos] = SINGLE_TOK_MASK
        return _ids([MLM_START], text), _ids([MLM_END], doc[pos], [eot_id]), _mask(len(pos) + 2, 1, loss_on)
    if isinstance(task, Causal):
        s = min(n - 1, int((rng.random() if u is None else u) * n))  # the prefix LM's split: 0 … n−1
        return _ids([CAUSAL], doc[:s]), _ids(doc[s:], [eot_id]), np.ones(n - s + 1, dtype=bool)
    raise GerbilError(f"objective {task.name!r} has no encoder-decoder format")


# ---------------------------------------------------------------------------------------- lengths
def _tasks(objective: Objective) -> list[tuple[Objective, float]]:
    if isinstance(objective, Blender):
        return [(t, w) for t, w in zip(objective.tasks, objective.weights) if w > 0]
    return [(objective, 1.0)]


def max_lengths(objective: Objective, n: int) -> tuple[int, int]:
    """(longest encoder part, longest decoder part with its EOT) of any example of an ``n``-token chunk."""
    enc = dec = 0
    for task, _ in _tasks(objective):
        if isinstance(task, FillInMiddle):  # max_output_len = all pieces + 3 specials (+ char-level slack)
            e = d = task.max_output_len(n) - 1  # one side holds ≥ 1 special, the decoder gains the EOT
        elif isinstance(task, MaskedLM):
            e, d = n + 1, task.n_masked(n) + 2
        else:  # causal: split s in [0, n-1]
            e, d = n, n + 1
        enc, dec = max(enc, e), max(dec, d)
    return enc, dec


def encoder_share(objective: Objective) -> float:
    """The expected fraction of an example's tokens in the encoder, for long chunks: causal 1/2 (a uniform
    split), FIM 2/3 (a uniform pair of cuts leaves a third as the middle), MLM 1/(1 + mask rate), Blender
    the weighted mix (equal shares: 0.688)."""
    enc = tot = 0.0
    for task, w in _tasks(objective):
        if isinstance(task, FillInMiddle):
            e, d = 2 / 3, 1 / 3
        elif isinstance(task, MaskedLM):
            e, d = 1.0, task.mask_rate
        else:
            e, d = 0.5, 0.5
        enc, tot = enc + w * e, tot + w * (e + d)
    return enc / tot


def default_encoder_len(seq_len: int, objective: Objective) -> int:
    """Encoder positions of a ``seq_len``-token row: ``seq_len`` × `encoder_share`, a multiple of 8 from 64
    tokens on (tensor-core friendly shapes), so that packed rows fill both sides about equally."""
    T = int(seq_len)
    te = T * encoder_share(objective)
    te = 8 * round(te / 8) if T >= 64 else round(te)
    return int(min(max(te, 1), T - 1))


def max_chunk_len(objective: Objective, encoder_len: int, decoder_len: int) -> int:
    """The longest chunk every one of whose examples fits an empty row of (encoder_len, decoder_len); 0 if
    none does."""
    lo, hi = 0, max(0, min(encoder_len, decoder_len) * 8)
    while lo < hi:  # max_lengths is monotone in n
        mid = (lo + hi + 1) // 2
        e, d = max_lengths(objective, mid)
        if e <= encoder_len and d <= decoder_len:
            lo = mid
        else:
            hi = mid - 1
    return lo


def default_chunk_len(objective: Objective, encoder_len: int, decoder_len: int) -> int:
    """The longest chunk two of whose examples always fit one row (half of each side), so that rows hold two
    or more examples: with Blender at 2048 tokens a row is then ~90% real tokens instead of ~80% with
    chunks as long as one row allows (docs/reference.md §9). Tiny rows: the longest that fits at all."""
    half = max_chunk_len(objective, encoder_len // 2, decoder_len // 2)
    if half >= 1:
        return half
    longest = max_chunk_len(objective, encoder_len, decoder_len)
    if longest < 1:
        raise GerbilError(f"a row of {encoder_len} encoder + {decoder_len} decoder tokens holds no "
                          f"{objective.name} example; use a longer --seq-len")
    return longest


__all__ = ["ENCDEC_OBJECTIVES", "Example", "check_objective", "split_uniform", "example", "max_lengths", "encoder_share",
           "default_encoder_len", "max_chunk_len", "default_chunk_len"]
