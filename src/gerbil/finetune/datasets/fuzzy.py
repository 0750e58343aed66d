"""A "fuzzy wrapper" dataset: free-form dates → ISO dates as answered by ``dateutil.parser.parse`` (the model
learns to imitate a real function); `fuzzy_pairs` draws them, `write_fuzzy_splits` writes train / val / test."""
from __future__ import annotations

import hashlib
import json
import logging
import random
from datetime import date, datetime
from pathlib import Path

from gerbil.errors import GerbilError
from gerbil.extras import require
from gerbil.fsutil import atomic_write_lines

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- fuzzy wrapper: dates
#: The function the pairs imitate.
DATE_FUNCTION = "dateutil.parser.parse"
#: Passed as ``default=``: dateutil fills fields missing from the input from it, and would otherwise
#: use *today* — the one source of non-determinism of an explicit full date.
DATE_DEFAULT = datetime(2000, 1, 1)
DATE_MIN = date(1950, 1, 1)
DATE_MAX = date(2049, 12, 31)
#: Two-digit years are written only for 2000-2039. dateutil maps "yy" into the 100-year window around
#: the *current* year (in 2026, "75" → 2075; in 2024, → 1975), so only years that stay in the window
#: until 2050 keep the answers fixed.
TWO_DIGIT_YEARS = (2000, 2039)

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_ORD_WORDS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
              "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
              "eighteenth", "nineteenth", "twentieth", "twenty-first", "twenty-second", "twenty-third",
              "twenty-fourth", "twenty-fifth", "twenty-sixth", "twenty-seventh", "twenty-eighth",
              "twenty-ninth", "thirtieth", "thirty-first"]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _case(s: str, rng: random.Random) -> str:
    r = rng.random()
    return s.lower() if r < 0.2 else s.upper() if r < 0.3 else s


def _time(rng: random.Random) -> str:
    h, m = rng.randrange(24), rng.choice([0, 15, 30, 45])
    h12 = h % 12 or 12
    return rng.choice([f" {h12}{'am' if h < 12 else 'pm'}", f" at {h12} {'AM' if h < 12 else 'PM'}",
                       f" {h:02d}:{m:02d}", f", {h12}:{m:02d} {'a.m.' if h < 12 else 'p.m.'}"])


def _render(d: date, rng: random.Random) -> str:
    """One surface form of ``d``: numeric (ISO, US month-first, dotted, dashed, compact, 2-digit year),
    written out (full / 3-letter / dotted month names, ordinals, "of", weekdays), mixed casing, an
    optional time of day — and a few forms dateutil rejects (spelled ordinals, "noon")."""
    Y, m, dd = d.year, d.month, d.day
    month = _case(rng.choice([_MONTHS[m - 1], _MONTHS[m - 1][:3], _MONTHS[m - 1][:3] + "."]), rng)
    wd = _case(rng.choice([_WEEKDAYS[d.weekday()], _WEEKDAYS[d.weekday()][:3]]), rng)
    day = rng.choice([str(dd), _ordinal(dd)])
    forms = [
        f"{Y}-{m:02d}-{dd:02d}", f"{Y}/{m:02d}/{dd:02d}", f"{Y}.{m:02d}.{dd:02d}", f"{Y}{m:02d}{dd:02d}",
        f"{m}/{dd}/{Y}", f"{m:02d}/{dd:02d}/{Y}", f"{dd}.{m}.{Y}", f"{dd:02d}-{m:02d}-{Y}",
        f"{day} {month} {Y}", f"{month} {day}, {Y}", f"{month} {day} {Y}", f"{_ordinal(dd)} of {month}, {Y}",
        f"{wd}, {month} {dd}, {Y}", f"{wd} {dd} {month} {Y}", f"{dd}-{month.rstrip('.')}-{Y}",
        f"{Y} {month} {dd}", f"{month}, {dd} {Y}",
    ]
    if TWO_DIGIT_YEARS[0] <= Y <= TWO_DIGIT_YEARS[1]:
        yy = Y % 100
        forms += [f"{m}/{dd}/{yy:02d}", f"{m:02d}/{dd:02d}/{yy:02d}", f"{month} {_ordinal(dd)} '{yy:02d}",
                  f"{yy:02d}-{m:02d}-{dd:02d}"]
    r = rng.random()
    if r < 0.03:  # spelled-out ordinals: dateutil has no word numbers
        return f"the {_ORD_WORDS[dd - 1]} of {_case(_MONTHS[m - 1], rng)} {Y}"
    if r < 0.05:
        return f"{_case(_MONTHS[m - 1], rng)} {dd} {Y} noon"
    s = rng.choice(forms)
    if rng.random() < 0.2 and not s[:4].isdigit():
        s += _time(rng)
    elif rng.random() < 0.05 and s[4] == "-":
        s += f"T{rng.randrange(24):02d}:{rng.randrange(60):02d}"
    return s


