"""The robust fit of a form L(N, D) (Chinchilla approach 3), with a run bootstrap and the
compute-optimal allocation it implies.

The forms (Chinchilla, Kaplan) are `gerbil.fit.forms`; the Huber objective, the L-BFGS-B runs, the
convergence test, the resampling and the process pool are `gerbil.fit.optim`'s, shared with the task
law (`gerbil.fit.tasklaw`); this module holds what is particular to fitting L(N, D).

The bootstrap resamples *runs* with replacement (all points of a run go together: points of one run's
training curve are not independent), refits each resample from the point estimate, in parallel
processes, and keeps every resample's parameters so intervals of any derived quantity (exponents,
tokens per parameter at a budget) come from the same draws.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gerbil.errors import GerbilError
from gerbil.fit.forms import FORMS, Chinchilla, Form, Kaplan, get_form  # noqa: F401 - re-exported
from gerbil.fit.optim import (  # noqa: F401 - re-exported: the loss law's public names since before the split
    GRAD_TOL_REL, HUBER_DELTA, LBFGS_OPTIONS, default_workers, flat_optimum, huber_objective, map_resamples,
    minimize, refine_starts, resample_runs, single_blas_thread,
)

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------- results
@dataclass
class Bootstrap:
    """Refits of resampled runs. `samples` holds the published parameters of every kept refit
    (n_kept, k) in `Form.param_names` order; `kept` marks which of the resamples they are."""

    samples: np.ndarray
    n_resamples: int
    n_degenerate: int  # resamples with fewer distinct points than parameters, or < 3 distinct N / D: skipped
    n_unconverged: int  # refits that did not converge: dropped
    seed: int
    workers: int
    seconds: float
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (n_resamples,) which were kept

    @property
    def n_kept(self) -> int:
        return int(len(self.samples))

    def full(self) -> np.ndarray:
        """(n_resamples, k) samples with NaN rows for skipped resamples: row i of two bootstraps drawn
        with the same seed over the same runs comes from the same resample, so they can be paired."""
        out = np.full((self.n_resamples, self.samples.shape[1]), np.nan)
        out[self.kept] = self.samples
        return out

    def params(self, form: Any) -> dict[str, np.ndarray]:
        """The samples as a params dict of arrays (for the vectorised closed forms); `form` is a Form or
        anything else naming the samples' columns in `param_names` (the task law's sigmoid)."""
        return {name: self.samples[:, i] for i, name in enumerate(form.param_names)}


@dataclass
class LawFit:
    """One approach-3 fit: the point estimate, how it was reached, and (optionally) its bootstrap."""

    form: str
    params: dict[str, float]
    objective: float
    converged: bool
    message: str
    n_iter: int
    grad_max: float
    n_points: int
    n_runs: int
    delta: float
    starts: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bootstrap: Bootstrap | None = None
    seconds: float = 0.0

    @property
    def law(self) -> Form:
        return get_form(self.form)

    def predict(self, N: Any, D: Any) -> np.ndarray:
        return self.law.predict(self.params, N, D)

    def interval(self, values: np.ndarray, ci: float = 95.0) -> tuple[float, float] | None:
        """The central `ci`% percentile interval of per-sample `values` (None without a bootstrap)."""
        v = np.asarray(values, float)
        v = v[np.isfinite(v)]
        if self.bootstrap is None or v.size < 2:
            return None
        lo, hi = np.percentile(v, [50 - ci / 2, 50 + ci / 2])
        return float(lo), float(hi)

    def param_intervals(self, ci: float = 95.0) -> dict[str, tuple[float, float] | None]:
        if self.bootstrap is None:
            return {k: None for k in self.params}
        s = self.bootstrap.params(self.law)
        return {k: self.interval(s[k], ci) for k in self.params}


# ---------------------------------------------------------------------------------------- validation
def check_points(N: np.ndarray, D: np.ndarray, L: np.ndarray, k: int, what: str = "points") -> list[str]:
    """Refuse data no fit can use (one-line GerbilError); return warnings for data a fit barely can."""
    n = len(L)
    if n == 0:
        raise GerbilError(f"no {what} to fit")
    for name, v in (("parameter count", N), ("token count", D), ("loss", L)):
        bad = ~np.isfinite(v)
        if bad.any():
            raise GerbilError(f"{int(bad.sum())} {what} have a non-finite {name}")
        if (v <= 0).any():
            raise GerbilError(f"{int((v <= 0).sum())} {what} have a non-positive {name} "
                              f"(the law is fitted in log space)")
    if n < k:
        raise GerbilError(f"{n} {what} for {k} parameters: a fit needs at least {k}")
    if np.unique(N).size == 1:
        raise GerbilError(f"all {n} {what} have the same parameter count {N[0]:,.0f}: the N term cannot be "
                          f"fitted (add runs of other sizes)")
    if np.unique(D).size == 1:
        raise GerbilError(f"all {n} {what} have the same token count {D[0]:,.0f}: the D term cannot be "
                          f"fitted (add runs of other budgets)")
    warnings = []
    if n < 2 * k:
        warnings.append(f"under-determined: {n} points for {k} parameters ({n - k} residual degrees of "
                        f"freedom); the parameters trade off against each other, so the point estimate is "
                        f"one of many near-equal fits and the intervals and extrapolations are not reliable")
    nN, nD = np.unique(N).size, np.unique(D).size
    if nN < 3:
        warnings.append(f"only {nN} distinct model sizes: the N exponent is barely constrained")
    if nD < 3:
        warnings.append(f"only {nD} distinct token counts: the D exponent is barely constrained")
    return warnings


# ---------------------------------------------------------------------------------------------- fit
def fit_law(N: Sequence[float], D: Sequence[float], L: Sequence[float], *, form: str = "chinchilla",
            delta: float = HUBER_DELTA, top_k: int = 8, groups: Sequence[Any] | None = None,
            options: dict | None = None) -> LawFit:
    """Fit L(N, D) by Huber regression in log space (approach 3); no bootstrap (see `bootstrap_law`).

    The whole start grid is evaluated at once in numpy and only the `top_k` best starts are refined
    with L-BFGS (`gerbil.fit.optim.refine_starts`). The refined starts are kept in `starts` so a
    reader can see whether they agree (several distinct optima = a poorly determined fit).
    """
    t0 = time.perf_counter()
    law = get_form(form)
    N, D, L = (np.asarray(x, float).ravel() for x in (N, D, L))
    if not (len(N) == len(D) == len(L)):
        raise GerbilError(f"N, D and L differ in length ({len(N)}, {len(D)}, {len(L)})")
    warnings = check_points(N, D, L, law.k)
    if not (delta > 0 and math.isfinite(delta)):
        raise GerbilError(f"Huber delta must be positive, got {delta}")
    opts = dict(LBFGS_OPTIONS, **(options or {}))
    best, refined = refine_starts(law, law.grid(), (np.log(N), np.log(D)), np.log(L), delta, top_k, opts)
    starts = [{"start": dict(zip(law.theta_names, s["start"])), "start_objective": s["start_objective"],
               "objective": s["objective"], "converged": s["converged"], "n_iter": s["n_iter"],
               "params": {k: float(v) for k, v in law.to_params(np.asarray(s["theta"])).items()}}
              for s in refined]
    params = {k: float(v) for k, v in law.to_params(best.theta).items()}
    n_near, spread = flat_optimum(best, refined)
    if spread > 1e-2:
        warnings.append(f"{n_near} of {len(refined)} refined starts reach the best objective within 0.1% "
                        f"at parameters up to {spread:.2g} apart (in log space): the optimum is flat")
    if not best.converged:
        warnings.append(f"the {law.name} fit did not converge ({best.message}; max|gradient| {best.grad_max:.2g} "
                        f"after {best.n_iter} iterations)")
    for w in warnings:
        log.warning("%s fit: %s", law.name, w)
    n_runs = len(set(groups)) if groups is not None else len(L)
    return LawFit(form=law.name, params=params, objective=best.fun, converged=best.converged,
                  message=best.message, n_iter=best.n_iter, grad_max=best.grad_max, n_points=len(L),
                  n_runs=n_runs, delta=float(delta), starts=starts, warnings=warnings,
                  seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ bootstrap
def refit_resample(law: Form, theta0: np.ndarray, lN: np.ndarray, lD: np.ndarray, y: np.ndarray,
                   idx: np.ndarray, need: tuple[int, int], delta: float, options: dict
                   ) -> tuple[np.ndarray | None, bool]:
    """Refit one resample (point indices `idx`) from `theta0`: (θ, converged), or (None, False) when
    the resample is degenerate — fewer distinct (N, D) than parameters, or fewer distinct N or D than
    `need` (with 2 values a power law's coefficient and exponent trade off exactly, and the refit runs
    off along that ridge instead of measuring anything)."""
    a, b, c = lN[idx], lD[idx], y[idx]
    distinct = np.unique(np.stack([a, b], 1), axis=0).shape[0]
    if distinct < law.k or np.unique(a).size < need[0] or np.unique(b).size < need[1]:
        return None, False
    r = minimize(law, theta0, (a, b), c, delta, options)
    return r.theta, r.converged


def resample_needs(lN: np.ndarray, lD: np.ndarray) -> tuple[int, int]:
    """Distinct N and D a resample needs: 3 each, or as many as the data have."""
    return min(3, np.unique(lN).size), min(3, np.unique(lD).size)


def _fit_chunk(form_name: str, theta0: np.ndarray, lN, lD, y, delta: float, options: dict, index_lists,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Worker: refit each resample (a list of point indices) from `theta0`.
    Returns (thetas (m, k), converged (m,), degenerate (m,))."""
    law = get_form(form_name)
    m = len(index_lists)
    thetas = np.full((m, law.k), np.nan)
    conv = np.zeros(m, bool)
    degen = np.zeros(m, bool)
    need = resample_needs(lN, lD)
    for j, idx in enumerate(index_lists):
        theta, conv[j] = refit_resample(law, theta0, lN, lD, y, idx, need, delta, options)
        if theta is None:
            degen[j] = True
        else:
            thetas[j] = theta
    return thetas, conv, degen


