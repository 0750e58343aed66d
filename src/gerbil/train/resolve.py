"""A training run's settings, decided once: budget, batch steps, LR schedule, device, precision, files.

`resolve(TrainConfig) -> Resolved` turns what the user asked for into concrete numbers and checks every
input before any training starts (unknown size/class/objective, a store from another tokenizer, a
budget smaller than one batch, an unwritable run directory, `resume` with no checkpoint — each one
line). `gerbil.train.loop` then only executes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gerbil import plan as planlib
from gerbil.data.tokenizer import SPECIAL_TOKENS
from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig, default_lr, get_size
from gerbil.train import checkpoint as ckpt
from gerbil.train.config import FRESH_DEFAULTS, RUNTIME_FIELDS, TrainConfig
from gerbil.train.device import auto_micro_batch, choose_precision, peak_flops, pick_device
from gerbil.train.rundir import RunDir, model_name
from gerbil.train.schedules import Schedule, StepSchedule, make_schedule
from gerbil.units import fmt_batch

log = logging.getLogger(__name__)


@dataclass
class Resolved:
    cfg: TrainConfig  # the effective config (a resumed run's own, a star run's inherited model/seed/seq_len)
    name: str
    size: str
    cls: str | None  # None: a custom token budget (no class)
    model_config: ModelConfig
    budget: int
    steps: StepSchedule
    batch_label: str
    schedule: Schedule
    device: torch.device
    precision: str
    autocast_dtype: torch.dtype | None
    use_scaler: bool
    compile: bool
    micro_batch: int
    eval_micro_batch: int
    checkpoint_every: int
    eval_every: int
    run: RunDir
    store: Any
    train_split: Any
    val_split: Any
    resume_from: Path | None
    parent: dict | None
    parent_record: dict | None
    flops_per_token: int
    peak_flops: float | None

    def mfu(self, tok_s: float) -> float | None:
        if not self.peak_flops:
            return None
        return round(self.flops_per_token * tok_s / self.peak_flops, 4)

    def config_record(self) -> dict:
        """What config.yaml holds: the resolved configuration (docs/architecture.md, "Run directory")."""
        cfg = self.cfg
        return {
            "name": self.name, "size": self.size, "class": self.cls, "objective": cfg.objective,
            "model": self.model_config.to_dict(), "params": self.model_config.n_params("total"),
            "data": {"path": str(Path(cfg.data).resolve()), "tokenizer_sha256": self.store.tokenizer_sha256,
                     "train_tokens": int(self.train_split.n_tokens),
                     "val_tokens": int(self.store.split("val").n_tokens), "identity": self.store.identity()},
            "train": cfg.to_dict(),
            "resolved": {"budget": self.budget, "batch": self.batch_label,
                         "batch_schedule": self.steps.batches.to_dict(), "micro_batch": self.micro_batch,
                         "lr": self.schedule.peak, "schedule": dataclasses.asdict(self.schedule),
                         "precision": self.precision, "device": str(self.device), "compile": self.compile,
                         "checkpoint_every": self.checkpoint_every, "eval_every": self.eval_every},
            "parent": self.parent_record,
        }


def run_name(cfg: TrainConfig) -> str:
    """The run's directory name: `cfg.name`, or the model name (`rundir.model_name`): the objective's
    family, the class (a continuation is a star class) and the size."""
    if cfg.name:
        return cfg.name
    if cfg.cls is None and cfg.tokens is not None:
        cls = None  # a custom token budget: no class in the name
    else:
        cls, _, star = planlib.parse_class(cfg.cls)
        if cfg.from_run and not star:
            cls += "*"  # a continuation is a star class (plan.make_plan labels it the same way)
    if cfg.model is not None:
        size = cfg.model.get("name") or "custom"
    else:
        size = get_size(cfg.size or FRESH_DEFAULTS["size"]).name
    return model_name(cfg.objective, cls, size)


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GerbilError(f"cannot write run directory {run_dir}: {e.strerror or e}") from None


def _expected_tokenizer_sha(cfg: TrainConfig) -> str:
    if cfg.tokenizer_sha256:
        return cfg.tokenizer_sha256
    from gerbil.data.tokenizer import Tokenizer

    return Tokenizer.load().sha256


def resolve(cfg: TrainConfig) -> Resolved:
    """Check every input and decide every number of a run (see the module docstring)."""
    from gerbil.data.loader import resolve_objective
    from gerbil.data.store import TokenStore

    cfg = dataclasses.replace(cfg)  # never mutate the caller's config; the effective one is `Resolved.cfg`
    resume_from, saved_data, restart = None, None, bool(cfg.resume)
    if cfg.resume:  # continue as the run was configured (its config.yaml), only runtime knobs may change
        run = RunDir(Path(cfg.runs) / run_name(cfg))
        resume_from = run.latest_checkpoint() if run.path.is_dir() else None
        if resume_from is None:  # `--resume auto`: nothing to continue yet (never started, or killed
            # before its first checkpoint) → start it, as given
            log.info("no checkpoint in %s yet: starting the run", run.path)
            cfg.resume = False
    if resume_from is not None:
        conf = run.read_config()
        saved = TrainConfig.from_dict(conf.get("train") or {})
        _refuse_changes(cfg, saved, run.path)
        runtime = {k: getattr(cfg, k) for k in RUNTIME_FIELDS if k not in ("data", "resume", "name")}
        data = cfg.data  # a moved store may be re-pointed; its identity is checked below
        cfg = dataclasses.replace(saved, **runtime, resume=True, name=run.name)
        saved_data = conf.get("data") or {}
        cfg.data = data or saved_data.get("path") or saved.data

    resolve_objective(cfg.objective)  # unknown objective → one-line ValueError, before anything else
    cfg.objective_options()  # an option the objective does not take → one-line ValueError

    # --- parent (star continuation): its latest intact checkpoint
    parent = parent_record = None
    if cfg.from_run and resume_from is None:
        from gerbil.train.rundir import resolve_source

        src = Path(cfg.from_run)
        if not src.exists() and (Path(cfg.runs) / cfg.from_run).exists():
            src = Path(cfg.runs) / cfg.from_run
        try:
            source = resolve_source(src)
        except GerbilError:
            source = None
        if source is None or source.checkpoint is None:
            raise GerbilError(f"--from: no complete checkpoint in {src}")
        pc = source.checkpoint
        pmeta = ckpt.read_meta(pc)
        parent = {"path": pc, "meta": pmeta, "run": source.run}
        # the continuation is the parent's model on the parent's data stream: same model, seq_len and
        # seed (the loader cursor is only meaningful for those); recorded in this run's config.yaml
        inherited = {"seq_len": int(pmeta.get("seq_len", FRESH_DEFAULTS["seq_len"])),
                     "seed": int(pmeta.get("seed", FRESH_DEFAULTS["seed"]))}
        for key, value in inherited.items():
            if getattr(cfg, key) is not None and getattr(cfg, key) != value:
                raise GerbilError(f"--from: {key} {getattr(cfg, key)} differs from the parent run's {value} (a "
                                  f"continuation keeps its parent's {key}; leave it out)")
        parent_model = ModelConfig.from_dict(dict(pmeta["model"]))
        given_model = (ModelConfig.from_dict(dict(cfg.model)) if cfg.model is not None
                       else get_size(cfg.size).model_config() if cfg.size is not None else None)
        if given_model is not None and _shape(given_model) != _shape(parent_model):
            what = f"--size {cfg.size}" if cfg.model is None else "the given model"
            raise GerbilError(f"--from: {what} is not the parent's model ({pmeta.get('size') or 'custom'}: "
                              f"d_model {parent_model.d_model}, n_layer {parent_model.n_layer}); leave it out")
        cfg.model = dict(pmeta["model"])
        cfg.seq_len, cfg.seed = inherited["seq_len"], inherited["seed"]
        parent_record = {"run": pmeta.get("run"), "checkpoint": str(pc), "tokens": pmeta["tokens"],
                         "step": pmeta["step"], "class": pmeta.get("class"), "lr": _final_lr(pmeta, source.run)}
        if source.run is not None:
            saved_data = source.run.read_config().get("data") or {}
            if cfg.data is None:
                cfg.data = saved_data.get("path")
        if pmeta.get("objective") and pmeta["objective"] != cfg.objective:
            raise ValueError(f"--from run used objective {pmeta['objective']!r}, not {cfg.objective!r}")
    elif resume_from is not None:
        parent_record = ckpt.read_meta(resume_from).get("parent")
    for key, value in FRESH_DEFAULTS.items():
        if getattr(cfg, key) is None and not (key == "size" and cfg.model is not None):
            setattr(cfg, key, value)

    # --- model and budget (gerbil.plan: ratio × total params, batch schedule incl. ramps)
    if cfg.model is not None:
        model_cfg = ModelConfig.from_dict(dict(cfg.model))
        size = model_cfg.name or "custom"
    else:
        size = get_size(cfg.size).name
        model_cfg = get_size(size).model_config(seq_len=max(2048, cfg.seq_len))
    if cfg.seq_len > model_cfg.seq_len:
        raise ValueError(f"seq_len {cfg.seq_len} exceeds the model's context of {model_cfg.seq_len}")
    from_dir = parent["path"] if parent else (resume_from and parent_record and parent_record.get("checkpoint"))
    p = planlib.make_plan(model_cfg if cfg.model is not None else size, cfg.cls, seq_len=cfg.seq_len,
                          batch_tokens=cfg.batch_tokens, from_run=from_dir or None, tokens=cfg.tokens)
    budget = p.budget_tokens
    steps = StepSchedule(p.schedule, budget, cfg.seq_len)
    cls = None if (cfg.cls is None and cfg.tokens is not None) else p.cls

    # --- data: a store made with this tokenizer, holding ids the model can embed
    if not cfg.data:
        raise ValueError("no training data: pass --data STORE (a token store from `gerbil prepare`)")
    cfg.data = str(Path(cfg.data).expanduser().resolve())  # absolute: resumable from any working directory
    store = TokenStore.open(cfg.data, tokenizer_sha256=_expected_tokenizer_sha(cfg))
    if saved_data:  # a resume or continuation must read the very store its run (or parent) trained on
        _check_same_store(store, saved_data, "--resume" if cfg.resume else "--from")
    if store.vocab_size > model_cfg.vocab_size:
        raise GerbilError(f"store vocabulary {store.vocab_size} exceeds the model's {model_cfg.vocab_size}")
    if cfg.objective != "plain" and model_cfg.vocab_size <= max(SPECIAL_TOKENS.values()):
        raise GerbilError(f"objective {cfg.objective!r} writes the Blender special tokens (ids up to "
                          f"{max(SPECIAL_TOKENS.values())}); the model's vocabulary has {model_cfg.vocab_size} ids")
    train_split, val_split = store.split("train"), store.split("val")
    if val_split.n_tokens <= cfg.seq_len:
        log.warning("validation split has only %d tokens: no validation loss", val_split.n_tokens)
        val_split = None

    # --- run directory
    name = run_name(cfg)
    run = RunDir(Path(cfg.runs) / name)
    if resume_from is None and run.list_checkpoints():
        raise GerbilError(f"run {run.path} already has checkpoints: pass --resume auto to continue it, "
                          f"or --name for a new run")
    if resume_from is None:  # never replace a run's files without --resume auto, nor files not a run's
        run.check_fresh(restart, "pass --resume auto to start it again, or --name for a new run")
    _check_writable(run.path)

    # --- device, precision, micro-batch
    device = pick_device(cfg.device)
    precision, autocast_dtype, use_scaler = choose_precision(device, cfg.precision)
    seqs_per_step = min(st.batch_tokens for st in p.schedule.stages) // cfg.seq_len
    compile_ = bool(cfg.compile) if cfg.compile is not None else device.type == "cuda"
    recorded = (run.read_config().get("resolved") or {}).get("micro_batch") if resume_from is not None else None
    micro = cfg.micro_batch or recorded or auto_micro_batch(model_cfg, device, cfg.seq_len, seqs_per_step,
                                                            autocast_dtype, cfg.loss_impl, compile_)
    peak = cfg.lr if cfg.lr is not None else default_lr(size if cfg.model is None else None)
    first_batch = p.schedule.stages[0].batch_tokens
    # a continuation's schedule starts where its parent stopped, from the parent's final LR (re-warmed to
    # the peak), so the LR is continuous at the join instead of jumping (docs/reference.md §7)
    start = int(parent_record["tokens"]) if parent_record else 0
    start_lr = float(parent_record.get("lr") or 0.0) if parent_record else 0.0
    warmup = cfg.warmup_tokens if cfg.warmup_tokens is not None else max(first_batch, (budget - start) // 100)
    schedule = make_schedule(cfg.schedule, peak, budget, warmup, cfg.min_lr_ratio, cfg.cooldown_fraction,
                             start=start, start_lr=start_lr)
    every = max(cfg.seq_len, budget // 10)
    return Resolved(
        cfg=cfg, name=name, size=size, cls=cls, model_config=model_cfg, budget=budget, steps=steps,
        batch_label=p.schedule.label() if not parent else fmt_batch(
            _parent_batch(parent), p.schedule.stages[-1].batch_tokens),
        schedule=schedule, device=device, precision=precision, autocast_dtype=autocast_dtype,
        use_scaler=use_scaler, compile=compile_, micro_batch=micro,
        eval_micro_batch=micro, checkpoint_every=int(cfg.checkpoint_every or every),
        eval_every=int(cfg.eval_every or every), run=run, store=store, train_split=train_split,
        val_split=val_split, resume_from=resume_from, parent=parent, parent_record=parent_record,
        flops_per_token=planlib.flops_per_token(model_cfg, cfg.seq_len), peak_flops=peak_flops(device, precision),
    )


def _shape(m: ModelConfig) -> tuple:
    return (m.d_model, m.n_layer, m.n_head, m.rotary_dim, m.vocab_size)


def _refuse_changes(given: TrainConfig, saved: TrainConfig, run_dir: Path) -> None:
    """A resumed run continues exactly as configured: a given option that is not a runtime knob and
    differs from the run's own value is refused with the field named (never silently ignored)."""
    fresh = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in RUNTIME_FIELDS:
            continue
        mine, theirs = getattr(given, f.name), getattr(saved, f.name)
        if mine != getattr(fresh, f.name) and mine != theirs:
            flag = "--" + (f.metadata.get("flag") or f.name).lstrip("-").replace("_", "-")
            was = f"the run's {theirs!r}" if theirs is not None else "the run's, which was left to its default"
            raise GerbilError(f"--resume continues {run_dir} as it was configured, but {flag} {mine!r} differs "
                              f"from {was}; leave it out (or start a new run with --name, or continue this one "
                              f"with --from)")


