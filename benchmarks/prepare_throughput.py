"""Throughput of ``gerbil prepare`` vs plain HF ``tokenizers`` batch encoding of the same text.

    python benchmarks/prepare_throughput.py                       # Shakespeare (1.57M tokens)
    python benchmarks/prepare_throughput.py --txt-mode paragraph  # the same as ~39k short documents
    python benchmarks/prepare_throughput.py --corpus python --max-files 3000
    python benchmarks/prepare_throughput.py PATH... [--include '*.py']

Both run in this process on the same cores, interleaved ``--repeats`` times; medians and the
range over the repeats (each repeat's ratio) are reported.

* baseline: the documents already in memory (read with gerbil's reader beforehand, not timed), encoded
  by the GPT-2 ``tokenizers.Tokenizer`` (no added tokens) with ``encode_batch`` and with
  ``encode_batch_fast`` (Rayon, all cores), ids extracted; the faster of the two counts;
* gerbil: ``gerbil.data.prepare.prepare`` end to end — reading the files, tokenizing, splitting train/val and
  writing the uint16 store to disk — so gerbil pays for I/O the baseline does not.

Tokens are counted without the store's EOT separators, so both sides count the same ids.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="*", help="corpus files/directories (default: --corpus)")
    ap.add_argument("--corpus", default="shakespeare", choices=("shakespeare", "python"))
    ap.add_argument("--include", action="append", help="include globs for directories")
    ap.add_argument("--txt-mode", default="file", choices=("file", "paragraph"),
                    help="plain text: one document per file, or per blank-line-separated paragraph")
    ap.add_argument("--max-files", type=int, default=None,
                    help="use only the first N files (copied to a temp dir) to keep runs short")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="gerbil encode threads (default: all cores)")
    args = ap.parse_args(argv)

    from gerbil.data.corpus import Corpus
    from gerbil.data.prepare import prepare
    from gerbil.data.tokenizer import Tokenizer

    tok = Tokenizer.load()
    include = args.include
    if args.inputs:
        inputs = [Path(p) for p in args.inputs]
    else:
        from gerbil.assets import corpus_dir

        found = corpus_dir(args.corpus)
        inputs = list(found) if isinstance(found, (list, tuple)) else [found]
        include = include or (["*.py"] if args.corpus == "python" else ["*.txt"])

    work = Path(tempfile.mkdtemp(prefix="gerbil-bench-"))
    try:
        if args.max_files:
            # A fixed subset, copied flat (sorted order) so both sides read exactly the same files.
            files = [f for root in inputs for f in Corpus([root], include=include).files(root)]
            files = files[: args.max_files]
            sub = work / "input"
            sub.mkdir()
            for i, f in enumerate(files):
                shutil.copy(f, sub / f"{i:06d}_{f.name}")
            inputs, include = [sub], ["*"]

        docs = list(Corpus(inputs, include=include, txt_mode=args.txt_mode).documents())
        n_chars = sum(len(d) for d in docs)
        backend = tok.plain_backend  # plain GPT-2 BPE in HF tokenizers, no added tokens

        def baseline(fast: bool) -> tuple[int, float]:
            t0 = time.perf_counter()
            enc = backend.encode_batch_fast if fast else backend.encode_batch
            ids = [e.ids for e in enc(docs, add_special_tokens=False)]
            return sum(len(x) for x in ids), time.perf_counter() - t0

        def gerbil(i: int) -> tuple[int, float]:
            out = work / f"store{i}"
            r = prepare(inputs, out, tok, include=include, txt_mode=args.txt_mode, workers=args.workers,
                        progress=False)
            n = r.n_tokens - r.n_docs  # without the EOT separators
            shutil.rmtree(out)
            return n, r.seconds

        prepare(inputs, work / "warm", tok, include=include, progress=False)  # builds the tiktoken tables
        shutil.rmtree(work / "warm")
        base_rates, fast_rates, gerbil_rates = [], [], []
        n_base = n_gerbil = 0
        for i in range(args.repeats):
            n_base, s = baseline(False)
            base_rates.append(n_base / s)
            n_fast, s = baseline(True)
            fast_rates.append(n_fast / s)
            n_gerbil, s = gerbil(i)
            gerbil_rates.append(n_gerbil / s)

        best_base = max(statistics.median(base_rates), statistics.median(fast_rates))
        g = statistics.median(gerbil_rates)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"corpus: {len(docs):,} documents, {n_chars / 1e6:.1f}M characters, {n_base:,} tokens "
              f"(gerbil counted {n_gerbil:,})")
        print(f"cores: {_cores()} (load average {load:.1f}); repeats: {args.repeats}, medians")
        print(f"HF tokenizers encode_batch      : {statistics.median(base_rates) / 1e6:7.2f} M tokens/s "
              f"(in memory, ids only)")
        print(f"HF tokenizers encode_batch_fast : {statistics.median(fast_rates) / 1e6:7.2f} M tokens/s")
        print(f"gerbil prepare (files → store)  : {g / 1e6:7.2f} M tokens/s")
        print(f"ratio gerbil / best HF baseline : {g / best_base:.2f}x (of the medians)")
        # a shared CPU swings run to run, so the range over the repeats is the figure to quote (issue 19)
        ratios = [gr / max(b, f) for gr, b, f in zip(gerbil_rates, base_rates, fast_rates)]
        print(f"range over {args.repeats} repeats: gerbil {min(gerbil_rates) / 1e6:.2f}-{max(gerbil_rates) / 1e6:.2f}, "
              f"best HF {min(map(max, base_rates, fast_rates)) / 1e6:.2f}-{max(map(max, base_rates, fast_rates)) / 1e6:.2f} "
              f"M tokens/s; ratio per repeat {min(ratios):.2f}-{max(ratios):.2f}x")
        if n_base != n_gerbil:
            print("warning: token counts differ (a document contained the <|endoftext|> text?)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
