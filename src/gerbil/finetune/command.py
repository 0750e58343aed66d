"""`gerbil finetune` and `gerbil predict`: thin verbs over `gerbil.finetune.finetune` and
`gerbil.finetune.predict` (`gerbil.cli` adds them with `add_finetune_parser` / `add_predict_parser`).

`finetune`'s flags are generated from `FinetuneConfig` (`gerbil.options.add_arguments`), as
`train`'s are from `TrainConfig`; a YAML recipe (`--config`) holds the same keys, flags win over it.
Errors are the library's one-line ones (cli.main prints them).
"""
from __future__ import annotations

import argparse
import sys

from gerbil.errors import GerbilError
from gerbil.finetune.config import FinetuneConfig
from gerbil.options import add_arguments, config_from_args, setup_logging


# ------------------------------------------------------------------------------------------ finetune
def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a model: classification or prompt → completion",
        description="Fine-tune a pretrained run, checkpoint or export on labelled examples (JSONL, CSV or "
                    "parquet) with the training loop of `gerbil train`: classify (a score head on the last "
                    "token; accuracy and macro-F1) or sft (loss on the completion only; exact match of greedy "
                    "completions). Validates every epoch, keeps the best checkpoint, stops early; --resume "
                    "auto continues exactly. Every option is a field of gerbil.finetune.config.FinetuneConfig "
                    "and a key of a YAML recipe (--config).")
    p.add_argument("--config", metavar="FILE", help="YAML recipe with the same keys; flags win over it")
    add_arguments(p, FinetuneConfig)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from gerbil.finetune.finetune import finetune  # lazy: torch

    cfg = config_from_args(args, FinetuneConfig, args.config)  # validated before anything is read
    setup_logging()
    r = finetune(cfg)
    print(format_result(r))
    return 0


def format_result(r) -> str:
    """A fine-tuning RunResult in a few lines: budget, the untrained / best / last validation, the run."""
    info = r.info
    names = {"val_loss": "loss", "val_accuracy": "accuracy", "val_macro_f1": "macro-F1",
             "val_exact_match": "exact match"}

    def show(m: dict | None) -> str:
        if not m:
            return "n/a"
        return ", ".join(f"{names[k]} {m[k]:.4f}" for k in names if m.get(k) is not None)

    best = info.get("best") or {}
    lines = [f"{r.name}: {info.get('task')} on {info['examples']['train']:,} examples "
             f"({info['examples']['val']:,} validation), {r.steps} steps, {r.tokens:,} tokens, {r.seconds:.0f} s"
             + (" (stopped early)" if info.get("stopped_early") else ""),
             f"untrained: {show(info.get('initial_validation'))}",
             f"best (step {best.get('step')}): {show(best.get('metrics'))}",
             f"last: {show(info.get('last_validation'))}",
             f"run: {r.run_dir}  best checkpoint: {r.checkpoint}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ predict
def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="batch inference with a fine-tuned model (labels or completions)",
        description="Run a fine-tuned model (a fine-tuning run — its best checkpoint —, a checkpoint or its "
                    "export) on every row of a JSONL / CSV / parquet file. classify: label, its probability "
                    "and every label's; sft: the greedy completion and its mean token log-probability. "
                    "Writes JSONL or CSV (by --output's suffix), or JSONL to stdout.")
    p.add_argument("run", metavar="RUN", help="a fine-tuning run, checkpoint or export folder")
    p.add_argument("--input", required=True, metavar="FILE", help="rows to predict (.jsonl, .csv, .parquet)")
    p.add_argument("--output", metavar="FILE", help="write .jsonl or .csv here (default: JSONL on stdout)")
    p.add_argument("--field", metavar="F", help="the input column (default: the field the model was "
                                                "fine-tuned on, e.g. text or prompt)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="rows per forward pass (default 64)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="sft: longest completion (default: the one recorded at fine-tuning); below the "
                        "model's context")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output that is not an earlier prediction file (never --input)")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from gerbil.finetune.predict import format_rows, predict  # lazy: torch

    if args.batch_size < 1:
        raise GerbilError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise GerbilError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    setup_logging()
    rows = predict(args.run, args.input, args.output, field=args.field, device=args.device,
                   batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, overwrite=args.overwrite)
    if args.output:
        print(f"wrote {len(rows):,} predictions to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(format_rows(rows))
    return 0
