"""A "fuzzy wrapper": a fine-tuned tiny model imitates a real function and answers locally when it is
confident, calling the real function otherwise. Here the function is ``dateutil.parser.parse`` (free-form
date → ISO date, `gerbil.finetune.datasets.fuzzy_pairs`).

    python benchmarks/fuzzy_wrapper.py --base runs/finetune-bench/base-blender-6.7m
    python benchmarks/fuzzy_wrapper.py --base RUN --n 20000 --epochs 3 --target 0.99

1. `write_fuzzy_splits(n, seed 0)`: train / val / test pairs, split by answer date (no test answer was
   ever a training target).
2. `gerbil finetune --task sft` on train (val: exact match of greedy completions each epoch), defaults
   otherwise (the base's prompt format: ``<causal>`` for a Blender base; template ``{prompt}\\n``).
3. Confidence = the mean token log-probability of the greedy completion (`gerbil predict`'s
   ``logprob``). The threshold is chosen on **val**: the lowest one (most inputs answered locally) whose
   wrapper agrees with the real function on at least ``--target`` of val inputs (a fallback always
   agrees). It is then applied to **test**, and reported there.
4. Timing on test (this machine, see the load average printed): the real function on every input
   (``real``), the model on every input in batches (``model``; the model always runs, it decides), and the
   real function on the fallbacks; speed-up = real / (model + fallback calls). The break-even is the cost
   per call the real function would need for the wrapper to pay off: model time / inputs answered
   locally.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path


def choose_threshold(logprob: list[float], correct: list[bool], target: float) -> float:
    """The lowest confidence threshold whose wrapper agrees with the function on ≥ `target` of inputs."""
    order = sorted(range(len(logprob)), key=lambda i: -logprob[i])
    n, wrong, best = len(order), 0, float("inf")
    for k, i in enumerate(order, 1):  # answer the k most confident locally
        wrong += not correct[i]
        if (k == n or logprob[order[k]] < logprob[i]) and 1 - wrong / n >= target:
            best = logprob[i]  # ties share a threshold: only cut between distinct values
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the pretrained run, checkpoint or export")
    ap.add_argument("--runs", default="runs/finetune-bench")
    ap.add_argument("--n", type=int, default=20_000, help="date pairs in all (80/10/10 by date)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompt-format", default="auto")
    ap.add_argument("--target", type=float, default=0.99, help="wrapper agreement required on val")
    ap.add_argument("--name", default=None, help="run name (default from the options)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import torch

    from gerbil.finetune.datasets import date_answer, write_fuzzy_splits
    from gerbil.finetune.finetune import finetune
    from gerbil.finetune.predict import Predictor

    runs = Path(args.runs)
    data = runs / f"fuzzy-{args.n}"
    if not (data / "meta.json").is_file():
        write_fuzzy_splits(data, n=args.n, seed=0)
    counts = json.loads((data / "meta.json").read_text())["pairs"]
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, load {os.getloadavg()}; pairs {counts}")
    name = args.name or f"fuzzy-{args.prompt_format}-lr{args.lr:g}-e{args.epochs}-b{args.batch_size}"
    t0 = time.perf_counter()
    r = finetune(dict(base=args.base, task="sft", train=str(data / "train.jsonl"), val=str(data / "val.jsonl"),
                      out=str(runs / name), epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      prompt_format=args.prompt_format, patience=0, progress=False))
    wall = time.perf_counter() - t0
    print(json.dumps({"run": str(r.run_dir), "steps": r.steps, "tokens": r.tokens, "train_s": round(r.seconds, 1),
                      "wall_s": round(wall, 1), "untrained": r.info["initial_validation"],
                      "best": r.info["best"]["metrics"], "last": r.info["last_validation"]}), flush=True)

    predictor = Predictor.load(r.run_dir, batch_size=128)
    split = {s: [json.loads(line) for line in (data / f"{s}.jsonl").read_text().splitlines()] for s in ("val", "test")}

    def model_answers(rows: list[dict]) -> tuple[list[dict], float]:
        t = time.perf_counter()
        out = predictor([row["prompt"] for row in rows])
        return out, time.perf_counter() - t

    val_out, _ = model_answers(split["val"])
    val_ok = [o["completion"] == row["completion"] for o, row in zip(val_out, split["val"])]
    threshold = choose_threshold([o["logprob"] for o in val_out], val_ok, args.target)

    test = split["test"]
    t = time.perf_counter()
    real = [date_answer(row["prompt"]) for row in test]
    real_s = time.perf_counter() - t
    assert real == [row["completion"] for row in test]  # the pairs are the function's own answers
    out, model_s = model_answers(test)
    local = [o["logprob"] >= threshold for o in out]
    t = time.perf_counter()
    fallback = [date_answer(row["prompt"]) for row, loc in zip(test, local) if not loc]
    fallback_s = time.perf_counter() - t
    answers, it = [], iter(fallback)
    for o, loc in zip(out, local):
        answers.append(o["completion"] if loc else next(it))
    n, n_local = len(test), sum(local)
    model_ok = sum(o["completion"] == a for o, a in zip(out, real))
    local_ok = sum(o["completion"] == a for o, a, loc in zip(out, real, local) if loc)
    agree = sum(a == b for a, b in zip(answers, real))
    result = {
        "threshold": threshold, "val_model_exact": sum(val_ok) / len(val_ok),
        "val_local_share": sum(o["logprob"] >= threshold for o in val_out) / len(val_out),
        "test_inputs": n, "test_model_exact": model_ok / n, "test_local_share": n_local / n,
        "test_local_precision": local_ok / max(1, n_local), "test_agreement": agree / n,
        "real_us_per_call": 1e6 * real_s / n, "model_us_per_input": 1e6 * model_s / n,
        "wrapper_s": model_s + fallback_s, "real_s": real_s, "speedup": real_s / (model_s + fallback_s),
        "break_even_us_per_call": 1e6 * model_s / max(1, n_local), "load": os.getloadavg(),
    }
    print(json.dumps(result), flush=True)
    print()
    print("| val exact (model alone) | threshold (val) | test exact (model alone) | test answered locally | "
          "local answers correct | wrapper agreement | real µs/call | model µs/input | speed-up | break-even µs/call |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {result['val_model_exact']:.4f} | {threshold:.4f} | {result['test_model_exact']:.4f} | "
          f"{result['test_local_share']:.4f} | {result['test_local_precision']:.4f} | {result['test_agreement']:.4f} | "
          f"{result['real_us_per_call']:.0f} | {result['model_us_per_input']:.0f} | {result['speedup']:.3f}× | "
          f"{result['break_even_us_per_call']:.0f} |")


if __name__ == "__main__":
    main()
