"""`gerbil eval` and `gerbil table`: a model's scores on the evaluation tasks, and the seed's results table."""
from __future__ import annotations

import argparse

from gerbil.cli.common import add_nproc, relaunch
from gerbil.errors import GerbilError
from gerbil.eval.table import render
from gerbil.eval.tasks import GROUPS, METRIC_KINDS, TASKS
from gerbil.options import check_range


# ---------------------------------------------------------------------------------------------- eval
def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="hellaswag, lambada, winogrande, piqa, ARC, ... exactly as lm-evaluation-harness, "
                                    "with task losses (bits per byte)")
    p.add_argument("path", metavar="RUN_OR_EXPORT",
                   help="a run directory, a checkpoint directory or a transformers GPT-J export folder")
    names = ", ".join(t.name + (f" ({', '.join(t.aliases)})" if t.aliases else "") for t in TASKS.values())
    groups = "; ".join(f"{g} = {','.join(v)}" for g, v in GROUPS.items() if g != "all")
    p.add_argument("--tasks", default="seed",
                   help=f"comma-separated tasks and groups: {names}; groups {groups}; all "
                        "(default: seed)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N items of each task (results are marked partial)")
    p.add_argument("--batch-size", type=int, default=None, help="max rows per forward (default: by token budget)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="weights dtype (default fp32, the harness's advice for small models)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help='also write {"results": {task: {metric: value}}} to FILE')
    p.add_argument("--no-save", action="store_true", help="do not write eval/TASK.json into the run")
    p.add_argument("--all-checkpoints", action="store_true",
                   help="evaluate every kept checkpoint of the run (results already on disk are read, not "
                        "recomputed) and print a step x task table of the learning curves")
    add_nproc(p, "score the items on N processes of this machine (torchrun; one per GPU); the per-item "
                  "results are those of one process")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from gerbil.eval.evaluate import evaluate, format_results  # lazy: torch
    from gerbil.train.distributed import from_env

    check_range("--batch-size", args.batch_size, "positive")
    check_range("--limit", args.limit, "positive")
    if (rc := relaunch(args)) is not None:
        return rc
    if args.all_checkpoints:
        from gerbil.eval.curves import evaluate_checkpoints, format_curves  # lazy: torch

        if args.output or args.no_save:
            raise GerbilError("--all-checkpoints writes each checkpoint's results into the run; "
                              "--output and --no-save do not apply")
        skipped: list[tuple[str, str]] = []
        results = evaluate_checkpoints(args.path, args.tasks, limit=args.limit, device=args.device,
                                       dtype=args.dtype, batch_size=args.batch_size, skipped=skipped)
        if from_env().is_main:
            print(format_curves(results, skipped))
        return 0
    records = evaluate(args.path, args.tasks, limit=args.limit, batch_size=args.batch_size,
                       device=args.device, dtype=args.dtype, output=args.output, write=not args.no_save)
    if not from_env().is_main:
        return 0  # rank 0 reports
    print(format_results(records))
    for rec in records.values():
        if rec.get("written_to"):
            print(f"wrote {rec['written_to']}")
    for task in records:
        if TASKS[task].note:
            print(f"note: {TASKS[task].note}")
    return 0


# --------------------------------------------------------------------------------------------- table
def add_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="the seed's results table for a set of runs")
    p.add_argument("runs", nargs="*", metavar="RUNS",
                   help="run directories or folders of runs (default: ./runs)")
    p.add_argument("--format", default="md", choices=["md", "csv", "json"], help="output format (default md)")
    p.add_argument("--reference", action="store_true",
                   help="add the seed's published rows and the scores to beat (pythia-70m-deduped)")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help="extra columns after the seed's: TASK:KEY (a task or group: piqa:acc, pythia:bpb) or KEY "
                        "(bpb: every evaluated task's), keys " + ", ".join(METRIC_KINDS) + " (e.g. task losses: "
                        "--metrics bpb,lambada:log_perplexity)")
    p.set_defaults(func=_cmd_table)


def _cmd_table(args: argparse.Namespace) -> int:
    print(render(args.runs or None, fmt=args.format, reference=args.reference, metrics=args.metrics), end="")
    return 0
