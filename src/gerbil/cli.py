"""Thin command-line interface: each verb parses its flags and calls one library function.

Errors from the library (ValueError, FileNotFoundError, GerbilError) become one line on stderr and
exit status 2; nothing else is done here.
"""
from __future__ import annotations

import argparse
import sys

from gerbil.errors import GerbilError


# ---------------------------------------------------------------------------------------------- plan
def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="token budget, batch, steps, FLOPs and time for a size and class")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    raise GerbilError("plan: not implemented yet")


# -------------------------------------------------------------------------------------------- assets
def _add_assets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assets", help="fetch and verify the pinned offline assets into the cache")
    p.set_defaults(func=_cmd_assets)


def _cmd_assets(args: argparse.Namespace) -> int:
    raise GerbilError("assets: not implemented yet")


# ------------------------------------------------------------------------------------------- prepare
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="tokenize corpus files into a token store")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    raise GerbilError("prepare: not implemented yet")


# --------------------------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model of a named size and class")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    raise GerbilError("train: not implemented yet")


# -------------------------------------------------------------------------------------------- export
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run or checkpoint as a transformers GPT-J folder")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    raise GerbilError("export: not implemented yet")


# ---------------------------------------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="hellaswag / lambada / winogrande exactly as lm-evaluation-harness")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    raise GerbilError("eval: not implemented yet")


# --------------------------------------------------------------------------------------------- table
def _add_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="the seed's results table for a set of runs")
    p.set_defaults(func=_cmd_table)


def _cmd_table(args: argparse.Namespace) -> int:
    raise GerbilError("table: not implemented yet")


# ------------------------------------------------------------------------------ sample/infill/unmask
def _add_generate(sub: argparse._SubParsersAction) -> None:
    pass  # sample / infill / unmask (Blender issue)


# ---------------------------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: assets, prepare, train, evaluate, print the row")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    raise GerbilError("demo: not implemented yet")


# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gerbil",
        description="Train, evaluate and publish compute-optimal tiny language models on one GPU.",
    )
    parser.add_argument("--version", action="version", version=f"gerbil {__import__('gerbil').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_plan, _add_assets, _add_prepare, _add_train, _add_eval, _add_export,
                _add_table, _add_generate):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
