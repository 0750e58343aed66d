"""Cascade quality: each class's cascade branch vs an independent cosine run at the same budget.

    python benchmarks/cascade_quality.py                 # ~30-50 min on 2 CPU cores, 2 workers
    python benchmarks/cascade_quality.py --scale 0.02    # a quicker, coarser look

The proxy (why not 3.3m: its 50k-row head makes every token cost ~10 MFLOP; on 2 shared CPU cores that is
~1k tokens/s, hours for one trunk): a byte-level GPT-J (d_model 64, 4 layers, 4 heads, vocabulary 257 = 256
bytes + end-of-text, 231,681 parameters) on the built-in Shakespeare corpus as bytes (4.9M training
tokens, one document per paragraph, a 2% validation split of 104k tokens). Class budgets are the real
ratios × parameters × `--scale` (default 0.06: A = 278k tokens, E = 3.95M, under one epoch), batch 4096
tokens (16 × 256), peak LR 1e-2 for every run (of 3e-3, 1e-2 and 2e-2, the best after a 60-step cosine run:
validation 2.677, 2.635, 2.658 — measured).

Both sides are one `gerbil suite` (so the benchmark runs the real thing, with `--workers` worker processes
on one directory): a grid with `cascade: true` (one WSD trunk to E's budget with a 20% cooldown, branches
from its checkpoints at 0.8 × each class budget, cooling to 0) and a grid of independent cosine runs
(1% warmup, cosine to 10% of the peak) for every class, each for `--seeds` seeds. The score is the
validation loss (nats per byte) at the end of each run, on the same 65,536 validation tokens.

Reported per class: the cascade's and the independent runs' losses (per seed), Δ = mean cascade − mean
cosine, the seed-to-seed spread (the larger max − min of the two sides), and the verdict: "same" when
|Δ| ≤ max(0.02, spread) (the goal), else "better" (Δ < 0) or "worse"; plus tokens and training seconds
(result.json) of the cascade against the independent runs. The cascade's branches are the runs of classes
A–D; E is the trunk itself.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CLASSES = ["A", "B", "C", "D", "E"]
MODEL = {"d_model": 64, "n_layer": 4, "n_head": 4, "rotary_dim": 8, "vocab_size": 257, "seq_len": 256}
STORE_SHA = "bytes-utf8-eot256"


def byte_store(path: Path) -> Path:
    """Shakespeare as UTF-8 bytes (ids 0-255, end-of-text 256), one document per paragraph."""
    import numpy as np

    from gerbil.assets import corpus_dir
    from gerbil.data.store import TokenStore
    from gerbil.errors import GerbilError

    try:
        TokenStore.open(path, STORE_SHA)
        return path
    except GerbilError:
        pass
    docs = []
    for f in sorted(Path(corpus_dir("shakespeare")).glob("*.txt")):
        for para in f.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            b = para.strip().encode("utf-8")
            if b:
                docs.append(np.frombuffer(b, dtype=np.uint8).astype(np.uint16))
    TokenStore.write(path, docs, tokenizer_sha256=STORE_SHA, vocab_size=257, eot_id=256, val_fraction=0.02,
                     overwrite=True)
    return path


def suite_dict(store: Path, scale: float, seeds: list[int]) -> dict:
    return {
        "name": "cascade-quality",
        "description": "cascade branches vs independent cosine runs, byte-level proxy",
        "data": str(store), "tokenizer_sha256": STORE_SHA,
        "models": {"byte": MODEL},
        "seq_len": 256, "batch_tokens": 4096, "micro_batch": 16, "lr": 0.01, "val_tokens": 65536,
        "budget_scale": scale, "eval": {"tasks": []},
        "grid": [
            {"sizes": ["byte"], "classes": CLASSES, "seeds": seeds, "cascade": True, "name_suffix": "-cascade"},
            {"sizes": ["byte"], "classes": CLASSES, "seeds": seeds, "name_suffix": "-cosine"},
        ],
    }


def run_workers(suite_file: Path, out: Path, workers: int, device: str) -> float:
    """`workers` processes of `gerbil suite run` on one directory (one torch thread each: on 2 cores two
    single-threaded workers beat one two-threaded one for this small model); returns the wall time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "gerbil.suite.command", "run", str(suite_file), "--out", str(out), "--device", device,
           "--poll", "2"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd + ["--worker", f"bench{i}"], env=env) for i in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f"cascade_quality: a worker exited with {codes}")
    return time.perf_counter() - t0


