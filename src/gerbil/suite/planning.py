"""`gerbil suite plan`: every run of a suite with its tokens, FLOPs and estimated hours per GPU type, the
cascades' savings, and the total — a dry run that reads nothing but the suite file. No torch.

Tokens are what each run trains itself (a continuation's parent's tokens are the parent's); FLOPs =
`gerbil.plan.flops_per_token` × those tokens; time = FLOPs / (GPU peak × MFU), the MFU an estimate per
size (`gerbil.model.config.default_mfu`, docs/reference.md §6) — estimates, not measurements.

Cascade accounting (docs/suites.md): a cascade trains its trunk (the largest class's budget) plus each
branch's remainder (≈ 20% of its class budget); independent runs would train every class budget from
scratch. For classes A–E that is 284 + 0.2 × (20 + 42 + 76 + 142) = 340 tokens per parameter instead of
20 + 42 + 76 + 142 + 284 = 564 (0.60×). `cascade_savings` gives both the nominal per-parameter numbers
and the exact ones (branch points fall on step boundaries, so a branch trains a little less than 20%).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from gerbil.classes import class_ratio
from gerbil.plan import GPU, GPUS, get_gpu
from gerbil.suite.records import BRANCH_COOLDOWN, RunSpec, Suite
from gerbil.units import fmt_duration, fmt_flops, fmt_table, fmt_tokens


@dataclass
class CascadeSavings:
    """What one cascade costs against independent runs of the same classes."""

    trunk: str
    size: str
    classes: list[str]
    params: int
    tokens: int  # the cascade's trained tokens (trunk + branch remainders)
    independent_tokens: int  # every class budget from scratch
    flops: float
    independent_flops: float
    nominal_per_param: float  # 284 + 0.2 × (20 + 42 + 76 + 142) = 340 for A–E
    nominal_independent_per_param: float  # 564 for A–E

    @property
    def ratio(self) -> float:
        return self.tokens / self.independent_tokens

    @property
    def nominal_ratio(self) -> float:
        return self.nominal_per_param / self.nominal_independent_per_param

    def to_dict(self) -> dict[str, Any]:
        return {"trunk": self.trunk, "size": self.size, "classes": self.classes, "params": self.params,
                "tokens": self.tokens, "independent_tokens": self.independent_tokens, "ratio": self.ratio,
                "flops": self.flops, "independent_flops": self.independent_flops,
                "tokens_per_param": self.tokens / self.params,
                "independent_tokens_per_param": self.independent_tokens / self.params,
                "nominal_per_param": self.nominal_per_param,
                "nominal_independent_per_param": self.nominal_independent_per_param,
                "nominal_ratio": self.nominal_ratio}


def nominal_cascade(classes: Sequence[str]) -> tuple[float, float]:
    """(cascade, independent) tokens per parameter for a set of classes: the largest class's ratio plus
    `BRANCH_COOLDOWN` × each smaller one's, against the sum of all — (340, 564) for A–E."""
    ratios = sorted(class_ratio(c) for c in classes)
    return ratios[-1] + BRANCH_COOLDOWN * sum(ratios[:-1]), float(sum(ratios))


def cascade_savings(suite: Suite) -> list[CascadeSavings]:
    """One `CascadeSavings` per cascade of the suite (planned tokens, exact step boundaries)."""
    out = []
    for trunk_name, members in suite.cascades().items():
        trunk = next(r for r in members if r.role == "trunk")
        classes = [r.cls_label for r in members]
        tokens = sum(r.tokens for r in members)
        indep = sum(r.budget for r in members)
        flops = sum(r.flops for r in members)
        indep_flops = sum(float(r.flops_per_token) * r.budget for r in members)
        nom, nom_ind = nominal_cascade(classes)
        out.append(CascadeSavings(trunk_name, trunk.size, sorted(classes, key=class_ratio), trunk.params, tokens, indep,
                                  flops, indep_flops, nom, nom_ind))
    return out


def cascade_line(c: dict, budget_scale: float = 1.0) -> str:
    """What `gerbil suite run` says of a cascade's tokens (a `CascadeSavings.to_dict`): as trained — tokens,
    their ratio, tokens per parameter — then, apart, the classes' nominal tokens per parameter and their
    ratio, with the scale when the suite scales its budgets (`budget_scale`): never a trained ratio beside
    an unscaled one."""
    nominal = (f"the classes' nominal {c['nominal_per_param']:g} vs {c['nominal_independent_per_param']:g}, "
               f"{c['nominal_ratio']:.2f}x")
    if budget_scale != 1.0:
        nominal += f", here scaled by {budget_scale:g}"
    return (f"cascade {c['trunk']}: {c['tokens']:,} tokens vs {c['independent_tokens']:,} for independent runs "
            f"({c['ratio']:.3f}x; {c['tokens_per_param']:.4g} vs {c['independent_tokens_per_param']:.4g} tokens per "
            f"parameter; {nominal})")


