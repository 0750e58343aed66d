"""`run_fit`: everything `gerbil fit` does — read the points, fit (approaches 3, 2, 1; forms; counts),
bootstrap, and write fit.json, fit.md and the plots into one folder.

fit.json's top level holds the primary approach-3 fit's point estimates (E, A, B, alpha, beta for the
Chinchilla form), `intervals`, `compute_optimal`, `converged`, `warnings`, `settings` and the `data`
used; `law` is the block the planner reads (`gerbil plan --fit fit.json`); `fits` lists every
(form, parameter count) fitted; `param_count_comparison`, `approach2` and `approach1` appear when they
apply. The primary fit is the first form asked for at the first count asked for (total for `both`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gerbil.errors import GerbilError
from gerbil.fsutil import atomic_write_json, atomic_write_text, read_json_object
from gerbil.fsutil import json_safe as _jsonable  # strict JSON, numpy included (the one helper)
from gerbil.fit.laws import HUBER_DELTA, LawFit, allocation, bootstrap_law, fit_law, get_form
from gerbil.fit.sources import Columns, Dataset, load_points, read_curves
from gerbil.units import DEFAULT_SEQ_LEN

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (1e16, 1e17, 1e18, 1e19, 1e20, 1e21)


@dataclass
class FitOptions:
    """Settings of one `gerbil fit` (each one is a flag of the command)."""

    metric: str = "val_loss"  # for run directories: val_loss, train_loss, TASK:METRIC
    columns: Columns = field(default_factory=Columns)
    params: str = "total"  # total | non_embedding | both
    flops: str = "auto"  # auto | 6nd | exact | column (approaches 1-2 and the exact frontier)
    forms: tuple[str, ...] = ("chinchilla",)
    approaches: tuple[int, ...] | None = None  # None: 3, plus 2 and 1 where the data allow
    bootstrap: int = 1000
    seed: int = 0
    workers: int | None = None
    ci: float = 95.0
    delta: float = HUBER_DELTA
    top_k: int = 8
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    flops_tol: float = 0.1
    curve_metric: str = "loss"
    plots: bool = True

    def check(self) -> None:
        if self.params not in ("total", "non_embedding", "both"):
            raise GerbilError(f"--params must be total, non_embedding or both, got {self.params!r}")
        for f in self.forms:
            get_form(f)
        if self.approaches is not None and not set(self.approaches) <= {1, 2, 3}:
            raise GerbilError(f"approaches are 1, 2 and 3, got {sorted(self.approaches)}")
        if self.bootstrap < 0:
            raise GerbilError(f"--bootstrap must be 0 (off) or a number of resamples, got {self.bootstrap}")
        if not 0 < self.ci < 100:
            raise GerbilError(f"--ci must be a percentage between 0 and 100, got {self.ci}")
        if any(not (b > 0 and math.isfinite(b)) for b in self.budgets):
            raise GerbilError("--budgets must be positive FLOP counts")
        if self.top_k < 1:
            raise GerbilError(f"--top-k must be at least 1, got {self.top_k}")
        if not (self.flops_tol > 0 and math.isfinite(self.flops_tol)):
            raise GerbilError(f"--flops-tol must be a positive number, got {self.flops_tol}")
        task, sep, name = self.metric.partition(":")
        if self.metric not in ("val_loss", "train_loss") and not (sep and task and name):
            raise GerbilError(f"unknown --metric {self.metric!r} (val_loss, train_loss, or TASK:METRIC such as "
                              f"hellaswag:acc)")

    def check_sources(self, sources: Sequence[str | Path], ds: Dataset) -> None:
        """What the flags ask of the data: --metric names a run's value (a CSV's is --loss-col), and
        --flops column needs the column on every point."""
        if self.metric != "val_loss" and all(Path(s).is_file() for s in sources):
            raise GerbilError(f"--metric {self.metric} applies to run directories; a CSV's loss is its "
                              f"--loss-col column")
        if self.flops == "column":
            ds.flops("column")  # one line when a point has no flops value


def _iv(x: tuple[float, float] | None) -> list[float] | None:
    return [float(x[0]), float(x[1])] if x is not None else None


def _fit_record(fit: LawFit, count: str, budgets: Sequence[float], ci: float) -> dict:
    """One approach-3 fit as JSON."""
    bs = fit.bootstrap
    return {
        "form": fit.form, "param_count": count, "params": fit.params,
        "intervals": {k: _iv(v) for k, v in fit.param_intervals(ci).items()},
        "converged": fit.converged,
        "convergence": {"message": fit.message, "n_iter": fit.n_iter, "max_abs_gradient": fit.grad_max,
                        "objective": fit.objective, "huber_delta": fit.delta, "seconds": fit.seconds,
                        "refined_starts": fit.starts},
        "bootstrap": None if bs is None else {
            "resamples": bs.n_resamples, "kept": bs.n_kept, "degenerate_skipped": bs.n_degenerate,
            "unconverged_dropped": bs.n_unconverged, "seed": bs.seed, "workers": bs.workers,
            "seconds": bs.seconds, "unit": "runs (all points of a run together)"},
        "compute_optimal": _jsonable(allocation(fit, budgets, ci)),
        "warnings": list(fit.warnings),
    }


# ----------------------------------------------------------------------------- frontier, exact FLOPs
def exact_frontier(fit: LawFit, count: str, n_budgets: int = 25, seq_len: int = DEFAULT_SEQ_LEN) -> dict:
    """The compute-optimal shape per budget when compute is the exact per-token count
    (`gerbil.plan.flops_per_token`: non-embedding + head + attention), over the ladder and the shapes
    between its rungs — where 6·N·D and the real cost of a tiny model disagree most (the embedding
    costs no FLOPs, the head and attention do). Budgets whose best shape is the smallest or largest
    of the family are reported but not used for the exponent (the optimum may lie outside)."""
    from gerbil.fit.isoflop import shape_family
    from gerbil.plan import flops_per_token

    fam = shape_family(per_gap=4)
    fpt = np.array([flops_per_token(m, seq_len) for m in fam], float)
    Ntot = np.array([m.n_params("total") for m in fam], float)
    Nfit = np.array([m.n_params(count) for m in fam], float)
    # budgets spanning the family: the smallest model at A/4 up to the largest at E×4
    lo = fpt[0] * Ntot[0] * 5
    hi = fpt[-1] * Ntot[-1] * 1136
    rows, interior = [], []
    for C in np.geomspace(lo, hi, n_budgets):
        D = C / fpt
        L = fit.predict(Nfit, D)
        i = int(np.argmin(L))
        inside = 0 < i < len(fam) - 1
        rows.append({"flops": float(C), "shape": fam[i].name, "params": float(Ntot[i]),
                     "params_fit_count": float(Nfit[i]), "tokens": float(D[i]),
                     "tokens_per_param": float(D[i] / Ntot[i]), "loss": float(L[i]), "interior": inside})
        if inside:
            interior.append(rows[-1])
    out: dict[str, Any] = {"convention": "C = flops_per_token(model) × D over the ladder and shapes between",
                           "budgets": rows}
    if len({r["shape"] for r in interior}) >= 2:
        c = np.log([r["flops"] for r in interior])
        out["a_total_params"] = float(np.polyfit(c, np.log([r["params"] for r in interior]), 1)[0])
        out["b"] = float(np.polyfit(c, np.log([r["tokens"] for r in interior]), 1)[0])
    return out


def compare_counts(fit_total: LawFit, fit_ne: LawFit, ci: float) -> dict:
    """Compute-optimal tokens per total parameter at each ladder size under the total-count fit
    (C = 6·N_total·D, Hoffmann et al.) and the non-embedding fit (C = 6·N_non-emb·D, Kaplan et al.),
    and their ratio, with intervals from paired bootstrap resamples (both fits saw the same ones)."""
    from gerbil.model.config import SIZES

    lt, ln = fit_total.law, fit_ne.law
    pair = None
    if fit_total.bootstrap is not None and fit_ne.bootstrap is not None \
            and fit_total.bootstrap.n_resamples == fit_ne.bootstrap.n_resamples:
        ft, fn = fit_total.bootstrap.full(), fit_ne.bootstrap.full()
        ok = np.isfinite(ft).all(1) & np.isfinite(fn).all(1)
        if ok.sum() >= 2:
            pair = ({k: ft[ok, i] for i, k in enumerate(lt.param_names)},
                    {k: fn[ok, i] for i, k in enumerate(ln.param_names)})
    rows = []
    for name, spec in SIZES.items():
        m = spec.model_config()
        nt, ne = m.n_params("total"), m.n_params("non_embedding")
        rt = float(lt.optimal_tokens(fit_total.params, nt)) / nt
        rn = float(ln.optimal_tokens(fit_ne.params, ne)) / nt
        row = {"size": name, "params": nt, "non_embedding_params": ne, "embedding_share": 1 - ne / nt,
               "tokens_per_param_total_fit": rt, "tokens_per_param_non_embedding_fit": rn, "factor": rn / rt}
        if pair is not None:
            st = lt.optimal_tokens(pair[0], nt) / nt
            sn = ln.optimal_tokens(pair[1], ne) / nt
            row["tokens_per_param_total_fit_interval"] = _iv(fit_total.interval(st, ci))
            row["tokens_per_param_non_embedding_fit_interval"] = _iv(fit_ne.interval(sn, ci))
            row["factor_interval"] = _iv(fit_total.interval(sn / st, ci))
        rows.append(row)
    return {"what": "tokens per total parameter at which each ladder size is compute-optimal: total-count fit "
                    "(C = 6·N_total·D) vs non-embedding fit (C = 6·N_non-embedding·D); factor = non-emb / total",
            "sizes": rows}


# ------------------------------------------------------------------------------------------- out folder
FIT_FILES = ("fit.json", "fit.md")


def check_out(out: str | Path) -> Path:
    """`out` as a folder `gerbil fit` may write into, checked before any fitting: a file there is refused,
    and so is a folder whose fit.json / fit.md are not a gerbil fit (a fit.json gerbil wrote: an object
    with its `settings` and `data`) — the user's own files are never replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GerbilError(f"--out {out} is a file: give a folder for fit.json, fit.md and the plots")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise GerbilError(f"--out {out}: {parent} is a file, not a folder")
            break
    present = [name for name in FIT_FILES if (out / name).exists()]
    if present:
        own = read_json_object(out / "fit.json")
        if own is None or not {"settings", "data"} <= set(own) or (out / "fit.md").is_dir():
            raise GerbilError(f"--out {out} holds {' and '.join(present)} that gerbil fit did not write: "
                              f"choose another folder (nothing was replaced)")
    return out


