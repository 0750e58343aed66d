"""Training classes and the one grammar of their labels (docs/reference.md §3). No imports beyond errors.

A class is a token budget per total parameter: A 20 (Chinchilla-optimal), B 42, C 76, D 142, E 284. A
run's class *label* is one of

* ``"A"`` … ``"E"`` — read case-insensitively, also as ``"e"``;
* a star class ``"E*"`` (also read as ``"E-star"``, ``"Estar"``): the class's budget counted from the
  start of an earlier run that this run continues (`star`);
* a ratio ``"300"`` (also ``"~300"``): that many tokens per parameter;
* ``None``: a custom budget — the run's own token count, not a class.

Everything that names, records or shows a class goes through this module: `parse_class` reads a label,
`star` makes a continuation's, `name_part` writes one into a run name (``E*`` → ``E-star``:
``GerbilBlender-E-star-6.7m``), `claimed_class` is the one rule for when a run may be called its class
(the results table's: at least 90% of the class's tokens per parameter, else a custom budget), and
`class_text` is how plans, tables and cards show it.
"""
from __future__ import annotations

import math

from gerbil.errors import OptionError

# Tokens per total parameter (docs/reference.md §3): A is Chinchilla-optimal; B–D are LLaMA's tokens/parameter
# ratios scaled down to this ladder; E doubles D. A star class ("E*") has the same ratio but continues
# an earlier checkpoint of the same model (the seed's B*-77m row used 40 instead of 42: pass ratio=40).
CLASSES: dict[str, int] = {"A": 20, "B": 42, "C": 76, "D": 142, "E": 284}
#: the mark of a star class in a label ("E*") and its spelling in run names ("E-star")
STAR, STAR_NAME = "*", "-star"
#: how a run without a class (its own token count) is shown
CUSTOM_BUDGET = "custom budget"
#: a run claims its class only with at least this share of the class's tokens per parameter (the results
#: table's rule since the seed: a `--tokens` budget far below the class's is not that class's model)
CLAIM_SHARE = 0.9


def parse_class(cls: str | None, ratio: float | None = None) -> tuple[str, float, bool]:
    """(label, ratio, star) for a class name ('A', 'e*', 'E-star'), a number ('300', '~300') or None.

    An explicit `ratio` overrides the class's ratio but keeps its label ('B*' with ratio 40 is the
    seed's B*-77m). With no class and no ratio the class is A. A bad one is a one-line `OptionError`.
    """
    if ratio is not None:
        ratio = float(ratio)
        if not math.isfinite(ratio) or ratio <= 0:
            raise OptionError(f"ratio must be a positive number of tokens per parameter, got {ratio:g}")
    if cls is None or not str(cls).strip():
        if ratio is None:
            return "A", float(CLASSES["A"]), False
        return f"{ratio:g}", ratio, False
    s = str(cls).strip().upper()
    star_ = False
    for suffix in (STAR, STAR_NAME.upper(), "STAR"):
        if s.endswith(suffix):
            s, star_ = s[: -len(suffix)], True
            break
    if s in CLASSES:
        base = float(CLASSES[s])
        label = s + (STAR if star_ else "")
    else:
        try:
            base = float(s.lstrip("~"))
        except ValueError:
            raise OptionError(f"unknown class {cls!r} (A, B, C, D, E, a star class such as E*, "
                              f"or tokens per parameter such as 300)") from None
        if not math.isfinite(base) or base <= 0:
            raise OptionError(f"class ratio must be a positive number of tokens per parameter, got {cls!r}")
        label = f"{base:g}" + (STAR if star_ else "")
    return label, (ratio if ratio is not None else base), star_


def is_star(label: str | None) -> bool:
    """A continuation's label ('E*')."""
    return bool(label) and str(label).endswith(STAR)


def star(label: str) -> str:
    """The label of a run continuing an earlier one: a continuation is a star class by definition."""
    return label if is_star(label) else label + STAR


def base_class(label: str) -> str:
    """The label without its star ('E*' → 'E'): what a cascade branch, which stands for its class, shows."""
    return label[: -len(STAR)] if is_star(label) else label


def class_ratio(label: str) -> float:
    """Tokens per parameter of a class label ('A' → 20, 'E*' → 284, '300' → 300)."""
    return parse_class(label)[1]


def claimed_class(label: str | None, ratio: float | None) -> str | None:
    """The class a run with `ratio` tokens per total parameter may be called: `label`, or None (a custom
    budget) when it has less than `CLAIM_SHARE` of the class's ratio — `gerbil train --class B --tokens
    4096` trains a custom budget, not a class-B model. The one rule of the results table, config.yaml and
    meta.json, the export's ``gerbil.class`` and card, and `gerbil plan` / `suite plan`."""
    if not label:
        return None
    if ratio is not None and ratio < CLAIM_SHARE * class_ratio(label):
        return None
    return label


def class_text(label: str | None) -> str:
    """How a class is shown in plans and cards: its label, or 'custom budget'."""
    return label or CUSTOM_BUDGET


def name_part(label: str | None) -> str | None:
    """A label as run names spell it ('E*' → 'E-star'); None for a custom budget (no class in the name)."""
    return str(label).replace(STAR, STAR_NAME) if label else None
