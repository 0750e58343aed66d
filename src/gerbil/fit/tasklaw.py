"""The two-step task scaling law (Bhagia et al. 2024, "Establishing Task Scaling Laws via
Compute-Efficient Model Ladders"): model size and tokens → task loss → task metric.

Step 1, the task loss of a run trained on D tokens at N parameters, in the Chinchilla form

    L(N, D) = E + A/N^α + B/D^β

fitted exactly as the loss law (`gerbil.fit.laws.fit_law`: summed Huber δ = 1e-3 on log residuals,
L-BFGS-B from the 4,500-start grid) on each run's *final* point only: an intermediate checkpoint of a
run with a decaying learning rate overstates the loss a run trained to that D would reach.

Step 2, the metric (an accuracy) from the task loss, a sigmoid between chance and a ceiling

    metric(L) = chance + (ceiling − chance) / (1 + exp(−k·(L₀ − L))),   ceiling ∈ [chance, 1], k ≥ 0

fitted on *all* points, checkpoints included (the map from loss to accuracy does not care how the loss
was reached), with the same machinery (`gerbil.fit.optim`): summed Huber loss of the metric residuals,
δ = 0.01 (one accuracy point: residuals beyond it — a noisy small eval set — count linearly), L-BFGS-B
with the bounds above from a grid of starts scaled to the observed losses. chance is fixed by the task.

Step 1 is *degenerate* — reported as such, with no numbers — when its optimum is not a law of the loss
falling with N and D: a non-finite or vanishing A or B (an exponent so large that the term is a step), or
α or β outside (0, `MAX_EXPONENT`] (a task loss that rises with size or tokens, as it can for a task whose
text is far from the training corpus, gives a negative one).

A prediction chains both: metric(L(N, D)). Its interval comes from a bootstrap that resamples *runs*
(all points of a run together) and refits both steps on each resample, so the interval carries the
uncertainty of both. A sigmoid is *flat* when, over the observed task losses, it moves the metric by
less than max(0.02, 2 × its residual RMS): the data then do not say where or how steeply the metric
rises, and no metric is predicted.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gerbil.errors import GerbilError
from gerbil.fit.laws import BOOTSTRAP_LBFGS, Bootstrap, LawFit, bootstrap_warnings, fit_law, refit_resample, \
    resample_needs
from gerbil.fit.forms import get_form
from gerbil.fit.optim import HUBER_DELTA, LBFGS_OPTIONS, flat_optimum, map_resamples, minimize, refine_starts, \
    resample_runs
from gerbil.fit.tasksources import TaskPoints

log = logging.getLogger(__name__)

SIGMOID_DELTA = 0.01  # Huber δ on metric residuals: one accuracy point
FLAT_SPAN = 0.02  # a sigmoid moving the metric less than this over the observed losses is flat
STEP1_FORM = "chinchilla"
MAX_EXPONENT = 3.0  # step 1's α, β beyond this (published fits: 0.08-0.4) are a step, not a power law


def step1_problem(loss: LawFit) -> str | None:
    """Why step 1 cannot be used (did not converge, or degenerate: module docstring), or None."""
    if not loss.converged:
        return "step 1 (task loss) did not converge"
    p = loss.params
    if not all(math.isfinite(p[k]) and p[k] > 0 for k in ("A", "B")) or not math.isfinite(p["E"]):
        return (f"step 1 (task loss) is degenerate: A {p['A']:.3g}, B {p['B']:.3g} — the loss does not follow "
                f"E + A/N^α + B/D^β over these runs")
    bad = [f"{k} {p[k]:.3g}" for k in ("alpha", "beta") if not 0 < p[k] <= MAX_EXPONENT]
    if bad:
        return (f"step 1 (task loss) is degenerate: {', '.join(bad)} outside (0, {MAX_EXPONENT:g}] — the task loss "
                f"does not fall as a power law of N and D over these runs")
    return None


def _expit(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^−z) without overflow (and without scipy at import)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, float)))


class Sigmoid:
    """metric = chance + (ceiling − chance)·σ(k·(L₀ − L)): a `gerbil.fit.optim` model with θ = (ceiling,
    k, L₀), the fitted quantity the metric itself, the input the task loss."""

    name = "sigmoid"
    param_names = ("ceiling", "k", "L0")
    k = 3

    def __init__(self, chance: float):
        self.chance = float(chance)
        self.bounds = ((self.chance, 1.0), (0.0, None), (None, None))

    def pred(self, theta: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(metric (n,), ∂metric/∂θ (n, 3))."""
        ceiling, k, L0 = theta
        s = _expit(k * (L0 - L))
        span, ds = ceiling - self.chance, s * (1.0 - s)
        jac = np.stack([s, span * ds * (L0 - L), span * ds * k], axis=1)
        return self.chance + span * s, jac

    def grid_pred(self, grid: np.ndarray, L: np.ndarray) -> np.ndarray:
        c, k, L0 = (grid[:, i:i + 1] for i in range(3))  # each (G, 1)
        return self.chance + (c - self.chance) * _expit(k * (L0 - L))

    def grid(self, L: np.ndarray) -> np.ndarray:
        """Starts scaled to the data: ceilings a quarter to all of the way to 1, transitions from 2× to
        1/32 of the observed loss range wide, centres from two ranges below to one above it."""
        lo, hi = float(np.min(L)), float(np.max(L))
        r = max(hi - lo, 1e-3)
        c = self.chance + (1.0 - self.chance) * np.array([0.25, 0.5, 0.75, 1.0])
        ks = np.array([0.5, 1, 2, 4, 8, 16, 32]) / r
        l0 = np.linspace(lo - 2 * r, hi + r, 9)
        g = np.meshgrid(c, ks, l0, indexing="ij")
        return np.stack([x.ravel() for x in g], axis=1)  # (4·7·9 = 252, 3)

    def to_params(self, theta: np.ndarray) -> dict[str, Any]:
        return {"chance": self.chance, **{n: theta[..., i] for i, n in enumerate(self.param_names)}}

    def to_theta(self, p: dict[str, float]) -> np.ndarray:
        return np.array([p[n] for n in self.param_names], float)

    def predict(self, p: dict[str, Any], L: Any) -> np.ndarray:
        """The metric at task loss L (params may hold arrays: one value per bootstrap sample)."""
        return self.chance + (p["ceiling"] - self.chance) * _expit(p["k"] * (p["L0"] - np.asarray(L, float)))


