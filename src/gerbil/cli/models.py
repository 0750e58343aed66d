"""`gerbil train`, `gerbil export`, `gerbil sample` / `infill` / `unmask` and `gerbil demo`: verbs that make,
publish or run a model. Each imports torch only when it runs (`# lazy:`), so `gerbil --help` stays instant."""
from __future__ import annotations

import argparse
import sys

from gerbil import export
from gerbil.cli.common import add_nproc, relaunch
from gerbil.data.objectives import OBJECTIVES, supports
from gerbil.data.tokenizer import Tokenizer
from gerbil.errors import GerbilError
from gerbil.model.config import T5_SIZES, size_names
from gerbil.options import add_arguments, config_from_args, setup_logging
from gerbil.runs.rundir import RunDir, kind
from gerbil.train.config import TrainConfig


# --------------------------------------------------------------------------------------------- train
def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model of a named size and class",
        description="Train a Gerbil model on a token store for exactly its class's token budget "
                    "(ratio x total parameters). Every option is a field of gerbil.train.TrainConfig and "
                    "also a key of a YAML recipe (--config); flags given on the command line win over "
                    "the recipe. Token counts accept 50M / 1.5B. Opening a store checks its size, dtype and "
                    "a sampled fingerprint, not every byte: a flipped token inside train.bin trains "
                    "silently; `gerbil prepare --verify STORE` reads every byte against its checksums.")
    p.add_argument("--config", metavar="FILE", help="YAML recipe with the same keys (e.g. src/gerbil/recipes/)")
    add_nproc(p, "train on N processes of this machine (torchrun + DDP, one per GPU; gloo on CPUs); for "
                  "several machines run `torchrun ... -m gerbil train ...` yourself (docs/distributed.md)")
    add_arguments(p, TrainConfig)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from gerbil.train.distributed import from_env  # lazy: torch
    from gerbil.train.loop import train

    cfg = config_from_args(args, TrainConfig, args.config)  # validated before anything is created
    if (rc := relaunch(args)) is not None:
        return rc
    setup_logging()
    r = train(cfg)
    if not from_env().is_main:
        return 0  # rank 0 reports
    val = f"{r.val_loss:.4f}" if r.val_loss is not None else "n/a"
    print(f"{r.name}: {r.tokens:,} tokens in {r.steps} steps, train loss {r.train_loss:.4f}, val loss {val}, "
          f"{r.tokens_per_second:,.0f} tok/s, {r.seconds:.0f} s")
    if r.skipped_steps:
        print(f"{r.skipped_steps} fp16 steps skipped by the loss scaler")
    print(f"run: {r.run_dir}  checkpoint: {r.checkpoint}")
    return 0


