"""`run_task_fit`: everything `gerbil fit --task TASK` / `--task-law` does — read the points, fit the two
steps (`gerbil.fit.tasklaw`), bootstrap them, predict, run the leave-the-largest-size-out check, and
write fit.json, fit.md and the plots into one folder.

fit.json's `task_law` holds `loss` (E, A, B, alpha, beta of step 1), `sigmoid` (chance, ceiling, k, L0
of step 2) and `predictions` (params, tokens, loss, metric, metric_low, metric_high per `--predict`);
numbers a fit cannot vouch for are null — step 1's when it did not converge, the sigmoid's and every
predicted metric when step 2 is flat or did not converge — and `status` says why. Beside them: their
`intervals`, `step1`/`step2` (convergence), `bootstrap` and `leave_largest_out`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from gerbil.errors import GerbilError
from gerbil.fit.optim import HUBER_DELTA
from gerbil.fsutil import atomic_write_json, atomic_write_text
from gerbil.fit.report import _g, _iv, _ivs, _jsonable, check_out, data_and_plots_md, header_md
from gerbil.fit.sources import Columns
from gerbil.fit.tasklaw import (TaskLawFit, bootstrap_task_law, fit_task_law, leave_largest_out,
                                sigmoid_intervals)
from gerbil.fit.tasksources import TaskPoints, load_task_points


@dataclass
class TaskLawOptions:
    """Settings of one task-law fit (each one is a flag of `gerbil fit`)."""

    task: str | None = None  # an eval task: its records (runs) and its chance level
    chance: float | None = None  # overrides the task's
    columns: Columns = field(default_factory=Columns)  # CSV columns; `loss` is also the record key for runs
    metric_col: str = "acc"  # CSV column, or the record's metric key for runs
    predict: tuple[tuple[float, float], ...] = ()  # (N, D) points to predict
    bootstrap: int = 1000
    seed: int = 0
    workers: int | None = None
    ci: float = 95.0
    delta: float = HUBER_DELTA  # step 1's Huber δ
    top_k: int = 8
    plots: bool = True

    def check(self) -> None:
        if self.bootstrap < 0:
            raise GerbilError(f"--bootstrap must be 0 (off) or a number of resamples, got {self.bootstrap}")
        if not 0 < self.ci < 100:
            raise GerbilError(f"--ci must be a percentage between 0 and 100, got {self.ci}")
        if not (self.delta > 0 and math.isfinite(self.delta)):
            raise GerbilError(f"--delta must be positive, got {self.delta}")


# ---------------------------------------------------------------------------------------------- JSON
def _loss_block(fit: TaskLawFit) -> dict:
    p = fit.loss.params
    return {k: (p[k] if fit.loss_ok else None) for k in ("E", "A", "B", "alpha", "beta")}


def _sigmoid_block(fit: TaskLawFit) -> dict:
    p, ok = fit.sigmoid.params, fit.sigmoid.converged and not fit.sigmoid.flat
    return {"chance": p["chance"], **{k: (p[k] if ok else None) for k in ("ceiling", "k", "L0")}}


def predictions(fit: TaskLawFit, points: Sequence[tuple[float, float]], ci: float) -> list[dict]:
    """One record per (N, D): the predicted task loss and metric with the metric's bootstrap interval
    (null where the fit cannot vouch for it: `TaskLawFit.status`)."""
    out = []
    for n, d in points:
        loss, metric = (float(x) for x in fit.predict(n, d)) if fit.loss_ok else (None, None)
        iv = fit.metric_interval(n, d, ci) if fit.status == "ok" else None
        out.append({"params": n, "tokens": d, "loss": loss if fit.loss_ok else None,
                    "metric": metric if fit.status == "ok" else None,
                    "metric_low": iv[0] if iv else None, "metric_high": iv[1] if iv else None})
    return out


def _steps(fit: TaskLawFit, points: TaskPoints) -> dict:
    lf, sf = fit.loss, fit.sigmoid
    step1 = {"form": lf.form, "converged": lf.converged, "n_points": lf.n_points, "n_runs": lf.n_runs,
             "points": "each run's final point",
             "convergence": {"message": lf.message, "n_iter": lf.n_iter, "max_abs_gradient": lf.grad_max,
                             "objective": lf.objective, "huber_delta": lf.delta, "seconds": lf.seconds}}
    step1["usable"] = fit.loss_ok
    if not fit.loss_ok:
        step1["unusable_estimate"] = lf.params
    step2 = {"converged": sf.converged, "flat": sf.flat, "n_points": len(points), "points": "all, checkpoints included",
             "metric_span_over_observed_losses": sf.span, "residual_rms": sf.rms,
             "observed_loss_range": [float(points.L.min()), float(points.L.max())],
             "convergence": {"message": sf.message, "n_iter": sf.n_iter, "max_abs_gradient": sf.grad_max,
                             "objective": sf.objective, "huber_delta": sf.delta}}
    if sf.flat or not sf.converged:
        step2["unusable_estimate"] = {k: sf.params[k] for k in ("ceiling", "k", "L0")}
    return {"step1": step1, "step2": step2}


def task_law_record(fit: TaskLawFit, points: TaskPoints, opt: TaskLawOptions, llo: dict) -> dict:
    """fit.json's `task_law` object."""
    bs = fit.loss.bootstrap
    return {
        "task": points.task, "loss_name": points.loss_name, "metric_name": points.metric_name,
        "status": fit.status,
        "loss": _loss_block(fit), "sigmoid": _sigmoid_block(fit),
        "predictions": predictions(fit, opt.predict, opt.ci),
        "intervals": {"loss": {k: _iv(v) for k, v in fit.loss.param_intervals(opt.ci).items()},
                      "sigmoid": {k: _iv(v) for k, v in sigmoid_intervals(fit, opt.ci).items()}},
        **_steps(fit, points),
        "bootstrap": None if bs is None else {
            "resamples": bs.n_resamples, "kept": bs.n_kept, "degenerate_skipped": bs.n_degenerate,
            "unconverged_dropped": bs.n_unconverged, "seed": bs.seed, "workers": bs.workers,
            "seconds": bs.seconds, "unit": "runs (all points of a run together); both steps refitted"},
        "leave_largest_out": llo,
    }


