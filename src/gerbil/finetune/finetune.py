"""`finetune(config) -> RunResult`: fine-tune a pretrained model on labelled examples, through the
training loop of `gerbil train` (`gerbil.train.loop.run_workload`).

    config ─► resolve_finetune: the base model (a run, checkpoint or export), the examples (read, split,
              counted), their tokens (`batches.encode_*`), the budget in epochs (→ tokens), device,
              precision, micro-batch, LR schedule, the run directory — every input checked first
           ─► run_locked: the run's lock and process state, as for `gerbil train`
           ─► run_workload(classify_workload | sft_workload): steps, checkpoints, validation every epoch,
              best checkpoint, early stopping, metrics.jsonl, progress, result.json

The run directory is a gerbil run (docs/architecture.md): config.yaml (``finetune``: the options;
``base``: where the model came from; ``data``: the files' sha256, counts and bad rows; ``resolved``),
env.json, metrics.jsonl (a step-0 line with the untrained model's validation, then one per step with
``epoch`` and ``examples``), checkpoints (the newest and the best; meta.json's ``finetune`` holds what
inference needs: task, labels, prompt format, max_len) and result.json. `--resume auto` continues the
latest checkpoint exactly (kill -9 included), refusing changed options or changed data files.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from gerbil import plan as planlib
from gerbil.data.objectives import mode_prefix, supports
from gerbil.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from gerbil.errors import GerbilError, OptionError
from gerbil.export import load_model
from gerbil.finetune import data as fdata
from gerbil.finetune.batches import EpochSteps, Encoded, encode_classify, encode_seq2seq, encode_sft
from gerbil.finetune.config import FinetuneConfig
from gerbil.finetune.decode import check_room, decoder_start_id
from gerbil.finetune.workloads import WORKLOADS, Finetuning
from gerbil.fsutil import sha256_file
from gerbil.model import factory
from gerbil.model.classifier import Classifier
from gerbil.model.config import size_label
from gerbil.runs.rundir import RunDir, resolve_source
from gerbil.schedules import make_schedule
from gerbil.train.autotune import choose_sdpa, describe
from gerbil.train.checkpoint import CheckpointPolicy
from gerbil.train.device import peak_flops
from gerbil.train.distributed import Dist
from gerbil.train.loop import run_locked, run_workload
from gerbil.train.runplan import AdamW, RunPlan, execution, fresh_start, resume_point

log = logging.getLogger(__name__)

#: Tokens of one micro-batch when --micro-batch is not given (the CPU rule of `gerbil train`).
MICRO_BATCH_TOKENS = 8192


# ------------------------------------------------------------------------------------------ entry
def finetune(config: FinetuneConfig | dict) -> Any:
    """Fine-tune (or `resume` fine-tuning) as `config` says; returns the `gerbil.train.loop.RunResult`
    (its `checkpoint` is the best one, `info` has the best, last and untrained validation metrics)."""
    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GerbilError("fine-tuning runs in one process (not under torchrun / --nproc)")
    if not cfg.out:
        raise OptionError("fine-tuning needs --out RUN (the run directory)")
    run = RunDir(cfg.out)
    return run_locked(run, Dist(), lambda: resolve_finetune(cfg),
                      lambda r, lock: run_workload(r.plan, WORKLOADS[r.cfg.task](r), lock))


# ------------------------------------------------------------------------------------------ resolve
def resolve_finetune(cfg: FinetuneConfig) -> Finetuning:
    """Check every input and decide every number of a fine-tuning run (module docstring)."""
    cfg = dataclasses.replace(cfg)
    for key in ("train", "val"):  # absolute: the run resumes (and records its data) from any directory
        if getattr(cfg, key):
            setattr(cfg, key, str(Path(getattr(cfg, key)).expanduser().resolve()))
    run = RunDir(cfg.out)
    cfg, resume_from, recorded, restart = resume_point(cfg, run, "finetune")
    if resume_from is None:
        cfg.require()
        fresh_start(run, restart, "another --out")

    tokenizer = Tokenizer.load()
    if recorded and recorded.get("data", {}).get("tokenizer_sha256") not in (None, tokenizer.sha256):
        raise GerbilError("--resume: the tokenizer differs from the one this run was fine-tuned with")
    base_model, base_info, model_cfg = _base(cfg, recorded)
    objective = base_info.get("objective") or "plain"

    # --- examples: read, split, counted
    train, val, data_record = _read_data(cfg, recorded)
    data_record["tokenizer_sha256"] = tokenizer.sha256

    # --- how examples become tokens
    prompt_format = cfg.prompt_format
    if prompt_format == "auto":  # an encoder reads no mode token (T5Blender's and a warm start's encoder)
        prompt_format = "causal" if mode_prefix(objective) and cfg.task != "seq2seq" else "plain"
    if prompt_format == "fim" and not supports(objective, "infills"):
        log.warning("prompt_format fim: the base model (objective %s) was not trained to fill in the middle", objective)
    prefix = [SPECIAL_TOKENS["<causal>"]] if prompt_format == "causal" else []
    needed = max(prefix + ([SPECIAL_TOKENS["<fitm_result>"]] if prompt_format == "fim" else []), default=-1)
    if needed >= model_cfg.vocab_size:
        raise GerbilError(f"prompt_format {prompt_format}: the base model's vocabulary ({model_cfg.vocab_size} "
                          f"ids) has no Blender special tokens")
    max_len = cfg.max_len or int(base_info.get("seq_len") or min(model_cfg.seq_len, 1024))
    if max_len > model_cfg.seq_len:
        raise GerbilError(f"max_len {max_len} exceeds the base model's context of {model_cfg.seq_len}")
    start = decoder_start_id(model_cfg) if cfg.task == "seq2seq" else None
    train_set, val_set, completions, max_new = _encode(cfg, tokenizer, train, val, prefix, prompt_format, max_len,
                                                       model_cfg.seq_len, start)
    data_record["truncated"] = {"train": train_set.truncated, "val": val_set.truncated}

    # --- steps, budget, schedule
    micro = cfg.micro_batch or max(1, min(cfg.batch_size, MICRO_BATCH_TOKENS // max_len))
    steps = EpochSteps(train_set, cfg.epochs, cfg.batch_size, micro, cfg.seed, max_len, pack=cfg.pack,
                       class_weights=_class_weights(cfg, train) if cfg.task == "classify" else None)
    budget, every = steps.budget, steps.epoch_tokens  # validate and checkpoint once per epoch
    schedule = make_schedule(cfg.schedule, cfg.lr, budget, int(round(cfg.warmup_fraction * budget)),
                             cfg.min_lr_ratio, cfg.cooldown_fraction)
    ex = execution(cfg)
    # attention: PyTorch's dispatch unless pinned (packed rows are masked: no timing on causal calls)
    attention = choose_sdpa(cfg.sdpa_backend, model_cfg, ex.device, micro, max_len, ex.autocast_dtype, {},
                            may_time=False, masked=True)
    run.path.mkdir(parents=True, exist_ok=True)
    plan = RunPlan(
        name=run.name, run=run, model_config=model_cfg, size=base_info.get("size") or size_label(model=model_cfg),
        cls=None, budget=budget, batch_label=f"{cfg.batch_size} examples", schedule=schedule,
        optimizer=AdamW.of(cfg), eval_every=every, checkpoints=CheckpointPolicy(every, best=True),
        seed=cfg.seed, deterministic=cfg.deterministic, **ex._asdict(), micro_batch=micro, eval_micro_batch=micro,
        log=cfg.log, log_every=cfg.log_every, progress=cfg.progress,
        flops_per_token=planlib.flops_per_token(model_cfg, max_len), peak_flops=peak_flops(ex.device, ex.precision),
        record={}, resume_from=resume_from, sdpa_backend=None if attention.name == "default" else attention.name,
        tuning={"sdpa_backend": describe(attention, ex.device, model_cfg, max_len, ex.autocast_dtype)})
    r = Finetuning(
        plan=plan, cfg=cfg, base_model=base_model, base_info=base_info, tokenizer=tokenizer, train_set=train_set,
        val_set=val_set, val_completions=completions, epoch_steps=steps,
        label_names=list(train.label_names) if cfg.task == "classify" else [], prompt_format=prompt_format,
        prefix=prefix, max_len=max_len, max_new_tokens=max_new, data_record=data_record, decoder_start_id=start)
    plan.record = _config_record(r)
    return r


def _config_record(r: Finetuning) -> dict:
    """config.yaml of a fine-tuning run (module docstring)."""
    cfg, steps, plan = r.cfg, r.epoch_steps, r.plan
    return {
        "name": plan.name, "task": cfg.task, "size": plan.size, "objective": r.base_info.get("objective"),
        "model": plan.model_config.to_dict(), "params": plan.model_config.n_params("total"),
        "base": r.base_info, "data": r.data_record, "finetune": cfg.to_dict(),
        "resolved": {"budget": plan.budget, "epochs": cfg.epochs, "epoch_tokens": steps.epoch_tokens,
                     "steps_per_epoch": steps.steps_per_epoch, "batch": plan.batch_label,
                     "micro_batch": plan.micro_batch, "max_len": r.max_len,
                     "prompt_format": r.prompt_format, "prefix": list(r.prefix),
                     "max_new_tokens": r.max_new_tokens, "select": list(cfg.select_metric),
                     "lr": plan.schedule.peak, "schedule": dataclasses.asdict(plan.schedule),
                     "precision": plan.precision, "device": str(plan.device), "compile": plan.compile,
                     "checkpoint_every": plan.checkpoints.every, "eval_every": plan.eval_every},
    }


def _encode(cfg: FinetuneConfig, tokenizer: Any, train: Any, val: Any, prefix: list[int], prompt_format: str,
            max_len: int, context: int, start: int | None = None) -> tuple[Encoded, Encoded, list[str], int]:
    """(train set, validation set, validation completions, longest completion to generate, below the
    model's `context`): the examples as tokens (`batches.encode_classify` / `encode_sft`); examples longer
    than `max_len` are cut, with a warning."""
    if cfg.task == "classify":
        train_set = encode_classify(train.texts, train.labels, tokenizer, prefix, max_len, cfg.truncate)
        val_set = encode_classify(val.texts, val.labels, tokenizer, prefix, max_len, cfg.truncate)
        completions: list[str] = []
        max_new = 0
    else:
        fim = prompt_format == "fim"
        if cfg.task == "seq2seq":
            train_set, val_set = (encode_seq2seq(d.prompts, d.completions, tokenizer, prefix, cfg.template, max_len,
                                                 start) for d in (train, val))
        else:
            train_set, val_set = (encode_sft(d.prompts, d.completions, tokenizer, prefix, cfg.template, fim, max_len)
                                  for d in (train, val))
        completions = list(val.completions)
        # the longest completion (+ EOT; a seq2seq target: after the decoder start, + EOT)
        longest = int(max(len(x) - p for x, p in zip(train_set.ids, train_set.prompt_len))) - (start is not None)
        max_new = cfg.max_new_tokens or min(longest + 8, context - 1)
        check_room(max_new, context, "max_new_tokens")  # validation's greedy completions fit
    for name, s in (("train", train_set), ("validation", val_set)):
        if s.truncated:
            log.warning("%d of %d %s examples are longer than max_len %d and were cut", s.truncated, len(s), name,
                        max_len)
    return train_set, val_set, completions, max_new


def _base(cfg: FinetuneConfig, recorded: dict) -> tuple[Any, dict, Any]:
    """(base model or None on resume, what it is, its config: a ModelConfig, or a warm start's). A fresh run
    loads the base model; a resumed one needs only its recorded shape (the checkpoint holds the weights;
    the base may have moved). seq2seq takes an encoder-decoder, the other tasks a decoder-only model."""
    if recorded:
        return None, dict(recorded.get("base") or {}), factory.config_from_dict(dict(recorded["model"]))
    src = resolve_source(cfg.base)  # a run, checkpoint or export; anything else is one line
    model, meta = load_model(cfg.base)
    if isinstance(model, Classifier):
        raise GerbilError(f"{cfg.base} is a classifier; fine-tune from a language model (a pretraining or sft run)")
    if factory.is_encoder_decoder(model) != (cfg.task == "seq2seq"):
        raise GerbilError(f"{cfg.base} is an encoder-decoder: fine-tune it with --task seq2seq"
                          if factory.is_encoder_decoder(model) else
                          f"--task seq2seq needs an encoder-decoder base, and {cfg.base} is decoder-only: warm-start "
                          f"one (gerbil warmstart {cfg.base} --out RUN) or use --task sft")
    info = {"path": str(Path(cfg.base).resolve()), "kind": src.kind,
            "checkpoint": str(meta.get("path")) if meta.get("path") else None,
            "name": meta.get("run") or meta.get("name"), "objective": meta.get("objective") or "plain",
            "objective_options": meta.get("objective_options"), "size": meta.get("size"),
            "class": meta.get("class"), "tokens": meta.get("tokens"), "step": meta.get("step"),
            "seq_len": meta.get("seq_len")}
    return model.float(), info, model.config


def _read_data(cfg: FinetuneConfig, recorded: dict) -> tuple[Any, Any, dict]:
    """(train, validation, the data record): read with `gerbil.finetune.data`, the validation split carved
    from train when no --val is given. On resume the files must be the ones recorded (sha256)."""
    fields = dict(text_field=cfg.text_field, label_field=cfg.label_field, prompt_field=cfg.prompt_field,
                  completion_field=cfg.completion_field)
    train_file = fdata.read_examples(cfg.train, cfg.task, label_names=cfg.label_names, **fields)
    fdata.require_classes(train_file)
    if cfg.val:
        train, split = train_file, None
        val = fdata.read_examples(cfg.val, cfg.task, label_names=train.label_names or None, **fields)
    else:
        train, val = fdata.split_validation(train_file, cfg.val_fraction, cfg.split_seed)
        split = {"fraction": cfg.val_fraction, "seed": cfg.split_seed}
    if len(train) < 1 or len(val) < 1:
        raise GerbilError(f"need at least one training and one validation example (got {len(train)} and "
                          f"{len(val)}); pass --val FILE or more examples")
    record = {"train": _file_record(cfg.train, train_file), "val": _file_record(cfg.val, val) if cfg.val else None,
              "split": split, "examples": {"train": len(train), "val": len(val)}}
    if cfg.task == "classify":
        record["labels"] = {"names": list(train.label_names), "train": train.label_counts(),
                            "val": val.label_counts()}
    for side in ("train", "val"):
        old = ((recorded.get("data") or {}).get(side) or {}).get("sha256")
        new = (record[side] or {}).get("sha256")
        if old and old != new:
            raise GerbilError(f"--resume: the {side} file {getattr(cfg, side)} is not the one this run was "
                              f"fine-tuned on (sha256 differs)")
    return train, val, record


def _file_record(path: str, ex: Any) -> dict:
    p = Path(path).expanduser().resolve()
    return {"path": str(p), "sha256": sha256_file(p), "usable_rows": len(ex), "bad_rows": ex.bad.as_dict(),
            "bad_total": ex.bad.total}


def _class_weights(cfg: FinetuneConfig, train: Any) -> np.ndarray | None:
    """Per-class loss weights (K,): none, balanced (n / (K · n_c), a class without examples 1), or given."""
    spec = cfg.class_weight_values()
    K = train.num_labels
    if spec == "none":
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(train.labels, dtype=np.int64), minlength=K).astype(np.float64)
        return np.where(counts > 0, len(train) / (K * np.maximum(counts, 1)), 1.0)
    if len(spec) != K:
        raise OptionError(f"class_weights: {len(spec)} weights for {K} labels ({', '.join(train.label_names)})")
    return np.asarray(spec, dtype=np.float64)