def report(out: Path, seeds: list[int]) -> dict:
    from gerbil.suite.planning import cascade_savings
    from gerbil.suite.state import SuiteDir

    sdir = SuiteDir(out)
    suite = sdir.read_suite()
    res = {r.name: sdir.run_dir(r.name).read_result() or {} for r in suite.runs}
    rows = []
    for cls in CLASSES:
        cas = [res[f"Gerbil-{cls}-byte-cascade-s{s}" if len(seeds) > 1 else f"Gerbil-{cls}-byte-cascade"]["val_loss"]
               for s in seeds]
        cos = [res[f"Gerbil-{cls}-byte-cosine-s{s}" if len(seeds) > 1 else f"Gerbil-{cls}-byte-cosine"]["val_loss"]
               for s in seeds]
        spread = max(max(cas) - min(cas), max(cos) - min(cos))
        delta = statistics.mean(cas) - statistics.mean(cos)
        spec = suite.get(f"Gerbil-{cls}-byte-cascade-s{seeds[0]}" if len(seeds) > 1 else f"Gerbil-{cls}-byte-cascade")
        tol = max(0.02, spread)
        verdict = "same" if abs(delta) <= tol else ("better" if delta < 0 else "worse")
        rows.append({"class": cls, "budget": spec.budget, "role": spec.role, "branch_at": spec.start,
                     "cascade": cas, "cosine": cos, "delta": delta, "spread": spread, "tolerance": tol,
                     "verdict": verdict})
    cas_runs = [r for r in suite.runs if r.name.endswith(tuple(f"-cascade-s{s}" for s in seeds)) or r.name.endswith("-cascade")]
    cos_runs = [r for r in suite.runs if r not in cas_runs]
    tokens = {"cascade": sum(r.tokens for r in cas_runs), "cosine": sum(r.tokens for r in cos_runs)}
    seconds = {"cascade": sum(float(res[r.name].get("seconds") or 0) for r in cas_runs),
               "cosine": sum(float(res[r.name].get("seconds") or 0) for r in cos_runs)}
    nominal = [c.to_dict() for c in cascade_savings(suite)][:1]
    return {"rows": rows, "tokens": tokens, "seconds": seconds, "nominal": nominal}


def format_report(rep: dict, args: argparse.Namespace, wall: float) -> str:
    lines = [f"cascade quality — byte-level proxy (d64 L4, 231,681 params), Shakespeare bytes, scale {args.scale:g}, "
             f"seeds {' '.join(map(str, args.seeds))}, validation loss in nats/byte (65,536 tokens)", "",
             "| class | budget | branch leaves trunk at | cascade (per seed) | cosine (per seed) | Δ cascade−cosine | "
             "seed spread | cascade is (tolerance max(0.02, spread)) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        where = "— (trunk, own cooldown)" if r["role"] == "trunk" else f"{r['branch_at']:,}"
        lines.append(f"| {r['class']} | {r['budget']:,} | {where} | {' / '.join(f'{x:.4f}' for x in r['cascade'])} | "
                     f"{' / '.join(f'{x:.4f}' for x in r['cosine'])} | {r['delta']:+.4f} | {r['spread']:.4f} | "
                     f"{r['verdict']} |")
    t, s = rep["tokens"], rep["seconds"]
    lines += ["", f"tokens: cascade {t['cascade']:,} vs independent {t['cosine']:,} ({t['cascade'] / t['cosine']:.3f}x)",
              f"training seconds (result.json, all seeds): cascade {s['cascade']:.0f} s vs independent "
              f"{s['cosine']:.0f} s ({s['cascade'] / max(s['cosine'], 1e-9):.3f}x)",
              f"wall time of the whole benchmark: {wall / 60:.1f} min with {args.workers} worker(s)"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="bench-out/cascade-quality", help="work folder (store, suite, runs); reused")
    p.add_argument("--scale", type=float, default=0.06, help="budget_scale: class budgets × this (default 0.06)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default 0 1)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = p.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = byte_store(work / "store")
    import yaml

    suite_file = work / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(suite_dict(store, args.scale, args.seeds), sort_keys=False))
    wall = run_workers(suite_file, work / "suite", args.workers, args.device)
    rep = report(work / "suite", args.seeds)
    (work / "report.json").write_text(json.dumps(rep, indent=1))
    print(format_report(rep, args, wall))


if __name__ == "__main__":
    main()