@dataclass
class SigmoidFit:
    """Step 2: the fitted sigmoid, how it was reached, and whether the data determine it."""

    params: dict[str, float]
    converged: bool
    message: str
    n_iter: int
    grad_max: float
    objective: float
    span: float  # how far the fitted metric moves over the observed task losses
    rms: float  # residual root-mean-square
    delta: float
    warnings: list[str] = field(default_factory=list)
    bootstrap: Bootstrap | None = None

    @property
    def model(self) -> Sigmoid:
        return Sigmoid(self.params["chance"])

    @property
    def flat(self) -> bool:
        return self.span < max(FLAT_SPAN, 2 * self.rms)

    def predict(self, L: Any) -> np.ndarray:
        return self.model.predict(self.params, L)


def fit_sigmoid(L: Sequence[float], M: Sequence[float], chance: float, *, delta: float = SIGMOID_DELTA,
                top_k: int = 8, options: dict | None = None) -> SigmoidFit:
    """Fit step 2, metric(L), on all points (module docstring)."""
    L, M = np.asarray(L, float), np.asarray(M, float)
    if np.unique(L).size < 3:
        raise GerbilError(f"step 2 needs at least 3 distinct task losses, got {np.unique(L).size}")
    model = Sigmoid(chance)
    opts = dict(LBFGS_OPTIONS, **(options or {}))
    best, starts = refine_starts(model, model.grid(L), (L,), M, delta, top_k, opts)
    params = {k: float(v) for k, v in model.to_params(best.theta).items()}
    fitted = model.predict(params, L)
    span = float(abs(model.predict(params, L.min()) - model.predict(params, L.max())))
    rms = float(np.sqrt(np.mean((fitted - M) ** 2)))
    fit = SigmoidFit(params, best.converged, best.message, best.n_iter, best.grad_max, best.fun, span, rms, delta)
    if fit.flat:
        fit.warnings.append(f"the sigmoid is flat: over the observed task losses ({L.min():.4g}-{L.max():.4g}) it "
                            f"moves the metric by {span:.3g}, less than max({FLAT_SPAN}, 2 × residual RMS "
                            f"{rms:.3g}); the data do not say where the metric rises, so no metric is predicted")
    elif not best.converged:
        fit.warnings.append(f"the sigmoid fit did not converge ({best.message}; max|gradient| {best.grad_max:.2g} "
                            f"after {best.n_iter} iterations)")
    n_near, spread = flat_optimum(best, starts)
    if not fit.flat and spread > 1e-2 * max(1.0, float(np.max(np.abs(best.theta)))):
        fit.warnings.append(f"{n_near} of {len(starts)} refined sigmoid starts reach the best objective within "
                            f"0.1% at parameters up to {spread:.2g} apart: ceiling, k and L0 trade off")
    return fit