def _check_same_store(store, recorded: dict, verb: str) -> None:
    """Refuse a store whose identity differs from the one recorded in a run's config.yaml (`data`)."""
    ident = recorded.get("identity")
    if ident:  # written since 0.2: tokenizer, counts and a fingerprint of sampled bytes
        mine = store.identity()
        same = mine == ident
    else:  # 0.1 runs recorded the tokenizer and the split sizes only
        mine = {"tokenizer_sha256": store.tokenizer_sha256, "train_tokens": store.split("train").n_tokens,
                "val_tokens": store.split("val").n_tokens}
        # (0.1 wrote val_tokens 0 when the val split was too small to validate on: not comparable)
        same = all(recorded.get(k) == v for k, v in mine.items() if k in recorded and recorded.get(k) != 0)
    if not same:
        raise GerbilError(f"{verb}: the token store at {store.path} is not the one this run trained on "
                          f"(recorded {recorded.get('path')}: its tokenizer, sizes or content differ); pass "
                          f"--data with the original store")


def _final_lr(meta: dict, run: RunDir | None) -> float | None:
    """The LR of a checkpoint's last step: recorded in its meta.json since 0.2; for older checkpoints the
    metrics.jsonl line of that step."""
    if meta.get("lr") is not None:
        return float(meta["lr"])
    if run is not None:
        for rec in run.read_metrics():
            if rec.get("step") == meta.get("step") and rec.get("lr") is not None:
                return float(rec["lr"])
    return None


def _parent_batch(parent: dict) -> int:
    """The parent's first batch (for the seed-style label '131k-262k' of a star run)."""
    run = parent.get("run")
    try:
        conf = run.read_config() if run is not None else {}
        return int(conf["resolved"]["batch_schedule"]["stages"][0]["batch_tokens"])
    except (GerbilError, KeyError, TypeError, ValueError):
        return 0
