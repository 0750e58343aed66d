"""The figures of a task-law fit (PNG, matplotlib on the headless Agg backend).

    task_loss.png       step 1: task loss against training compute C = 6·N·D, one colour per model size,
                        each size's fitted law L(N, D) along D, and the --predict points
    task_sigmoid.png    step 2: the metric against task loss (every point, checkpoints included), the
                        fitted sigmoid with its bootstrap band, chance and ceiling, predicted points
    task_predicted.png  both steps chained: predicted against observed metric for every point, and the
                        leave-the-largest-size-out predictions with their intervals
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gerbil.fit._deps import pyplot
from gerbil.fit.plots import _save


def _size_colors(N: np.ndarray) -> dict[float, Any]:
    plt = pyplot()
    sizes = np.unique(N)
    cmap = plt.get_cmap("viridis")
    return {float(n): cmap(i / max(1, len(sizes) - 1)) for i, n in enumerate(sizes)}


def _fmt(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def plot_task_loss(path: Path, fit: Any, pts: Any, predict: Sequence[tuple[float, float]]) -> Path:
    """Step 1: task loss vs C = 6ND per size, with the fitted law along D."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = _size_colors(pts.N)
    for n, color in colors.items():
        m = pts.N == n
        ax.plot(6 * n * pts.D[m & ~pts.final], pts.L[m & ~pts.final], "o", mfc="none", color=color, ms=4, alpha=0.6)
        ax.plot(6 * n * pts.D[m & pts.final], pts.L[m & pts.final], "o", color=color, ms=6, mec="k", mew=0.5,
                label=_fmt(n))
        if fit.loss_ok:  # a degenerate step 1 draws no curves (its status is in the title)
            d = np.geomspace(pts.D[m].min() / 1.5, pts.D[m].max() * 1.5, 60)
            ax.plot(6 * n * d, fit.loss.predict(n, d), "-", color=color, lw=1)
    for n, d in predict if fit.loss_ok else ():
        loss = float(fit.loss.predict(n, d))
        ax.plot(6 * n * d, loss, "*", color="C3", ms=13, mec="k", label=f"predict {_fmt(n)}, {d:.2g} tokens")
    ax.set(xscale="log", xlabel="C = 6·N·D (training FLOPs)", ylabel=f"task loss ({pts.loss_name})",
           title="step 1: task loss (filled: final points, fitted; hollow: checkpoints)"
           + ("" if fit.loss_ok else f"\n({fit.status})"))
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    return _save(fig, path)


def plot_task_sigmoid(path: Path, fit: Any, pts: Any, predict: Sequence[tuple[float, float]], ci: float) -> Path:
    """Step 2: metric vs task loss with the fitted sigmoid and its bootstrap band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    sc = ax.scatter(pts.L, pts.M, c=np.log10(pts.N), cmap="viridis", s=np.where(pts.final, 30, 12),
                    edgecolors="k", linewidths=0.3)
    fig.colorbar(sc, ax=ax, label="log10 parameters")
    pred_L = [float(fit.loss.predict(n, d)) for n, d in predict]
    lo, hi = min([float(pts.L.min())] + pred_L), max([float(pts.L.max())] + pred_L)
    pad = 0.1 * (hi - lo + 1e-9)
    x = np.linspace(lo - pad, hi + pad, 200)
    sig = fit.sigmoid
    ax.plot(x, sig.predict(x), "k-", lw=1.5, label="fitted sigmoid" + (" (flat: no prediction)" if sig.flat else ""))
    if sig.bootstrap is not None and sig.bootstrap.n_kept >= 2:
        s = sig.bootstrap.params(sig.model)
        curves = np.array([sig.model.predict(s, v) for v in x])  # (x, samples)
        band = np.nanpercentile(curves, [50 - ci / 2, 50 + ci / 2], axis=1)
        ax.fill_between(x, band[0], band[1], color="0.5", alpha=0.2, lw=0)
    ax.axhline(sig.params["chance"], color="C3", ls=":", lw=1, label=f"chance {sig.params['chance']:g}")
    if not sig.flat:
        ax.axhline(sig.params["ceiling"], color="C2", ls="--", lw=0.8, label=f"ceiling {sig.params['ceiling']:.3g}")
        for (n, d), L in zip(predict, pred_L):
            ax.plot(L, float(sig.predict(L)), "*", color="C3", ms=13, mec="k")
    ax.invert_xaxis()  # lower loss (bigger, longer-trained models) to the right
    ax.set(xlabel=f"task loss ({pts.loss_name})", ylabel=pts.metric_name,
           title="step 2: metric vs task loss (all points, checkpoints included)")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_task_predicted(path: Path, fit: Any, pts: Any, llo: dict) -> Path:
    """Both steps: predicted vs observed metric; leave-largest-out points with their intervals."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    _, pred = fit.predict(pts.N, pts.D)
    ax.plot(pts.M[~pts.final], pred[~pts.final], "o", mfc="none", color="C0", ms=4, alpha=0.5,
            label="checkpoints")
    ax.plot(pts.M[pts.final], pred[pts.final], "o", color="C0", ms=6, mec="k", mew=0.5, label="final points")
    held = [p for p in llo.get("points", []) if p.get("metric_predicted") is not None]
    if held:
        obs = np.array([p["metric_observed"] for p in held])
        hat = np.array([p["metric_predicted"] for p in held])
        err = None
        if all(p["metric_low"] is not None for p in held):
            err = np.array([[h - p["metric_low"] for h, p in zip(hat, held)],
                            [p["metric_high"] - h for h, p in zip(hat, held)]])
        ax.errorbar(obs, hat, yerr=err, fmt="*", color="C3", ms=12, mec="k", capsize=3,
                    label="largest size, fitted without it")
    lim = [min(pts.M.min(), pred.min()) - 0.02, max(pts.M.max(), pred.max()) + 0.02]
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.set(xlim=lim, ylim=lim, xlabel=f"observed {pts.metric_name}", ylabel="predicted (both steps from N, D)",
           title="predicted vs observed" + ("" if fit.status == "ok" else f"\n({fit.status})"))
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_all(out: Path, fit: Any, pts: Any, predict: Sequence[tuple[float, float]], llo: dict, ci: float) -> list[str]:
    """Write the three figures into `out`; their file names."""
    plot_task_loss(out / "task_loss.png", fit, pts, predict)
    plot_task_sigmoid(out / "task_sigmoid.png", fit, pts, predict, ci)
    plot_task_predicted(out / "task_predicted.png", fit, pts, llo)
    return ["task_loss.png", "task_sigmoid.png", "task_predicted.png"]
