"""Training objectives: one document chunk's tokens → (tokens, loss mask), using a seeded generator.

The GerbilBlender models (UL2-inspired) train on an equal mix of three tasks, each announced by a mode
token (the seven Blender ids, docs/reference.md §2). The seed writes them as::

    '<fitm_start> this is an <multiple_tok_mask> for fill-in-the-middle <fitm_result> example text <|endoftext|>'
    '<causal> this is an example text for causal language modelling <|endoftext|>'
    '<mlm_start> this is an <single_tok_mask> text for masked language modelling <mlm_end> example <|endoftext|>'

How those strings are read (the token sequences the formatters produce)
-----------------------------------------------------------------------
The strings are a *display*: a space separates every special token from its neighbours. GPT-2 BPE
attaches a word's leading space to the word (`` example`` is one token), so

* the space **after** a special token is the leading space of the next word's token: ``<causal> this``
  is ``[<causal>, " this", ...]`` — the document's own tokens, unchanged;
* the space **before** a special token is only a separator, not a token: ``an <multiple_tok_mask>`` is
  ``[..., " an", <multiple_tok_mask>]``, not ``[..., " an", " ", <multiple_tok_mask>]``.

With that reading the three examples are exactly what the formatters below make from the document
`` this is an example text for …`` (its GPT-2 tokens) cut on token boundaries: FIM with prefix = the
first 3 tokens, middle = ``" example", " text"``; MLM with the 4th token masked, whose answer
``" example"`` is the very token that was masked (one ``<single_tok_mask>`` per token, the answers being
the masked tokens themselves). Encoding the display strings literally instead (``Tokenizer.encode(s,
allow_special=True)``) would insert a lone ``" "`` token before every special token, and the MLM answer
would no longer equal the masked token; `from_display` / `to_display` convert between the display and
the tokens under the reading above, and round-trip the seed's strings exactly.

The ``<|endoftext|>`` at the end of each example is **not** produced here: the loader (loader.py) appends
it to every objective's output, with loss mask 1 (the model learns to end an infill), and packs the
results into fixed-length sequences. Plain Gerbil models use the ``plain`` objective: the document as
is, with no mode token (and the loader reads contiguous windows for it without calling it at all).

Loss mask
---------
``loss_mask[i]`` is 1 where ``tokens[i]`` is a prediction target (the loader turns 0 into target -100).
``loss_on="all"`` (the default; the seed's models appear to be trained on every token) marks every
token. ``loss_on="target"`` marks only what a task asks the model to produce: the middle after
``<fitm_result>``, the answers after ``<mlm_end>``, and for ``causal``/``plain`` the text itself (not the
``<causal>`` mode token). The EOT the loader appends is always a target.

Determinism: an objective's output depends only on the chunk's tokens and the generator's state — the
loader derives the generator from (seed, chunk index), so a resumed run sees the same sequences.
An empty chunk gives empty output for every objective.
"""
from __future__ import annotations

import bisect
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gerbil.data.tokenizer import EOT_ID, SPECIAL_TOKENS
from gerbil.errors import OptionError

FITM_START = SPECIAL_TOKENS["<fitm_start>"]  # 50257
MULTIPLE_TOK_MASK = SPECIAL_TOKENS["<multiple_tok_mask>"]  # 50258
FITM_RESULT = SPECIAL_TOKENS["<fitm_result>"]  # 50259
CAUSAL = SPECIAL_TOKENS["<causal>"]  # 50260
MLM_START = SPECIAL_TOKENS["<mlm_start>"]  # 50261
SINGLE_TOK_MASK = SPECIAL_TOKENS["<single_tok_mask>"]  # 50262
MLM_END = SPECIAL_TOKENS["<mlm_end>"]  # 50263

LOSS_ON = ("all", "target")
TOKEN_DTYPE = np.int64

# Character-level FIM re-tokenizes three pieces of text; each cut can split a token into two (or shift
# a BPE merge), so the output may be a few tokens longer than the chunk. Past this slack the split falls
# back to the nearest token boundaries, so `max_output_len` is a hard bound the loader can rely on.
_CHAR_SPLIT_SLACK = 8


def _check_loss_on(loss_on: str) -> str:
    if loss_on not in LOSS_ON:
        raise OptionError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
    return loss_on


def _as_tokens(doc_tokens: Any) -> np.ndarray:
    return np.asarray(doc_tokens, dtype=TOKEN_DTYPE).reshape(-1)


