"""Training objectives: one document chunk's tokens → (tokens, loss mask), using a seeded generator.

The GerbilBlender models (UL2-inspired) train on an equal mix of three tasks, each announced by a mode
token (the seven Blender ids, docs/reference.md §2). The seed writes them as::

    '<fitm_start> this is an <multiple_tok_mask> for fill-in-the-middle <fitm_result> example text <|endoftext|>'
    '<causal> this is an example text for causal language modelling <|endoftext|>'
    '<mlm_start> this is an <single_tok_mask> text for masked language modelling <mlm_end> example <|endoftext|>'

The strings are a *display* (`gerbil.data.display`: how they are read, and the conversions both ways).

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

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gerbil.data.tokenizer import SPECIAL_TOKENS
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


__all__ = [
    "Objective", "Plain", "Causal", "FillInMiddle", "MaskedLM", "Blender", "OBJECTIVES", "BLENDER_TASKS",
    "CAPABILITIES", "get_objective", "objective_class", "mode_prefix", "supports", "LOSS_ON",
]
