"""Numbers as the seed writes them, and back: 6.7m parameters, 134M tokens, 131k batches.

One home for the formatting and parsing helpers every verb shares (plan, train, table, export, suite,
fit): token counts are decimal (134M = 134,000,000) while batch labels follow the seed's powers of two
(131k = 2^17, 1M = 2^20; see `parse_batch`). Pure Python, no torch.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal

from gerbil.errors import OptionError

DEFAULT_SEQ_LEN = 2048  # the ladder's context: batches are whole sequences of it unless told otherwise

# ------------------------------------------------------------------------------------------ formatting
def _short(x: float) -> str:
    """One decimal below 10, a whole number from 10 on: 6.68 → '6.7', 76.7 → '77', 9.96 → '10'."""
    if round(x, 1) < 10:
        s = f"{x:.1f}"
        return s[:-2] if s.endswith(".0") else s
    return str(round(x))


def fmt_params(n: int) -> str:
    """Parameter count as the seed names models: 6,682,584 → '6.7m', 76,716,120 → '77m'.

    The seed's size names are these strings for every published rung except 15m, whose preset has
    ≈14.1M parameters ('14m'): tables show the ladder name, this helper shows the count.
    """
    n = int(n)
    if n >= 1_000_000_000:
        return _short(n / 1e9) + "b"
    if n >= 1_000_000:
        return _short(n / 1e6) + "m"
    if n >= 1_000:
        return _short(n / 1e3) + "k"
    return str(n)


def fmt_tokens(n: int) -> str:
    """Token count in decimal millions as the seed's table writes it: 133,651,680 → '134M'.

    Whole millions from 10M on (the seed writes 1520M, not 1.52B), one decimal below 10M, k below 1M.

    What this reproduces: the seed multiplied a *nominal* parameter count by the ratio, and not always
    the same one — A/B/C-6.7m used 6.7M (134M, 281M, 509M) while D-6.7m and E*-6.7m used 6M (852M,
    1704M), A-15m 14M (280M), A-32m 32M (640M), A-77m 76M (1520M), A-104m 103M (2060M). gerbil
    multiplies the exact count, so its strings equal the seed's for A-6.7m (134M) and B-6.7m (281M)
    and differ elsewhere (A-77m: 20 × 76,716,120 = 1534M, D-6.7m: 949M). We do not imitate the
    seed's inconsistent arithmetic.
    """
    n = int(n)
    if n >= 1_000_000:
        return _short(n / 1e6) + "M"
    if n >= 1_000:
        return _short(n / 1e3) + "k"
    return str(n)


_MEGA_BATCH = 1 << 20  # batch "M" is binary: the seed's 1M batch is 2^20 = 512 × 2048 tokens


def _fmt_one_batch(n: int) -> str:
    n = int(n)
    if n >= _MEGA_BATCH:
        y = n / _MEGA_BATCH
        return (str(round(y)) if y >= 100 else f"{y:.3g}") + "M"
    if n >= 1_000:
        x = n / 1_000
        return (str(round(x)) if x >= 100 else f"{x:.3g}") + "k"
    return str(n)


def fmt_batch(start: int, end: int | None = None) -> str:
    """Batch size in tokens as the seed writes it: 65,536 → '65.5k', 131,072 → '131k', 2^20 → '1M'.

    Below 2^20 the value is decimal thousands to three significant digits (131,072 → '131k', which
    is how the seed names 2^17); from 2^20 on it is binary millions (2^20 → '1M', 1.5 × 2^20 →
    '1.5M'). A ramp prints as 'start-end' ('131k-262k'). `parse_batch` reads these strings back.
    """
    if end is None or int(end) == int(start):
        return _fmt_one_batch(start)
    return f"{_fmt_one_batch(start)}-{_fmt_one_batch(end)}"


def fmt_flops(x: float) -> str:
    """FLOPs in compact scientific notation: 3.58e15."""
    if x <= 0:
        return "0"
    exp = int(math.floor(math.log10(x)))
    mant = x / 10**exp
    if round(mant, 2) >= 10:  # 9.996e15 rounds to 10.0: carry into the exponent
        mant, exp = mant / 10, exp + 1
    return f"{mant:.3g}e{exp}"


def fmt_duration(seconds: float) -> str:
    """Human duration: '42 s', '17 min', '3.2 h', '4.5 d'."""
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def fmt_clock(seconds: float) -> str:
    """A duration as a clock: 3725 → '1:02:05' (progress lines, ETAs)."""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool]) -> str:
    """A plain-text table: a header, a rule of dashes, one line per row; `right[i]` right-aligns column i
    (numbers), the others are left-aligned. Trailing spaces are cut."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: Sequence[object]) -> str:
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


# --------------------------------------------------------------------------------------------- parsing
_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_COUNT_RE = re.compile(rf"^{_NUM}(?:e(\d+))?\s*([kmbgt]?)$", re.IGNORECASE)
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
#: The largest count `parse_count` accepts: 10^18 tokens is ~10^5 times any model's compute-optimal
#: budget here, and stays exact in an int64 (torch, numpy) and in a float64.
MAX_COUNT = 10**18


