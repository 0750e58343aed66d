"""Scaling-law forms L(N, D) and their robust fit (Chinchilla approach 3), with a run bootstrap.

Two forms (docs/fit.md, "Formulas"):

* `chinchilla` — Hoffmann et al. 2022, eq. 2: L(N, D) = E + A/N^α + B/D^β. Fitted as Hoffmann et al.
  describe (their appendix D.2) and Besiroglu et al. 2024 replicate: in log space,
      log L̂ = LSE(a − α·log N, b − β·log D, e),   A = e^a, B = e^b, E = e^e,
  minimising the Huber loss (δ = 1e-3) of the residuals log L̂ − log L, summed over points, with
  L-BFGS from a grid of starts (α, β ∈ {0, 0.5, …, 2}; e ∈ {−1, −0.5, …, 1}; a, b ∈ {0, 5, …, 25}).
* `kaplan` — Kaplan et al. 2020, eq. 1.5: L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D, fitted the same way:
      log L̂ = α_D · LSE(p·(n_c − log N), d_c − log D),   p = α_N/α_D, N_c = e^n_c, D_c = e^d_c.
  It has no irreducible loss, which is exactly where tiny models show the forms apart.

Why summed, not averaged: the objective is tiny (δ·Σ|r| ≈ 1e-3 for 250 points at 1% noise) and
L-BFGS-B's stopping rules are absolute below |f| = 1, so a mean (250× smaller) stops earlier at a
different point under the same tolerances; with the tight tolerances used here both reach the same
optimum, and the sum is what Hoffmann et al. minimised. Convergence is judged by the gradient, not by
scipy's flag alone: scipy reports success after a relative-reduction stop even far from the optimum
(measured: with default tolerances a 250-point fit stopped at β = 1.32 instead of 0.36), so a fit is
`converged` only when max|∇f| ≤ 1e-6 · δ · n as well.

The bootstrap resamples *runs* with replacement (all points of a run go together: points of one run's
training curve are not independent), refits each resample from the point estimate, in parallel
processes, and keeps every resample's parameters so intervals of any derived quantity (exponents,
tokens per parameter at a budget) come from the same draws.
"""
from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gerbil.errors import GerbilError
from gerbil.fit._deps import EXTRA, require

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, appendix D.2
GRAD_TOL_REL = 1e-6  # converged: max|∇f| ≤ GRAD_TOL_REL · δ · n (see module docstring)
# ftol 0: stop only on the gradient or when no step decreases f any more (see the module docstring);
# 3,000 iterations: well-posed fits take 60-400 (measured), an under-determined one (a parameter running
# off to infinity, e.g. E → 0) would otherwise crawl for seconds and is reported as not converged anyway
LBFGS_OPTIONS = {"ftol": 0.0, "gtol": 1e-12, "maxiter": 3_000, "maxfun": 6_000, "maxls": 50}
_GRID_BLOCK = 400_000  # grid points × data points per vectorised block (≈ 3 MB per temporary)