class Objective:
    """Turn one chunk of a document into training tokens and a loss mask.

    ``__call__(doc_tokens, rng) -> (tokens, loss_mask)``: ``tokens`` int64 ids without the trailing
    ``<|endoftext|>`` (the loader appends it), ``loss_mask`` bool of the same length, True where the
    token is a prediction target. Subclasses implement `__call__` and `max_output_len`.
    """

    name = "objective"
    #: the model family in run, table and export names: Gerbil, GerbilBlender, ... (rundir.model_name)
    display = "Gerbil"
    #: tokens that put a model trained with this objective in causal mode for evaluation and sampling
    eval_prefix: tuple[int, ...] = ()
    #: what a model trained with this objective can do besides continuing text: fill in a middle (`gerbil
    #: infill`, an sft "fim" prompt), predict masked tokens (`gerbil unmask`); and whether its examples
    #: hold the Blender special tokens (the model's vocabulary must have room for them). `supports` reads them.
    infills = False
    unmasks = False
    special_ids = True

    def __init__(self, loss_on: str = "all"):
        self.loss_on = _check_loss_on(loss_on)

    def __call__(self, doc_tokens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def max_output_len(self, n: int) -> int:
        """An upper bound on ``len(tokens)`` for an ``n``-token chunk (EOT not included)."""
        raise NotImplementedError

    def chunk_len(self, seq_len: int) -> int:
        """The longest chunk whose output plus the EOT fits in ``seq_len`` tokens (≥ 1).

        With chunks of this length no example (one task's output plus its EOT) is longer than a training
        sequence. It does not by itself keep an example inside one sequence: the loader packs examples
        into one stream cut every ``seq_len`` tokens, so the example straddling a cut continues in the
        next sequence (as documents do in plain training); with chunks of ``seq_len`` a FIM/MLM example
        of a long document would be longer than any sequence and could never be seen whole.
        """
        lo, hi = 1, max(1, int(seq_len))
        while lo < hi:  # largest n with max_output_len(n) + 1 <= seq_len; max_output_len is monotone
            mid = (lo + hi + 1) // 2
            if self.max_output_len(mid) + 1 <= seq_len:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def to_dict(self) -> dict:
        """The options that rebuild this objective: ``get_objective(**obj.to_dict())``."""
        return {"name": self.name, "loss_on": self.loss_on}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"{type(self).__name__}({opts})"

    def _mask(self, n: int, target_from: int) -> np.ndarray:
        """All-True mask, or True only from ``target_from`` on when ``loss_on == "target"``."""
        mask = np.ones(n, dtype=bool)
        if self.loss_on == "target":
            mask[:target_from] = False
        return mask


class Plain(Objective):
    """The document as it is: ordinary causal language modelling (plain Gerbil models)."""

    name = "plain"
    special_ids = False

    def __call__(self, doc_tokens, rng):
        tokens = _as_tokens(doc_tokens).copy()
        return tokens, np.ones(len(tokens), dtype=bool)

    def max_output_len(self, n: int) -> int:
        return n


class Causal(Objective):
    """``<causal> text``: causal language modelling announced by its mode token (Blender models)."""

    name = "causal"
    display = "GerbilCausal"
    eval_prefix = (CAUSAL,)

    @staticmethod
    def format(doc_tokens) -> np.ndarray:
        """``[<causal>] + doc``."""
        doc = _as_tokens(doc_tokens)
        return np.concatenate([[CAUSAL], doc]).astype(TOKEN_DTYPE)

    def __call__(self, doc_tokens, rng):
        doc = _as_tokens(doc_tokens)
        if len(doc) == 0:
            return doc.copy(), np.zeros(0, dtype=bool)
        tokens = self.format(doc)
        return tokens, self._mask(len(tokens), 1)

    def max_output_len(self, n: int) -> int:
        return n + 1


class FillInMiddle(Objective):
    """Fill in the middle (Bavarian et al. 2022), the seed's PSM layout::

        <fitm_start> prefix <multiple_tok_mask> suffix <fitm_result> middle

    The two cut points are uniform over the chunk (two uniform draws, sorted), so the middle may be
    empty. By default the cuts fall on token boundaries and the pieces keep the chunk's own tokens.
    ``char_level=True`` cuts at two uniform *character* positions of the decoded text and re-encodes the
    three pieces (as in the paper, so the model learns to complete half words); it needs ``tokenizer``.
    Decoding a chunk that begins or ends inside a multi-byte character yields U+FFFD there.

    ``spm_rate``: the fraction of examples in the paper's SPM order instead, with the same three tokens
    in the same roles (``<fitm_start>`` = PRE, ``<multiple_tok_mask>`` = SUF, ``<fitm_result>`` = MID)::

        <fitm_start> <multiple_tok_mask> suffix <fitm_result> prefix middle

    With ``loss_on="target"`` only the middle is a target (in SPM the prefix after ``<fitm_result>`` is
    context).
    """

    name = "fim"
    display = "GerbilFIM"
    infills = True

    def __init__(self, loss_on: str = "all", char_level: bool = False, tokenizer: Any = None,
                 spm_rate: float = 0.0):
        super().__init__(loss_on)
        spm_rate = float(spm_rate)
        if not 0.0 <= spm_rate <= 1.0:
            raise OptionError(f"spm_rate must be in [0, 1], got {spm_rate}")
        if char_level and tokenizer is None:
            raise ValueError("character-level FIM needs a tokenizer (FillInMiddle(char_level=True, tokenizer=...))")
        self.char_level, self.tokenizer, self.spm_rate = bool(char_level), tokenizer, spm_rate

    # ------------------------------------------------------------------------------------ formatting
    @staticmethod
    def format(prefix, middle, suffix, spm: bool = False) -> tuple[np.ndarray, int]:
        """(tokens, index of the first middle token) for the three pieces, PSM or SPM order."""
        p, m, s = _as_tokens(prefix), _as_tokens(middle), _as_tokens(suffix)
        if spm:
            parts = [[FITM_START, MULTIPLE_TOK_MASK], s, [FITM_RESULT], p, m]
            middle_at = 2 + len(s) + 1 + len(p)
        else:
            parts = [[FITM_START], p, [MULTIPLE_TOK_MASK], s, [FITM_RESULT], m]
            middle_at = 1 + len(p) + 1 + len(s) + 1
        return np.concatenate(parts).astype(TOKEN_DTYPE), middle_at

    @staticmethod
    def prompt(prefix, suffix, spm: bool = False) -> np.ndarray:
        """The inference prompt: the format up to and including ``<fitm_result>`` (and, in SPM, the prefix);
        the model continues with the middle and then ``<|endoftext|>``."""
        tokens, _ = FillInMiddle.format(prefix, [], suffix, spm=spm)
        return tokens

    # ------------------------------------------------------------------------------------ sampling
    def split(self, doc_tokens, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prefix, middle, suffix) tokens of the chunk, cut at two uniform points."""
        doc = _as_tokens(doc_tokens)
        if not self.char_level:
            i, j = np.sort(rng.integers(0, len(doc) + 1, size=2))
            return doc[:i], doc[i:j], doc[j:]
        text = self.tokenizer.decode(doc)
        a, b = np.sort(rng.integers(0, len(text) + 1, size=2))
        pieces = [_as_tokens(self.tokenizer.encode(t)) for t in (text[:a], text[a:b], text[b:])]
        if sum(len(x) for x in pieces) <= len(doc) + _CHAR_SPLIT_SLACK:
            return pieces[0], pieces[1], pieces[2]
        # pathological re-tokenization: cut at the token boundaries proportional to the character cuts
        L = max(1, len(text))
        i, j = (int(round(c / L * len(doc))) for c in (a, b))
        return doc[:i], doc[i:j], doc[j:]

    def draw(self, doc_tokens, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(prefix, middle, suffix, spm): every draw of one example (also data/encdec.py's)."""
        prefix, middle, suffix = self.split(doc_tokens, rng)
        # the order draw comes after the split draw and only when SPM is possible, so spm_rate=0 keeps
        # the generator stream of a pure-PSM objective
        return prefix, middle, suffix, bool(self.spm_rate > 0 and rng.random() < self.spm_rate)

    def __call__(self, doc_tokens, rng):
        doc = _as_tokens(doc_tokens)
        if len(doc) == 0:
            return doc.copy(), np.zeros(0, dtype=bool)
        prefix, middle, suffix, spm = self.draw(doc, rng)
        tokens, middle_at = self.format(prefix, middle, suffix, spm=spm)
        return tokens, self._mask(len(tokens), middle_at)

    def max_output_len(self, n: int) -> int:
        return n + 3 + (_CHAR_SPLIT_SLACK if self.char_level else 0)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "char_level": self.char_level, "spm_rate": self.spm_rate}


