"""The argparse wiring of `gerbil fit` and of the planner flags of `gerbil plan` (kept here, next to the
library, so `gerbil.cli` only has to call `add_fit_parser` and `add_planner_arguments`/`run_planner`).

Flags are parsed as strings and converted here, so a bad value is a one-line GerbilError (the CLI
prints it as `gerbil fit: error: ...`), never an argparse usage dump or a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any

from gerbil.errors import GerbilError

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


def add_fit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `gerbil fit` on an argparse subparsers object; its handler is `args.func(args) -> int`."""
    p = subparsers.add_parser("fit", help="scaling-law fits (Chinchilla approaches 1-3, Kaplan form) and plots",
                              description=FIT_DESCRIPTION, epilog=FIT_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="run directories, folders of runs, CSV files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for fit.json, fit.md and the plots")
    p.add_argument("--metric", default="val_loss",
                   help="for runs: val_loss (default), train_loss, or TASK:METRIC (hellaswag:acc → 1 - acc)")
    p.add_argument("--params", default="total", choices=["total", "non_embedding", "both"],
                   help="what N counts: total (default, Chinchilla), non_embedding (Kaplan), both side by side")
    p.add_argument("--form", default="chinchilla", choices=["chinchilla", "kaplan", "both"],
                   help="functional form: chinchilla E + A/N^a + B/D^b (default), kaplan, or both")
    p.add_argument("--flops", default="auto", choices=["auto", "6nd", "exact", "column"],
                   help="FLOPs for approaches 1-2: the CSV column, exact per-token count (non-embedding + head "
                        "+ attention, needs the architecture) or 6·N·D; auto picks in that order")
    p.add_argument("--approach", default="auto", metavar="LIST",
                   help="3, 2, 1 or a comma list such as 3,2 (default auto: 3, plus 2 and 1 where the data allow; "
                        "an approach asked for explicitly that cannot run is an error)")
    p.add_argument("--bootstrap", default="1000", metavar="N",
                   help="bootstrap resamples of runs for intervals (default 1000; 0 = none)")
    p.add_argument("--ci", default="95", metavar="PCT", help="interval width in percent (default 95)")
    p.add_argument("--seed", default="0", help="bootstrap seed (default 0)")
    p.add_argument("--workers", default=None, metavar="N", help="bootstrap processes (default: all cores)")
    p.add_argument("--budgets", default="1e16,1e17,1e18,1e19,1e20,1e21", metavar="LIST",
                   help="FLOP budgets for the compute-optimal table (comma list)")
    p.add_argument("--delta", default="1e-3", help="Huber delta on log residuals (default 1e-3, Hoffmann et al.)")
    p.add_argument("--top-k", default="8", metavar="K", help="grid starts refined with L-BFGS (default 8)")
    p.add_argument("--flops-tol", default="0.1", metavar="REL",
                   help="approach 2: points within this relative FLOPs share a budget (default 0.1)")
    p.add_argument("--curve-metric", default="loss", choices=["loss", "val_loss"],
                   help="approach 1: the metrics.jsonl field of the curves (default loss)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="write no PNGs")
    p.add_argument("--json", action="store_true", help="print fit.json instead of the summary")
    cols = p.add_argument_group("CSV columns")
    for flag, dest, default in (("--params-col", "params_col", "params"), ("--tokens-col", "tokens_col", "tokens"),
                                ("--loss-col", "loss_col", "loss"), ("--flops-col", "flops_col", "flops"),
                                ("--non-embedding-col", "non_embedding_col", "non_embedding_params"),
                                ("--run-col", "run_col", "run"), ("--name-col", "name_col", "name")):
        cols.add_argument(flag, dest=dest, default=default, metavar="NAME", help=f"default {default}")
    add_task_law_arguments(p)
    p.set_defaults(func=cmd_fit)
    return p


def _num(text: Any, flag: str, kind: type = float) -> Any:
    try:
        v = kind(float(text)) if kind is int else float(text)
    except (TypeError, ValueError):
        raise GerbilError(f"{flag} expects a number, got {text!r}") from None
    if kind is int and float(text) != v:
        raise GerbilError(f"{flag} expects a whole number, got {text!r}")
    if not math.isfinite(v):
        raise GerbilError(f"{flag} expects a finite number, got {text!r}")
    return v


def fit_options(args: argparse.Namespace) -> Any:
    """FitOptions from parsed `gerbil fit` flags."""
    from gerbil.fit.report import FitOptions
    from gerbil.fit.sources import Columns

    if args.approach.strip().lower() == "auto":
        approaches = None
    else:
        try:
            approaches = tuple(sorted({int(x) for x in args.approach.split(",") if x.strip()}))
        except ValueError:
            raise GerbilError(f"--approach expects auto or a list of 1, 2, 3, got {args.approach!r}") from None
    try:
        budgets = tuple(float(x) for x in args.budgets.split(",") if x.strip())
    except ValueError:
        raise GerbilError(f"--budgets expects FLOP counts such as 1e18,1e19, got {args.budgets!r}") from None
    return FitOptions(
        metric=args.metric,
        columns=Columns(args.params_col, args.tokens_col, args.loss_col, args.flops_col, args.non_embedding_col,
                        args.run_col, args.name_col),
        params=args.params, flops=args.flops,
        forms=("chinchilla", "kaplan") if args.form == "both" else (args.form,),
        approaches=approaches, bootstrap=_num(args.bootstrap, "--bootstrap", int), seed=_num(args.seed, "--seed", int),
        workers=_num(args.workers, "--workers", int) if args.workers is not None else None,
        ci=_num(args.ci, "--ci"), delta=_num(args.delta, "--delta"), top_k=_num(args.top_k, "--top-k", int),
        budgets=budgets, flops_tol=_num(args.flops_tol, "--flops-tol"), curve_metric=args.curve_metric,
        plots=args.plots)


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
    from gerbil.fit.report import run_fit

    if is_task_law(args):
        return cmd_task_fit(args)
    result = run_fit(args.sources, args.out, fit_options(args))
    print(json.dumps(result, indent=2) if args.json else summarize(result, args.out))
    return 0


# ------------------------------------------------------------------------------------ task scaling law
# `--task TASK` / `--task-law`: the two-step task law (gerbil.fit.tasklaw, docs/fit.md "Task scaling law")
# instead of the loss law; its flags are declared, converted and dispatched only here.
def add_task_law_arguments(p: argparse.ArgumentParser) -> None:
    """The task-law flags of `gerbil fit`."""
    t = p.add_argument_group(
        "task scaling law (two steps: N, D -> task loss -> metric)",
        "Fits step 1, task loss L(N, D) = E + A/N^alpha + B/D^beta, on each run's final point, and step 2, "
        "metric = chance + (ceiling - chance) / (1 + exp(-k (L0 - L))), on all points (checkpoints included); "
        "--loss-col names the task-loss column (CSV) or eval-record key (runs; default: bpb, else the "
        "log-perplexity, else the per-token NLL).")
    t.add_argument("--task", metavar="TASK", help="fit the task law of this eval task (e.g. hellaswag): from runs, "
                   "every checkpoint's eval record; sets the chance level")
    t.add_argument("--task-law", action="store_true", help="fit the task law (CSV: --loss-col and --metric-col)")
    t.add_argument("--metric-col", default="acc", metavar="NAME",
                   help="the metric: a CSV column or the eval-record key (default acc; a fraction in [0, 1])")
    t.add_argument("--chance", metavar="X", help="metric at chance (default: the task's; 0.25 for four choices)")
    t.add_argument("--predict", action="append", default=[], metavar="N:D",
                   help="predict the task loss and metric at N parameters, D tokens (repeatable; e.g. 2.8e9:3e11)")


def is_task_law(args: argparse.Namespace) -> bool:
    """Whether `gerbil fit` fits the task law; task-law flags without it are a one-line error."""
    on = bool(getattr(args, "task", None) or getattr(args, "task_law", False))
    if not on:
        for flag, dest in (("--predict", "predict"), ("--chance", "chance")):
            if getattr(args, dest, None):
                raise GerbilError(f"{flag} goes with --task TASK or --task-law")
    return on


def task_law_options(args: argparse.Namespace) -> Any:
    """TaskLawOptions from parsed `gerbil fit` flags."""
    from gerbil.fit.report import FitOptions
    from gerbil.fit.sources import Columns
    from gerbil.fit.taskreport import TaskLawOptions
    from gerbil.fit.tasklaw import parse_predict

    d = FitOptions()
    for flag, dest, default, value in (("--form", "form", "chinchilla", args.form), ("--params", "params", "total", args.params),
                                       ("--approach", "approach", "auto", args.approach),
                                       ("--metric", "metric", d.metric, args.metric)):
        if value != default:
            raise GerbilError(f"the task law fits the Chinchilla form on total parameters and its own metric: drop {flag}")
    return TaskLawOptions(
        task=args.task, chance=_num(args.chance, "--chance") if args.chance is not None else None,
        columns=Columns(args.params_col, args.tokens_col, args.loss_col, args.flops_col, args.non_embedding_col,
                        args.run_col, args.name_col),
        metric_col=args.metric_col, predict=tuple(parse_predict(x) for x in args.predict),
        bootstrap=_num(args.bootstrap, "--bootstrap", int), seed=_num(args.seed, "--seed", int),
        workers=_num(args.workers, "--workers", int) if args.workers is not None else None,
        ci=_num(args.ci, "--ci"), delta=_num(args.delta, "--delta"), top_k=_num(args.top_k, "--top-k", int),
        plots=args.plots)


def cmd_task_fit(args: argparse.Namespace) -> int:
    """`gerbil fit --task TASK` / `--task-law`."""
    from gerbil.fit.taskreport import run_task_fit, summarize_task

    result = run_task_fit(args.sources, args.out, task_law_options(args))
    print(json.dumps(result, indent=2) if args.json else summarize_task(result, args.out))
    return 0


# ------------------------------------------------------------------------------------------- planner
def add_planner_arguments(plan_parser: argparse.ArgumentParser) -> None:
    """Add the fit-based planner's flags to an existing `gerbil plan` parser (which already has
    `--gpu NAME`, action="append"; also read: `--mfu`, `--seq-len`, `--json` when present)."""
    g = plan_parser.add_argument_group(
        "planning from a scaling-law fit",
        "With --hours (and --gpu): the ladder size, tokens and class with the lowest predicted loss for that "
        "much training; with --loss: the cheapest run reaching that loss. The law is --fit (a `gerbil fit` "
        "fit.json, or besiroglu2024 / chinchilla2022), default the Besiroglu et al. 2024 replication.")
    g.add_argument("--hours", metavar="H", help="GPU hours to spend on one --gpu (e.g. 2)")
    g.add_argument("--loss", dest="target_loss", metavar="L", help="target loss: find the cheapest run reaching it")
    g.add_argument("--fit", dest="fit_file", metavar="FILE",
                   help="fit.json from `gerbil fit`, or besiroglu2024 / chinchilla2022 (default besiroglu2024)")
    g.add_argument("--runs", nargs="+", metavar="DIR",
                   help="run directories / folders trained on the --gpu: their measured tok/s replaces the estimate")


def run_planner(args: argparse.Namespace) -> str | None:
    """The planner's report when --hours or --loss was given, else None (the normal plan runs)."""
    from gerbil.fit import planner

    hours = getattr(args, "hours", None)
    loss = getattr(args, "target_loss", None)
    if hours is None and loss is None:
        if getattr(args, "fit_file", None) or getattr(args, "runs", None):
            raise GerbilError("--fit and --runs go with --hours or --loss")
        return None
    for flag, dest in (("--size", "size"), ("--class", "cls"), ("--tokens", "tokens"), ("--from", "from_run"),
                       ("--ratio", "ratio")):
        if getattr(args, dest, None) is not None:
            raise GerbilError(f"--hours/--loss choose the size and budget themselves; drop {flag}")
    mfu = getattr(args, "mfu", None)
    if mfu is not None:
        s = str(mfu).strip()
        mfu = _num(s[:-1], "--mfu") / 100 if s.endswith("%") else _num(s, "--mfu")
        if not 0 < mfu <= 1:
            raise GerbilError(f"--mfu must be in (0, 1], got {args.mfu}")
    seq_len = _num(getattr(args, "seq_len", None) or 2048, "--seq-len", int)
    fit = planner.load_fit(getattr(args, "fit_file", None))
    gpus = list(getattr(args, "gpu", None) or [])
    runs = list(getattr(args, "runs", None) or [])
    parts: list[Any] = []
    if hours is not None:
        h = _num(hours, "--hours")
        if not gpus:
            raise GerbilError("--hours needs --gpu NAME (T4, RTX 2060, RTX 3060, A100, H100, H200)")
        parts += [planner.plan_for_time(g, h, fit, runs, mfu, seq_len) for g in gpus]
    if loss is not None:
        t = _num(loss, "--loss")
        parts += [planner.plan_for_loss(t, fit, g, runs, mfu, seq_len) for g in (gpus or [None])]
    if getattr(args, "json", False):
        return json.dumps([p.to_dict() for p in parts] if len(parts) > 1 else parts[0].to_dict(), indent=2,
                          default=float)
    return "\n\n".join(planner.format_time_plan(p) if isinstance(p, planner.TimePlan) else planner.format_loss_plan(p)
                       for p in parts)