# refits start at the optimum of nearby data: well-posed ones take tens of iterations (measured 60 on
# average for 250 points), so 1,000 is ample and bounds the cost of a resample that runs off
BOOTSTRAP_LBFGS = dict(LBFGS_OPTIONS, maxiter=1_000, maxfun=2_000)


def bootstrap_law(fit: LawFit, N: Sequence[float], D: Sequence[float], L: Sequence[float], *,
                  groups: Sequence[Any] | None = None, n_resamples: int = 1000, seed: int = 0,
                  workers: int | None = None, options: dict | None = None) -> Bootstrap:
    """Bootstrap `fit` by resampling runs (`groups`, one label per point; default each point its own
    run), refitting every resample from the point estimate in `workers` processes (default all cores).
    The result is also stored on `fit.bootstrap`."""
    if n_resamples < 1:
        raise GerbilError(f"bootstrap needs at least 1 resample, got {n_resamples}")
    t0 = time.perf_counter()
    law = fit.law
    N, D, L = (np.asarray(x, float).ravel() for x in (N, D, L))
    idx = resample_runs(groups if groups is not None else range(len(L)), n_resamples, seed)
    opts = dict(BOOTSTRAP_LBFGS, **(options or {}))
    args = (law.name, law.to_theta(fit.params), np.log(N), np.log(D), np.log(L), fit.delta, opts)
    parts, workers = map_resamples(_fit_chunk, args, idx, workers)
    thetas, conv, degen = (np.concatenate([p[i] for p in parts]) for i in range(3))
    kept = conv & ~degen
    samples = np.column_stack([np.asarray(v, float) for v in law.to_params(thetas[kept]).values()]) \
        if kept.any() else np.zeros((0, law.k))
    bs = Bootstrap(samples=samples, n_resamples=n_resamples, n_degenerate=int(degen.sum()),
                   n_unconverged=int((~conv & ~degen).sum()), seed=seed, workers=workers,
                   seconds=time.perf_counter() - t0, kept=kept)
    new = len(fit.warnings)
    fit.warnings += bootstrap_warnings(bs, "fewer distinct points than parameters or fewer than 3 distinct N or D")
    for w in fit.warnings[new:]:
        log.warning("%s bootstrap: %s", law.name, w)
    fit.bootstrap = bs
    return bs