# ------------------------------------------------------------------------------------------- run
def run_task_fit(sources: Sequence[str | Path], out: str | Path, options: TaskLawOptions | None = None) -> dict:
    """Fit the task law to `sources`, write `out`/fit.json, fit.md and the plots; return fit.json's content."""
    t0 = time.perf_counter()
    opt = options or TaskLawOptions()
    opt.check()
    out = check_out(out)
    pts = load_task_points(sources, task=opt.task, columns=opt.columns, metric_col=opt.metric_col,
                           chance=opt.chance)
    fit = fit_task_law(pts, top_k=opt.top_k, delta=opt.delta)
    if opt.bootstrap:
        bootstrap_task_law(fit, pts, n_resamples=opt.bootstrap, seed=opt.seed, workers=opt.workers)
    llo = leave_largest_out(pts, n_resamples=opt.bootstrap, seed=opt.seed, workers=opt.workers, ci=opt.ci,
                            top_k=opt.top_k)
    result: dict[str, Any] = {"task_law": task_law_record(fit, pts, opt, llo)}
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if opt.plots:
        from gerbil.fit import taskplots

        files = taskplots.plot_all(out, fit, pts, opt.predict, llo, opt.ci)
    result.update(
        ci=opt.ci, warnings=pts.notes + fit.warnings, n_points=len(pts), n_runs=len(set(pts.run)),
        metric=f"{pts.metric_name} from {pts.loss_name}",
        settings=_jsonable(asdict(opt) | {"sources": [str(s) for s in sources]}),
        data=pts.records(), skipped=pts.skipped, files=["fit.json", "fit.md"] + files,
        seconds=time.perf_counter() - t0)
    result = _jsonable(result)
    atomic_write_json(out / "fit.json", result, indent=2)  # atomic: a reader never sees half a fit
    atomic_write_text(out / "fit.md", render_task_markdown(result))
    return result


