"""`gerbil suite plan|run|status|table|plot|export`: the suite verbs, as one sub-parser.

`gerbil.cli` adds them with ``add_suite_parser(sub)``; until then (and in tests)
``python -m gerbil.suite.command run SUITE --out DIR`` runs the same code. Each verb calls one library
function and prints; errors are one line (exit 2), a suite with failed or blocked runs exits 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from gerbil.errors import GerbilError
from gerbil.eval.table import render
from gerbil.options import Options, add_arguments, config_from_args, opt, section, setup_logging
from gerbil.suite.planning import cascade_line, format_suite_plan, plan_suite
from gerbil.suite.plot import plot_suite
from gerbil.suite.publish import export_suite
from gerbil.suite.results import SUITE_METRICS, suite_records
from gerbil.suite.runner import RunOptions, run_suite
from gerbil.suite.spec import load_suite, shipped_suites
from gerbil.suite.state import SuiteDir, format_states, run_states
from gerbil.train.loggers import check_spec
from gerbil.units import fmt_duration

_EPILOG = "Suite files, the cascade and Slurm arrays: docs/suites.md."


@section("the suite")
class _SuiteWhere(Options):
    suite: str | None = opt(None, f"suite file, or a shipped suite: {', '.join(shipped_suites())}", flag="SUITE",
                            required=True)
    out: str | None = opt(None, "the suite directory (created; reused to resume)", metavar="DIR", required=True)
    data: str | None = opt(None, "token store for runs that name no data or corpus", metavar="STORE")


# a dataclass takes its fields from the last base first: the suite, then this worker's options
@dataclass
class SuiteRun(RunOptions, _SuiteWhere):
    """`gerbil suite run`'s options: the suite, its directory, and how this worker runs (`RunOptions`)."""

    _what = "suite run option"


def add_suite_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `suite` and its verbs to `gerbil`'s sub-parsers; returns the `suite` parser."""
    shipped = ", ".join(shipped_suites())
    p = sub.add_parser(
        "suite", help="plan, run, watch, tabulate, plot and publish a suite of runs",
        description="A suite is a YAML file (or a shipped suite by name: " + shipped + ") describing many "
                    "runs: a grid of sizes x classes x objectives x seeds, class cascades, star continuations "
                    "and explicit runs. " + _EPILOG, epilog=_EPILOG)
    verbs = p.add_subparsers(dest="suite_command", metavar="VERB")
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

    v = verbs.add_parser("plan", help="dry run: tokens, FLOPs and hours per GPU for every run, cascade savings",
                         description="Read and validate a suite and print every run with its budget, the tokens it "
                                     "trains itself, its FLOPs and the estimated time on each GPU type (FLOPs / "
                                     "(peak x an MFU estimate per size)), each cascade's savings against "
                                     "independent runs, and the total. Nothing is trained or written.")
    v.add_argument("suite", metavar="SUITE", help=f"suite file, or a shipped suite: {shipped}")
    v.add_argument("--gpu", action="append", metavar="NAME",
                   help="estimate on this GPU (repeatable; default T4, RTX 2060, RTX 3060, A100, H100, H200)")
    v.add_argument("--json", action="store_true", help="print the plan as JSON")
    v.set_defaults(func=_cmd_plan)

    v = verbs.add_parser(
        "run", help="train and evaluate every run (resumable; start it N times for N workers)",
        description="Train every run of SUITE in dependency order, evaluate each finished run on the suite's "
                    "tasks, record everything in DIR (suite.json, registry/<run>.json, runs/<run>/) and write "
                    "the table as Markdown and CSV in DIR (table.csv beside it). Returns when every run is done, failed or blocked. "
                    "Interrupted (even kill -9)? Run the same command again: finished runs are kept, the "
                    "interrupted one resumes from its checkpoint. Several workers: start the command several "
                    "times on the same DIR (one per GPU with CUDA_VISIBLE_DEVICES, or a Slurm job array on a "
                    "shared filesystem); runs are claimed atomically, a dead worker's claim is taken over "
                    "(same host: its pid is gone; otherwise after 2 minutes without a heartbeat). "
                    "Exit status: 0 all done, 1 some run failed or is blocked, 2 bad input.", epilog=_EPILOG)
    add_arguments(v, SuiteRun)
    v.set_defaults(func=_cmd_run)

    v = verbs.add_parser("status", help="one line per run: status, worker, tokens, loss, ETA",
                         description="Where every run of the suite in DIR stands: done, running (on which "
                                     "worker) or evaluating, pending (interrupted runs resume), waiting for a "
                                     "parent or a trunk checkpoint, failed (with the reason), blocked (its parent "
                                     "failed); tokens, last loss, validation loss and ETA.")
    v.add_argument("dir", metavar="DIR", help="the suite directory")
    v.add_argument("--json", action="store_true", help="a JSON list of runs (name, status, worker, tokens, ...)")
    v.set_defaults(func=_cmd_status)

    v = verbs.add_parser("table", help="the seed's results table for the suite's runs",
                         description="The seed's columns for every run of the suite that has a checkpoint, in "
                                     "the suite's order (cascade branches marked), with the seed's published "
                                     "rows below.")
    v.add_argument("dir", metavar="DIR", help="the suite directory")
    v.add_argument("--format", default="md", choices=["md", "csv", "json"], help="output format (default md)")
    v.add_argument("--no-reference", dest="reference", action="store_false", default=True,
                   help="leave out the seed's rows and the scores to beat")
    v.add_argument("--metrics", default=SUITE_METRICS, metavar="LIST",
                   help="extra columns as `gerbil table --metrics` (default bpb: each evaluated task's loss; '' for none)")
    v.set_defaults(func=_cmd_table)

    v = verbs.add_parser("plot", help="PNG plots: loss vs tokens, evals vs FLOPs, the cascade tree",
                         description="Write PNGs (matplotlib): validation loss vs tokens for every run (log x), "
                                     "each eval metric vs training FLOPs, each cascade's trunk and branches "
                                     "(learning rate vs tokens, final validation losses), and metrics vs tokens "
                                     "for runs evaluated at every checkpoint.")
    v.add_argument("dir", metavar="DIR", help="the suite directory")
    v.add_argument("--out", metavar="PLOTS", help="folder for the PNGs (default DIR/plots)")
    v.set_defaults(func=_cmd_plot)

    v = verbs.add_parser("export", help="every finished run as a transformers folder + the suite's table",
                         description="Write every finished run of the suite in DIR as a transformers GPT-J folder "
                                     "(weights, tokenizer, model card with class, tokens, batch, losses and eval "
                                     "scores) under OUT/<run>/, plus a README in OUT with the suite's table and "
                                     "OUT/upload.sh with the `hf upload` command for each (nothing is uploaded).")
    v.add_argument("dir", metavar="DIR", help="the suite directory")
    v.add_argument("--out", required=True, metavar="OUT", help="folder to write the exports into")
    v.add_argument("--org", default="YOUR-ORG", help="hub organization or user for upload.sh (default YOUR-ORG)")
    v.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype of the saved weights (default float32)")
    v.set_defaults(func=_cmd_export)
    return p


