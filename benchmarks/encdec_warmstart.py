"""Warm-started encoder-decoders vs the alternatives, at equal fine-tuning steps and data (docs/warmstart.md).

    python benchmarks/encdec_warmstart.py                       # the CPU scale of the doc's table
    python benchmarks/encdec_warmstart.py --base-tokens 2M --base-batch 8192 --train 4000 --val 200 \
        --epochs 4 --batch-size 16 --threads 16                 # a scale where pretraining means something

1. **Base**: a decoder-only GerbilBlender (GPT-J, d_model 64, 4 layers, context 128) pretrained with
   `gerbil.train.train` on the built-in Shakespeare store for ``--base-tokens`` tokens (batches of
   ``--base-batch`` tokens, LR 3e-3, 5% warmup).
2. **Tasks** (prompt = source, completion = target), each split into train / validation:
   * ``dates``: the generated date-normalisation pairs (`gerbil.finetune.datasets.write_fuzzy_splits`:
     free-form date → ISO date as ``dateutil`` answers; split by answer date);
   * ``docnames``: the first sentence of a docstring → the name of its function, from the running
     interpreter's own standard library (``ast``; public functions, names ≥ 4 characters, one pair per
     distinct (sentence, name); split by `split_validation`, seed 0). Real text, offline, deterministic
     for a given Python.
3. **Variants**, each fine-tuned with the same options (epochs, batch, LR, max_len, seed), so the same steps
   over the same examples:
   * ``warm`` / ``warm-shared``: `gerbil warmstart BASE` (separate / shared encoder and decoder blocks),
     then `gerbil finetune --task seq2seq`;
   * ``random-init``: the same encoder-decoder (separate blocks) warm-started from an *untrained* GPT-J of
     the base's shape (transformers' GPT-J init, seed 0): the architecture without the pretraining;
   * ``sft``: the base decoder itself, `gerbil finetune --task sft` (prompt format ``auto``: ``<causal>``
     + ``{prompt}\\n`` + completion);
   * ``t5``: a T5Blender (`gerbil train --arch t5`, d_model 64, 4 + 4 layers, 4 heads of 16, gated-GELU
     d_ff 128, tied head) pretrained with the Blender objective on the base's store, tokens (encoder +
     decoder), batch, LR and seed, then `gerbil finetune --task seq2seq` (``--t5 none`` leaves it out).
4. **Measured**: validation loss over the target tokens and their end-of-text (the same tokens for
   seq2seq and sft), best over the epochs; exact match of greedy decoding on the whole validation set at
   the best checkpoint, how many distinct answers it gives (1 = the same answer whatever the source) and
   its character accuracy (matching characters at the same position / the longer string's length, averaged
   over pairs: partial credit); training tokens/s (median of metrics.jsonl's ``tok_s``: encoder + decoder inputs
   for seq2seq, prompt + completion inputs for sft); parameters (total, at the real vocabulary).

Writes RUNS/results.json and prints the markdown table.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import statistics
import sys
import sysconfig
import time
from pathlib import Path

BASE_MODEL = dict(d_model=64, n_layer=4, n_head=4, rotary_dim=16, seq_len=128, name="bench-64x4")
#: T5Blender of the same width and depth per stack (4 heads of 16, gated-GELU d_ff 2·d, tied head)
T5_MODEL = dict(arch="t5", d_model=64, n_layer=4, n_decoder_layer=4, n_head=4, d_kv=16, d_ff=128, rotary_dim=0,
                seq_len=128, name="bench-t5-64x4")


def docname_pairs(limit: int) -> list[dict]:
    """(first docstring sentence → function name) pairs of the standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen, rows = set(), []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if any(part.startswith(("test", "idle")) for part in path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(node.name) < 4:
                continue
            sentence = re.split(r"(?<=\.)\s", " ".join(doc.split()), maxsplit=1)[0]
            if not 3 <= len(sentence.split()) <= 24 or (sentence, node.name) in seen:
                continue
            seen.add((sentence, node.name))
            rows.append({"prompt": sentence, "completion": node.name})
            if len(rows) == limit:
                return rows
    return rows


def write_tasks(root: Path, n_train: int, n_val: int) -> dict[str, tuple[Path, Path]]:
    from gerbil.finetune.data import read_examples, split_validation
    from gerbil.finetune.datasets import write_fuzzy_splits

    out = {}
    d = root / "data" / "dates"
    if not (d / "meta.json").is_file():
        write_fuzzy_splits(d, n=int((n_train + n_val) / 0.9) + 50, seed=0, fractions=(0.9, 0.1, 0.0))
    out["dates"] = (_head(d / "train.jsonl", n_train), _head(d / "val.jsonl", n_val))
    d = root / "data" / "docnames"
    if not (d / "val.jsonl").is_file():
        d.mkdir(parents=True, exist_ok=True)
        _write(d / "all.jsonl", docname_pairs(int((n_train + n_val) * 1.2)))
        train, val = split_validation(read_examples(d / "all.jsonl", "sft"), n_val / (n_train + n_val), 0)
        _write(d / "train.jsonl", [{"prompt": p, "completion": c} for p, c in zip(train.prompts, train.completions)])
        _write(d / "val.jsonl", [{"prompt": p, "completion": c} for p, c in zip(val.prompts, val.completions)])
    out["docnames"] = (_head(d / "train.jsonl", n_train), _head(d / "val.jsonl", n_val))
    return out


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _head(path: Path, n: int) -> Path:
    lines = path.read_text().splitlines()[:n]
    out = path.with_name(f"{path.stem}-{len(lines)}.jsonl")
    out.write_text("".join(x + "\n" for x in lines))
    return out


def pretrain(root: Path, name: str, model: dict, tokens: int, batch: int, seed: int) -> Path:
    """A Blender run of ``model`` on the built-in Shakespeare store: ``tokens`` tokens in batches of ``batch``
    (a T5's batch and budget count encoder + decoder tokens, `gerbil train --arch t5`)."""
    from gerbil.data.builtin import builtin_store
    from gerbil.train import train
    from gerbil.train.config import TrainConfig

    run = root / name
    if (run / "result.json").is_file():
        return run
    store = builtin_store("shakespeare")
    arch = {"arch": "t5"} if model.get("arch") == "t5" else {}
    r = train(TrainConfig(model=dict(model), data=str(store), objective="blender", seq_len=128, **arch,
                          batch_tokens=batch, micro_batch=batch // 128, tokens=tokens, lr=3e-3,
                          warmup_tokens=tokens // 20, runs=str(root), name=name, val_tokens=16384, progress=False,
                          seed=seed, checkpoint_every=tokens, eval_every=tokens, resume=True))
    return r.run_dir


def random_base(root: Path, seed: int) -> Path:
    """A checkpoint of an untrained GPT-J of the base's shape (recorded as a Blender model, so its warm start
    has the same decoder start token as the trained base's)."""
    import torch

    from gerbil.model.config import ModelConfig
    from gerbil.model.model import GPT
    from gerbil.train.checkpoint import save_checkpoint

    run = root / "random-base"
    if (run / "checkpoints").is_dir():
        return run
    cfg = ModelConfig(**BASE_MODEL)
    model = GPT(cfg)
    model.reset_parameters(generator=torch.Generator().manual_seed(seed))
    save_checkpoint(run / "checkpoints", 0, model, {}, {"model": cfg.to_dict(), "objective": "blender",
                                                        "seq_len": 128, "run": "random-base", "tokens": 0})
    return run


def variants(root: Path, base: Path, t5: str | None) -> dict[str, tuple[str, str]]:
    """name → (the model fine-tuning starts from, task)."""
    from gerbil.warmstart_command import warmstart

    out = {}
    for name, src, share in (("warm", base, False), ("warm-shared", base, True),
                             ("random-init", random_base(root, 0), False)):
        run = root / f"ws-{name}"
        if not (run / "checkpoints").is_dir():
            warmstart(dict(base=str(src), out=str(run), share=share))
        out[name] = (str(run), "seq2seq")
    out["sft"] = (str(base), "sft")
    if t5:
        out["t5"] = (t5, "seq2seq")
    return out


def finetune_one(root: Path, task: str, name: str, start: str, kind: str, train: Path, val: Path,
                 args: argparse.Namespace) -> dict:
    from gerbil.finetune.finetune import finetune
    from gerbil.finetune.predict import predict
    from gerbil.runs.rundir import RunDir

    out = root / "ft" / f"{task}-{name}"
    n_val = sum(1 for _ in open(val))
    t0 = time.perf_counter()
    r = finetune(dict(base=start, task=kind, train=str(train), val=str(val), out=str(out), epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, max_len=64, exact_match_examples=n_val, patience=0,
                      progress=False, seed=0, resume=True))
    wall = time.perf_counter() - t0
    preds = predict(out, val)  # greedy answers of the best checkpoint, every validation pair
    gold = [json.loads(line)["completion"] for line in open(val)]
    answers = [p["completion"] for p in preds]
    char_acc = statistics.mean(sum(a == b for a, b in zip(p, g)) / max(len(g), len(p), 1)
                               for p, g in zip(answers, gold))
    metrics = list(RunDir(out).read_metrics())
    tok_s = statistics.median(m["tok_s"] for m in metrics if m.get("tok_s"))
    cfg = RunDir(out).read_config()
    best = r.info["best"]["metrics"]
    return {"task": task, "variant": name, "params": cfg["params"], "steps": r.steps, "tokens": r.tokens,
            "val_loss": best["val_loss"], "exact_match": best.get("val_exact_match"),
            "untrained_val_loss": r.info["initial_validation"]["val_loss"],
            "last_val_loss": r.info["last_validation"]["val_loss"], "tok_s": tok_s, "wall_s": wall,
            "best_step": r.info["best"]["step"], "distinct_answers": len(set(answers)), "val_pairs": len(gold),
            "char_accuracy": char_acc}


def table(rows: list[dict]) -> str:
    lines = ["| task | variant | parameters | steps | val loss (untrained → best) | exact match | distinct answers "
             "| char. accuracy | tokens/s |", "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        em = "—" if r["exact_match"] is None else f"{100 * r['exact_match']:.1f}%"
        lines.append(f"| {r['task']} | {r['variant']} | {r['params'] / 1e6:.2f}M | {r['steps']} | "
                     f"{r['untrained_val_loss']:.3f} → {r['val_loss']:.3f} | {em} | {r['distinct_answers']} / "
                     f"{r['val_pairs']} | {100 * r['char_accuracy']:.1f}% | {r['tok_s']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/encdec-warmstart")
    ap.add_argument("--base-tokens", type=int, default=16_384, help="pretraining tokens of the base (and T5)")
    ap.add_argument("--base-batch", type=int, default=1024, help="pretraining batch in tokens (128 per sequence)")
    ap.add_argument("--train", type=int, default=128, help="training pairs per task")
    ap.add_argument("--val", type=int, default=32, help="validation pairs per task")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--t5", default="train", help="train: pretrain a T5Blender (T5_MODEL) on the base's tokens; "
                                                  "RUN: a T5Blender run to use; none: leave it out")
    ap.add_argument("--tasks", default="dates,docnames")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.runs)
    t0 = time.perf_counter()
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, load {os.getloadavg()}", flush=True)
    base = pretrain(root, "base", BASE_MODEL, args.base_tokens, args.base_batch, seed=0)
    print(f"base pretrained: {time.perf_counter() - t0:.0f} s", flush=True)
    t5 = args.t5
    if t5 == "train":  # a T5Blender on the same store, tokens, batch, LR and seed as the base
        t5 = str(pretrain(root, "t5", T5_MODEL, args.base_tokens, args.base_batch, seed=0))
        print(f"T5Blender pretrained: {time.perf_counter() - t0:.0f} s", flush=True)
    tasks = write_tasks(root, args.train, args.val)
    starts = variants(root, base, t5 if t5 != "none" else None)
    rows = []
    for task in args.tasks.split(","):
        train, val = tasks[task]
        for name, (start, kind) in starts.items():
            rows.append(finetune_one(root, task, name, start, kind, train, val, args))
            r = rows[-1]
            print(f"{task:9s} {name:12s} val {r['untrained_val_loss']:.3f} → {r['val_loss']:.3f}  em "
                  f"{r['exact_match']:.3f}  {r['tok_s']:,.0f} tok/s  {r['wall_s']:.0f} s", flush=True)
    (root / "results.json").write_text(json.dumps({"args": vars(args), "python": sys.version.split()[0],
                                                   "rows": rows}, indent=1))
    print(table(rows))
    print(f"total {time.perf_counter() - t0:.0f} s wall")


if __name__ == "__main__":
    main()