# ------------------------------------------------------------------------------------------ markdown
def _param_table(values: dict, ivs: dict, ci: float) -> list[str]:
    return [f"| parameter | estimate | {ci:g}% interval |", "|---|---|---|"] + \
        [f"| {k} | {_g(v)} | {_ivs(ivs.get(k))} |" for k, v in values.items()]


def _steps_md(t: dict, ci: float) -> list[str]:
    s1, s2 = t["step1"], t["step2"]
    lines = [f"### Step 1: task loss L(N, D) = E + A/N^α + B/D^β ({s1['n_points']} final points of {s1['n_runs']} runs)", ""]
    if s1["usable"]:
        lines += _param_table(t["loss"], t["intervals"]["loss"], ci)
    elif s1["converged"]:
        lines.append(f"**Degenerate**: {t['status']}. No parameters are reported.")
    else:
        lines.append(f"**Did not converge** ({s1['convergence']['message']}; max |gradient| "
                     f"{_g(s1['convergence']['max_abs_gradient'], 2)}): no parameters are reported.")
    lines += ["", f"### Step 2: metric = chance + (ceiling − chance) / (1 + exp(−k·(L0 − L))) "
                  f"({s2['n_points']} points, checkpoints included)", ""]
    lo, hi = s2["observed_loss_range"]
    if s2["flat"]:
        lines.append(f"**The sigmoid is flat**: over the observed task losses ({_g(lo)}–{_g(hi)}) it moves the "
                     f"metric by {_g(s2['metric_span_over_observed_losses'], 2)} (residual RMS "
                     f"{_g(s2['residual_rms'], 2)}). The data do not show where the metric rises, so no sigmoid "
                     f"parameters and no metric predictions are reported (chance {t['sigmoid']['chance']:g}).")
    elif not s2["converged"]:
        lines.append(f"**Did not converge** ({s2['convergence']['message']}): no sigmoid parameters are reported.")
    else:
        lines += _param_table(t["sigmoid"], t["intervals"]["sigmoid"], ci)
        lines.append(f"\nThe fitted metric moves by {_g(s2['metric_span_over_observed_losses'], 3)} over the "
                     f"observed task losses ({_g(lo)}–{_g(hi)}); residual RMS {_g(s2['residual_rms'], 2)}.")
    bs = t["bootstrap"]
    lines += ["", "Bootstrap: " + (f"{bs['kept']} of {bs['resamples']} resamples of runs kept, both steps refitted "
                                   f"({bs['degenerate_skipped']} degenerate, {bs['unconverged_dropped']} unconverged)."
                                   if bs else "off."), ""]
    return lines


def _predictions_md(t: dict, ci: float) -> list[str]:
    if not t["predictions"]:
        return []
    lines = ["### Predictions", "", f"| params | tokens | task loss | metric | {ci:g}% interval |", "|---|---|---|---|---|"]
    for p in t["predictions"]:
        iv = [p["metric_low"], p["metric_high"]] if p["metric_low"] is not None else None
        lines.append(f"| {_g(p['params'], 3)} | {_g(p['tokens'], 3)} | {_g(p['loss'])} | "
                     f"{_g(p['metric']) if p['metric'] is not None else 'not predicted'} | {_ivs(iv)} |")
    if t["status"] != "ok":
        lines.append(f"\nMetrics are not predicted: {t['status']}.")
    return lines + [""]