# ------------------------------------------------------------------------------------------ two steps
@dataclass
class TaskLawFit:
    """Both steps, and (optionally) their joint run bootstrap."""

    loss: LawFit
    sigmoid: SigmoidFit
    n_points: int
    n_runs: int
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """"ok", or why predicted metrics (and, when step 1 is the reason, losses) are withheld."""
        problem = step1_problem(self.loss)
        if problem:
            return problem
        if self.sigmoid.flat:
            return "step 2 sigmoid is flat over the observed task losses"
        if not self.sigmoid.converged:
            return "step 2 (sigmoid) did not converge"
        return "ok"

    @property
    def loss_ok(self) -> bool:
        """Step 1 converged to a law (`step1_problem`): its parameters and predicted losses may be shown."""
        return step1_problem(self.loss) is None

    @property
    def warnings(self) -> list[str]:
        return [f"step 1: {w}" for w in self.loss.warnings] + [f"step 2: {w}" for w in self.sigmoid.warnings]

    def predict(self, N: Any, D: Any) -> tuple[np.ndarray, np.ndarray]:
        """(task loss, metric) at N parameters and D tokens: the point estimates of both steps."""
        loss = self.loss.predict(N, D)
        return loss, self.sigmoid.predict(loss)

    def metric_interval(self, N: float, D: float, ci: float) -> tuple[float, float] | None:
        """The metric's percentile interval at (N, D) over the bootstrap's refits of both steps."""
        bl, bs = self.loss.bootstrap, self.sigmoid.bootstrap
        if bl is None or bs is None:
            return None
        law = self.loss.law
        sig = self.sigmoid.model
        m = sig.predict(bs.params(sig), law.predict(bl.params(law), N, D))
        return self.loss.interval(m, ci)


def check_step1(points: TaskPoints) -> TaskPoints:
    """The final points step 1 fits; fewer than 3 model sizes is a one-line GerbilError."""
    finals = points.subset(points.final)
    sizes = np.unique(finals.N).size
    if sizes < 3:
        raise GerbilError(f"step 1 needs runs of at least 3 model sizes, got {sizes}: the N exponent cannot be "
                          f"fitted (add runs of other sizes)")
    return finals


def fit_task_law(points: TaskPoints, *, top_k: int = 8, delta: float = HUBER_DELTA,
                 sigmoid_delta: float = SIGMOID_DELTA) -> TaskLawFit:
    """Fit both steps on `points` (no bootstrap: see `bootstrap_task_law`)."""
    t0 = time.perf_counter()
    finals = check_step1(points)
    loss = fit_law(finals.N, finals.D, finals.L, form=STEP1_FORM, delta=delta, top_k=top_k, groups=finals.run)
    sig = fit_sigmoid(points.L, points.M, points.chance, delta=sigmoid_delta, top_k=top_k)
    for w in sig.warnings:
        log.warning("task law step 2: %s", w)
    return TaskLawFit(loss, sig, len(points), len(set(points.run)), time.perf_counter() - t0)