@dataclass
class SuitePlan:
    suite: Suite
    gpus: tuple[GPU, ...]
    cascades: list[CascadeSavings]

    def seconds(self, run: RunSpec, gpu: GPU) -> float:
        return run.flops / (gpu.peak_flops * run.mfu)

    @property
    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.suite.runs)

    @property
    def total_flops(self) -> float:
        return sum(r.flops for r in self.suite.runs)

    def total_seconds(self, gpu: GPU) -> float:
        return sum(self.seconds(r, gpu) for r in self.suite.runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite.name,
            "runs": [{"name": r.name, "role": r.role, "parent": r.parent, "size": r.size, "params": r.params,
                      "class": r.cls_label, "objective": r.options.get("objective", "plain"),
                      "budget": r.budget, "start": r.start, "tokens": r.tokens, "batch": r.batch,
                      "seq_len": r.seq_len, "scaled": r.scaled, "flops": r.flops, "mfu": r.mfu,
                      "seconds": {g.name: self.seconds(r, g) for g in self.gpus}} for r in self.suite.runs],
            "total": {"tokens": self.total_tokens, "flops": self.total_flops,
                      "seconds": {g.name: self.total_seconds(g) for g in self.gpus}},
            "cascades": [c.to_dict() for c in self.cascades],
            "eval": {"tasks": self.suite.eval_tasks, "limit": self.suite.eval_limit},
            "mfu_source": "estimate per size (gerbil.model.config.default_mfu, docs/reference.md §6)",
        }


def plan_suite(suite: Suite, gpus: Iterable[str] | None = None) -> SuitePlan:
    gpu_list = tuple(get_gpu(g) for g in gpus) if gpus else tuple(GPUS.values())
    return SuitePlan(suite, gpu_list, cascade_savings(suite))


def format_suite_plan(plan: SuitePlan) -> str:
    """The readable dry run (what `gerbil suite plan` prints)."""
    s = plan.suite
    header = ["run", "role", "parent", "size", "class", "budget", "trains", "batch", "FLOPs"] + [g.name for g in plan.gpus]
    rows = []
    for r in s.runs:
        role = {"run": "", "star": "star", "trunk": "trunk", "branch": f"branch@{fmt_tokens(r.start)}"}[r.role]
        cls = r.class_text()
        rows.append([r.name, role, r.parent or "", r.size, cls, fmt_tokens(r.budget), fmt_tokens(r.tokens), r.batch,
                     fmt_flops(r.flops)] + [fmt_duration(plan.seconds(r, g)) for g in plan.gpus])
    rows.append(["total", "", "", "", "", "", fmt_tokens(plan.total_tokens), "", fmt_flops(plan.total_flops)]
                + [fmt_duration(plan.total_seconds(g)) for g in plan.gpus])
    out = [f"suite {s.name}: {len(s.runs)} runs" + (f" — {s.description}" if s.description else ""), "",
           fmt_table(header, rows, [False] * 5 + [True] * (len(header) - 5))]
    for c in plan.cascades:
        t_c = sum(plan.seconds(r, plan.gpus[0]) for r in s.runs if r.cascade == c.trunk) if plan.gpus else 0.0
        ind = c.independent_flops / c.flops * t_c if c.flops else 0.0
        out += ["", f"cascade {c.trunk} ({c.size}, classes {' '.join(c.classes)}): trunk + {len(c.classes) - 1} "
                    f"cooldown branches",
                f"  tokens per parameter: {c.nominal_per_param:g} vs {c.nominal_independent_per_param:g} for "
                f"independent runs ({c.nominal_ratio:.2f}x; exact step boundaries: "
                f"{c.tokens / c.params:.4g} vs {c.independent_tokens / c.params:.4g}, {c.ratio:.3f}x)",
                f"  tokens {fmt_tokens(c.tokens)} vs {fmt_tokens(c.independent_tokens)}, FLOPs {fmt_flops(c.flops)} vs "
                f"{fmt_flops(c.independent_flops)}"
                + (f", {plan.gpus[0].name} {fmt_duration(t_c)} vs {fmt_duration(ind)}" if plan.gpus else "")]
    ev = s.eval_tasks
    out += ["", "eval: " + (", ".join(ev) + (f" (first {s.eval_limit} items: partial)" if s.eval_limit
                                             else " (full sets)") if ev else "none"),
            f"times: FLOPs / (peak x MFU), MFU an estimate per size ({', '.join(dict.fromkeys(f'{r.size} {r.mfu:.0%}' for r in sorted(s.runs, key=lambda r: r.params)))}; "
            "docs/reference.md §6)"]
    if any(r.scaled for r in s.runs):
        out.append(f"budgets scaled by {s.budget_scale:g} (budget_scale): a proxy of the classes, a custom budget "
                   f"(as in the table, the export and its card)")
    return "\n".join(out)


__all__ = ["CascadeSavings", "SuitePlan", "cascade_line", "cascade_savings", "format_suite_plan", "nominal_cascade", "plan_suite"]
