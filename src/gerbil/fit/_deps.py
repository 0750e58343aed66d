"""The optional dependencies of `gerbil fit` (scipy, matplotlib), imported on first use.

Why lazily: `import gerbil.fit` must stay cheap and torch-free so `gerbil plan` answers instantly;
scipy is only needed to optimise, matplotlib only to draw. A missing one is a one-line GerbilError that
names the extra to install, not a traceback.
"""
from __future__ import annotations

from types import ModuleType

from gerbil import extras

EXTRA = "pip install 'gerbil-lab[fit]'"


def require(module: str) -> ModuleType:
    """Import `module` (e.g. "scipy.optimize") or raise a GerbilError naming the `fit` extra."""
    return extras.require(module, "gerbil fit", extra="fit")


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend (fit runs on servers without a display)."""
    return extras.pyplot("gerbil fit", extra="fit")
