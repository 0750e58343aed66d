"""Thin command-line interface: each verb parses its flags and calls one library function.

Errors from the library (GerbilError — OptionError included —, ValueError, FileNotFoundError) become one line
on stderr and exit status 2; nothing else is done here. The verbs: `data` (assets, prepare), `models` (train,
export, sample / infill / unmask, demo), `results` (eval, table), and the verbs that live with their
library: `gerbil.plan_command`, `gerbil.fit.command`, `gerbil.suite.command`, `gerbil.finetune.command`,
`gerbil.warmstart_command`.
"""
from __future__ import annotations

import argparse
import os
import sys

import gerbil
from gerbil.cli.data import add_assets, add_prepare
from gerbil.cli.models import add_demo, add_export, add_generate, add_train
from gerbil.cli.results import add_eval, add_table
from gerbil.errors import GerbilError
from gerbil.finetune.command import add_finetune_parser, add_predict_parser
from gerbil.fit.command import add_fit_parser
from gerbil.plan_command import add_plan_parser
from gerbil.suite.command import add_suite_parser
from gerbil.warmstart_command import add_warmstart_parser


def build_parser() -> argparse.ArgumentParser:
    """The `gerbil` parser with every verb."""
    parser = argparse.ArgumentParser(
        prog="gerbil",
        description="Train, evaluate and publish compute-optimal tiny language models on one GPU.",
    )
    parser.add_argument("--version", action="version", version=f"gerbil {gerbil.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (add_demo, add_plan_parser, add_assets, add_prepare, add_train, add_eval, add_export,
                add_table, add_generate):
        add(sub)
    add_suite_parser(sub)
    add_fit_parser(sub)
    add_finetune_parser(sub)
    add_predict_parser(sub)
    add_warmstart_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one `gerbil` command line; returns the exit status (2 for a one-line error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (GerbilError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"gerbil {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gerbil {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into `head` and closed early: not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
