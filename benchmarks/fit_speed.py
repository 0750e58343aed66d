"""Speed of `gerbil fit`: the default fit (approach 3, 1,000-resample run bootstrap, plots) of ~250 points,
and a fit of a few hundred points without bootstrap.

    PYTHONPATH=src python benchmarks/fit_speed.py                    # 250 points, 1000 resamples, all cores
    PYTHONPATH=src python benchmarks/fit_speed.py --points 500 --bootstrap 0

The points are synthetic, drawn like Hoffmann et al. 2022's runs (log-uniform 70M-16B parameters, 2-200
tokens per parameter) from the Besiroglu et al. 2024 law with 1% multiplicative noise, written to a CSV
and fitted through `run_fit` exactly as `gerbil fit POINTS.csv --out DIR` does. Prints the wall time of
each stage; the goal is <= 60 s for the default on 2 cores. Say which machine produced the numbers.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def make_points(path: Path, n: int, seed: int = 0) -> Path:
    from gerbil.fit.laws import get_form

    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    D = N * np.exp(rng.uniform(np.log(2), np.log(200), n))
    p = {"E": 1.817, "A": 482.0, "B": 2085.4, "alpha": 0.3478, "beta": 0.3658}
    L = get_form("chinchilla").predict(p, N, D) * np.exp(rng.normal(0, 0.01, n))
    path.write_text("params,tokens,loss\n" + "".join(f"{a:.0f},{b:.0f},{c:.6f}\n" for a, b, c in zip(N, D, L)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=250)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=None, help="default: all cores")
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args()

    from gerbil.fit.laws import default_workers
    from gerbil.fit.report import FitOptions, run_fit

    with tempfile.TemporaryDirectory() as tmp:
        csv = make_points(Path(tmp) / "points.csv", a.points)
        t0 = time.perf_counter()
        r = run_fit([csv], Path(tmp) / "out", FitOptions(bootstrap=a.bootstrap, workers=a.workers,
                                                         plots=not a.no_plots))
        total = time.perf_counter() - t0
    conv = r["convergence"]
    bs = r["fits"][0]["bootstrap"]
    print(f"machine: {os.cpu_count()} cores visible, {a.workers or default_workers()} workers")
    print(f"points: {r['n_points']}; approach-3 fit (grid + {len(conv['refined_starts'])} L-BFGS refinements): "
          f"{conv['seconds']:.2f} s, converged {r['converged']}")
    if bs:
        print(f"bootstrap: {bs['resamples']} resamples, {bs['kept']} kept, {bs['seconds']:.2f} s")
    print(f"total run_fit (read, fit, bootstrap, fit.json/fit.md{'' if a.no_plots else ', plots'}): {total:.2f} s")
    print("estimates: " + ", ".join(f"{k}={r[k]:.4g}" for k in ("E", "A", "B", "alpha", "beta")))


if __name__ == "__main__":
    main()
