"""Fine-tune a pretrained tiny model (and a random-init control) on SpamAssassin and BoolQ; report the
validation accuracy / macro-F1 on the very split `benchmarks/finetune_baseline.py` scores TF-IDF on.

    python benchmarks/finetune_classify.py --base runs/finetune-bench/base-blender-6.7m
    python benchmarks/finetune_classify.py --base RUN --sets spam --epochs 2 --no-control

Each set is the cached JSONL of `gerbil.finetune.datasets` (SpamAssassin bodies; BoolQ "Question: …?
Passage: …"), fine-tuned with `gerbil.finetune.finetune` and its defaults unless a flag says otherwise:
the validation split is `split_validation(fraction 0.1, seed 0)` — the baseline's. BoolQ keeps the head
and tail of long inputs (the question comes first); SpamAssassin keeps the end (the default).

Two numbers per run, because the best epoch is chosen on the validation set itself: **last** (the final
epoch; no selection, comparable to the untuned TF-IDF baseline) and **best** (the epoch the run keeps,
selected by validation macro-F1: optimistic). ``train s`` is the loop's training time (validation and
checkpoints not counted), ``wall s`` everything including reading and tokenizing. The control has the
base model's architecture and prompt format with freshly initialized weights (seed 0). The machine's
load average is printed: the 2-core development box is shared and times move with it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path


def random_base(base: str, out: Path) -> Path:
    """An export of `base`'s architecture and fine-tuning-relevant metadata with re-initialized weights."""
    import torch

    from gerbil.export import export, load_model

    model, meta = load_model(base)
    model.reset_parameters(generator=torch.Generator().manual_seed(0))
    keep = {k: meta.get(k) for k in ("objective", "objective_options", "size", "seq_len")}
    return export(model, out, meta=dict(keep, name="random-init", tokens=0, step=0, run=None))


def run_one(base: str, name: str, train: Path, out: Path, args: argparse.Namespace, truncate: str) -> dict:
    from gerbil.finetune.finetune import finetune

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    r = finetune(dict(base=base, task="classify", train=str(train), out=str(out), epochs=args.epochs,
                      max_len=args.max_len, lr=args.lr, batch_size=args.batch_size, truncate=truncate,
                      patience=0, progress=False, **({"class_weights": args.class_weights}
                                                     if args.class_weights else {})))
    wall = time.perf_counter() - t0
    info = r.info
    return {"run": name, "steps": r.steps, "tokens": r.tokens, "train_s": round(r.seconds, 1),
            "wall_s": round(wall, 1), "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "examples": info["examples"], "untrained": info["initial_validation"], "last": info["last_validation"],
            "best": info["best"]["metrics"], "best_step": info["best"]["step"], "run_dir": str(r.run_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the pretrained run, checkpoint or export")
    ap.add_argument("--sets", default="spam,boolq", help="spam, boolq (comma-separated)")
    ap.add_argument("--runs", default="runs/finetune-bench", help="where the fine-tuning runs go")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--class-weights", default=None, help="none, balanced or numbers (default: none)")
    ap.add_argument("--no-control", dest="control", action="store_false", help="skip the random-init control")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from gerbil.finetune import datasets

    import torch

    runs = Path(args.runs)
    bases = {"pretrained": args.base}
    if args.control:
        bases["random-init"] = str(random_base(args.base, runs / "random-init-base"))
    files = {"spam": (datasets.spam_assassin, "end"), "boolq": (datasets.boolq, "head_tail")}
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, load {os.getloadavg()}")
    rows = []
    for name in args.sets.split(","):
        make, truncate = files[name]
        train = Path(make())
        for init, base in bases.items():
            tag = f"{name}-{init}-lr{args.lr:g}-e{args.epochs}-T{args.max_len}"
            row = run_one(base, f"{name} {init}", train, runs / tag, args, truncate)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| set | model | epochs | steps | last acc | last macro-F1 | best acc | best macro-F1 (step) | "
          "train s | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        last, best = r["last"], r["best"]
        print(f"| {r['run'].split()[0]} | {r['run'].split()[1]} | {args.epochs} | {r['steps']} | "
              f"{last['val_accuracy']:.4f} | {last['val_macro_f1']:.4f} | {best['val_accuracy']:.4f} | "
              f"{best['val_macro_f1']:.4f} ({r['best_step']}) | {r['train_s']} | {r['wall_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
