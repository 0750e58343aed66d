"""The command lines of `gerbil fit` (`FitCommand`) and of the planner's part of `gerbil plan`
(`Planner`, `run_planner`), next to the library, so `gerbil.cli` only has to call `add_fit_parser`.

The flags are `gerbil.options` fields (help, spelling, parser, check, `--help` section), parsed and
checked by the dataclass, so a bad value is a one-line error (`gerbil fit: error: --bootstrap: expected
an integer, got 'many'`), never an argparse usage dump or a traceback. Their defaults are the library's
(`gerbil.fit.report.FitOptions`, `gerbil.fit.sources.Columns`).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from gerbil.errors import GerbilError
from gerbil.fit.report import FitOptions, run_fit
from gerbil.fit.sources import Columns
from gerbil.options import Options, add_arguments, config_from_args, opt, section

FIT_DESCRIPTION = """\
Fit scaling laws L(N, D) to runs and published tables, bootstrap their intervals, and write
fit.json, fit.md and plots into --out.

Approach 3 (Hoffmann et al. 2022; Besiroglu et al. 2024): L = E + A/N^alpha + B/D^beta, fitted by
Huber loss (delta 1e-3) on log residuals with L-BFGS from a grid of starts; intervals from a
bootstrap over runs. Approach 2 (IsoFLOP parabolas) runs when points share FLOP budgets, approach 1
(training-curve envelope) when run directories have metrics.jsonl curves. --form kaplan fits Kaplan
et al. 2020's L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D instead (or as well: both).

N counts total parameters by default (embeddings and head included, as Chinchilla); --params
non_embedding counts as Kaplan et al.; --params both fits both and compares the compute-optimal
tokens per parameter they give at the ladder's sizes (3.3m-104m, where 62-98% of the parameters
are embeddings). See docs/fit.md."""

FIT_EPILOG = """\
sources:
  run directories and folders of runs (final validation loss; --metric train_loss or TASK:METRIC
  such as hellaswag:acc, fitted as the error 1 - acc), and CSV files with columns params, tokens,
  loss (optional flops, non_embedding_params, run, name; rename with --params-col etc.). Rows or
  runs with a missing value are skipped and counted in fit.json; impossible values are refused.

