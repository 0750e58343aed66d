"""The optional dependencies of `gerbil fit` (scipy, matplotlib), imported on first use.

Why lazily: `import gerbil.fit` must stay cheap and torch-free so `gerbil plan` answers instantly;
scipy is only needed to optimise, matplotlib only to draw. A missing one is a one-line GerbilError that
names the extra to install, not a traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from gerbil.errors import GerbilError

EXTRA = "pip install 'gerbil-lab[fit]'"


def require(module: str) -> ModuleType:
    """Import `module` (e.g. "scipy.optimize") or raise a GerbilError naming the `fit` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise GerbilError(f"gerbil fit needs {top}, which is not installed ({EXTRA})") from None


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend (fit runs on servers without a display)."""
    mpl = require("matplotlib")
    mpl.use("Agg")
    return require("matplotlib.pyplot")