class MaskedLM(Objective):
    """Masked language modelling in the seed's decoder-only layout::

        <mlm_start> text with <single_tok_mask> in place of each masked token <mlm_end> masked tokens in order

    ``k = max(1, round(mask_rate · n))`` distinct positions are drawn uniformly (BERT's rule: a fixed
    15% count, at least one), so the output length ``n + 2 + k`` depends only on ``n``. Each masked
    token is replaced by one ``<single_tok_mask>``; the answers after ``<mlm_end>`` are those very tokens.
    With ``loss_on="target"`` only the answers are targets.
    """

    name = "mlm"
    display = "GerbilMLM"
    unmasks = True

    def __init__(self, loss_on: str = "all", mask_rate: float = 0.15):
        super().__init__(loss_on)
        mask_rate = float(mask_rate)
        if not 0.0 < mask_rate < 1.0:  # also rejects NaN
            raise OptionError(f"mask rate must be in (0, 1), got {mask_rate}")
        self.mask_rate = mask_rate

    def n_masked(self, n: int) -> int:
        """How many of ``n`` tokens are masked: round half up of rate·n, at least 1 (0 for n = 0)."""
        return 0 if n <= 0 else max(1, min(n, math.floor(self.mask_rate * n + 0.5)))

    @staticmethod
    def format(doc_tokens, positions: Sequence[int]) -> tuple[np.ndarray, int]:
        """(tokens, index of the first answer) with the tokens at ``positions`` masked."""
        doc = _as_tokens(doc_tokens)
        pos = np.unique(np.asarray(positions, dtype=np.int64))  # sorted, distinct
        if len(pos) and (pos[0] < 0 or pos[-1] >= len(doc)):
            raise ValueError(f"mask positions must be in [0, {len(doc)}), got {pos.tolist()}")
        text = doc.copy()
        text[pos] = SINGLE_TOK_MASK
        tokens = np.concatenate([[MLM_START], text, [MLM_END], doc[pos]]).astype(TOKEN_DTYPE)
        return tokens, len(doc) + 2

    @staticmethod
    def prompt(masked_tokens) -> np.ndarray:
        """The inference prompt ``<mlm_start> masked text <mlm_end>``; the model continues with one
        token per ``<single_tok_mask>``, in order."""
        return np.concatenate([[MLM_START], _as_tokens(masked_tokens), [MLM_END]]).astype(TOKEN_DTYPE)

    def positions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The draw of one example: `n_masked(n)` distinct positions in [0, n), unsorted."""
        return rng.choice(n, size=self.n_masked(n), replace=False)

    def __call__(self, doc_tokens, rng):
        doc = _as_tokens(doc_tokens)
        if len(doc) == 0:
            return doc.copy(), np.zeros(0, dtype=bool)
        tokens, answers_at = self.format(doc, self.positions(len(doc), rng))
        return tokens, self._mask(len(tokens), answers_at)

    def max_output_len(self, n: int) -> int:
        return n + 2 + self.n_masked(n)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "mask_rate": self.mask_rate}


BLENDER_TASKS = ("causal", "fim", "mlm")


def _check_weights(weights) -> tuple[float, float, float]:
    if isinstance(weights, (str, bytes)):
        raise OptionError(f"blender weights must be three numbers (causal, fim, mlm), got {weights!r}")
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise OptionError(f"blender weights must be three numbers (causal, fim, mlm), got {weights!r}") from None
    if len(w) != 3 or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise OptionError(f"blender weights must be three non-negative numbers (causal, fim, mlm) with a "
                         f"positive sum, got {weights!r}")
    return w


class Blender(Objective):
    """Each chunk becomes a causal, FIM or MLM example, chosen with probabilities ∝ ``weights``
    (causal, fim, mlm) — equal shares by default, as the seed's GerbilBlender models.

    The task draw is the first use of the chunk's generator; the chosen task then draws its own spans
    from the same generator. Other options go to the three tasks (``mask_rate``, ``char_level``,
    ``tokenizer``, ``spm_rate``, ``loss_on``).
    """

    name = "blender"
    display = "GerbilBlender"
    eval_prefix = (CAUSAL,)
    infills = unmasks = True

    def __init__(self, weights=(1.0, 1.0, 1.0), loss_on: str = "all", mask_rate: float = 0.15,
                 char_level: bool = False, tokenizer: Any = None, spm_rate: float = 0.0):
        super().__init__(loss_on)
        self.weights = _check_weights(weights)
        self._cum = np.cumsum(self.weights) / sum(self.weights)
        self.tasks: tuple[Objective, ...] = (
            Causal(loss_on=loss_on),
            FillInMiddle(loss_on=loss_on, char_level=char_level, tokenizer=tokenizer, spm_rate=spm_rate),
            MaskedLM(loss_on=loss_on, mask_rate=mask_rate),
        )

    def choose(self, rng: np.random.Generator) -> Objective:
        """Draw the task for one chunk."""
        u = rng.random()
        k = int(np.searchsorted(self._cum, u, side="right"))
        k = min(k, 2)
        while self.weights[k] == 0:  # float round-off at the top edge: never pick a zero-weight task
            k -= 1
        return self.tasks[k]

    def __call__(self, doc_tokens, rng):
        doc = _as_tokens(doc_tokens)
        if len(doc) == 0:
            return doc.copy(), np.zeros(0, dtype=bool)
        return self.choose(rng)(doc, rng)

    def max_output_len(self, n: int) -> int:
        return max(t.max_output_len(n) for t, w in zip(self.tasks, self.weights) if w > 0)

    def to_dict(self) -> dict:
        fim, mlm = self.tasks[1], self.tasks[2]
        return {**super().to_dict(), "weights": list(self.weights), "mask_rate": mlm.mask_rate,
                "char_level": fim.char_level, "spm_rate": fim.spm_rate}


OBJECTIVES: dict[str, type[Objective]] = {
    c.name: c for c in (Plain, Causal, FillInMiddle, MaskedLM, Blender)
}


def get_objective(name: str, **options: Any) -> Objective:
    """The objective called ``name`` (plain, causal, fim, mlm, blender) built with ``options``.

    Unknown names and options an objective does not take raise a one-line OptionError.
    ``get_objective(**obj.to_dict())`` rebuilds ``obj`` (pass ``tokenizer=`` again for char-level FIM).
    """
    key = str(name).strip().lower()
    if key not in OBJECTIVES:
        raise OptionError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})")
    cls = OBJECTIVES[key]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise OptionError(f"objective {key!r} takes no option {unknown[0]!r} "
                         f"(options: {', '.join(sorted(accepted)) or 'none'})")
    return cls(**options)


def objective_class(objective: str | None) -> type[Objective]:
    """The Objective class called ``objective`` (``plain`` when absent); an unknown name is an OptionError."""
    key = str(objective or "plain").strip().lower()
    if key not in OBJECTIVES:
        raise OptionError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[key]


#: the capabilities `supports` answers for (class attributes of every `Objective`)
CAPABILITIES = ("infills", "unmasks", "special_ids")


def supports(objective: str | None, capability: str) -> bool:
    """Whether a model trained with ``objective`` (a name; ``plain`` when absent) `capability`: "infills",
    "unmasks" or "special_ids" (see `Objective`). An unknown objective (a foreign export) supports none."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r} ({', '.join(CAPABILITIES)})")
    key = str(objective or "plain").strip().lower()
    return bool(getattr(OBJECTIVES[key], capability)) if key in OBJECTIVES else False


