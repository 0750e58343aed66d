"""Optional dependencies (the package's extras: scipy and matplotlib for fits and plots, tensorboard, wandb,
python-dateutil for the fuzzy-wrapper dataset), imported on first use by the code that needs them.

Why lazily: they are not installed with gerbil itself, and the verbs that do not need them must work
without them. A missing one is a one-line GerbilError naming the verb, the package and the extra that
installs it — never an ImportError traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from gerbil.errors import GerbilError


def require(module: str, who: str, package: str | None = None, extra: str | None = None, hint: str = "") -> ModuleType:
    """Import `module` (e.g. "scipy.optimize"), or raise a one-line GerbilError: `who` (the verb or option
    that needs it) needs `package` (default: the module's top level), installed by ``pip install PACKAGE``
    or the gerbil extra `extra`; `hint` is appended."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module.split(".")[0]
        how = f"pip install {package}" + (f" (or gerbil-lab[{extra}])" if extra else "")
        raise GerbilError(f"{who} needs the {package} package: {how}{hint}") from None


def pyplot(who: str, extra: str = "plot") -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend (plots are written on servers without a display)."""
    require("matplotlib", who, extra=extra).use("Agg")
    return require("matplotlib.pyplot", who, "matplotlib", extra)