# ------------------------------------------------------------------------------------------- run_fit
def run_fit(sources: Sequence[str | Path], out: str | Path, options: FitOptions | None = None) -> dict:
    """Fit the sources, write `out`/fit.json, fit.md and the plots; return fit.json's content."""
    t0 = time.perf_counter()
    opt = options or FitOptions()
    opt.check()
    out = check_out(out)
    ds = load_points(sources, opt.metric, opt.columns)
    opt.check_sources(sources, ds)
    counts = ["total", "non_embedding"] if opt.params == "both" else [opt.params]
    approaches = set(opt.approaches) if opt.approaches is not None else None
    warnings: list[str] = list(ds.notes)

    result: dict[str, Any] = {}
    fits = _approach3(ds, counts, opt, result, warnings) if approaches is None or 3 in approaches else []
    iso_fits, flops_conv = _approach2(ds, counts, opt, approaches, result) \
        if approaches is None or 2 in approaches else ({}, None)
    env_fits, curves_used = _approach1(sources, ds, counts, opt, approaches, result) \
        if approaches is None or 1 in approaches else ({}, [])
    if not fits and not iso_fits and not env_fits:
        raise GerbilError("nothing was fitted (ask for approach 3, or give data for approaches 1-2)")

    # --- files
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if opt.plots:
        files = _plots(out, ds, fits, iso_fits, env_fits, curves_used, counts, opt)
    result.update(
        warnings=warnings,
        n_points=len(ds), n_runs=len(set(ds.groups)), metric=ds.metric,
        settings=_jsonable({k: v for k, v in asdict(opt).items()} | {"sources": [str(s) for s in sources],
                                                                     "flops_convention_used": flops_conv}),
        data=ds.records(), skipped=ds.skipped, files=["fit.json", "fit.md"] + files,
        seconds=time.perf_counter() - t0,
    )
    result = _jsonable(result)
    atomic_write_json(out / "fit.json", result, indent=2)  # atomic: a reader never sees half a fit
    atomic_write_text(out / "fit.md", render_markdown(result))
    return result


