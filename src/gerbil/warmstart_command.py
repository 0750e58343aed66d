"""`gerbil warmstart BASE --out RUN [--share]`: an encoder-decoder warm-started from a decoder-only Gerbil or
GerbilBlender model (`gerbil.model.warmstart.warm_start`), written as a run that `gerbil finetune --task
seq2seq`, `gerbil export` and `gerbil predict` read like any other (docs/warmstart.md).

The run holds one checkpoint, step 0 (meta.json: the `WarmStartConfig` record as ``model``, the base's
objective, size and seq_len, and ``warmstart``: where the base came from, sharing, seed, decoder start id),
and config.yaml (the same record and the options). BASE is checked before anything is written — a
classifier, a T5 or another encoder-decoder, a folder that is not a model are one line each — and --out
must not exist or be empty. The run is built in a hidden sibling folder and renamed into place, so an
interrupted warm start leaves no half run behind.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from gerbil.errors import GerbilError, OptionError
from gerbil.export.loading import read_config
from gerbil.model import factory
from gerbil.options import Options, add_arguments, config_from_args, opt, section, setup_logging
from gerbil.runs.rundir import RunDir, read_meta, resolve_source


@section("what is warm-started, into which run")
class WarmstartOptions(Options):
    """Everything `gerbil warmstart` takes."""

    _what = "warmstart option"

    base: str | None = opt(None, "the decoder-only base: a Gerbil / GerbilBlender run, checkpoint or export folder",
                           flag="BASE")
    out: str | None = opt(None, "the run directory to write (must not exist, or be empty)", metavar="RUN")
    share: bool = opt(False, "encoder and decoder share the base's blocks (Rothe et al.'s \"share\" variant; "
                             "default: two copies)")
    seed: int = opt(0, "seed of the new cross-attention's q/k/v (its output projection starts at zero)",
                    check="non_negative")


# ------------------------------------------------------------------------------------------ checks
def check_base(base: str) -> str:
    """What BASE is ("run", "checkpoint", "export"); a classifier, an encoder-decoder or anything that is not a
    decoder-only model is a one-line GerbilError. Reads JSON only."""
    src = resolve_source(base)  # not a run, checkpoint or export: one line
    if src.kind == "export":
        conf = read_config(src.export)
        record = (conf.get("gerbil") or {}).get("model") or {}
        arch = "t5" if conf.get("model_type") == "t5" else record.get("arch") or conf.get("model_type")
        classify = "GPTJForSequenceClassification" in (conf.get("architectures") or [])
        task = ((conf.get("gerbil") or {}).get("finetune") or {}).get("task")
    else:
        meta = read_meta(src.checkpoint)
        arch = (meta.get("model") or {}).get("arch", "gptj")
        task = (meta.get("finetune") or {}).get("task")
        classify = task == "classify"
    if arch == "t5":
        raise GerbilError(f"{base} is a T5 model (already an encoder-decoder): warm-start from a decoder-only "
                          f"Gerbil or GerbilBlender model")
    if arch in (factory.WARMSTART, "gerbil-encdec"):
        raise GerbilError(f"{base} is already a warm-started encoder-decoder: warm-start from its decoder-only base")
    if classify:
        raise GerbilError(f"{base} is a classifier (no language-model head): warm-start from a pretrained Gerbil, "
                          f"GerbilBlender or sft model")
    if arch not in ("gptj", None):
        raise GerbilError(f"{base}: model type {arch!r} is not a decoder-only Gerbil (GPT-J) model")
    return src.kind


def check_out(out: str) -> Path:
    """--out: a path that does not exist or is an empty folder; anything else is a one-line GerbilError."""
    p = Path(out).expanduser()
    if p.is_symlink() or (p.exists() and (not p.is_dir() or any(p.iterdir()))):
        raise GerbilError(f"--out {p} exists and is not empty; warm-start into a new run directory")
    return p


# ------------------------------------------------------------------------------------------ the verb
def warmstart(options: WarmstartOptions | dict) -> RunDir:
    """Build the warm start of ``options.base`` and write it as the run ``options.out`` (module docstring)."""
    o = options if isinstance(options, WarmstartOptions) else WarmstartOptions.from_dict(options)
    if not o.base or not o.out:
        raise OptionError("warmstart needs BASE and --out RUN")
    out = check_out(o.out)
    source_kind = check_base(o.base)

    from gerbil.export import load_model  # lazy: torch
    from gerbil.model.warmstart import warm_start
    from gerbil.train.checkpoint import save_checkpoint

    base, meta = load_model(o.base)
    model = warm_start(base, meta, share=o.share, seed=o.seed)
    cfg = model.config
    info = {"path": str(Path(o.base).resolve()), "kind": source_kind, "checkpoint": meta.get("path"),
            "name": meta.get("run") or meta.get("name"), "objective": meta.get("objective") or "plain",
            "size": meta.get("size"), "class": meta.get("class"), "tokens": meta.get("tokens"),
            "step": meta.get("step"), "seq_len": meta.get("seq_len")}
    record = {"base": info, "share": o.share, "seed": o.seed, "decoder_start_id": cfg.decoder_start_id}
    name = out.name
    ckpt_meta = {"model": cfg.to_dict(), "size": meta.get("size"), "class": None, "objective": info["objective"],
                 "objective_options": meta.get("objective_options"), "parent": None, "run": name,
                 "seq_len": meta.get("seq_len") or cfg.base.seq_len, "seed": o.seed, "tokens": meta.get("tokens"),
                 "warmstart": record}
    tmp = out.with_name(f".{out.name}.tmp-warmstart-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        run = RunDir(tmp)
        tmp.mkdir(parents=True)
        save_checkpoint(run.checkpoints, 0, model, {"step": 0, "tokens": 0}, ckpt_meta)
        run.write_config({"name": name, "task": "warmstart", "objective": info["objective"], "size": meta.get("size"),
                          "model": cfg.to_dict(), "params": cfg.n_params("total"), "base": info,
                          "warmstart": {**o.to_dict(), "base": info["path"]}})
        if out.is_dir():
            out.rmdir()  # empty (check_out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RunDir(out)


# ------------------------------------------------------------------------------------------ CLI
def add_warmstart_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "warmstart", help="build an encoder-decoder from a decoder-only Gerbil model",
        description="Warm-start an encoder-decoder from a decoder-only Gerbil or GerbilBlender run, checkpoint or "
                    "export (Rothe et al. 2020): encoder = the base's blocks, bidirectional; decoder = the base's "
                    "blocks plus a zero-initialised cross-attention, so before training the decoder gives exactly "
                    "the base's logits. Writes a run for gerbil finetune --task seq2seq, export and predict.")
    add_arguments(p, WarmstartOptions)
    p.set_defaults(func=_cmd_warmstart)


def _cmd_warmstart(args: argparse.Namespace) -> int:
    o = config_from_args(args, WarmstartOptions)
    setup_logging()
    run = warmstart(o)
    meta = run.latest_meta()
    model = meta["model"]
    base = meta["warmstart"]["base"]
    print(f"{run.path}: warm start of {base.get('name') or base['path']} "
          f"({'shared' if model['share'] else 'separate'} encoder/decoder weights, decoder start id "
          f"{model['decoder_start_id']}); fine-tune it with gerbil finetune {run.path} --task seq2seq")
    return 0


__all__ = ["WarmstartOptions", "warmstart", "check_base", "check_out", "add_warmstart_parser"]
