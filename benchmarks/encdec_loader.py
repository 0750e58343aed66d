"""Encoder-decoder loader (gerbil.data.encdec_loader) vs the decoder-only loader, same store, same process.

    python benchmarks/encdec_loader.py                         # 64 × 2048, causal / fim / mlm / blender
    python benchmarks/encdec_loader.py --shape 16x512 --steps 20

Store: benchmarks/loader_throughput.py's cached stdlib store (real GPT-2 tokens of Python source). For
each objective: tokens/s of ``EncDecLoader.next_rows(B)`` and of ``Loader.next_sequences(B)`` (B·T
positions per call, after one warm-up call; the median of ``--repeats`` alternating runs), their ratio,
and the encoder-decoder rows' fill (real tokens / positions; the rest is padding).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path


def _bench_store(mb: float):
    spec = importlib.util.spec_from_file_location("loader_throughput", Path(__file__).with_name("loader_throughput.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.bench_store(mb)


def _rate(next_batch, B: int, T: int, steps: int) -> float:
    next_batch(B)  # warm-up: the first build
    t = time.perf_counter()
    for _ in range(steps):
        next_batch(B)
    return steps * B * T / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    from gerbil.data.encdec_loader import EncDecLoader
    from gerbil.data.loader import Loader

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="64x2048")
    ap.add_argument("--objectives", nargs="+", default=["causal", "fim", "mlm", "blender"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store-mb", type=float, default=20.0)
    a = ap.parse_args(argv)
    B, T = (int(x) for x in a.shape.lower().split("x"))
    split = _bench_store(a.store_mb).split("train")
    print(f"{'objective':<9} {'enc':>5} {'chunk':>5} {'encdec tok/s':>13} {'decoder-only':>13} {'ratio':>6} {'fill':>6}")
    for obj in a.objectives:
        rates: dict[str, list[float]] = {"encdec": [], "dec": []}
        fill = 0.0
        for r in range(a.repeats):
            ed = EncDecLoader(split, T, B, objective=obj, seed=r)
            rates["encdec"].append(_rate(ed.next_rows, B, T, a.steps))
            fill = ed.fill
            rates["dec"].append(_rate(Loader(split, T, B, objective=obj, seed=r).next_sequences, B, T, a.steps))
        e, d = statistics.median(rates["encdec"]), statistics.median(rates["dec"])
        print(f"{obj:<9} {ed.encoder_len:>5} {ed.chunk_tokens:>5} {e / 1e6:>12.1f}M {d / 1e6:>12.1f}M "
              f"{e / d:>6.2f} {fill:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
