"""The fitting machinery every law of `gerbil fit` shares: a summed Huber objective, L-BFGS-B from the
best starts of a grid evaluated in numpy, a gradient-based convergence test, and the run bootstrap's
resampling and process pool.

A *model* is anything with `k` (number of optimised parameters θ), `bounds` (one (low, high) pair per
θ, None = open) and two predictions of the fitted quantity ŷ:

    model.pred(θ, *X)        -> (ŷ (n,), ∂ŷ/∂θ (n, k))
    model.grid_pred(G, *X)   -> ŷ for every start at once (G, n)

The loss law (`laws.Form`: ŷ = log L̂, X = (log N, log D)) and the task law's sigmoid
(`tasklaw.Sigmoid`: ŷ = the metric, X = (task loss,)) are both models, so both are fitted, judged
converged and bootstrapped by the same code.

Why summed, and why the gradient test (docs/fit.md, "Formulas"): the objective is tiny (δ·Σ|r|) and
L-BFGS-B's stopping rules are absolute below |f| = 1, so a mean stops earlier at a different point;
scipy also reports success after a relative-reduction stop far from the optimum (measured: with default
tolerances a 250-point loss-law fit stopped at β = 1.32 instead of 0.36), so a fit is `converged` only
when max|∇f| ≤ 1e-6 · δ · n as well.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from gerbil.fit._deps import EXTRA, require

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, appendix D.2
GRAD_TOL_REL = 1e-6  # converged: max|∇f| ≤ GRAD_TOL_REL · δ · n (see the module docstring)
# ftol 0: stop only on the gradient or when no step decreases f any more (see the module docstring);
# 3,000 iterations: well-posed fits take 60-400 (measured), an under-determined one (a parameter running
# off to infinity, e.g. E → 0) would otherwise crawl for seconds and is reported as not converged anyway
LBFGS_OPTIONS = {"ftol": 0.0, "gtol": 1e-12, "maxiter": 3_000, "maxfun": 6_000, "maxls": 50}
_GRID_BLOCK = 400_000  # grid points × data points per vectorised block (≈ 3 MB per temporary)


# ------------------------------------------------------------------------------------------ objective
def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def huber_objective(model: Any, theta: np.ndarray, *data: np.ndarray, delta: float = HUBER_DELTA
                    ) -> tuple[float, np.ndarray]:
    """(Σ Huber_δ(ŷ − y), its gradient in θ); `data` is the model's inputs X followed by the target y."""
    *X, y = data
    pred, jac = model.pred(theta, *X)
    r = pred - y
    f = float(_huber(r, delta).sum())
    # Huber'(r) = clip(r, ±δ); an elementwise sum, not a BLAS matvec: BLAS threads in every bootstrap
    # process oversubscribe the cores (measured 10× slower on 2 shared cores)
    return f, (np.clip(r, -delta, delta)[:, None] * jac).sum(axis=0)


def grid_objective(model: Any, grid: np.ndarray, X: Sequence[np.ndarray], y: np.ndarray, delta: float
                   ) -> np.ndarray:
    """The objective at every start (G,), in blocks so memory stays small for many points."""
    out = np.empty(len(grid))
    step = max(1, _GRID_BLOCK // max(1, len(y)))
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, len(grid), step):
            out[i:i + step] = _huber(model.grid_pred(grid[i:i + step], *X) - y, delta).sum(axis=1)
    return np.where(np.isfinite(out), out, np.inf)


@dataclass
class Opt:
    """One L-BFGS-B run: where it stopped and whether that is an optimum (module docstring)."""

    theta: np.ndarray
    fun: float
    converged: bool
    message: str
    n_iter: int
    grad_max: float


def _bound_arrays(bounds: Sequence[tuple[float | None, float | None]]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds], float)
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds], float)
    return lo, hi


def minimize(model: Any, theta0: np.ndarray, X: Sequence[np.ndarray], y: np.ndarray, delta: float,
             options: dict) -> Opt:
    """L-BFGS-B on the summed Huber objective from `theta0`, judged converged by the projected gradient."""
    opt = require("scipy.optimize")
    fun = lambda th: huber_objective(model, th, *X, y, delta=delta)  # noqa: E731
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        res = opt.minimize(fun, np.asarray(theta0, float), jac=True, method="L-BFGS-B", bounds=model.bounds,
                           options=options)
        f, g = fun(res.x)
    # projected gradient: a component pressing against its bound does not count
    lo, hi = _bound_arrays(model.bounds)
    g = np.where(((res.x <= lo) & (g > 0)) | ((res.x >= hi) & (g < 0)), 0.0, g)
    gmax = float(np.max(np.abs(g))) if np.all(np.isfinite(g)) else float("inf")
    ok = bool(np.isfinite(f) and gmax <= GRAD_TOL_REL * delta * len(y)
              and (res.success or "ABNORMAL" in str(res.message).upper()))
    return Opt(np.asarray(res.x, float), f, ok, str(res.message), int(res.nit), gmax)