def _approach3(ds: Dataset, counts: list[str], opt: FitOptions, result: dict,
               warnings: list[str]) -> list[tuple[str, str, LawFit]]:
    """Approach 3 for every (form, count), on the same resamples for all (one seed, one set of runs); fill
    `result`'s primary-fit keys, `fits`, `param_count_comparison`; add the fits' warnings."""
    D, L, groups = ds.D, ds.L, ds.groups
    fits: list[tuple[str, str, LawFit]] = []
    for form in opt.forms:
        for count in counts:
            N = ds.N(count)
            fit = fit_law(N, D, L, form=form, delta=opt.delta, top_k=opt.top_k, groups=groups)
            log.info("%s fit (%s params): %s in %.2f s", form, count, fit.params, fit.seconds)
            if opt.bootstrap:
                bootstrap_law(fit, N, D, L, groups=groups, n_resamples=opt.bootstrap, seed=opt.seed,
                              workers=opt.workers)
            fits.append((form, count, fit))
    if not fits:
        return fits
    form, count, primary = fits[0]
    result.update({k: v for k, v in primary.params.items()})
    rec = _fit_record(primary, count, opt.budgets, opt.ci)
    result.update(intervals=rec["intervals"], ci=opt.ci, compute_optimal=rec["compute_optimal"],
                  converged=primary.converged, convergence=rec["convergence"])
    result["law"] = {"form": form, "params": primary.params, "param_count": count,
                     "converged": primary.converged, "metric": ds.metric}
    for f, c, fit in fits:
        warnings += [f"{f}/{c}: {w}" if len(fits) > 1 else w for w in fit.warnings]
    result["fits"] = []
    for _f, c, fit in fits:
        r = _fit_record(fit, c, opt.budgets, opt.ci)
        r["frontier_exact_flops"] = exact_frontier(fit, c)
        result["fits"].append(r)
    by = {(f, c): fit for f, c, fit in fits}
    if opt.params == "both":
        result["param_count_comparison"] = {
            f: compare_counts(by[(f, "total")], by[(f, "non_embedding")], opt.ci) for f in opt.forms}
    return fits