def mode_prefix(objective: str | None) -> list[int]:
    """Tokens that put a model trained with ``objective`` in causal mode (its `eval_prefix`): ``[<causal>]``
    for ``causal`` and ``blender`` (UL2-style mode switching; a Blender model is evaluated with inputs
    starting with ``<causal>``), none for ``plain``, ``fim``, ``mlm`` or an unknown/absent objective."""
    key = str(objective or "plain").strip().lower()
    return list(OBJECTIVES[key].eval_prefix) if key in OBJECTIVES else []


# ---------------------------------------------------------------------------------------- display
def to_display(tokens, tokenizer) -> str:
    """Render tokens in the seed's display style: one space before every special token.

    The text after a special token is decoded as is (its first token usually carries its own leading
    space). Inverse of `from_display`: for the seed's document ``doc``,
    ``to_display(Causal.format(doc).tolist() + [EOT_ID], tok)`` is the seed's causal string.
    """
    special_name = {v: k for k, v in SPECIAL_TOKENS.items()}
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            out.append(tokenizer.decode(run))
            run.clear()

    for t in (int(x) for x in tokens):
        if t in special_name:
            flush()
            if out:
                out.append(" ")
            out.append(special_name[t])
        else:
            run.append(t)
    flush()
    return "".join(out)