def _task_chunk(theta1: np.ndarray, theta2: np.ndarray, chance: float, lN: np.ndarray, lD: np.ndarray,
                lL: np.ndarray, final: np.ndarray, L: np.ndarray, M: np.ndarray, deltas: tuple[float, float],
                options: dict, index_lists: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Worker: refit both steps on each resample (point indices) from the point estimates.
    Returns (step-1 θ (m, 5), step-2 θ (m, 3), converged (m,), degenerate (m,))."""
    law, sig = get_form(STEP1_FORM), Sigmoid(chance)
    m = len(index_lists)
    t1, t2 = np.full((m, law.k), np.nan), np.full((m, sig.k), np.nan)
    conv, degen = np.zeros(m, bool), np.zeros(m, bool)
    need = resample_needs(lN[final], lD[final])
    for j, idx in enumerate(index_lists):
        fi = idx[final[idx]]
        th1, ok1 = refit_resample(law, theta1, lN, lD, lL, fi, need, deltas[0], options)
        if th1 is None or np.unique(L[idx]).size < 3:
            degen[j] = True
            continue
        r2 = minimize(sig, theta2, (L[idx],), M[idx], deltas[1], options)
        t1[j], t2[j], conv[j] = th1, r2.theta, ok1 and r2.converged
    return t1, t2, conv, degen


def bootstrap_task_law(fit: TaskLawFit, points: TaskPoints, *, n_resamples: int = 1000, seed: int = 0,
                       workers: int | None = None) -> None:
    """Resample runs, refit both steps on each resample (in `workers` processes), and store the kept
    refits on `fit.loss.bootstrap` and `fit.sigmoid.bootstrap` (row i of both is the same resample)."""
    if n_resamples < 1:
        raise GerbilError(f"bootstrap needs at least 1 resample, got {n_resamples}")
    if not fit.loss_ok:  # nothing to resample around: the status says why
        log.warning("task law bootstrap skipped: %s", fit.status)
        return
    t0 = time.perf_counter()
    law, sig = fit.loss.law, fit.sigmoid.model
    idx = resample_runs(points.run, n_resamples, seed)
    args = (law.to_theta(fit.loss.params), sig.to_theta(fit.sigmoid.params), sig.chance, np.log(points.N),
            np.log(points.D), np.log(points.L), points.final, points.L, points.M,
            (fit.loss.delta, fit.sigmoid.delta), BOOTSTRAP_LBFGS)
    parts, workers = map_resamples(_task_chunk, args, idx, workers)
    t1, t2, conv, degen = (np.concatenate([p[i] for p in parts]) for i in range(4))
    kept = conv & ~degen
    common = dict(n_resamples=n_resamples, n_degenerate=int(degen.sum()), n_unconverged=int((~conv & ~degen).sum()),
                  seed=seed, workers=workers, seconds=time.perf_counter() - t0, kept=kept)
    s1 = np.column_stack([np.asarray(v, float) for v in law.to_params(t1[kept]).values()]) if kept.any() \
        else np.zeros((0, law.k))
    fit.loss.bootstrap = Bootstrap(samples=s1, **common)
    fit.sigmoid.bootstrap = Bootstrap(samples=t2[kept], **common)
    new = bootstrap_warnings(fit.loss.bootstrap, "fewer than 3 distinct sizes, token counts or task losses")
    fit.loss.warnings += new
    for w in new:
        log.warning("task law bootstrap: %s", w)


def sigmoid_intervals(fit: TaskLawFit, ci: float) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals of ceiling, k and L0 over the bootstrap (None without one)."""
    bs = fit.sigmoid.bootstrap
    if bs is None:
        return {k: None for k in Sigmoid.param_names}
    return {k: fit.loss.interval(v, ci) for k, v in bs.params(fit.sigmoid.model).items()}


# ------------------------------------------------------------------------------------ trust checks
def leave_largest_out(points: TaskPoints, *, n_resamples: int, seed: int, workers: int | None, ci: float,
                      top_k: int = 8) -> dict:
    """Fit both steps without the largest model size, predict that size's final points, and report the
    errors: how far the law extrapolates one size up. Always returns a record; `status` says why
    there are no numbers when the check cannot run."""
    n_max = float(np.max(points.N))
    train = points.subset(points.N < n_max)
    held = points.subset((points.N == n_max) & points.final)
    out: dict[str, Any] = {"held_out_params": n_max, "n_train_points": len(train), "points": []}
    finals = train.subset(train.final) if len(train) else train
    sizes = np.unique(finals.N).size if len(finals) else 0
    if sizes < 3:
        out["status"] = (f"not possible: without the largest size ({n_max:,.0f} parameters) {sizes} size(s) remain, "
                         f"and step 1 needs 3 (run at least 4 sizes)")
        return out
    try:
        fit = fit_task_law(train, top_k=top_k)
        if n_resamples:
            bootstrap_task_law(fit, train, n_resamples=n_resamples, seed=seed, workers=workers)
    except GerbilError as e:
        out["status"] = f"not possible: {e}"
        return out
    out["status"] = fit.status
    out["warnings"] = fit.warnings
    if not fit.loss_ok:
        return out
    loss_hat, metric_hat = fit.predict(held.N, held.D)
    show_metric = fit.status == "ok"
    for i in range(len(held)):
        iv = fit.metric_interval(held.N[i], held.D[i], ci) if show_metric else None
        out["points"].append({
            "name": held.name[i], "params": float(held.N[i]), "tokens": float(held.D[i]),
            "loss_observed": float(held.L[i]), "loss_predicted": float(loss_hat[i]),
            "loss_error_rel": float(loss_hat[i] / held.L[i] - 1.0),
            "metric_observed": float(held.M[i]),
            "metric_predicted": float(metric_hat[i]) if show_metric else None,
            "metric_low": iv[0] if iv else None, "metric_high": iv[1] if iv else None,
            "metric_error": float(metric_hat[i] - held.M[i]) if show_metric else None})
    pts = out["points"]
    out["loss_error_rel_mean_abs"] = float(np.mean([abs(p["loss_error_rel"]) for p in pts]))
    out["metric_error_mean_abs"] = float(np.mean([abs(p["metric_error"]) for p in pts])) if show_metric else None
    return out


def parse_predict(text: str) -> tuple[float, float]:
    """(N, D) from `--predict N:D` (e.g. 2.8e9:3e11, or 2.8B:300B); anything else is a one-line error."""
    from gerbil.fit.sources import _number

    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        n, d = _number(parts[0]), _number(parts[1])
    except ValueError:
        raise GerbilError(f"--predict expects N:D (parameters:tokens) such as 2.8e9:3e11, got {text!r}") from None
    if not (math.isfinite(n) and math.isfinite(d) and n > 0 and d > 0):
        raise GerbilError(f"--predict expects positive N:D such as 2.8e9:3e11, got {text!r}")
    return n, d