def _approach2(ds: Dataset, counts: list[str], opt: FitOptions, approaches: set[int] | None,
               result: dict) -> tuple[dict, str | None]:
    """Approach 2 (IsoFLOP profiles) per count into `result["approach2"]`; (fits by count, FLOPs
    convention). Not applicable is recorded unless approach 2 was asked for by name."""
    from gerbil.fit.isoflop import isoflop_fit

    flops_conv = None

    def fit_one(count: str):
        nonlocal flops_conv
        C, flops_conv = ds.flops(opt.flops, count)
        iso = isoflop_fit(ds.N(count), ds.D, ds.L, C, tol=opt.flops_tol, ci=opt.ci)
        return iso, dict(flops_convention=flops_conv, **iso.to_dict())

    result["approach2"] = section = {}
    iso_fits = _per_count(counts, fit_one, approaches is not None, section)
    return iso_fits, flops_conv


def _approach1(sources: Sequence[str | Path], ds: Dataset, counts: list[str], opt: FitOptions,
               approaches: set[int] | None, result: dict) -> tuple[dict, list]:
    """Approach 1 (training-curve envelope) per count into `result["approach1"]`; (fits by count, the
    curves used)."""
    from gerbil.fit.envelope import envelope_fit

    dirs = [s for s in sources if Path(s).is_dir()]
    curves = (read_curves(dirs, opt.curve_metric) if dirs else []) + ds.curves()
    conv = "6nd" if opt.flops == "6nd" else "exact"

    def fit_one(count: str):
        env = envelope_fit(curves, kind=count, convention=conv)
        return env, env.to_dict()

    result["approach1"] = section = {}
    env_fits = _per_count(counts, fit_one, approaches is not None, section)
    return env_fits, (curves if env_fits else [])


def _per_count(counts: list[str], fit_one, strict: bool, section: dict) -> dict:
    """`fit_one(count)` → (fit, its record) for each parameter count; the fits by count. A count the
    approach does not apply to is recorded in `section` with its reason, or raises when `strict` (the
    approach was asked for by name)."""
    fits: dict = {}
    for count in counts:
        try:
            fit, record = fit_one(count)
        except GerbilError as e:
            if strict:
                raise
            section[count] = {"applicable": False, "reason": str(e)}
            continue
        fits[count] = fit
        section[count] = dict(applicable=True, **record)
    return fits