def from_display(text: str, tokenizer) -> list[int]:
    """Token ids of a string written in the seed's display style (special tokens spaced apart).

    Special-token names become their ids; one space just before a special token is a separator and
    is dropped; everything else (including the space after a special token) is encoded as ordinary
    text, where it becomes the leading space of the next word's token. See the module docstring.
    """
    names = sorted(SPECIAL_TOKENS, key=len, reverse=True)
    ids: list[int] = []
    pos = 0
    while pos <= len(text):
        # next special token at or after pos
        hits = [(text.find(n, pos), n) for n in names]
        hits = [(i, n) for i, n in hits if i >= 0]
        if not hits:
            ids += tokenizer.encode(text[pos:])
            break
        i, n = min(hits, key=lambda h: (h[0], -len(h[1])))
        piece = text[pos:i]
        if piece.endswith(" "):
            piece = piece[:-1]
        if piece:
            ids += tokenizer.encode(piece)
        ids.append(SPECIAL_TOKENS[n])
        pos = i + len(n)
    return ids


# ---------------------------------------------------------------------------------------- batched
# The loader turns every chunk of the training stream into an example. One `__call__` per chunk costs
# ~20-40 µs of numpy call overhead on small arrays, and the old loader's Python lists cost more: 21-26 ms
# per 64 × 2048 step. `pack_examples` makes the same examples for a whole batch of chunks, in two phases:
#
# 1. draw: per chunk, exactly the generator calls `__call__` makes, in the same order — the numbers drawn
#    define the output, so they are drawn one chunk at a time as before (the only per-chunk Python loop);
# 2. build: every example is a concatenation of *segments* — a special token, or a run of the chunk's
#    tokens (prefix, suffix, middle, the MLM text) — so an objective fills one row of a (chunks ×
#    segments) table of (source index, length, loss mask) per chunk, and the whole batch is gathered
#    with one index built by `concat_ranges` and one take; single tokens (MLM's masks and answers) are
#    then written in place with one scatter. Rows are padded with zero-length segments, so tasks of
#    different shapes (Blender) share one table.
#
# Only the exact built-in classes take the batched route; a subclass (it may override `__call__`,
# `split`, `format` …) and any other callable are called once per chunk, so the output is always what
# `__call__` returns (tests/test_objectives.py compares the two on every objective).