# ------------------------------------------------------------------------------------------ verbs
def _cmd_plan(args: argparse.Namespace) -> int:
    plan = plan_suite(load_suite(args.suite), gpus=args.gpu)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else format_suite_plan(plan))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    opts = config_from_args(args, SuiteRun)
    setup_logging()
    if opts.log:
        check_spec(opts.log)
    suite = load_suite(opts.suite, data=opts.data)
    out = run_suite(suite, opts.out, opts)
    counts: dict[str, int] = {}
    for s in out.statuses.values():
        counts[s] = counts.get(s, 0) + 1
    print(f"suite {suite.name}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
          + f" ({fmt_duration(out.seconds)})")
    for name in out.failed:
        rec = SuiteDir(opts.out).record(name) or {}
        print(f"  failed: {name}: {rec.get('reason')}")
    for name in out.blocked:
        print(f"  blocked: {name}")
    for c in out.cascades:
        line = cascade_line(c, suite.budget_scale)
        if c.get("seconds_ratio") is not None:
            line += (f"; training time {fmt_duration(c['seconds'])} vs ~{fmt_duration(c['independent_seconds_estimate'])}"
                     f" ({c['seconds_ratio']:.2f}x, independent runs at the trunk's measured rate)")
        print(line)
    print(f"table: {out.table_md} {out.table_csv}")
    return 0 if out.ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    sdir = SuiteDir(args.dir)
    states = run_states(sdir, sdir.read_suite())
    if args.json:
        print(json.dumps([s.to_dict() for s in states.values()], indent=1))
    else:
        print(format_states(states))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    sdir = SuiteDir(args.dir)
    records, marks = suite_records(sdir, sdir.read_suite())
    print(render(records, fmt=args.format, reference=args.reference, marks=marks, metrics=args.metrics), end="")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    for p in plot_suite(args.dir, args.out):
        print(p)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    setup_logging()
    out = export_suite(args.dir, args.out, org=args.org, dtype=args.dtype)
    for p in out.exports:
        print(f"exported {p}")
    for name, why in out.skipped.items():
        print(f"skipped {name}: {why}")
    print(f"table: {out.readme}\nupload: {out.upload_script} (review it, then run it: `hf auth login` first)")
    return 0


# ------------------------------------------------------------------------------------------ standalone
def main(argv: list[str] | None = None) -> int:
    """`python -m gerbil.suite.command VERB ...` — the same verbs as `gerbil suite VERB ...`."""
    parser = argparse.ArgumentParser(prog="gerbil")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_suite_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "suite":
        argv = ["suite"] + argv
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (GerbilError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"gerbil suite: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gerbil suite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