def _plots(out: Path, ds: Dataset, fits, iso_fits, env_fits, curves, counts, opt: FitOptions) -> list[str]:
    from gerbil.fit import plots

    files = []
    sfx = lambda c: "" if len(counts) == 1 else f"_{c}"  # noqa: E731
    for form, count, fit in fits:
        if form != opt.forms[0]:
            continue
        N = ds.N(count)
        plots.plot_contours(out / f"contours{sfx(count)}.png", fit, N, ds.D, ds.L, count)
        plots.plot_residuals(out / f"residuals{sfx(count)}.png", fit, N, ds.D, ds.L, count)
        files += [f"contours{sfx(count)}.png", f"residuals{sfx(count)}.png"]
    if fits or iso_fits or env_fits:
        C = np.geomspace(1e14, max(opt.budgets + (1e19,)), 60)
        count0 = counts[0]
        plots.plot_frontier(out / "frontier.png", [(f"{f}, {c.replace('_', '-')} params", fit) for f, c, fit in fits],
                            C, iso_fits.get(count0), env_fits.get(count0), opt.ci)
        files.append("frontier.png")
    for count, iso in iso_fits.items():
        plots.plot_isoflop(out / f"isoflop{sfx(count)}.png", iso, ds.N(count), ds.L)
        files.append(f"isoflop{sfx(count)}.png")
    if env_fits:
        from gerbil.fit.envelope import curve_flops_per_token

        count = next(iter(env_fits))
        conv = "6nd" if opt.flops == "6nd" else "exact"
        fpts = [curve_flops_per_token(c, count, conv)[0] for c in curves]
        plots.plot_envelope(out / "envelope.png", env_fits[count], curves, fpts)
        files.append("envelope.png")
    return files