def date_answer(text: str) -> str | None:
    """What ``dateutil.parser.parse`` answers for ``text``, as an ISO date (``YYYY-MM-DD``), or None
    when it rejects the input. Deterministic: dateutil's English parser depends on no locale, the
    missing fields come from the fixed :data:`DATE_DEFAULT`, and no input names a time zone."""
    parser = require("dateutil.parser", "the fuzzy-wrapper dataset", "python-dateutil")
    try:
        return parser.parse(text, default=DATE_DEFAULT).date().isoformat()
    except (ValueError, OverflowError):  # dateutil's ParserError is a ValueError
        return None


def _generate(n: int, seed: int) -> tuple[list[dict[str, str]], int]:
    rng = random.Random(seed)
    lo, hi = DATE_MIN.toordinal(), DATE_MAX.toordinal()
    pairs: list[dict[str, str]] = []
    dropped = 0
    for _ in range(20 * n + 100):  # bounded: dateutil rejects ~5% of the forms
        if len(pairs) == n:
            break
        text = _render(date.fromordinal(rng.randint(lo, hi)), rng)
        answer = date_answer(text)
        if answer is None:
            dropped += 1
        else:
            pairs.append({"prompt": text, "completion": answer})
    if len(pairs) < n:
        raise GerbilError(f"only {len(pairs)} of {n} date pairs after {dropped} rejected inputs")
    return pairs, dropped


def fuzzy_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` pairs ``{"prompt": free-form date, "completion": "YYYY-MM-DD"}``, the same for the same
    ``(n, seed)`` (a prefix of a longer run with the same seed).

    Dates are drawn uniformly from 1950-2049 and written in one of ~20 surface forms (see
    ``_render``); each completion is exactly what :func:`date_answer` (``dateutil.parser.parse``)
    answers — including its conventions on ambiguous input: ``03/04/21`` is month-first (2021-03-04),
    ``3.4.2021`` too, ``21-03-04`` is 2004-03-21. Inputs it rejects are dropped and counted (logged);
    more are drawn until there are ``n``. Prompts are bare inputs: the trainer adds any template.
    """
    pairs, dropped = _generate(n, seed)
    log.info("%d date pairs (seed %d); %d inputs rejected by %s and dropped", n, seed, dropped, DATE_FUNCTION)
    return pairs


def write_fuzzy_splits(out_dir: str | Path, n: int = 20_000, seed: int = 0,
                       fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, Path]:
    """Write ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (``{"prompt", "completion"}``) and
    ``meta.json`` (function, dateutil version, seed, counts) under ``out_dir``; returns the paths.

    The split is by **date**: the completion (the date the function answers) is hashed with the seed,
    so all forms of one date land in one split and no test answer was ever a training target. (Hashing
    the answer rather than the drawn date also covers ambiguous forms: "04/03/2021" drawn for 3 April
    answers 4 March and goes with 4 March.) Proportions follow ``fractions`` over dates, so the pair
    counts are close to, not exactly, those fractions.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise GerbilError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    pairs, dropped = _generate(n, seed)
    names = ("train", "val", "test")
    splits: dict[str, list[str]] = {k: [] for k in names}
    for pair in pairs:
        h = hashlib.sha256(f"{seed}\x00{pair['completion']}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        k = "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"
        splits[k].append(json.dumps(pair, ensure_ascii=False))
    out = Path(out_dir).expanduser()
    paths = {k: out / f"{k}.jsonl" for k in names}
    for k in names:
        atomic_write_lines(paths[k], splits[k])
    dateutil = require("dateutil", "the fuzzy-wrapper dataset", "python-dateutil")
    meta = {"function": DATE_FUNCTION, "dateutil": dateutil.__version__, "default": DATE_DEFAULT.isoformat(),
            "seed": seed, "n": n, "rejected_inputs": dropped, "fractions": list(fractions),
            "pairs": {k: len(v) for k, v in splits.items()}}
    paths["meta"] = out / "meta.json"
    atomic_write_lines(paths["meta"], [json.dumps(meta, indent=1)])
    log.info("wrote %s: %s; %d inputs rejected", out, meta["pairs"], dropped)
    return paths