def _llo_md(llo: dict, ci: float) -> list[str]:
    lines = [f"### Leave the largest size out ({_g(llo['held_out_params'], 3)} parameters)", ""]
    if llo["status"].startswith("not possible"):
        return lines + [f"Check {llo['status']}.", ""]
    if not llo["points"]:
        return lines + [f"Refitted without the largest size: {llo['status']}; no predictions to compare.", ""]
    lines += ["Both steps refitted without the largest size, then asked to predict its final points:", "",
              f"| point | tokens | task loss obs. | pred. | rel. error | metric obs. | pred. | {ci:g}% interval | error |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in llo["points"]:
        iv = [p["metric_low"], p["metric_high"]] if p["metric_low"] is not None else None
        lines.append(f"| {p['name']} | {_g(p['tokens'], 3)} | {_g(p['loss_observed'])} | {_g(p['loss_predicted'])} | "
                     f"{p['loss_error_rel']:+.2%} | {_g(p['metric_observed'])} | {_g(p['metric_predicted'])} | "
                     f"{_ivs(iv)} | {_g(p['metric_error'])} |")
    lines.append(f"\nMean |relative task-loss error| {llo['loss_error_rel_mean_abs']:.2%}; mean |metric error| "
                 + (f"{llo['metric_error_mean_abs']:.3f}." if llo["metric_error_mean_abs"] is not None
                    else f"not available ({llo['status']})."))
    return lines + [""]


def render_task_markdown(r: dict) -> str:
    """fit.md of a task-law fit, from fit.json's content."""
    t, ci = r["task_law"], r["ci"]
    lines = header_md(r, "Task scaling law (two steps)", f"fitted: {r['metric']}", f" Status: **{t['status']}**.",
                      "rows/runs/checkpoints")
    lines += _steps_md(t, ci) + _predictions_md(t, ci) + _llo_md(t["leave_largest_out"], ci)
    lines += data_and_plots_md(r, ["name", "params", "tokens", "task loss", "metric", "final"],
                               lambda p: [p["name"], _g(p["params"], 3), _g(p["tokens"], 3), f"{p['loss']:.4f}",
                                          f"{p['metric']:.4f}", "yes" if p["final"] else ""])
    lines += ["", "The two steps, their assumptions and when not to trust them: docs/fit.md in the gerbil repository.", ""]
    return "\n".join(lines)


def summarize_task(result: dict, out: str) -> str:
    """The few lines `gerbil fit --task` prints."""
    t, ci = result["task_law"], result["ci"]
    lines = [f"task law ({result['metric']}; {result['n_points']} points, {result['n_runs']} runs): {t['status']}"]
    if t["step1"]["usable"]:
        lines.append("  step 1: " + ", ".join(f"{k} {_g(v)}" for k, v in t["loss"].items()))
    if t["sigmoid"]["ceiling"] is not None:
        lines.append("  step 2: " + ", ".join(f"{k} {_g(v)}" for k, v in t["sigmoid"].items()))
    for p in t["predictions"]:
        m = (f"metric {p['metric']:.4f}" + (f" [{p['metric_low']:.4f}, {p['metric_high']:.4f}] ({ci:g}%)"
                                             if p["metric_low"] is not None else "")) if p["metric"] is not None \
            else "metric not predicted"
        lines.append(f"  predict N={_g(p['params'], 3)} D={_g(p['tokens'], 3)}: task loss {_g(p['loss'])}, {m}")
    llo = t["leave_largest_out"]
    if llo["status"].startswith("not possible") or not llo["points"]:
        lines.append(f"  leave-largest-out: {llo['status']}")
    else:
        me = llo["metric_error_mean_abs"]
        lines.append(f"  leave-largest-out ({_g(llo['held_out_params'], 3)} params): task loss off by "
                     f"{llo['loss_error_rel_mean_abs']:.2%}, metric by " + (f"{me:.3f}" if me is not None else "–"))
    if result.get("warnings"):
        lines.append(f"{len(result['warnings'])} warning(s), see fit.md; first: {result['warnings'][0]}")
    lines.append(f"wrote {', '.join(result['files'])} to {out}")
    return "\n".join(lines)