# ------------------------------------------------------------------------------------------ markdown
def _g(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _ivs(iv: Any) -> str:
    return f"[{_g(iv[0])}, {_g(iv[1])}]" if iv else "–"


def header_md(r: dict, title: str, fitted: str, status: str = "", skipped_what: str = "rows/runs") -> list[str]:
    """fit.md's opening: the title, how many points of which sources gave what, what was skipped, the
    warnings."""
    lines = [f"# {title}", "", f"{r['n_points']} points from {r['n_runs']} runs; {fitted}; "
                               f"sources: {', '.join(r['settings']['sources'])}.{status}", ""]
    if r.get("skipped"):
        lines += [f"Skipped {len(r['skipped'])} {skipped_what}: "
                  + "; ".join(f"{s.get('name')} ({s['reason']})" for s in r["skipped"][:10]), ""]
    lines += [f"> **Warning:** {w}" for w in r.get("warnings", [])]
    return lines + ([""] if r.get("warnings") else [])


def render_markdown(r: dict) -> str:
    """fit.md from fit.json's content."""
    from gerbil.plan import fmt_flops, fmt_tokens

    lines = header_md(r, "Scaling-law fit", f"fitted quantity: {r['metric']}")
    ci = r["settings"]["ci"]
    for f in r.get("fits", []):
        conv = f["convergence"]
        lines += [f"## Approach 3: {f['form']} form, {f['param_count'].replace('_', '-')} parameters", "",
                  f"| parameter | estimate | {ci:g}% interval |", "|---|---|---|"]
        lines += [f"| {k} | {_g(v)} | {_ivs(f['intervals'].get(k))} |" for k, v in f["params"].items()]
        bs = f["bootstrap"]
        lines += ["", f"Converged: **{'yes' if f['converged'] else 'NO'}** ({conv['message']}; {conv['n_iter']} "
                      f"iterations; max |gradient| {_g(conv['max_abs_gradient'], 2)}; "
                      f"Huber δ {conv['huber_delta']:g}; "
                      f"objective {_g(conv['objective'])}).",
                  "Bootstrap: " + (f"{bs['kept']} of {bs['resamples']} resamples of runs kept "
                                   f"({bs['degenerate_skipped']} degenerate, {bs['unconverged_dropped']} unconverged)."
                                   if bs else "off."), ""]
        co = f["compute_optimal"]
        lines += [f"Compute-optimal allocation (C = 6·N·D): N_opt ∝ C^{_g(co['a'])} {_ivs(co.get('a_interval'))}, "
                  f"D_opt ∝ C^{_g(co['b'])} {_ivs(co.get('b_interval'))}.", "",
                  "| FLOPs | N_opt | D_opt | tokens/param | predicted loss |", "|---|---|---|---|---|"]
        for b in co["budgets"]:
            lines.append(f"| {fmt_flops(b['flops'])} | {_g(b['N_opt'], 3)} {_ivs(b.get('N_opt_interval'))} | "
                         f"{_g(b['D_opt'], 3)} | {_g(b['tokens_per_param'], 3)} "
                         f"{_ivs(b.get('tokens_per_param_interval'))} | {_g(b['loss'])} |")
        fe = f.get("frontier_exact_flops") or {}
        if fe.get("a_total_params") is not None:
            lines += ["", f"With exact FLOPs per token (non-embedding + head + attention) over the ladder's shapes, "
                          f"the frontier's N_opt (total params) ∝ C^{_g(fe['a_total_params'])}, "
                          f"D_opt ∝ C^{_g(fe['b'])}."]
        lines.append("")
    for form, cmp in (r.get("param_count_comparison") or {}).items():
        lines += [f"## Total vs non-embedding counts ({form})", "", cmp["what"] + ".", "",
                  "| size | params | embedding share | tok/param (total fit) | tok/param (non-emb fit) | factor |",
                  "|---|---|---|---|---|---|"]
        for s in cmp["sizes"]:
            lines.append(f"| {s['size']} | {s['params']:,} | {s['embedding_share']:.0%} | "
                         f"{_g(s['tokens_per_param_total_fit'], 3)} "
                         f"{_ivs(s.get('tokens_per_param_total_fit_interval'))} | "
                         f"{_g(s['tokens_per_param_non_embedding_fit'], 3)} "
                         f"{_ivs(s.get('tokens_per_param_non_embedding_fit_interval'))} | "
                         f"{_g(s['factor'], 3)} {_ivs(s.get('factor_interval'))} |")
        lines.append("")
    for key, title in (("approach2", "Approach 2: IsoFLOP profiles"),
                       ("approach1", "Approach 1: training-curve envelope")):
        for count, a in (r.get(key) or {}).items():
            lines += [f"## {title} ({count.replace('_', '-')} parameters)", ""]
            if not a.get("applicable"):
                lines += [f"Not applicable: {a['reason']}", ""]
                continue
            n, d = a["N_opt"], a["D_opt"]
            lines += [f"N_opt ∝ C^{_g(n['exponent'])} {_ivs(n.get('exponent_interval'))}, "
                      f"D_opt ∝ C^{_g(d['exponent'])} {_ivs(d.get('exponent_interval'))}"
                      + (f" (FLOPs: {a.get('flops_convention')})" if a.get("flops_convention") else "") + "."]
            if key == "approach2":
                lines += ["", "| FLOPs | points | N_opt | D_opt | min loss | status |", "|---|---|---|---|---|---|"]
                for b in a["budgets"]:
                    lines.append(f"| {fmt_flops(b['flops'])} | {b['n_points']} | {_g(b.get('N_opt'), 3)} | "
                                 f"{_g(b.get('D_opt'), 3)} | {_g(b.get('loss_min'))} | {b['status']} |")
            else:
                lines.append(f"Runs on the envelope: {', '.join(a['runs_on_envelope'])}.")
            lines += [f"Note: {n}" for n in a.get("notes", [])] + [""]
    ne = lambda p: f"{int(p['non_embedding_params']):,}" if p.get("non_embedding_params") else "–"  # noqa: E731
    lines += data_and_plots_md(r, ["name", "params", "non-emb params", "tokens", "loss"],
                               lambda p: [p["name"], f"{int(p['params']):,}", ne(p), fmt_tokens(int(p["tokens"])),
                                          f"{p['loss']:.4f}"])
    lines += ["", "Formulas, counting conventions and caveats: docs/fit.md in the gerbil repository.", ""]
    return "\n".join(lines)


def data_and_plots_md(r: dict, header: list[str], cells: Any, limit: int = 200) -> list[str]:
    """fit.md's closing sections: the first `limit` points of fit.json's `data` as a table (`cells(point)`
    gives a row's cells under `header`), then the PNGs written."""
    lines = ["## Data", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells(p)) + " |" for p in r["data"][:limit]]
    if len(r["data"]) > limit:
        lines.append(f"| … {len(r['data']) - limit} more in fit.json |" + " |" * (len(header) - 1))
    pngs = [f for f in r.get("files", []) if f.endswith(".png")]
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in pngs]
    return lines
