"""What several verbs share: `--nproc N` and the relaunch under torchrun it means."""
from __future__ import annotations

import argparse
import os

from gerbil.options import check_range


def add_nproc(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--nproc", type=int, default=None, metavar="N", help=help)


def relaunch(args: argparse.Namespace) -> int | None:
    """`--nproc N` (N > 1) outside torchrun: run this very command line again under torchrun on this
    machine, without --nproc; None when there is nothing to relaunch."""
    check_range("--nproc", args.nproc, "positive")
    if not args.nproc or args.nproc <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    from gerbil.train.distributed import launch  # lazy: torch

    argv, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        argv.append(a)
    return launch(args.nproc, argv)