# ---------------------------------------------------------------------------------------------- forms
class Form:
    """A functional form L(N, D): its log-space parametrisation θ, gradient, start grid, and the
    closed forms the reports need. `params` dicts may hold arrays (one value per bootstrap sample)."""

    name: str = ""
    theta_names: tuple[str, ...] = ()  # the optimised (log-space) parameters
    param_names: tuple[str, ...] = ()  # the published parameters, same length and order
    bounds: tuple[tuple[float | None, float | None], ...] = ()

    @property
    def k(self) -> int:
        return len(self.theta_names)

    def grid(self) -> np.ndarray:  # (G, k) starting points
        raise NotImplementedError

    def log_pred(self, theta: np.ndarray, lN: np.ndarray, lD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log L̂ (n,), Jacobian ∂ log L̂/∂θ (n, k))."""
        raise NotImplementedError

    def grid_log_pred(self, grid: np.ndarray, lN: np.ndarray, lD: np.ndarray) -> np.ndarray:
        """log L̂ for every start at once: (G, n)."""
        raise NotImplementedError

    def to_params(self, theta: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def to_theta(self, params: dict[str, float]) -> np.ndarray:
        raise NotImplementedError

    def log_predict(self, params: dict[str, Any], N: Any, D: Any) -> np.ndarray:
        raise NotImplementedError

    def predict(self, params: dict[str, Any], N: Any, D: Any) -> np.ndarray:
        """Predicted loss at N parameters and D tokens."""
        return np.exp(self.log_predict(params, N, D))

    def exponents(self, params: dict[str, Any]) -> tuple[Any, Any]:
        """(a, b) with N_opt ∝ C^a and D_opt ∝ C^b when compute is C = 6·N·D."""
        raise NotImplementedError

    def optimal_n(self, params: dict[str, Any], C: Any) -> np.ndarray:
        """Compute-optimal N at C = 6·N·D FLOPs (D_opt = C / (6·N_opt))."""
        raise NotImplementedError

    def optimal_tokens(self, params: dict[str, Any], N: Any) -> np.ndarray:
        """The D at which a model of N parameters is compute-optimal (C = 6·N·D): the tokens a
        frontier model of that size trains on."""
        raise NotImplementedError

    def tokens_for_loss(self, params: dict[str, Any], N: Any, loss: float) -> np.ndarray:
        """Tokens a model of N parameters needs to reach `loss` (inf where it never does)."""
        raise NotImplementedError

    def floor(self, params: dict[str, Any]) -> float:
        """The loss no (N, D) goes below."""
        raise NotImplementedError


class Chinchilla(Form):
    """L = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2); θ = (a, b, e, α, β)."""

    name = "chinchilla"
    theta_names = ("a", "b", "e", "alpha", "beta")
    param_names = ("E", "A", "B", "alpha", "beta")
    bounds = ((None, None),) * 5  # unconstrained, as Hoffmann et al.

    def grid(self) -> np.ndarray:
        # Hoffmann et al. 2022 appendix D.2 (as replicated by Besiroglu et al. 2024)
        ab = np.arange(0.0, 25.0 + 1e-9, 5.0)
        e = np.arange(-1.0, 1.0 + 1e-9, 0.5)
        ex = np.arange(0.0, 2.0 + 1e-9, 0.5)
        g = np.meshgrid(ab, ab, e, ex, ex, indexing="ij")
        return np.stack([x.ravel() for x in g], axis=1)  # (6·6·5·5·5 = 4500, 5)

    def log_pred(self, theta, lN, lD):
        a, b, e, alpha, beta = theta
        t1 = a - alpha * lN  # (n,) log(A/N^α)
        t2 = b - beta * lD  # (n,) log(B/D^β)
        m = np.maximum(np.maximum(t1, t2), e)
        x1, x2, x3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
        s = x1 + x2 + x3
        w1, w2, w3 = x1 / s, x2 / s, x3 / s  # softmax weights = ∂LSE/∂t_i
        jac = np.stack([w1, w2, w3, -w1 * lN, -w2 * lD], axis=1)  # (n, 5)
        return m + np.log(s), jac

    def grid_log_pred(self, grid, lN, lD):
        a, b, e, alpha, beta = (grid[:, i:i + 1] for i in range(5))  # each (G, 1)
        t = np.stack(np.broadcast_arrays(a - alpha * lN, b - beta * lD, e + 0 * lN))  # (3, G, n)
        m = t.max(axis=0)
        return m + np.log(np.exp(t - m).sum(axis=0))

    def to_params(self, theta):
        a, b, e, alpha, beta = (theta[..., i] for i in range(5))
        return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}

    def to_theta(self, p):
        return np.array([math.log(p["A"]), math.log(p["B"]), math.log(p["E"]), p["alpha"], p["beta"]], float)

    def log_predict(self, p, N, D):
        lN, lD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
        t = np.stack(np.broadcast_arrays(np.log(p["A"]) - p["alpha"] * lN, np.log(p["B"]) - p["beta"] * lD,
                                         np.log(p["E"]) + 0 * lN))
        m = t.max(axis=0)
        return m + np.log(np.exp(t - m).sum(axis=0))

    def exponents(self, p):
        s = p["alpha"] + p["beta"]
        return p["beta"] / s, p["alpha"] / s  # Hoffmann et al. 2022, eq. 4

    def optimal_n(self, p, C):
        # N_opt = G·(C/6)^a, G = (αA/(βB))^(1/(α+β))  (Hoffmann et al. 2022, eq. 4)
        a, _ = self.exponents(p)
        # α, β are unconstrained (as Hoffmann et al.): a bootstrap refit with α ≤ 0 or β ≤ 0 has no
        # compute-optimal size — NaN, which `LawFit.interval` leaves out — not a warning per resample
        with np.errstate(divide="ignore", invalid="ignore"):
            log_g = (np.log(p["alpha"] * p["A"]) - np.log(p["beta"] * p["B"])) / (p["alpha"] + p["beta"])
            return np.exp(log_g + a * np.log(np.asarray(C, float) / 6.0))

    def optimal_tokens(self, p, N):
        # on the frontier α·A/N^α = β·B/D^β (∂L/∂log N = ∂L/∂log D along C = 6ND)
        lN = np.log(np.asarray(N, float))
        with np.errstate(divide="ignore", invalid="ignore"):  # α or β ≤ 0: no frontier (NaN), as above
            return np.exp((np.log(p["beta"] * p["B"]) - np.log(p["alpha"] * p["A"]) + p["alpha"] * lN) / p["beta"])

    def tokens_for_loss(self, p, N, loss):
        rest = loss - p["E"] - p["A"] * np.asarray(N, float) ** (-p["alpha"])
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (p["B"] / rest) ** (1.0 / p["beta"])
        return np.where(rest > 0, d, np.inf)

    def floor(self, p):
        return float(p["E"])


class Kaplan(Form):
    """L = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (Kaplan et al. 2020, eq. 1.5); θ = (n_c, d_c, α_N, α_D)."""

    name = "kaplan"
    theta_names = ("n_c", "d_c", "alpha_N", "alpha_D")
    param_names = ("N_c", "D_c", "alpha_N", "alpha_D")
    bounds = ((None, None), (None, None), (1e-6, None), (1e-6, None))  # p = α_N/α_D needs α_D > 0

    def grid(self) -> np.ndarray:
        # Kaplan et al. 2020 found α_N ≈ 0.076, α_D ≈ 0.095, N_c ≈ 8.8e13, D_c ≈ 5.4e13 (ln ≈ 32)
        lc = np.arange(5.0, 40.0 + 1e-9, 5.0)
        ex = np.array([0.05, 0.1, 0.2, 0.4, 0.8])
        g = np.meshgrid(lc, lc, ex, ex, indexing="ij")
        return np.stack([x.ravel() for x in g], axis=1)  # (8·8·5·5 = 1600, 4)

    def log_pred(self, theta, lN, lD):
        n_c, d_c, a_n, a_d = theta
        p = a_n / a_d
        u1 = p * (n_c - lN)  # log (N_c/N)^p
        u2 = d_c - lD  # log D_c/D
        m = np.maximum(u1, u2)
        x1, x2 = np.exp(u1 - m), np.exp(u2 - m)
        s = x1 + x2
        S = m + np.log(s)
        w1, w2 = x1 / s, x2 / s
        jac = np.stack([w1 * a_n, w2 * a_d, w1 * (n_c - lN), S - w1 * u1], axis=1)  # (n, 4)
        return a_d * S, jac

    def grid_log_pred(self, grid, lN, lD):
        n_c, d_c, a_n, a_d = (grid[:, i:i + 1] for i in range(4))
        return a_d * np.logaddexp(a_n / a_d * (n_c - lN), d_c - lD)

    def to_params(self, theta):
        n_c, d_c, a_n, a_d = (theta[..., i] for i in range(4))
        return {"N_c": np.exp(n_c), "D_c": np.exp(d_c), "alpha_N": a_n, "alpha_D": a_d}

    def to_theta(self, p):
        return np.array([math.log(p["N_c"]), math.log(p["D_c"]), p["alpha_N"], p["alpha_D"]], float)

    def log_predict(self, p, N, D):
        lN, lD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
        return p["alpha_D"] * np.logaddexp(p["alpha_N"] / p["alpha_D"] * (np.log(p["N_c"]) - lN),
                                           np.log(p["D_c"]) - lD)

    def exponents(self, p):
        s = p["alpha_N"] + p["alpha_D"]
        return p["alpha_D"] / s, p["alpha_N"] / s

    def optimal_n(self, p, C):
        # minimise (N_c/N)^p + 6·D_c·N/C over N: N^(1+p) = p·N_c^p·C/(6·D_c)
        q = p["alpha_N"] / p["alpha_D"]
        lC = np.log(np.asarray(C, float))
        return np.exp((np.log(q) + q * np.log(p["N_c"]) + lC - np.log(6.0 * p["D_c"])) / (1.0 + q))

    def optimal_tokens(self, p, N):
        # the same condition with C = 6ND: D = D_c·N^p / (p·N_c^p)
        q = p["alpha_N"] / p["alpha_D"]
        lN = np.log(np.asarray(N, float))
        return np.exp(np.log(p["D_c"]) + q * (lN - np.log(p["N_c"])) - np.log(q))

    def tokens_for_loss(self, p, N, loss):
        q = p["alpha_N"] / p["alpha_D"]
        rest = loss ** (1.0 / p["alpha_D"]) - (p["N_c"] / np.asarray(N, float)) ** q
        with np.errstate(divide="ignore", invalid="ignore"):
            d = p["D_c"] / rest
        return np.where(rest > 0, d, np.inf)

    def floor(self, p):
        return 0.0


FORMS: dict[str, Form] = {f.name: f for f in (Chinchilla(), Kaplan())}


def get_form(name: str) -> Form:
    """A form by name ("chinchilla" or "kaplan")."""
    try:
        return FORMS[str(name).lower()]
    except KeyError:
        raise GerbilError(f"unknown form {name!r} (known: {', '.join(FORMS)})") from None


# ------------------------------------------------------------------------------------------ objective
def huber_objective(form: Form, theta: np.ndarray, lN: np.ndarray, lD: np.ndarray, y: np.ndarray,
                    delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """(Σ Huber_δ(log L̂ − log L), its gradient in θ) — the approach-3 objective."""
    pred, jac = form.log_pred(theta, lN, lD)
    r = pred - y
    ar = np.abs(r)
    f = float(np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum())
    # Huber'(r) = clip(r, ±δ); an elementwise sum, not a BLAS matvec: BLAS threads in every bootstrap
    # process oversubscribe the cores (measured 10× slower on 2 shared cores)
    return f, (np.clip(r, -delta, delta)[:, None] * jac).sum(axis=0)


def _grid_objective(form: Form, grid: np.ndarray, lN, lD, y, delta: float) -> np.ndarray:
    """The objective at every start (G,), in blocks so memory stays small for many points."""
    out = np.empty(len(grid))
    step = max(1, _GRID_BLOCK // max(1, len(y)))
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, len(grid), step):
            r = form.grid_log_pred(grid[i:i + step], lN, lD) - y  # (g, n)
            ar = np.abs(r)
            out[i:i + step] = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum(axis=1)
    return np.where(np.isfinite(out), out, np.inf)


@dataclass
class _Opt:
    theta: np.ndarray
    fun: float
    converged: bool
    message: str
    n_iter: int
    grad_max: float


def _minimize(form: Form, theta0: np.ndarray, lN, lD, y, delta: float, options: dict) -> _Opt:
    opt = require("scipy.optimize")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        res = opt.minimize(lambda th: huber_objective(form, th, lN, lD, y, delta), np.asarray(theta0, float),
                           jac=True, method="L-BFGS-B", bounds=form.bounds, options=options)
        f, g = huber_objective(form, res.x, lN, lD, y, delta)
    # projected gradient: a component pressing against its bound does not count
    lo = np.array([b[0] if b[0] is not None else -np.inf for b in form.bounds])
    g = np.where((res.x <= lo) & (g > 0), 0.0, g)
    gmax = float(np.max(np.abs(g))) if np.all(np.isfinite(g)) else float("inf")
    ok = bool(np.isfinite(f) and gmax <= GRAD_TOL_REL * delta * len(y)
              and (res.success or "ABNORMAL" in str(res.message).upper()))
    return _Opt(np.asarray(res.x, float), f, ok, str(res.message), int(res.nit), gmax)


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

    def params(self, form: Form) -> dict[str, np.ndarray]:
        """The samples as a params dict of arrays (for the vectorised closed forms)."""
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
    with L-BFGS (Hoffmann et al. refined every start; the ranking at the start is a good proxy and
    makes a 250-point fit take well under a second). The refined starts are kept in `starts` so a
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
    lN, lD, y = np.log(N), np.log(D), np.log(L)
    opts = dict(LBFGS_OPTIONS, **(options or {}))

    grid = law.grid()
    gf = _grid_objective(law, grid, lN, lD, y, delta)
    order = np.argsort(gf, kind="stable")[:max(1, int(top_k))]
    with single_blas_thread():
        results = [(_minimize(law, grid[i], lN, lD, y, delta, opts), i) for i in order]
    best, _ = min(results, key=lambda r: (not np.isfinite(r[0].fun), r[0].fun))
    starts = [{"start": dict(zip(law.theta_names, map(float, grid[i]))), "start_objective": float(gf[i]),
               "objective": r.fun, "converged": r.converged, "n_iter": r.n_iter,
               "params": {k: float(v) for k, v in law.to_params(r.theta).items()}} for r, i in results]
    params = {k: float(v) for k, v in law.to_params(best.theta).items()}
    # distinct optima among the refined starts: within 0.1% of the best objective but far in parameters
    near = [r for r, _ in results if r.converged and r.fun <= best.fun * (1 + 1e-3) + 1e-15]
    spread = max((float(np.max(np.abs(r.theta - best.theta))) for r in near), default=0.0)
    if spread > 1e-2:
        warnings.append(f"{len(near)} of {len(results)} refined starts reach the best objective within 0.1% "
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
def _fit_chunk(form_name: str, theta0: np.ndarray, lN, lD, y, index_lists, delta: float, options: dict,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Worker: refit each resample (a list of point indices) from `theta0`.
    Returns (thetas (m, k), converged (m,), degenerate (m,))."""
    law = get_form(form_name)
    m = len(index_lists)
    thetas = np.full((m, law.k), np.nan)
    conv = np.zeros(m, bool)
    degen = np.zeros(m, bool)
    # a resample needs as many distinct points as parameters, and at least 3 distinct N and D (or as
    # many as the data have): with 2 values a power law's coefficient and exponent trade off exactly,
    # and the refit runs off along that ridge instead of measuring anything
    need_n, need_d = min(3, np.unique(lN).size), min(3, np.unique(lD).size)
    for j, idx in enumerate(index_lists):
        a, b, c = lN[idx], lD[idx], y[idx]
        distinct = np.unique(np.stack([a, b], 1), axis=0).shape[0]
        if distinct < law.k or np.unique(a).size < need_n or np.unique(b).size < need_d:
            degen[j] = True
            continue
        r = _minimize(law, theta0, a, b, c, delta, options)
        thetas[j], conv[j] = r.theta, r.converged
    return thetas, conv, degen


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
    lN, lD, y = np.log(N), np.log(D), np.log(L)
    idx = resample_runs(groups if groups is not None else range(len(L)), n_resamples, seed)
    theta0 = law.to_theta(fit.params)
    # refits start at the optimum of nearby data: well-posed ones take tens of iterations (measured
    # 60 on average for 250 points), so 1,000 is ample and bounds the cost of a resample that runs off
    opts = dict(LBFGS_OPTIONS, maxiter=1_000, maxfun=2_000, **(options or {}))
    workers = max(1, min(int(workers or default_workers()), n_resamples))
    if workers > 1 and not _can_limit_blas():
        log.warning("threadpoolctl is not installed (%s): bootstrapping in one process, since worker "
                    "processes with their own BLAS thread pools run ~20x slower", EXTRA)
        workers = 1
    n_chunks = 1 if workers == 1 else min(n_resamples, workers * 4)
    bounds = np.linspace(0, n_resamples, n_chunks + 1).astype(int)
    chunks = [idx[bounds[i]:bounds[i + 1]] for i in range(n_chunks)]
    args = [(law.name, theta0, lN, lD, y, c, fit.delta, opts) for c in chunks]
    if workers == 1:
        with single_blas_thread():
            parts = [_fit_chunk(*a) for a in args]
    else:
        # fork where the platform has it: no re-import of the caller's __main__ (spawn would make every
        # script calling this need an `if __name__ == "__main__"` guard)
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_one_blas_thread) as ex:
            parts = list(ex.map(_fit_chunk, *zip(*args)))
    thetas = np.concatenate([p[0] for p in parts])
    conv = np.concatenate([p[1] for p in parts])
    degen = np.concatenate([p[2] for p in parts])
    kept = conv & ~degen
    samples = np.column_stack([np.asarray(v, float) for v in law.to_params(thetas[kept]).values()]) \
        if kept.any() else np.zeros((0, law.k))
    bs = Bootstrap(samples=samples, n_resamples=n_resamples, n_degenerate=int(degen.sum()),
                   n_unconverged=int((~conv & ~degen).sum()), seed=seed, workers=workers,
                   seconds=time.perf_counter() - t0, kept=kept)
    new = len(fit.warnings)
    if bs.n_degenerate:
        fit.warnings.append(f"{bs.n_degenerate} of {n_resamples} bootstrap resamples had fewer distinct points "
                            f"than parameters or fewer than 3 distinct N or D, and were skipped")
    if bs.n_unconverged:
        fit.warnings.append(f"{bs.n_unconverged} of {n_resamples} bootstrap refits did not converge and were dropped")
    if bs.n_kept < max(2, n_resamples // 2):
        fit.warnings.append(f"only {bs.n_kept} of {n_resamples} bootstrap resamples were usable: "
                            f"the intervals rest on few refits")
    for w in fit.warnings[new:]:
        log.warning("%s bootstrap: %s", law.name, w)
    fit.bootstrap = bs
    return bs


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
