"""Training-loader throughput per objective, before vs after, and whether a training step waits on it.

    python benchmarks/loader_throughput.py                      # 64 × 2048 and 8 × 256, every objective
    python benchmarks/loader_throughput.py --shapes 64x2048 --objectives mlm blender --repeats 5
    python benchmarks/loader_throughput.py --before-rev none    # after only (no git checkout needed)

Store: ~5M GPT-2 tokens of real text, the ``*.py`` files of the running Python's standard library
(sorted, the first ``--store-mb`` MB of source; site-packages excluded), tokenized once with gerbil's
tokenizer by ``gerbil.data.store.prepare`` and cached under ``$GERBIL_HOME/stores/bench-stdlib-<MB>``.

* before: ``gerbil/data/loader.py`` and ``gerbil/data/objectives.py`` as they were at ``--before-rev``
  (default 5a00a8e, the commit this work started from), read with ``git show`` and imported as private
  modules — the original code measured in this process, on the same store and cores;
* after: the working tree's ``gerbil.data.loader.Loader``.

Both build the same sequences (checked: the first batches of each side are compared before timing).
A measurement is ``--steps`` calls of ``next_sequences(B)`` after one warm-up call; tokens/s counts the
B·T input tokens per call. ``--repeats`` runs alternate before/after; medians are reported.

Then the prefetcher: a consumer that "trains" each step by sleeping ``--gpu-ms`` (the ~60 ms GPU step of
the 6.7m model at 64 × 2048) takes its steps from `gerbil.data.steps.StepPrefetcher`; the time each
``next()`` blocks is the time a step waits on the loader (the first step, which nothing can hide, is
reported apart).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

OBJECTIVES = ("plain", "causal", "fim", "mlm", "blender")
REPO = Path(__file__).resolve().parent.parent


def bench_store(mb: float):
    """The cached stdlib token store (built on first use)."""
    import sysconfig

    from gerbil.assets import gerbil_home
    from gerbil.data.prepare import prepare
    from gerbil.data.store import TokenStore
    from gerbil.data.tokenizer import Tokenizer
    from gerbil.errors import GerbilError

    out = gerbil_home() / "stores" / f"bench-stdlib-{mb:g}"
    try:
        return TokenStore.open(out)
    except GerbilError as e:  # not built yet (or incomplete): build it
        print(f"{out}: {e}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for f in sorted(stdlib.rglob("*.py")):
        if "site-packages" in f.parts or not f.is_file():
            continue
        files.append(f)
        total += f.stat().st_size
        if total >= mb * 1e6:
            break
    print(f"building {out} from {len(files)} files ({total / 1e6:.1f} MB) ...", flush=True)
    r = prepare(files, out, Tokenizer.load(), val_fraction=0.0, progress=False, overwrite=True)
    return r.store


def load_before(rev: str) -> types.ModuleType:
    """The loader module as of ``rev`` (with its own objectives module), imported under private names."""
    def module(path: str, name: str) -> types.ModuleType:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True, capture_output=True,
                             text=True).stdout
        spec = importlib.util.spec_from_loader(name, loader=None)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)
        return mod

    objectives = module("src/gerbil/data/objectives.py", "_before_objectives")
    loader = module("src/gerbil/data/loader.py", "_before_loader")
    # the old loader resolves names through gerbil.data.objectives (today's); give it the old classes
    loader.before_objective = lambda name: "plain" if name == "plain" else objectives.get_objective(name)
    return loader


def measure(make, B: int, T: int, steps: int) -> float:
    ld = make()
    ld.next_sequences(B)  # warm-up: epoch order, first memmap pages
    t0 = time.perf_counter()
    for _ in range(steps):
        ld.next_sequences(B)
    return steps * B * T / (time.perf_counter() - t0)


def same_batches(a, b, B: int, n: int = 3) -> bool:
    for _ in range(n):
        (x0, y0), (x1, y1) = a.next_sequences(B), b.next_sequences(B)
        if not (np.array_equal(x0.numpy(), x1.numpy()) and np.array_equal(y0.numpy(), y1.numpy())):
            return False
    return True


def _busy(n: int) -> float:
    """n iterations of pure-Python work (a training step's kernel launches hold the GIL like this); seconds."""
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i % 7
    return time.perf_counter() - t0


def wait_per_step(split, objective: str, B: int, T: int, steps: int, gpu_s: float, python_s: float) -> dict:
    """Train `steps` steps of B × T behind a StepPrefetcher, each `gpu_s` long: pure-Python work holding the
    GIL for `python_s` (half just before next(), while the producer idles with a full queue; half just after,
    while it builds the next step), the rest asleep (a GPU step releases the GIL). Returns the waits in
    next() (the first step apart) and the two halves' medians: the GIL contention the producer causes."""
    from gerbil.data.loader import Loader
    from gerbil.data.steps import StepPrefetcher

    class Plan:  # the StepPlanLike the prefetcher takes
        def __init__(self, full: int, last: int):
            self.full_sequences, self.last_len, self.tokens = full, last, full * T + last

    n_busy = int(python_s / 2 / max(_busy(200_000) / 200_000, 1e-9)) if python_s > 0 else 0
    waits, idle, building = [], [], []
    with StepPrefetcher(Loader(split, T, B, objective=objective, seed=0), iter([Plan(B, 0)] * steps),
                        micro_batch=B) as pf:
        for _ in range(steps):
            a = _busy(n_busy)  # the producer has had a whole step: its queue is full, it idles
            t0 = time.perf_counter()
            next(pf)
            waits.append(time.perf_counter() - t0)
            b = _busy(n_busy)  # the producer now builds the step after next
            idle.append(a)
            building.append(b)
            time.sleep(max(0.0, gpu_s - a - b - waits[-1]))
    later = sorted(waits[1:])
    return {"first": waits[0], "median": statistics.median(later), "p95": later[int(0.95 * (len(later) - 1))],
            "max": later[-1], "python_idle": statistics.median(idle[1:]),
            "python_building": statistics.median(building[1:])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["64x2048", "8x256"], help="micro_batch x seq_len")
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    ap.add_argument("--steps", type=int, default=0, help="calls per measurement (default: ~4M tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store-mb", type=float, default=10.0, help="MB of stdlib source in the store (~5M tokens)")
    ap.add_argument("--before-rev", default="5a00a8e", help="git revision of the old loader, or 'none'")
    ap.add_argument("--gpu-ms", type=float, default=60.0, help="simulated GPU step for the wait measurement")
    ap.add_argument("--python-ms", type=float, default=10.0,
                    help="of which pure-Python work holding the GIL (kernel launches, optimizer bookkeeping)")
    ap.add_argument("--wait-steps", type=int, default=40)
    ap.add_argument("--wait-objectives", nargs="*", default=["mlm", "blender"], choices=OBJECTIVES)
    args = ap.parse_args(argv)

    from gerbil.data.loader import Loader

    store = bench_store(args.store_mb)
    split = store.split("train")
    before = None if args.before_rev.lower() == "none" else load_before(args.before_rev)
    load = os.getloadavg()
    print(f"store: {split.n_tokens:,} tokens, {split.n_docs:,} documents (stdlib *.py); "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; repeats {args.repeats}, medians")
    print(f"{'shape':>9} {'objective':>9} {'before M tok/s':>15} {'after M tok/s':>14} {'ratio':>7}  "
          f"{'after ms/step':>13}  same")
    for shape in args.shapes:
        B, T = (int(v) for v in shape.lower().split("x"))
        steps = args.steps or max(4, (4 << 20) // (B * T))
        for name in args.objectives:
            def after(T=T, B=B, name=name):
                return Loader(split, T, B, objective=name, seed=0)

            def old(T=T, B=B, name=name):
                return before.Loader(split, T, B, objective=before.before_objective(name), seed=0)

            same = "-" if before is None else ("yes" if same_batches(after(), old(), B) else "NO")
            rb, ra = [], []
            for _ in range(args.repeats):
                if before is not None:
                    rb.append(measure(old, B, T, max(2, steps // 4)))
                ra.append(measure(after, B, T, steps))
            b, a = (statistics.median(rb) if rb else float("nan")), statistics.median(ra)
            print(f"{shape:>9} {name:>9} {b / 1e6:15.2f} {a / 1e6:14.2f} {a / b:6.1f}x  "
                  f"{B * T / a * 1e3:13.2f}  {same}", flush=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    if args.wait_objectives:
        B, T = (int(v) for v in args.shapes[0].lower().split("x"))
        print(f"\nstep wait with StepPrefetcher: {B} x {T} per step, {args.wait_steps} steps of {args.gpu_ms:g} ms "
              f"(sleep, of which {args.python_ms:g} ms pure-Python work holding the GIL)")
        for name in args.wait_objectives:
            w = wait_per_step(split, name, B, T, args.wait_steps, args.gpu_ms / 1e3, args.python_ms / 1e3)
            print(f"  {name:>8}: wait in next(): first step {w['first'] * 1e3:.2f} ms, later steps median "
                  f"{w['median'] * 1e3:.3f} ms, p95 {w['p95'] * 1e3:.3f} ms, max {w['max'] * 1e3:.3f} ms; "
                  f"Python work (medians) {w['python_idle'] * 1e3:.2f} ms beside the idle producer, "
                  f"{w['python_building'] * 1e3:.2f} ms beside the building one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