examples:
  gerbil fit runs/ --out fits/runs
  gerbil fit src/gerbil/fit/examples/gerbillab_seed.csv --out fits/seed --params both
  gerbil fit published.csv --loss-col final_loss --form both --bootstrap 2000 --out fits/pub
  gerbil plan --gpu T4 --hours 2 --fit fits/seed/fit.json
  gerbil fit suites/ladder --task hellaswag --predict 2.8e9:3e11 --out fits/hellaswag   # task law
  gerbil fit points.csv --task-law --loss-col bpb --metric-col acc --chance 0.25 --out fits/t"""


_D = FitOptions()  # the library's defaults are the flags' defaults
_C = Columns()


def _parse_approaches(text: str) -> list[int] | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"expected auto or a list of 1, 2, 3, got {text!r}") from None


@section("fit")
class _Fit(Options):
    sources: list[str] | None = opt(None, "run directories, folders of runs, CSV files", flag="SOURCE", nargs="+",
                                    items=str, required=True)
    out: str | None = opt(None, "folder for fit.json, fit.md and the plots", metavar="DIR", required=True)
    metric: str = opt(_D.metric, "for runs: val_loss, train_loss, or TASK:METRIC (hellaswag:acc → 1 - acc)")
    params: str = opt(_D.params, "what N counts: total (Chinchilla), non_embedding (Kaplan), both side by side",
                      choices=("total", "non_embedding", "both"))
    form: str = opt(_D.forms[0], "functional form: chinchilla E + A/N^a + B/D^b, kaplan, or both",
                    choices=("chinchilla", "kaplan", "both"))
    flops: str = opt(_D.flops, "FLOPs for approaches 1-2: the CSV column, exact per-token count (non-embedding "
                               "+ head + attention, needs the architecture) or 6·N·D; auto picks in that order",
                     choices=("auto", "6nd", "exact", "column"))
    approach: list[int] | None = opt(None, "3, 2, 1 or a comma list such as 3,2 (default auto: 3, plus 2 and 1 "
                                           "where the data allow; an approach asked for explicitly that cannot "
                                           "run is an error)", parse=_parse_approaches, metavar="LIST")
    bootstrap: int = opt(_D.bootstrap, "bootstrap resamples of runs for intervals (0 = none)", check="non_negative",
                         metavar="N")
    ci: float = opt(_D.ci, "interval width in percent", metavar="PCT")
    seed: int = opt(_D.seed, "bootstrap seed", check="non_negative")
    workers: int | None = opt(None, "bootstrap processes (default: all cores)", check="positive", metavar="N")
    budgets: list[float] = opt(_D.budgets, "FLOP budgets for the compute-optimal table (comma list)",
                               parse=lambda t: [float(x) for x in t.split(",") if x.strip()], metavar="LIST")
    delta: float = opt(_D.delta, "Huber delta on log residuals (Hoffmann et al.)", check="positive")
    top_k: int = opt(_D.top_k, "grid starts refined with L-BFGS", check="positive", metavar="K")
    flops_tol: float = opt(_D.flops_tol, "approach 2: points within this relative FLOPs share a budget",
                           check="positive", metavar="REL")
    curve_metric: str = opt(_D.curve_metric, "approach 1: the metrics.jsonl field of the curves",
                            choices=("loss", "val_loss"))
    plots: bool = opt(_D.plots, "write the PNGs (--no-plots: none)")
    json: bool = opt(False, "print fit.json instead of the summary")


@section("CSV columns")
class _Columns(Options):
    params_col: str = opt(_C.params, "the parameter count", metavar="NAME")
    tokens_col: str = opt(_C.tokens, "the training tokens", metavar="NAME")
    loss_col: str = opt(_C.loss, "the loss", metavar="NAME")
    flops_col: str = opt(_C.flops, "the training FLOPs (optional)", metavar="NAME")
    non_embedding_col: str = opt(_C.non_embedding, "the non-embedding parameter count (optional)", metavar="NAME")
    run_col: str = opt(_C.run, "the run a row belongs to (bootstrap groups; optional)", metavar="NAME")
    name_col: str = opt(_C.name, "a row's name (optional)", metavar="NAME")


@section("task scaling law (two steps: N, D -> task loss -> metric)",
         "Fits step 1, task loss L(N, D) = E + A/N^alpha + B/D^beta, on each run's final point, and step 2, "
         "metric = chance + (ceiling - chance) / (1 + exp(-k (L0 - L))), on all points (checkpoints included); "
         "--loss-col names the task-loss column (CSV) or eval-record key (runs; default: bpb, else the "
         "log-perplexity, else the per-token NLL). docs/fit.md, \"Task scaling law\".")
class _TaskLaw(Options):
    task: str | None = opt(None, "fit the task law of this eval task (e.g. hellaswag): from runs, every "
                                 "checkpoint's eval record; sets the chance level", metavar="TASK")
    task_law: bool = opt(False, "fit the task law (CSV: --loss-col and --metric-col)")
    metric_col: str = opt("acc", "the metric: a CSV column or the eval-record key (a fraction in [0, 1])",
                          metavar="NAME")
    chance: float | None = opt(None, "metric at chance (default: the task's; 0.25 for four choices)", metavar="X")
    predict: list[str] | None = opt(None, "predict the task loss and metric at N parameters, D tokens "
                                          "(repeatable; e.g. 2.8e9:3e11)", repeat=True, items=str, metavar="N:D")


# a dataclass takes its fields from the last base first: the fit's own options, the CSV columns, the task law
@dataclass
class FitCommand(_TaskLaw, _Columns, _Fit):
    """`gerbil fit`'s flags; `fit_options()` is the library's `FitOptions` they mean, `task_law_options()`
    its `TaskLawOptions` (with --task or --task-law)."""

    _what = "fit option"

    def is_task_law(self) -> bool:
        """Whether this fit is the task law; task-law flags without it are a one-line error."""
        if self.task or self.task_law:
            return True
        for flag, value in (("--predict", self.predict), ("--chance", self.chance)):
            if value:
                raise GerbilError(f"{flag} goes with --task TASK or --task-law")
        return False

    def task_law_options(self) -> Any:
        """`gerbil.fit.taskreport.TaskLawOptions`: the task law fits the Chinchilla form on total
        parameters and its own metric, so the loss law's choices of those are refused."""
        from gerbil.fit.taskreport import TaskLawOptions
        from gerbil.fit.tasklaw import parse_predict

        for flag, value, default in (("--form", self.form, _D.forms[0]), ("--params", self.params, _D.params),
                                     ("--approach", self.approach, None), ("--metric", self.metric, _D.metric)):
            if value != default:
                raise GerbilError(f"the task law fits the Chinchilla form on total parameters and its own metric: "
                                  f"drop {flag}")
        return TaskLawOptions(
            task=self.task, chance=self.chance, columns=self.fit_options().columns, metric_col=self.metric_col,
            predict=tuple(parse_predict(x) for x in self.predict or ()), bootstrap=self.bootstrap, seed=self.seed,
            workers=self.workers, ci=self.ci, delta=self.delta, top_k=self.top_k, plots=self.plots)

    def fit_options(self) -> FitOptions:
        return FitOptions(
            metric=self.metric, params=self.params, flops=self.flops,
            columns=Columns(self.params_col, self.tokens_col, self.loss_col, self.flops_col, self.non_embedding_col,
                            self.run_col, self.name_col),
            forms=("chinchilla", "kaplan") if self.form == "both" else (self.form,),
            approaches=tuple(self.approach) if self.approach is not None else None, bootstrap=self.bootstrap,
            seed=self.seed, workers=self.workers, ci=self.ci, delta=self.delta, top_k=self.top_k,
            budgets=tuple(self.budgets), flops_tol=self.flops_tol, curve_metric=self.curve_metric, plots=self.plots)