# -------------------------------------------------------------------------------------------- export
def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a run or checkpoint as a transformers GPT-J folder",
        description="Write a gerbil model as a transformers GPTJForCausalLM folder (config.json, "
                    "model.safetensors, generation_config.json, tokenizer files with the 7 Blender tokens, "
                    "README.md model card), loadable with AutoModelForCausalLM/AutoTokenizer.from_pretrained "
                    "and back with gerbil.export.load.")
    p.add_argument("source", nargs="?", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (its latest checkpoint) or a checkpoint directory")
    p.add_argument("--out", metavar="DIR",
                   help="output folder, replaced if it is an earlier export (default for a run: RUN/export)")
    p.add_argument("--size", help=f"with --random-init: ladder size ({size_names()}) or a T5Blender preset "
                                  f"({' '.join(T5_SIZES)})")
    p.add_argument("--random-init", action="store_true", help="export a freshly initialized --size model")
    p.add_argument("--seed", type=int, default=0, help="with --random-init: initialization seed (default 0)")
    p.add_argument("--objective", choices=tuple(OBJECTIVES),
                   help="override the objective recorded in the checkpoint (default: the checkpoint's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype of the saved weights (default float32)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    if not args.out:
        if args.source and kind(args.source) == "run":
            args.out = str(RunDir(args.source).export_dir)  # the run directory's export/ (architecture.md)
        else:
            raise GerbilError("--out DIR is required (it defaults to RUN/export only for a run directory)")
    if args.random_init:
        if args.source:
            raise GerbilError("give either RUN_OR_CHECKPOINT or --random-init --size S, not both")
        if not args.size:
            raise GerbilError(f"--random-init needs --size ({size_names()})")
        model = export.random_model(args.size, seed=args.seed)
        meta = {"size": args.size.lower(), "tokens": 0, "step": 0}
        out = export.export(model, args.out, objective=args.objective, meta=meta, dtype=args.dtype)
    else:
        if not args.source:
            raise GerbilError("give a run or checkpoint directory, or --random-init --size S")
        if args.size:
            raise GerbilError("--size only goes with --random-init (a checkpoint knows its own size)")
        out = export.export(args.source, args.out, objective=args.objective, dtype=args.dtype)
    info = export.read_info(out)
    print(f"exported {info.get('name')} ({info.get('params', 0):,} params, objective {info.get('objective')}) "
          f"to {out}")
    return 0


# ------------------------------------------------------------------------------ sample/infill/unmask
def add_generate(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser, temperature: float, top_k: int | None) -> None:
        p.add_argument("run", metavar="RUN", help="a run directory, a checkpoint directory or an export folder")
        p.add_argument("--temperature", type=float, default=temperature,
                       help=f"sampling temperature, 0 = greedy (default {temperature:g})")
        p.add_argument("--top-k", type=int, default=top_k, help=f"sample among the k likeliest tokens (default {top_k or 'all'})")
        p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        p.add_argument("--allow-special", action="store_true",
                       help="let special-token strings such as <causal> in the text become their ids")

    p = sub.add_parser("sample", help="continue a prompt (causal mode; <causal> first for Blender models)")
    common(p, 1.0, 50)
    p.add_argument("--prompt", default="", help="text to continue (default: none, start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default 64)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("infill", help="fill in the middle between --prefix and --suffix (Blender/FIM models)")
    common(p, 0.0, None)
    p.add_argument("--prefix", required=True, help="text before the gap")
    p.add_argument("--suffix", required=True, help="text after the gap")
    p.add_argument("--max-new-tokens", type=int, default=64, help="middle tokens at most (default 64)")
    p.add_argument("--spm", action="store_true", help="suffix-prefix-middle prompt order (models trained with SPM)")
    p.set_defaults(func=_cmd_infill)

    p = sub.add_parser("unmask", help="predict the token behind each <single_tok_mask> (Blender/MLM models)")
    common(p, 0.0, None)
    p.add_argument("--text", required=True, help='text with masks, e.g. "this is an <single_tok_mask> text"')
    p.set_defaults(func=_cmd_unmask)


def _load_for_generation(args: argparse.Namespace):
    model, meta = export.load_model(args.run, device=args.device)
    return model, meta, Tokenizer.load()


def _warn_mode(meta: dict, capability: str, verb: str) -> None:
    """Warn when the model's objective was not trained for `verb` (`gerbil.data.objectives.supports`)."""
    if not supports(meta.get("objective"), capability):
        print(f"gerbil {verb}: warning: this model was trained with objective {meta.get('objective')!r}, not to "
              f"{verb}: expect noise", file=sys.stderr)


def _cmd_sample(args: argparse.Namespace) -> int:
    from gerbil.generate import sample  # lazy: torch

    model, meta, tok = _load_for_generation(args)
    text = sample(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, seed=args.seed, allow_special=args.allow_special,
                  objective=meta.get("objective"))
    print(args.prompt + text)
    return 0


def _cmd_infill(args: argparse.Namespace) -> int:
    from gerbil.generate import infill  # lazy: torch

    model, meta, tok = _load_for_generation(args)
    _warn_mode(meta, "infills", "infill")
    middle = infill(model, tok, args.prefix, args.suffix, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                    allow_special=args.allow_special, spm=args.spm)
    print(args.prefix.rstrip(" ") + middle + args.suffix)
    return 0


def _cmd_unmask(args: argparse.Namespace) -> int:
    from gerbil.generate import unmask  # lazy: torch

    model, meta, tok = _load_for_generation(args)
    _warn_mode(meta, "unmasks", "unmask")
    filled, _ = unmask(model, tok, args.text, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                       allow_special=args.allow_special)
    print(filled)
    return 0


# ---------------------------------------------------------------------------------------------- demo
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job: assets, prepare, train, evaluate, print the row",
        description="Fetch the pinned assets, prepare the Shakespeare corpus (cached), train Gerbil-A-6.7m "
                    "(on a GPU the real 134M-token budget; on a CPU a reduced, labelled budget of a few "
                    "minutes), report the validation loss, evaluate it on the full hellaswag / lambada_openai / "
                    "winogrande sets and print the model's row of the seed's table.")
    p.add_argument("--runs", default="runs", metavar="DIR", help="folder for the run directory (default runs/)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--no-eval", dest="evaluate", action="store_false", default=True,
                   help="leave the evaluation columns pending (the three full sets take ~4 min for a 6.7m "
                        "model on 2 idle CPU cores)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from gerbil.demo import run_demo  # lazy: torch

    setup_logging()
    d = run_demo(runs=args.runs, device=args.device, evaluate=args.evaluate)
    r = d.result
    label = "reduced CPU demo budget, NOT the Gerbil-A class budget" if d.reduced else "Gerbil-A-6.7m budget"
    val = f"{r.val_loss:.4f}" if r.val_loss is not None else "n/a"
    print(f"trained {r.name} on {d.store} ({label}): {r.tokens:,} tokens, {r.steps} steps, "
          f"{r.seconds:.0f} s, {r.tokens_per_second:,.0f} tok/s")
    print(f"validation loss {val}, training loss {r.train_loss:.4f}")
    print()
    print(d.row)
    if d.evals is None:
        print(f"\n(eval columns pending: `gerbil eval {r.run_dir}` then `gerbil table {r.run_dir}` fill them)")
    return 0