def refine_starts(model: Any, grid: np.ndarray, X: Sequence[np.ndarray], y: np.ndarray, delta: float,
                  top_k: int, options: dict) -> tuple[Opt, list[dict]]:
    """Evaluate every start of `grid` at once, refine the `top_k` best with L-BFGS-B; (the best result,
    a record per refined start). Hoffmann et al. refined every start; the ranking at the start is a good
    proxy and makes a 250-point fit take well under a second."""
    gf = grid_objective(model, grid, X, y, delta)
    order = np.argsort(gf, kind="stable")[:max(1, int(top_k))]
    with single_blas_thread():
        results = [(minimize(model, grid[i], X, y, delta, options), i) for i in order]
    best, _ = min(results, key=lambda r: (not np.isfinite(r[0].fun), r[0].fun))
    starts = [{"start": grid[i].tolist(), "start_objective": float(gf[i]), "objective": r.fun,
               "converged": r.converged, "n_iter": r.n_iter, "theta": r.theta.tolist()} for r, i in results]
    return best, starts


def flat_optimum(best: Opt, starts: list[dict]) -> tuple[int, float]:
    """(how many refined starts reach the best objective within 0.1%, their largest distance from the
    best θ): several distinct optima at the same objective mean a poorly determined fit."""
    near = [np.asarray(s["theta"]) for s in starts
            if s["converged"] and s["objective"] <= best.fun * (1 + 1e-3) + 1e-15]
    spread = max((float(np.max(np.abs(t - best.theta))) for t in near), default=0.0)
    return len(near), spread


# ----------------------------------------------------------------------------------------- processes
def _one_blas_thread() -> None:
    """Worker initializer: one BLAS thread per bootstrap process.

    Why: scipy's L-BFGS-B calls BLAS, whose thread pool (one per process, as many threads as cores)
    oversubscribes the cores when every worker has its own — measured 200 refits in 29.5 s with 2
    worker processes vs 1.2 s in one process on 2 cores, and 1.3 s with one BLAS thread each.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def single_blas_thread() -> Any:
    """A context with one BLAS thread in this process (a no-op without threadpoolctl): the fits call
    BLAS on vectors of five numbers, where waking a thread pool only costs time — measured up to 9×
    slower on 2 cores shared with other jobs."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _can_limit_blas() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resample_runs(groups: Sequence[Any], n_resamples: int, seed: int) -> list[np.ndarray]:
    """`n_resamples` lists of point indices, each drawing as many runs as there are, with replacement,
    and taking all points of each drawn run. Drawn in the parent from one seed, so the result does not
    depend on the number of workers, and two fits of the same runs (total vs non-embedding counts)
    see the same resamples."""
    groups = list(groups)
    labels, inverse = np.unique(np.array([str(g) for g in groups]), return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(labels))]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(n_resamples, len(labels)))
    if all(len(m) == 1 for m in members):
        single = np.array([m[0] for m in members])
        return [single[d] for d in draws]
    return [np.concatenate([members[g] for g in d]) for d in draws]


def map_resamples(worker: Callable[..., Any], args: tuple, index_lists: list[np.ndarray],
                  workers: int | None) -> tuple[list[Any], int]:
    """Call `worker(*args, chunk)` on consecutive chunks of `index_lists` in `workers` processes
    (default all cores); (the results in chunk order, the number of workers used). `worker` must be a
    module-level function (it is pickled by name)."""
    n = len(index_lists)
    workers = max(1, min(int(workers or default_workers()), n))
    if workers > 1 and not _can_limit_blas():
        log.warning("threadpoolctl is not installed (%s): bootstrapping in one process, since worker "
                    "processes with their own BLAS thread pools run ~20x slower", EXTRA)
        workers = 1
    n_chunks = 1 if workers == 1 else min(n, workers * 4)
    cuts = np.linspace(0, n, n_chunks + 1).astype(int)
    chunks = [index_lists[cuts[i]:cuts[i + 1]] for i in range(n_chunks)]
    if workers == 1:
        with single_blas_thread():
            return [worker(*args, c) for c in chunks], 1
    # fork where the platform has it: no re-import of the caller's __main__ (spawn would make every
    # script calling this need an `if __name__ == "__main__"` guard)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_one_blas_thread) as ex:
        return list(ex.map(worker, *zip(*[args + (c,) for c in chunks]))), workers
