"""Approach 1 (Hoffmann et al. 2022 §3.1): the lower envelope of loss against FLOPs over all runs'
training curves, and the power laws N_opt(C), D_opt(C) read off it.

Kept simple, on purpose:
1. each run's curve (`metrics.jsonl`: tokens, loss) is smoothed by a centred running mean over
   `window` logged steps (the per-step training loss is noisy) and put on a FLOPs axis,
   C = FLOPs per token × tokens (exact per-token count, or 6·N);
2. on `n_grid` log-spaced FLOP values, each run covering that value is interpolated (log-log linear)
   and the lowest loss wins; grid values where the winner is the smallest or the largest run
   covering that value are dropped (it may win only because no smaller or larger run reaches that
   far, which would flatten the fitted slope — measured: 0.39 instead of 0.51 on synthetic curves);
3. log N and log D of the winners (D = C / FLOPs per token of the winner) are fitted against log C by
   least squares: N_opt ∝ C^a, D_opt ∝ C^b.

Caveats (docs/fit.md): intermediate points of a run with a decaying learning rate are not what a run
stopped there would reach (Hoffmann et al. trained a separate cosine length per horizon for this
reason), so the envelope is pessimistic except at each run's end; envelope points are correlated,
so no interval is given — use approach 2 or 3 for intervals.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gerbil.errors import GerbilError
from gerbil.fit.sources import Curve
from gerbil.model.config import ModelConfig

log = logging.getLogger(__name__)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean over `window` points (shrinking at the ends)."""
    if window <= 1 or len(y) < 3:
        return y
    h = window // 2
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(len(y))
    lo, hi = np.maximum(0, i - h), np.minimum(len(y), i + h + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def curve_flops_per_token(curve: Curve, kind: str = "total", convention: str = "exact") -> tuple[float, str]:
    """(FLOPs per token of a curve's model, the convention used): exact needs the architecture and
    falls back to 6·N (total) without it."""
    N = curve.params if kind == "total" else (curve.non_embedding_params or curve.params)
    if convention == "exact" and curve.model:
        from gerbil.plan import flops_per_token

        return float(flops_per_token(ModelConfig.from_dict(curve.model), curve.seq_len)), "exact"
    return 6.0 * float(N), "6nd"


@dataclass
class EnvelopeFit:
    """Approach 1's result."""

    flops: np.ndarray  # (g,) grid FLOPs where ≥ 2 runs compete
    loss: np.ndarray  # (g,) envelope loss
    winner: list[str]  # (g,) run on the envelope
    N: np.ndarray  # (g,) its parameter count (the fit's counting)
    D: np.ndarray  # (g,) its tokens at that FLOPs
    n_opt: dict
    d_opt: dict
    convention: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        runs = sorted(set(self.winner), key=self.winner.index)
        return {"N_opt": self.n_opt, "D_opt": self.d_opt, "flops_convention": self.convention,
                "runs_on_envelope": runs, "n_grid_points": int(len(self.flops)), "notes": self.notes,
                "envelope": [{"flops": float(c), "loss": float(l), "run": w, "N": float(n), "D": float(d)}
                             for c, l, w, n, d in zip(self.flops, self.loss, self.winner, self.N, self.D)]}


def _line(x: np.ndarray, y: np.ndarray) -> dict:
    slope, icpt = np.polyfit(np.log(x), np.log(y), 1)
    return {"exponent": float(slope), "coefficient": float(math.exp(icpt)), "exponent_interval": None}


def envelope_fit(curves: Sequence[Curve], *, kind: str = "total", convention: str = "exact",
                 n_grid: int = 200, window: int = 9) -> EnvelopeFit:
    """Approach 1 on training curves (see the module docstring)."""
    curves = [c for c in curves if len(c.tokens) >= 2]
    if len({c.params for c in curves}) < 2:
        raise GerbilError(f"approach 1 needs training curves of at least 2 model sizes; got {len(curves)} curve(s)")
    used = set()
    logC, logL, fpts, Ns = [], [], [], []
    for c in curves:
        fpt, conv = curve_flops_per_token(c, kind, convention)
        used.add(conv)
        logC.append(np.log(fpt * c.tokens))
        logL.append(np.log(_smooth(c.loss, window)))
        fpts.append(fpt)
        Ns.append(c.params if kind == "total" else float(c.non_embedding_params or np.nan))
    if any(not np.isfinite(n) for n in Ns):
        raise GerbilError("approach 1 with non-embedding counts needs every run's architecture")
    lo, hi = min(x[0] for x in logC), max(x[-1] for x in logC)
    grid = np.linspace(lo, hi, n_grid)
    table = np.full((len(curves), n_grid), np.inf)  # (runs, grid) interpolated log loss
    for i, (x, y) in enumerate(zip(logC, logL)):
        inside = (grid >= x[0]) & (grid <= x[-1])
        table[i, inside] = np.interp(grid[inside], x, y)
    covered = np.isfinite(table)  # (runs, grid)
    best_all = np.argmin(table, axis=0)
    Narr = np.array(Ns)
    n_lo = np.where(covered, Narr[:, None], np.inf).min(axis=0)
    n_hi = np.where(covered, Narr[:, None], -np.inf).max(axis=0)
    # a winner that is the smallest or largest size covering that FLOPs may win only because no
    # smaller/larger run reaches there: keep interior winners only
    competing = (covered.sum(axis=0) >= 2) & (Narr[best_all] > n_lo) & (Narr[best_all] < n_hi)
    if competing.sum() < 2:
        raise GerbilError("approach 1: nowhere on the FLOPs axis is the lowest curve one with both smaller and "
                          "larger runs beside it; add runs of more sizes whose curves overlap")
    best = best_all[competing]
    Cg = np.exp(grid[competing])
    winN = np.array([Ns[i] for i in best])
    winD = Cg / np.array([fpts[i] for i in best])
    if np.unique(winN).size < 2:
        raise GerbilError(f"approach 1: one run ({curves[best[0]].name}) is lowest everywhere the curves overlap; "
                          f"the envelope needs runs of several sizes that cross")
    conv = used.pop() if len(used) == 1 else "mixed (exact where the architecture is known, else 6·N)"
    res = EnvelopeFit(flops=Cg, loss=np.exp(table[best, np.flatnonzero(competing)]),
                      winner=[curves[i].name for i in best], N=winN, D=winD,
                      n_opt=_line(Cg, winN), d_opt=_line(Cg, winD), convention=conv)
    res.notes.append("no interval: envelope points are correlated (use approaches 2 and 3 for intervals)")
    res.notes.append("intermediate points of a run with a decaying learning rate overstate the loss a run "
                     "stopped there would reach")
    return res