# Index of each special token in the packer's source array ``ext = specials | EOT | chunk tokens | extra``.
_S_FITM_START, _S_MULTIPLE_TOK_MASK, _S_FITM_RESULT, _S_CAUSAL, _S_MLM_START, _S_SINGLE_TOK_MASK, _S_MLM_END, \
    _S_EOT = range(8)
_SPECIAL_IDS = (FITM_START, MULTIPLE_TOK_MASK, FITM_RESULT, CAUSAL, MLM_START, SINGLE_TOK_MASK, MLM_END)
_HEAD = len(_SPECIAL_IDS) + 1  # the specials and the EOT come first in ext
_FROM_EXTRA = -1  # loss-mask value of a segment whose mask is the per-chunk output's own (see _Packer.done)


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop (int64)."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    if len(ends) == 0 or ends[-1] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1], dtype=np.int64)


class _Packer:
    """The segment table of one batch of chunks, and the per-chunk outputs its segments may point to."""

    def __init__(self, chunks: np.ndarray, lengths: np.ndarray):
        self.chunks, self.lengths = chunks, lengths  # (sum(lengths),) int64 tokens; (n,) int64
        self.n: list[int] = lengths.tolist()  # the same as Python ints, for the per-chunk draws
        self.starts = np.cumsum(lengths) - lengths  # chunk c = chunks[starts[c] : starts[c] + lengths[c]]
        self.base = _HEAD + self.starts  # chunk c's first token in ext
        self.groups: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (ids, src, len, mask)
        self.extra: list[tuple[int, np.ndarray, np.ndarray]] = []  # (chunk, tokens, mask) from __call__
        self.over: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (chunk, position in example, src)

    def chunk(self, c: int) -> np.ndarray:
        return self.chunks[self.starts[c]: self.starts[c] + self.lengths[c]]

    def rows(self, ids: np.ndarray, src: np.ndarray, length: np.ndarray, mask: Any) -> None:
        """The segments of chunks ``ids``: ``src``/``length`` (len(ids), W), ``mask`` (W,) or (len(ids), W)."""
        if len(ids):
            self.groups.append((ids, src, length, np.broadcast_to(np.asarray(mask, dtype=np.int8), src.shape)))

    def overwrite(self, chunk: np.ndarray, pos: np.ndarray, src: np.ndarray) -> None:
        """After the segments: token ``pos`` of chunk ``chunk[i]``'s example becomes ``ext[src[i]]`` (the
        loss mask stays the segment's) — single tokens (MLM's masks and answers) without a segment each."""
        self.over.append((chunk, pos, src))

    def done(self, c: int, out: tuple[np.ndarray, np.ndarray]) -> None:
        """Chunk ``c``'s example as made by a per-chunk call: one segment with its own loss mask."""
        tokens = np.asarray(out[0], dtype=np.int64).reshape(-1)
        mask = np.asarray(out[1]).reshape(-1)
        if tokens.shape != mask.shape:
            raise ValueError(f"objective returned tokens {tokens.shape} and loss_mask {mask.shape} "
                             f"of different shapes")
        self.extra.append((c, tokens, mask > 0))

    def pack(self, eot_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.lengths)
        extra_at = _HEAD + len(self.chunks)
        if self.extra:
            ids = np.array([c for c, _, _ in self.extra], dtype=np.int64)
            lens = np.array([len(t) for _, t, _ in self.extra], dtype=np.int64)
            self.rows(ids, (extra_at + np.cumsum(lens) - lens)[:, None], lens[:, None], [_FROM_EXTRA])
        width = max((src.shape[1] for _, src, _, _ in self.groups), default=0) + 1  # + the EOT column
        src = np.zeros((n, width), dtype=np.int64)
        length = np.zeros((n, width), dtype=np.int64)  # a row no group fills (an empty chunk): EOT only
        mask = np.ones((n, width), dtype=np.int8)
        for ids, s, ln, m in self.groups:
            src[ids, : s.shape[1]], length[ids, : s.shape[1]], mask[ids, : s.shape[1]] = s, ln, m
        src[:, -1], length[:, -1] = _S_EOT, 1  # the EOT after every example is a target (mask 1)
        ends = np.cumsum(length.sum(axis=1))
        example_start = ends - length.sum(axis=1)
        keep = length.ravel() > 0
        src, length, mask = src.ravel()[keep], length.ravel()[keep], mask.ravel()[keep]
        idx = concat_ranges(src, length)
        ext = np.concatenate([np.array(_SPECIAL_IDS + (eot_id,), dtype=np.int64), self.chunks]
                             + [t for _, t, _ in self.extra])
        tokens = ext[idx]
        for chunk, pos, at in self.over:
            tokens[example_start[chunk] + pos] = ext[at]
        loss_mask = np.repeat(mask, length)
        if self.extra:
            own = np.concatenate([np.zeros(extra_at, dtype=bool)] + [m for _, _, m in self.extra])
            pick = loss_mask == _FROM_EXTRA
            loss_mask[pick] = own[idx[pick]]
        return tokens, loss_mask > 0, ends


