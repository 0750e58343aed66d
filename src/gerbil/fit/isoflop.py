"""Approach 2 (IsoFLOP profiles, Hoffmann et al. 2022 §3.2) and the runs an IsoFLOP study needs.

For each FLOP budget, the final losses of models of several sizes trained with that budget lie on a
valley in log N; a parabola L(log N) = c₂·x² + c₁·x + c₀ through them has its minimum at
x* = −c₁ / (2·c₂), the compute-optimal size N_opt(C) for that budget. Power laws N_opt = k_N·C^a and
D_opt = k_D·C^b are then fitted by least squares in log space across budgets; their intervals come
from the regression's standard errors (Student t with budgets − 2 degrees of freedom).

Points are grouped into budgets by nearly equal compute: sorted by FLOPs, a group takes points while
they are within `tol` (relative, default 10%) of the group's smallest, so designed IsoFLOP runs
(whose token counts are rounded to whole batches) group together and a grid of classes does not chain
into one group.

`isoflop_grid(budgets)` designs those runs: for each budget, model shapes from the ladder and in
between (interpolated widths, depths and head sizes, d_model divisible by n_head) with the token count
that spends the budget at the exact per-token FLOPs of `gerbil.plan.flops_per_token`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gerbil.errors import GerbilError
from gerbil.model.config import SIZES, ModelConfig
from gerbil.units import DEFAULT_SEQ_LEN

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- shapes
def _interp_shape(a: ModelConfig, b: ModelConfig, t: float) -> ModelConfig:
    """A shape a fraction t of the way from rung a to rung b, geometrically in width, depth and head
    size: head_dim a multiple of 8, d_model = n_head × head_dim, rotary_dim even and ≤ head_dim."""
    geo = lambda x, y: math.exp((1 - t) * math.log(x) + t * math.log(y))  # noqa: E731
    d = geo(a.d_model, b.d_model)
    hd = max(8, 8 * round(geo(a.head_dim, b.head_dim) / 8))
    n_head = max(1, round(d / hd))
    n_layer = max(1, round(geo(a.n_layer, b.n_layer)))
    rot = min(hd, 2 * max(1, round(geo(max(a.rotary_dim, 2), max(b.rotary_dim, 2)) / 2)))
    return ModelConfig(d_model=n_head * hd, n_layer=n_layer, n_head=n_head, rotary_dim=rot,
                       vocab_size=a.vocab_size, seq_len=max(a.seq_len, b.seq_len),
                       name=f"d{n_head * hd}-l{n_layer}-h{n_head}")


def shape_family(per_gap: int = 2, sizes: Sequence[str] | None = None) -> list[ModelConfig]:
    """The ladder's shapes (3.3m … 104m) and `per_gap` interpolated shapes between neighbouring rungs,
    sorted by total parameters; interpolated shapes that do not fall strictly between their rungs
    are dropped (rounding can collapse them)."""
    names = list(sizes) if sizes else list(SIZES)
    rungs = [SIZES[n.lower()].model_config() if isinstance(n, str) else n for n in names]
    rungs.sort(key=lambda m: m.n_params())
    out = [rungs[0]]
    for a, b in zip(rungs, rungs[1:]):
        seen = {(m.d_model, m.n_layer, m.n_head) for m in out}
        for i in range(1, per_gap + 1):
            m = _interp_shape(a, b, i / (per_gap + 1))
            key = (m.d_model, m.n_layer, m.n_head)
            if key not in seen and out[-1].n_params() < m.n_params() < b.n_params():
                out.append(m)
                seen.add(key)
        out.append(b)
    return out


def isoflop_grid(budgets: Sequence[float], sizes: Sequence[str | ModelConfig] | None = None, *,
                 per_budget: int = 7, seq_len: int = DEFAULT_SEQ_LEN, ratio_range: tuple[float, float] = (2.0, 1000.0),
                 per_gap: int = 2) -> list[dict]:
    """Runs for an IsoFLOP study: for each FLOP budget, up to `per_budget` model shapes (evenly spread
    in log N among those training between `ratio_range` tokens per parameter) and the token count
    (whole sequences of `seq_len`) that spends the budget.

    sizes: ladder names or ModelConfigs to choose from (default: the ladder and `per_gap` shapes
    between each pair of rungs). Each dict: {"name", "model" (ModelConfig fields), "tokens", "flops"}
    plus "budget", "params", "non_embedding_params" and "ratio" for reading.
    """
    from gerbil.plan import fmt_flops, fmt_params, flops_per_token

    if not budgets:
        raise GerbilError("no FLOP budgets given")
    if sizes:
        cands = [s if isinstance(s, ModelConfig) else SIZES[str(s).lower()].model_config()
                 if str(s).lower() in SIZES else None for s in sizes]
        bad = [s for s, c in zip(sizes, cands) if c is None]
        if bad:
            raise GerbilError(f"unknown size {bad[0]!r} (known: {', '.join(SIZES)})")
        cands.sort(key=lambda m: m.n_params())
    else:
        cands = shape_family(per_gap)
    lo, hi = ratio_range
    runs: list[dict] = []
    for C in budgets:
        C = float(C)
        if not (C > 0 and math.isfinite(C)):
            raise GerbilError(f"FLOP budget {C} is not a positive number")
        rows = []
        for m in cands:
            fpt = flops_per_token(m, seq_len)
            tokens = max(1, round(C / fpt / seq_len)) * seq_len  # whole sequences
            ratio = tokens / m.n_params()
            if lo <= ratio <= hi:
                rows.append((m, tokens, tokens * fpt, ratio))
        if len(rows) < 3:
            raise GerbilError(f"budget {fmt_flops(C)}: only {len(rows)} shapes train between {lo:g} and {hi:g} "
                              f"tokens per parameter; an IsoFLOP parabola needs 3 (pick budgets nearer the "
                              f"ladder's range)")
        if len(rows) > per_budget:
            keep = sorted(set(np.round(np.linspace(0, len(rows) - 1, per_budget)).astype(int).tolist()))
            rows = [rows[i] for i in keep]
        for m, tokens, flops, ratio in rows:
            label = m.name if m.name in SIZES else f"{fmt_params(m.n_params())}-{m.name}"
            runs.append({"name": f"iso{fmt_flops(C)}-{label}", "model": m.to_dict(), "tokens": int(tokens),
                         "flops": float(flops), "budget": C, "params": m.n_params(),
                         "non_embedding_params": m.n_params("non_embedding"), "ratio": ratio})
    return runs


# ------------------------------------------------------------------------------------------- fitting
def group_by_flops(flops: Sequence[float], tol: float = 0.1) -> list[np.ndarray]:
    """Indices of points with nearly equal compute: each group spans at most a factor (1 + tol)."""
    C = np.asarray(flops, float)
    order = np.argsort(C, kind="stable")
    groups, cur, start = [], [], None
    for i in order:
        if start is None or C[i] > start * (1 + tol):
            if cur:
                groups.append(np.array(cur))
            cur, start = [], C[i]
        cur.append(i)
    if cur:
        groups.append(np.array(cur))
    return groups


def _power_law(x: np.ndarray, y: np.ndarray, ci: float) -> dict:
    """Least squares log y = k + e·log x: exponent, prefactor and the exponent's t interval."""
    lx, ly = np.log(x), np.log(y)
    A = np.column_stack([np.ones_like(lx), lx])
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    out: dict[str, Any] = {"exponent": float(coef[1]), "coefficient": float(math.exp(coef[0])),
                           "exponent_interval": None, "exponent_stderr": None}
    dof = len(x) - 2
    if dof > 0:
        resid = ly - A @ coef
        s2 = float(resid @ resid) / dof
        cov = s2 * np.linalg.inv(A.T @ A)
        se = math.sqrt(max(cov[1, 1], 0.0))
        from gerbil.fit._deps import require

        tq = float(require("scipy.stats").t.ppf(0.5 + ci / 200, dof))
        out["exponent_stderr"] = se
        out["exponent_interval"] = (float(coef[1] - tq * se), float(coef[1] + tq * se))
    return out


