"""The figures of `gerbil fit` (PNG, matplotlib on the headless Agg backend).

    contours.png   the data in (N, D), coloured by loss, with the fitted iso-loss contours, the
                   compute-optimal frontier and the class lines D = ratio × N (A 20 … E 284)
    frontier.png   N_opt(C): approach 3 (with its bootstrap band), approach 2 and 1 points, the class
                   lines N = √(C / (6·ratio)) and the ladder's sizes
    isoflop.png    approach 2: loss against N per FLOP budget, the parabolas and their minima
    envelope.png   approach 1: the training curves against FLOPs and their lower envelope
    residuals.png  log residuals of the approach-3 fit against N (structure = the form misfits)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gerbil.fit._deps import pyplot
from gerbil.model.config import SIZES

DPI = 110


def _classes() -> dict[str, int]:
    from gerbil.plan import CLASSES

    return CLASSES


def _save(fig: Any, path: Path) -> Path:
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    for ax in fig.axes:  # log axes spanning less than a decade label their minor ticks, which collide
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())
        if ax.get_yscale() == "log":
            ax.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_contours(path: Path, fit: Any, N: np.ndarray, D: np.ndarray, L: np.ndarray, count: str) -> Path:
    """Data and fitted iso-loss contours in (N, D)."""
    plt = pyplot()
    law = fit.law
    fig, ax = plt.subplots(figsize=(7, 5.2))
    n0, n1 = N.min() / 3, N.max() * 3
    d0, d1 = D.min() / 3, D.max() * 3
    gn, gd = np.meshgrid(np.geomspace(n0, n1, 160), np.geomspace(d0, d1, 160))
    gl = law.predict(fit.params, gn, gd)
    levels = np.unique(np.round(np.quantile(gl, np.linspace(0.03, 0.97, 12)), 2))
    cs = ax.contour(gn, gd, gl, levels=levels, cmap="viridis", linewidths=0.8)
    ax.clabel(cs, fontsize=7, fmt="%.2f")
    sc = ax.scatter(N, D, c=L, cmap="viridis", edgecolors="k", linewidths=0.5, s=28, zorder=3)
    fig.colorbar(sc, ax=ax, label="observed loss")
    nn = np.geomspace(n0, n1, 100)
    with np.errstate(all="ignore"):
        ax.plot(nn, law.optimal_tokens(fit.params, nn), "r-", lw=1.5, label="compute-optimal (C = 6ND)")
    if count == "total":
        for c, r in _classes().items():
            ax.plot(nn, r * nn, ":", color="0.5", lw=0.8)
            x = min(n1, d1 / r) / 1.25  # label inside the axes, just before the line leaves them
            if r * x > d0:
                ax.annotate(c, (x, r * x), fontsize=8, color="0.35", xytext=(-4, 2), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlim=(n0, n1), ylim=(d0, d1), xlabel=f"N ({count.replace('_', '-')} parameters)",
           ylabel="D (tokens)", title=f"{fit.form} fit: iso-loss contours" +
           (" and classes D = ratio × N" if count == "total" else ""))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_frontier(path: Path, fits: Sequence[tuple[str, Any]], budgets: np.ndarray, iso: Any = None,
                  env: Any = None, ci: float = 95.0) -> Path:
    """N_opt(C) of each approach-3 fit (label, LawFit), approach 2/1 points, class lines, ladder sizes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.2))
    C = np.asarray(budgets, float)
    for i, (label, fit) in enumerate(fits):
        law = fit.law
        color = f"C{i}"
        ax.plot(C, law.optimal_n(fit.params, C), "-", color=color, lw=1.6, label=f"approach 3: {label}")
        if fit.bootstrap is not None and fit.bootstrap.n_kept >= 2:
            s = fit.bootstrap.params(law)
            curves = np.array([law.optimal_n(s, c) for c in C])  # (budgets, samples)
            lo, hi = np.nanpercentile(curves, [50 - ci / 2, 50 + ci / 2], axis=1)
            ax.fill_between(C, lo, hi, color=color, alpha=0.15, lw=0)
    if iso is not None:
        ok = [b for b in iso.budgets if b["status"] == "ok"]
        ax.plot([b["flops"] for b in ok], [b["N_opt"] for b in ok], "s", color="k", ms=6,
                label="approach 2 (IsoFLOP minima)")
    if env is not None:
        ax.plot(env.flops, env.N, ".", color="C3", ms=3, alpha=0.6, label="approach 1 (envelope)")
    for c, r in _classes().items():
        y = np.sqrt(C / (6.0 * r))
        ax.plot(C, y, ":", color="0.5", lw=0.8)
        ax.annotate(f"class {c}", (C[-1], y[-1]), fontsize=7, color="0.4", xytext=(2, 0),
                    textcoords="offset points", annotation_clip=False)
    for name, spec in SIZES.items():
        n = spec.model_config().n_params()
        ax.axhline(n, color="0.85", lw=0.6, zorder=0)
        ax.annotate(name, (C[0], n), fontsize=7, color="0.5", xytext=(2, 2), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="C (training FLOPs)", ylabel="N_opt (parameters)",
           title="compute-optimal model size; class lines use total parameters, C = 6ND")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_isoflop(path: Path, iso: Any, N: np.ndarray, L: np.ndarray) -> Path:
    """Approach 2: the IsoFLOP profiles and their parabolas."""
    from gerbil.plan import fmt_flops

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, b in enumerate(iso.budgets):
        idx = b["indices"]
        color = f"C{i % 10}"
        x = np.log(N[idx])
        ax.plot(N[idx], L[idx], "o", color=color, ms=4, label=f"{fmt_flops(b['flops'])} FLOPs ({b['status']})"
                if b["status"] != "ok" else f"{fmt_flops(b['flops'])} FLOPs")
        xx = np.linspace(x.min() - 0.2, x.max() + 0.2, 100)
        ax.plot(np.exp(xx), np.polyval(b["coeffs"], xx), "-", color=color, lw=1)
        if "N_opt" in b and b["status"] == "ok":
            ax.plot(b["N_opt"], b["loss_min"], "*", color=color, ms=11, mec="k")
    ax.set(xscale="log", xlabel="N (parameters)", ylabel="final loss", title="IsoFLOP profiles (approach 2)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_envelope(path: Path, env: Any, curves: Sequence[Any], fpts: Sequence[float]) -> Path:
    """Approach 1: every training curve against FLOPs and the envelope."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for c, f in zip(curves, fpts):
        ax.plot(f * c.tokens, c.loss, "-", lw=0.7, alpha=0.6, label=c.name if len(curves) <= 12 else None)
    ax.plot(env.flops, env.loss, "k-", lw=2, label="envelope (interior winners)")
    ax.set(xscale="log", yscale="log", xlabel="C (training FLOPs)", ylabel="training loss",
           title="lower envelope of the training curves (approach 1)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_residuals(path: Path, fit: Any, N: np.ndarray, D: np.ndarray, L: np.ndarray, count: str) -> Path:
    """log L̂ − log L against N, coloured by tokens per parameter."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    r = np.log(fit.predict(N, D)) - np.log(L)
    sc = ax.scatter(N, r, c=np.log10(D / N), cmap="plasma", s=22, edgecolors="k", linewidths=0.4)
    fig.colorbar(sc, ax=ax, label="log10 tokens per parameter")
    ax.axhline(0, color="k", lw=0.8)
    for s in (-fit.delta, fit.delta):
        ax.axhline(s, color="0.6", lw=0.6, ls="--")
    ax.set(xscale="log", xlabel=f"N ({count.replace('_', '-')} parameters)", ylabel="log L̂ − log L",
           title=f"residuals of the {fit.form} fit (dashed: Huber δ)")
    return _save(fig, path)