def _rows_plain(obj: Plain, pk: _Packer, ids: np.ndarray, params: list) -> None:
    pk.rows(ids, pk.base[ids][:, None], pk.lengths[ids][:, None], [1])


def _rows_causal(obj: Causal, pk: _Packer, ids: np.ndarray, params: list) -> None:
    # [<causal>] chunk; with loss_on="target" the mode token is no target
    src = np.stack([np.full(len(ids), _S_CAUSAL), pk.base[ids]], axis=1)
    length = np.stack([np.ones(len(ids), dtype=np.int64), pk.lengths[ids]], axis=1)
    pk.rows(ids, src, length, [obj.loss_on == "all", 1])


def _draw_fim(obj: FillInMiddle, pk: _Packer, c: int, rng: np.random.Generator) -> tuple | None:
    if obj.char_level:  # re-tokenized pieces are not runs of the chunk: __call__ makes the example
        pk.done(c, FillInMiddle.__call__(obj, pk.chunk(c), rng))
        return None
    # split()'s ``rng.integers(0, n + 1, size=2)`` as two scalar draws: the same two bounded draws from the
    # same stream (both fill one int at a time from next_uint32; checked in tests/test_objectives.py),
    # without the size=2 path's np.prod (2 µs instead of 5 µs per chunk)
    high = pk.n[c] + 1
    a, b = int(rng.integers(0, high)), int(rng.integers(0, high))
    spm = obj.spm_rate > 0 and rng.random() < obj.spm_rate  # as __call__
    return (a, b, spm) if a <= b else (b, a, spm)


def _rows_fim(obj: FillInMiddle, pk: _Packer, ids: np.ndarray, params: list) -> None:
    i, j, spm = (np.array(v, dtype=np.int64) for v in zip(*params))
    b, L, one = pk.base[ids], pk.lengths[ids], np.ones(len(ids), dtype=np.int64)
    # PSM: <fitm_start> prefix <multiple_tok_mask> suffix <fitm_result> middle
    # SPM: <fitm_start> <multiple_tok_mask> suffix <fitm_result> prefix middle   (6 segments each, shape (m, 6))
    psm_src = np.stack([one * _S_FITM_START, b, one * _S_MULTIPLE_TOK_MASK, b + j, one * _S_FITM_RESULT, b + i], 1)
    psm_len = np.stack([one, i, one, L - j, one, j - i], 1)
    spm_src = np.stack([one * _S_FITM_START, one * _S_MULTIPLE_TOK_MASK, b + j, one * _S_FITM_RESULT, b, b + i], 1)
    spm_len = np.stack([one, one, L - j, one, i, j - i], 1)
    s = spm.astype(bool)[:, None]
    a = int(obj.loss_on == "all")  # "target": only the middle, the last segment in both orders
    pk.rows(ids, np.where(s, spm_src, psm_src), np.where(s, spm_len, psm_len), [a, a, a, a, a, 1])


def _draw_mlm(obj: MaskedLM, pk: _Packer, c: int, rng: np.random.Generator) -> np.ndarray:
    n = pk.n[c]
    return rng.choice(n, size=obj.n_masked(n), replace=False)  # as __call__