@dataclass
class IsoFlopFit:
    """Approach 2's result: one parabola per budget and the power laws across budgets."""

    budgets: list[dict]  # per group: flops, indices, coeffs, N_opt, D_opt, loss_min, status
    n_opt: dict  # power law N_opt(C): exponent a, coefficient, interval
    d_opt: dict  # power law D_opt(C): exponent b, ...
    tol: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"budgets": [{k: v for k, v in b.items() if k != "indices"} | {"points": [int(i) for i in b["indices"]]}
                            for b in self.budgets], "N_opt": self.n_opt, "D_opt": self.d_opt,
                "flops_tolerance": self.tol, "notes": self.notes}


def isoflop_fit(N: Sequence[float], D: Sequence[float], L: Sequence[float], flops: Sequence[float], *,
                tol: float = 0.1, min_sizes: int = 3, ci: float = 95.0) -> IsoFlopFit:
    """Approach 2 on points with FLOPs: parabola per budget, then N_opt(C) and D_opt(C) power laws.

    Raises GerbilError when fewer than two budgets have `min_sizes` distinct sizes with a minimum
    inside the sizes tried (parabolas whose minimum is outside are reported, not used: extrapolating
    a parabola is not a measurement).
    """
    N, D, L, C = (np.asarray(x, float) for x in (N, D, L, flops))
    budgets = []
    for idx in group_by_flops(C, tol):
        x = np.log(N[idx])
        if np.unique(x).size < min_sizes:
            continue
        c2, c1, c0 = np.polyfit(x, L[idx], 2)
        row: dict[str, Any] = {"flops": float(np.exp(np.log(C[idx]).mean())), "indices": idx,
                               "n_points": int(idx.size), "coeffs": [float(c2), float(c1), float(c0)]}
        if c2 <= 0:
            row["status"] = "no minimum (the losses do not curve up on both sides)"
        else:
            xs = -c1 / (2 * c2)
            slope, icpt = np.polyfit(x, np.log(D[idx]), 1)  # D along the budget: exact for C ∝ N·D
            row.update(N_opt=float(math.exp(xs)), D_opt=float(math.exp(icpt + slope * xs)),
                       loss_min=float(c0 - c1 * c1 / (4 * c2)))
            inside = x.min() <= xs <= x.max()
            row["status"] = "ok" if inside else "minimum outside the sizes tried (not used)"
        budgets.append(row)
    good = [b for b in budgets if b["status"] == "ok"]
    if len(good) < 2:
        raise GerbilError(f"approach 2 needs at least 2 FLOP budgets (within {tol:.0%}) with {min_sizes} sizes "
                          f"each and a minimum inside them; found {len(good)} of {len(budgets)} groups")
    Cs = np.array([b["flops"] for b in good])
    res = IsoFlopFit(budgets=budgets, n_opt=_power_law(Cs, np.array([b["N_opt"] for b in good]), ci),
                     d_opt=_power_law(Cs, np.array([b["D_opt"] for b in good]), ci), tol=tol)
    if len(good) == 2:
        res.notes.append("two budgets: the power laws go exactly through them, no interval")
    skipped = len(budgets) - len(good)
    if skipped:
        res.notes.append(f"{skipped} budget(s) not used (see their status)")
    return res
