"""Scaling laws that include tiny models: `gerbil fit` and the compute planner built on a fit.

    optim.py     the machinery every law shares: summed Huber objective, L-BFGS-B from a grid, convergence
                 test, run resampling and the bootstrap's process pool
    forms.py     the forms L(N, D) (Chinchilla, Kaplan): parametrisation, gradients, closed forms
    laws.py      the approach-3 fit of a form, its run bootstrap, the compute-optimal allocation
    sources.py   points from run directories (gerbil.runs.registry) and CSV files; training curves
    isoflop.py   approach 2 (IsoFLOP parabolas) and `isoflop_grid`, the runs an IsoFLOP study needs
    envelope.py  approach 1 (lower envelope of the training curves)
    report.py    `run_fit`: everything `gerbil fit` does — fits, fit.json, fit.md, plots
    plots.py     the figures (matplotlib, headless)
    planner.py   size, tokens and class minimising predicted loss for a GPU-time budget, and the inverse
    command.py   `gerbil fit`'s flags (`FitCommand`, task law included) and the planner's of `gerbil plan`

The two-step task law (`gerbil fit --task TASK`: N, D → task loss → metric):

    tasksources.py  points (params, tokens, task loss, metric) from CSV files and every checkpoint's eval record
    tasklaw.py      step 1 (the Chinchilla fit of laws.py on final points), step 2 (a sigmoid through optim),
                    the joint run bootstrap, the leave-the-largest-size-out check
    taskreport.py   `run_task_fit`: fit.json `task_law`, fit.md
    taskplots.py    its figures

The formulas, counting conventions and caveats are in docs/fit.md. Importing this package imports
neither torch nor scipy nor matplotlib: they are loaded when a fit or a plot needs them.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "fit_law": "laws", "bootstrap_law": "laws", "allocation": "laws", "get_form": "forms", "FORMS": "forms",
    "LawFit": "laws", "Bootstrap": "laws",
    "load_points": "sources", "read_curves": "sources", "Dataset": "sources", "Point": "sources",
    "Columns": "sources",
    "isoflop_fit": "isoflop", "isoflop_grid": "isoflop", "shape_family": "isoflop",
    "envelope_fit": "envelope",
    "run_fit": "report",
    "run_task_fit": "taskreport", "fit_task_law": "tasklaw", "load_task_points": "tasksources",
    "PUBLISHED_FITS": "planner", "load_fit": "planner", "plan_for_time": "planner",
    "plan_for_loss": "planner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # PEP 562: import submodules (and numpy) only when used
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"gerbil.fit.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'gerbil.fit' has no attribute {name!r}")