def parse_count(text: str | int, what: str = "count") -> int:
    """A token count with decimal suffixes: '500M' → 500,000,000, '1.5B' → 1,500,000,000, '2e9'.

    Token counts are decimal, like the seed's 134M. Must be a positive whole number of tokens, at most
    `MAX_COUNT` (10^18); anything else is a one-line ValueError.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip().replace("_", "").replace(",", "")
        if raw.startswith("-") and _COUNT_RE.match(raw[1:]):
            raise OptionError(f"{what} must be positive, got {text!r}")
        m = _COUNT_RE.match(raw)
        if not m:
            raise OptionError(f"{what} {text!r} is not a number like 134M, 1.5B or 500000000")
        exponent = int(m.group(2) or 0)
        if exponent > 40:  # far past MAX_COUNT: refused below without building a 10^400-digit number
            raise OptionError(f"{what} {text!r} is too large (at most 1e18)")
        # exact decimal arithmetic: a float overflows at 1e309 and rounds 1e30 to 1000000000000000019884624838656
        x = Decimal(m.group(1)) * 10 ** exponent * _COUNT_UNITS[m.group(3).lower()]
        value = int(x.to_integral_value(ROUND_HALF_EVEN))
    if value <= 0:
        raise OptionError(f"{what} must be positive, got {text!r}")
    if value > MAX_COUNT:
        shown = repr(text) if isinstance(text, str) else f"{value:,}" if value < 10**30 else f"of {len(str(value))} digits"
        raise OptionError(f"{what} {shown} is too large (at most 1e18)")
    return int(value)


_BATCH_RE = re.compile(rf"^{_NUM}\s*([kKmM]?)$")
_RAMP_SPLIT = re.compile(r"\s*(?:->|→|–|—|-|\.\.)\s*")


def parse_batch(text: str | int, seq_len: int = DEFAULT_SEQ_LEN) -> int:
    """One global batch size in tokens, resolved to a multiple of `seq_len`.

    - A plain integer ('131072') is taken exactly and must be a multiple of seq_len.
    - 'k' is decimal thousands and 'M' binary millions (2^20), because that is what the seed's labels
      mean: its batches are powers of two, written 65.5k (2^16), 131k (2^17), 262k, 524k, 1M (2^20).
      Reading 'k' as ×1024 would be wrong: 131 × 1024 = 134,144 is not 131,072.
    - A shorthand names a number only to its last written digit (131k = 131,000 ± 500). If a power
      of two that is a multiple of seq_len lies in that range it is the one meant (131k → 131,072 at
      any seq_len); otherwise the nearest multiple of seq_len is taken (500k → 499,712 at 2048).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        n = int(text)
        if n <= 0:
            raise OptionError(f"batch must be positive, got {n}")
        if n % seq_len:
            raise OptionError(f"batch {n} tokens is not a multiple of seq_len {seq_len}")
        return n
    s = str(text).strip().replace("_", "").replace(",", "")
    m = _BATCH_RE.match(s)
    if not m:
        raise OptionError(f"batch {text!r} is not a size like 131072, 131k or 1M")
    digits, suffix = m.group(1), m.group(2)
    if not suffix:
        if "." in digits:
            raise OptionError(f"batch {text!r} must be a whole number of tokens")
        return parse_batch(int(digits), seq_len)
    unit = 1_000 if suffix in "kK" else _MEGA_BATCH
    value = float(digits) * unit
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    half = 0.5 * unit / 10**decimals  # half a unit of the last written digit
    candidates = [1 << e for e in range(0, 63)
                  if abs((1 << e) - value) <= half and (1 << e) % seq_len == 0]
    if candidates:
        n = min(candidates, key=lambda p: abs(p - value))
    else:
        n = int(math.floor(value / seq_len + 0.5)) * seq_len
    if n <= 0:
        raise OptionError(f"batch {text!r} is smaller than one sequence of {seq_len} tokens")
    return n


def parse_batch_spec(text: str | int, seq_len: int = DEFAULT_SEQ_LEN) -> tuple[int, int]:
    """A batch or a ramp: '131k' → (131072, 131072); '131k-262k' → (131072, 262144).

    A ramp must not shrink (the seed's ramps grow the batch as the loss flattens).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        b = parse_batch(text, seq_len)
        return b, b
    s = str(text).strip()
    parts = [p for p in _RAMP_SPLIT.split(s)]
    if len(parts) == 1:
        b = parse_batch(parts[0], seq_len)
        return b, b
    if len(parts) != 2 or not all(parts):
        raise OptionError(f"batch ramp {text!r} is malformed (expected START-END, e.g. 131k-262k)")
    b0, b1 = parse_batch(parts[0], seq_len), parse_batch(parts[1], seq_len)
    if b1 < b0:
        raise OptionError(f"batch ramp {text!r} shrinks; a ramp goes from the smaller to the larger batch")
    return b0, b1


def fmt_count(n: int | float | None) -> str:
    """A token count for a model card: '0 (untrained)', '134M', '1.52B' (three significant digits)."""
    if n is None:
        return "—"
    if not n:
        return "0 (untrained)"
    n = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{int(n)}"