def add_fit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `gerbil fit` on an argparse subparsers object; its handler is `args.func(args) -> int`."""
    p = subparsers.add_parser("fit", help="scaling-law fits (Chinchilla approaches 1-3, Kaplan form) and plots",
                              description=FIT_DESCRIPTION, epilog=FIT_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, FitCommand)
    p.set_defaults(func=cmd_fit)
    return p


def summarize(result: dict, out: str) -> str:
    """The few lines `gerbil fit` prints: primary estimates with intervals, convergence, files."""
    lines = []
    law = result.get("law")
    if law:
        iv = result.get("intervals") or {}
        lines.append(f"approach 3 ({law['form']}, {law['param_count'].replace('_', '-')} parameters, "
                     f"{result['n_points']} points, {result['n_runs']} runs):")
        for k, v in law["params"].items():
            i = iv.get(k)
            lines.append(f"  {k:<8} {v:.5g}" + (f"   {result['ci']:g}% [{i[0]:.4g}, {i[1]:.4g}]" if i else ""))
        co = result["compute_optimal"]
        lines.append(f"  N_opt ∝ C^{co['a']:.3f}, D_opt ∝ C^{co['b']:.3f} (C = 6ND); "
                     f"converged: {'yes' if result['converged'] else 'NO'}")
    for key in ("approach2", "approach1"):
        for count, a in (result.get(key) or {}).items():
            if a.get("applicable"):
                lines.append(f"{key} ({count.replace('_', '-')}): N_opt ∝ C^{a['N_opt']['exponent']:.3f}, "
                             f"D_opt ∝ C^{a['D_opt']['exponent']:.3f}")
    for cmp in (result.get("param_count_comparison") or {}).values():
        f = [f"{s['size']} ×{s['factor']:.3g}" for s in cmp["sizes"]]
        lines.append("non-embedding vs total compute-optimal tokens per parameter: " + ", ".join(f))
    if result.get("warnings"):
        lines.append(f"{len(result['warnings'])} warning(s), see fit.md; first: {result['warnings'][0]}")
    lines.append(f"wrote {', '.join(result['files'])} to {out}")
    return "\n".join(lines)


def cmd_fit(args: argparse.Namespace) -> int:
    """Handler of `gerbil fit`."""
    opts = config_from_args(args, FitCommand)
    if opts.is_task_law():
        return cmd_task_fit(opts)
    result = run_fit(opts.sources, opts.out, opts.fit_options())
    print(json.dumps(result, indent=2) if opts.json else summarize(result, opts.out))
    return 0


def cmd_task_fit(opts: "FitCommand") -> int:
    """`gerbil fit --task TASK` / `--task-law`: the two-step task law (gerbil.fit.tasklaw)."""
    from gerbil.fit.taskreport import run_task_fit, summarize_task

    result = run_task_fit(opts.sources, opts.out, opts.task_law_options())
    print(json.dumps(result, indent=2) if opts.json else summarize_task(result, opts.out))
    return 0


# ------------------------------------------------------------------------------------------- planner
@section("planning from a scaling-law fit",
         "With --hours (and --gpu): the ladder size, tokens and class with the lowest predicted loss for that "
         "much training; with --loss: the cheapest run reaching that loss. The law is --fit (a `gerbil fit` "
         "fit.json, or besiroglu2024 / chinchilla2022), default the Besiroglu et al. 2024 replication.")
class Planner(Options):
    """The planner's options of `gerbil plan` (`gerbil.plan_command.PlanOptions` composes them)."""

    hours: float | None = opt(None, "GPU hours to spend on one --gpu (e.g. 2)", check="positive", metavar="H")
    target_loss: float | None = opt(None, "target loss: find the cheapest run reaching it", flag="--loss",
                                    metavar="L")
    fit_file: str | None = opt(None, "fit.json from `gerbil fit`, or besiroglu2024 / chinchilla2022 (default "
                                     "besiroglu2024)", flag="--fit", metavar="FILE")
    runs: list[str] | None = opt(None, "run directories / folders trained on the --gpu: their measured tok/s "
                                       "replaces the estimate", nargs="+", items=str, metavar="DIR")