def bootstrap_warnings(bs: Bootstrap, degenerate_why: str) -> list[str]:
    """What a bootstrap's skipped and dropped resamples mean for its intervals."""
    out = []
    if bs.n_degenerate:
        out.append(f"{bs.n_degenerate} of {bs.n_resamples} bootstrap resamples had {degenerate_why}, and were skipped")
    if bs.n_unconverged:
        out.append(f"{bs.n_unconverged} of {bs.n_resamples} bootstrap refits did not converge and were dropped")
    if bs.n_kept < max(2, bs.n_resamples // 2):
        out.append(f"only {bs.n_kept} of {bs.n_resamples} bootstrap resamples were usable: "
                   f"the intervals rest on few refits")
    return out


# ---------------------------------------------------------------------------------------- summaries
def allocation(fit: LawFit, budgets: Sequence[float] = (), ci: float = 95.0) -> dict:
    """Compute-optimal allocation under C = 6·N·D with intervals: exponents a (N_opt ∝ C^a) and b
    (D_opt ∝ C^b), and N_opt, D_opt and tokens per parameter at each budget."""
    law = fit.law
    a, b = law.exponents(fit.params)
    s = fit.bootstrap.params(law) if fit.bootstrap is not None and fit.bootstrap.n_kept else None
    out: dict[str, Any] = {"convention": "C = 6·N·D", "a": float(a), "b": float(b)}
    if s is not None:
        sa, sb = law.exponents(s)
        out["a_interval"], out["b_interval"] = fit.interval(sa, ci), fit.interval(sb, ci)
    rows = []
    for C in budgets:
        n = float(law.optimal_n(fit.params, C))
        row = {"flops": float(C), "N_opt": n, "D_opt": C / (6 * n), "tokens_per_param": C / (6 * n * n),
               "loss": float(law.predict(fit.params, n, C / (6 * n)))}
        if s is not None:
            ns = law.optimal_n(s, C)
            row["N_opt_interval"] = fit.interval(ns, ci)
            row["D_opt_interval"] = fit.interval(C / (6 * ns), ci)
            row["tokens_per_param_interval"] = fit.interval(C / (6 * ns * ns), ci)
        rows.append(row)
    out["budgets"] = rows
    return out