def _rows_mlm(obj: MaskedLM, pk: _Packer, ids: np.ndarray, params: list) -> None:
    # <mlm_start> chunk <mlm_end> answers: 4 segments (the answers' is a placeholder of k tokens), then
    # each masked position's text token becomes <single_tok_mask> and the t-th answer its chunk token
    m, L, b = len(ids), pk.lengths[ids], pk.base[ids]
    k = np.array([len(p) for p in params], dtype=np.int64)  # masks per chunk, n_masked(L)
    chunk = np.repeat(ids, k)  # (sum k,) the chunk of each masked position
    row = np.repeat(np.arange(m), k)
    # each chunk's positions sorted (format's np.unique; they are distinct) by one sort of row-offset keys
    stride = int(L.max()) + 1
    pos = np.sort(np.concatenate(params).astype(np.int64) + row * stride) - row * stride
    rank = np.arange(len(pos)) - np.repeat(np.cumsum(k) - k, k)  # t: the t-th mask of its chunk
    one = np.ones(m, dtype=np.int64)
    src = np.stack([one * _S_MLM_START, b, one * _S_MLM_END, b], axis=1)
    length = np.stack([one, L, one, k], axis=1)
    a = int(obj.loss_on == "all")  # "target": only the answers
    pk.rows(ids, src, length, [a, a, a, 1])
    pk.overwrite(chunk, 1 + pos, np.full(len(pos), _S_SINGLE_TOK_MASK))
    pk.overwrite(chunk, np.repeat(L + 2, k) + rank, np.repeat(b, k) + pos)


# type → (draw one chunk's numbers or None if it draws none, add the rows of chunks given their draws)
_BATCHED: dict[type, tuple[Any, Any]] = {
    Plain: (None, _rows_plain), Causal: (None, _rows_causal),
    FillInMiddle: (_draw_fim, _rows_fim), MaskedLM: (_draw_mlm, _rows_mlm),
}


def _batched(objective: Any) -> bool:
    if type(objective) is Blender:
        return all(type(t) in _BATCHED for t in objective.tasks)
    return type(objective) in _BATCHED


def _add_rows(task: Objective, pk: _Packer, ids: list[int], params: list) -> None:
    made = [t for t, p in enumerate(params) if p is not None]  # None: made by __call__ (pk.done)
    if made:
        _BATCHED[type(task)][1](task, pk, np.asarray(ids, dtype=np.int64)[made], [params[t] for t in made])


def pack_examples(objective: Any, chunks: np.ndarray, lengths: np.ndarray, rngs: Any,
                  eot_id: int = EOT_ID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of chunks' examples packed into one stream, each followed by ``eot_id`` with loss mask 1.

    chunks: the chunks' tokens concatenated (int64); lengths: (n,) their lengths; rngs: ``rngs(c)`` is
    chunk ``c``'s generator (the loader's, from (seed, chunk index)), asked for only by chunks whose
    objective draws; objective: an `Objective` or any callable ``(chunk, rng) -> (tokens, loss_mask)``.
    Returns ``(tokens int64, loss_mask bool, ends)``: example ``c`` and its EOT are
    ``tokens[ends[c - 1] : ends[c]]`` — exactly ``objective(chunk_c, rngs(c))`` plus the EOT, for every
    objective; the built-in ones are built for all chunks at once (see the comment above).
    """
    chunks = np.asarray(chunks, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    pk = _Packer(chunks, lengths)
    if not _batched(objective):
        for c in range(len(lengths)):
            pk.done(c, objective(pk.chunk(c), rngs(c)))
        return pk.pack(eot_id)
    ids = np.flatnonzero(lengths > 0).tolist()  # an empty chunk's example is empty (no draws)
    if type(objective) is Blender:
        by_task: list[tuple[list[int], list]] = [([], []) for _ in objective.tasks]
        cum, weights = objective._cum.tolist(), objective.weights
        for c in ids:
            rng = rngs(c)
            # Blender.choose without its np.searchsorted call (4 µs): the same float comparisons
            k = min(bisect.bisect_right(cum, rng.random()), 2)
            while weights[k] == 0:
                k -= 1
            task = objective.tasks[k]  # then the task's own draws, as Blender.__call__
            draw = _BATCHED[type(task)][0]
            by_task[k][0].append(c)
            by_task[k][1].append(draw(task, pk, c, rng) if draw is not None else ())
        for task, (t_ids, t_params) in zip(objective.tasks, by_task):
            _add_rows(task, pk, t_ids, t_params)
    else:
        draw = _BATCHED[type(objective)][0]
        params = [draw(objective, pk, c, rngs(c)) for c in ids] if draw is not None else [()] * len(ids)
        _add_rows(objective, pk, ids, params)
    return pk.pack(eot_id)


__all__ = [
    "Objective", "Plain", "Causal", "FillInMiddle", "MaskedLM", "Blender", "OBJECTIVES", "BLENDER_TASKS",
    "get_objective", "objective_class", "mode_prefix", "to_display", "from_display", "LOSS_ON", "EOT_ID",
    "pack_examples", "concat_ranges",
]