def run_planner(p: Planner, gpus: list[str], mfu: float | None, seq_len: int, as_json: bool,
                fixed: dict[str, Any]) -> str | None:
    """The planner's report when `p` has --hours or --loss, else None (the normal plan runs). `gpus`,
    `mfu`, `seq_len`: `gerbil plan`'s; `fixed`: its size and budget flags as given (flag → value), which
    the planner decides itself."""
    from gerbil.fit import planner

    if p.hours is None and p.target_loss is None:
        if p.fit_file or p.runs:
            raise GerbilError("--fit and --runs go with --hours or --loss")
        return None
    for flag, value in fixed.items():
        if value is not None:
            raise GerbilError(f"--hours/--loss choose the size and budget themselves; drop {flag}")
    if mfu is not None and not 0 < mfu <= 1:
        raise GerbilError(f"--mfu must be in (0, 1], got {mfu}")
    fit = planner.load_fit(p.fit_file)
    runs = list(p.runs or [])
    parts: list[Any] = []
    if p.hours is not None:
        if not gpus:
            raise GerbilError("--hours needs --gpu NAME (T4, RTX 2060, RTX 3060, A100, H100, H200)")
        parts += [planner.plan_for_time(g, p.hours, fit, runs, mfu, seq_len) for g in gpus]
    if p.target_loss is not None:
        parts += [planner.plan_for_loss(p.target_loss, fit, g, runs, mfu, seq_len) for g in (gpus or [None])]
    if as_json:
        from gerbil.fsutil import json_safe  # strict JSON: a number that is not finite is null

        return json.dumps(json_safe([x.to_dict() for x in parts] if len(parts) > 1 else parts[0].to_dict()),
                          indent=2, allow_nan=False)
    return "\n\n".join(planner.format_time_plan(x) if isinstance(x, planner.TimePlan) else planner.format_loss_plan(x)
                       for x in parts)
