"""A pretraining run's settings, decided once: budget, batch steps, LR schedule, device, precision, files.

`resolve(TrainConfig) -> Pretraining` turns what the user asked for into the run's `RunPlan` (the loop's
contract, `gerbil.train.runplan`) and what pretraining's workload reads besides (the token store, its
splits, the step schedule), and checks every input before any training starts (unknown
size/class/objective, a store from another tokenizer, a budget smaller than one batch, an unwritable run
directory, a changed option on resume — each one line). `gerbil.train.loop` then only executes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gerbil import plan as planlib
from gerbil.classes import parse_class, star
from gerbil.continuation import ParentPoint, inherit
from gerbil.data.loader import resolve_objective
from gerbil.data.objectives import objective_class
from gerbil.data.store import Split, TokenStore
from gerbil.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from gerbil.errors import GerbilError
from gerbil.data.encdec import check_objective, default_encoder_len
from gerbil.model.config import ModelConfig, default_lr, get_arch_size, ladder_model
from gerbil.model.loss import default_chunk_tokens
from gerbil.runs.rundir import RunDir, model_name, read_meta
from gerbil.schedules import BatchSchedule, Schedule, StepSchedule, make_schedule
from gerbil.train import autotune, sdpa
from gerbil.train.checkpoint import CheckpointPolicy
from gerbil.train.config import DEFAULT_ARCH, DEFAULT_SIZE, FRESH_DEFAULTS, TrainConfig
from gerbil.train.device import auto_micro_batch, peak_flops
from gerbil.train.distributed import Dist
from gerbil.train.runplan import AdamW, Execution, Parent, RunPlan, execution, fresh_start, resume_point

log = logging.getLogger(__name__)


@dataclass
class Pretraining:
    """A pretraining run decided: its plan, and what its workload (`gerbil.train.loop._pretraining`) reads."""

    plan: RunPlan
    cfg: TrainConfig  # the effective config (a resumed run's own, a star run's inherited model/seed/seq_len)
    steps: StepSchedule
    store: TokenStore
    train_split: Split
    val_split: Split | None  # None: too small to validate on


def run_name(cfg: TrainConfig) -> str:
    """The run's directory name: `cfg.name`, or the model name (`runs.rundir.model_name`): the objective's
    family, the class (a continuation is a star class) and the size."""
    if cfg.name:
        return cfg.name
    if cfg.cls is None and cfg.tokens is not None:
        cls = None  # a custom token budget: no class in the name
    else:
        cls = parse_class(cfg.cls)[0]
        if cfg.from_run:
            cls = star(cls)  # a continuation is a star class (gerbil.continuation)
    arch = _arch(cfg)
    if cfg.model is not None:
        size = cfg.model.get("name") or "custom"
    else:
        size = get_arch_size(arch, cfg.size or DEFAULT_SIZE[arch]).name
    return model_name(cfg.objective, cls, size, arch)


def _arch(cfg: TrainConfig) -> str:
    """The run's architecture: `--arch`, else an explicit model's, else GPT-J."""
    return cfg.arch or (cfg.model or {}).get("arch") or DEFAULT_ARCH


def resolve(cfg: TrainConfig, dist: Dist | None = None) -> Pretraining:
    """Check every input and decide every number of a run (see the module docstring). `dist`: a
    data-parallel job, whose ranks take rank 0's micro-batch (its probe decides)."""
    cfg = dataclasses.replace(cfg)  # never mutate the caller's config; the effective one is `Pretraining.cfg`
    run = RunDir(Path(cfg.runs) / run_name(cfg))
    cfg, resume_from, recorded, restart = resume_point(cfg, run, "train")
    saved_data = recorded.get("data") or {}
    if resume_from is not None:
        cfg.name = run.name
        cfg.data = cfg.data or saved_data.get("path")  # a moved store may be re-pointed: identity checked below
    resolve_objective(cfg.objective)  # unknown objective → one-line error, before anything else
    cfg.objective_options()  # an option the objective does not take → one-line error
    if _arch(cfg) == "t5":  # an objective without an encoder-decoder format (plain) → one line
        check_objective(cfg.objective, **cfg.objective_options())

    parent, point = None, None
    if cfg.from_run and resume_from is None:
        point = ParentPoint.read(cfg.from_run, runs=cfg.runs)
        parent, saved_data = _continuation(cfg, point)
    elif resume_from is not None:
        parent = Parent.from_record(read_meta(resume_from).get("parent"))
        point = ParentPoint.read(parent.checkpoint, check_hash=False) if parent else None
    cfg.arch = _arch(cfg)  # recorded resolved, as size and seq_len are: a resume compares it
    for key, value in FRESH_DEFAULTS.items():
        if getattr(cfg, key) is None and not (key == "size" and cfg.model is not None):
            setattr(cfg, key, DEFAULT_SIZE[cfg.arch] if key == "size" else value)

    size, model_cfg = _model(cfg)
    p = planlib.make_plan(model_cfg if cfg.model is not None else size, cfg.cls, seq_len=cfg.seq_len,
                          batch_tokens=cfg.batch_tokens, from_run=point, tokens=cfg.tokens, arch=_arch(cfg))
    store, train_split, val_split = _data(cfg, model_cfg, saved_data)

    name = run_name(cfg)
    run = RunDir(Path(cfg.runs) / name)
    if resume_from is None:
        fresh_start(run, restart, "--name for a new run")
    _check_writable(run.path)

    ex = execution(cfg)
    was = recorded.get("resolved") or {}  # what a resumed run decided
    micro = _micro_batch(cfg, model_cfg, p, ex, was.get("micro_batch"), dist)
    loss, attention, tuning = _tuning(cfg, model_cfg, ex, micro, was, dist)
    budget = p.budget_tokens
    steps = StepSchedule(p.schedule, budget, cfg.seq_len)
    every = max(cfg.seq_len, budget // 10)
    plan = RunPlan(
        name=name, run=run, model_config=model_cfg, size=size, budget=budget, batch_label=p.batch, cls=p.cls,
        schedule=_lr_schedule(cfg, size, p, parent, (was.get("schedule") or {}).get("warmup")),
        optimizer=AdamW.of(cfg), eval_every=int(cfg.eval_every or every),
        checkpoints=_checkpoint_policy(cfg, every), seed=cfg.seed, deterministic=cfg.deterministic, **ex._asdict(),
        micro_batch=micro, eval_micro_batch=micro, log=cfg.log, log_every=cfg.log_every, progress=cfg.progress,
        flops_per_token=planlib.flops_per_token(model_cfg, cfg.seq_len, encoder_len=encoder_len(cfg, model_cfg)),
        peak_flops=peak_flops(ex.device, ex.precision),
        record={}, resume_from=resume_from, parent=parent, loss_impl=loss.name,
        sdpa_backend=None if attention.name == "default" else attention.name, tuning=tuning)
    plan.record = _config_record(plan, cfg, store, train_split, steps)
    return Pretraining(plan=plan, cfg=cfg, steps=steps, store=store, train_split=train_split, val_split=val_split)


def _checkpoint_policy(cfg: TrainConfig, every: int) -> CheckpointPolicy:
    """`gerbil train`'s checkpoint options as the loop's policy (`every`: the default interval)."""
    return CheckpointPolicy(int(cfg.checkpoint_every or every), keep_newest=cfg.keep_checkpoints,
                            log_spaced=cfg.checkpoints == "log", marks=tuple(cfg.checkpoint_at or ()))


def encoder_len(cfg: TrainConfig, model_cfg: ModelConfig) -> int | None:
    """An encoder-decoder's encoder positions per row (`data.encdec.default_encoder_len` of its objective);
    None for a decoder-only model."""
    if not model_cfg.is_encoder_decoder:
        return None
    return default_encoder_len(cfg.seq_len, check_objective(cfg.objective, **cfg.objective_options()))


def _model(cfg: TrainConfig) -> tuple[str, ModelConfig]:
    """(size name, model): the explicit `model`, or the preset's (`--arch`: the GPT-J ladder or a T5
    preset) at the run's context. `--arch` and an explicit model of another architecture: one line."""
    if cfg.model is not None:
        model_cfg = ModelConfig.from_dict(dict(cfg.model))
        if model_cfg.arch != _arch(cfg):
            raise GerbilError(f"--arch {cfg.arch} but the model is arch {model_cfg.arch!r}"
                              + (" (the --from run's)" if cfg.from_run else ""))
        size = model_cfg.name or "custom"
    else:
        size = get_arch_size(_arch(cfg), cfg.size).name
        model_cfg = ladder_model(size, cfg.seq_len, _arch(cfg))
    if cfg.seq_len > model_cfg.seq_len:
        raise GerbilError(f"seq_len {cfg.seq_len} exceeds the model's context of {model_cfg.seq_len}")
    return size, model_cfg


def _micro_batch(cfg: TrainConfig, model_cfg: ModelConfig, p: planlib.Plan, ex: Execution, recorded: int | None,
                 dist: Dist | None) -> int:
    """Sequences per forward pass: given, else the resumed run's own, else the largest that fits (probed);
    in a data-parallel job every rank takes rank 0's, so every rank splits steps the same way."""
    seqs_per_step = min(st.batch_tokens for st in p.schedule.stages) // cfg.seq_len
    if cfg.micro_batch or recorded:
        return cfg.micro_batch or recorded
    probe_loss = "chunked" if cfg.loss_impl == "auto" else cfg.loss_impl  # auto: the chunks' memory
    with sdpa.pinned(None if cfg.sdpa_backend == "auto" else cfg.sdpa_backend):  # a pinned kernel's memory
        micro = auto_micro_batch(model_cfg, ex.device, cfg.seq_len, seqs_per_step, ex.autocast_dtype, probe_loss,
                                 ex.compile)
    if dist is not None and dist.enabled:
        micro = dist.broadcast_object(micro)
    return micro


def _tuning(cfg: TrainConfig, model_cfg: ModelConfig, ex: Execution, micro: int, was: dict,
            dist: Dist | None) -> tuple[autotune.Choice, autotune.Choice, dict]:
    """The loss implementation and the attention backend (`gerbil.train.autotune`: timed on CUDA for
    `auto`, a resumed run's recorded choice kept) and what env.json / result.json record of them."""
    loss = autotune.choose_loss_impl(cfg.loss_impl, model_cfg, ex.device, micro, cfg.seq_len, ex.autocast_dtype,
                                     default_chunk_tokens(ex.device), was, dist)
    encdec = model_cfg.is_encoder_decoder  # T5 adds a position bias to its scores: PyTorch's dispatch, untimed
    attention = autotune.choose_sdpa(cfg.sdpa_backend, model_cfg, ex.device, micro, cfg.seq_len, ex.autocast_dtype,
                                     was, dist, may_time=not encdec, masked=encdec)
    tuning = {"loss_impl": loss.name, "loss_impl_chosen": loss.how, "loss_impl_timings": loss.timings,
              "loss_impl_agreement": loss.agreement,
              "sdpa_backend": ("default (an additive position bias: no flash kernel)" if encdec and attention.name ==
                               "default" else autotune.describe(attention, ex.device, model_cfg, cfg.seq_len,
                                                                ex.autocast_dtype)),
              "sdpa_chosen": attention.how, "sdpa_timings": attention.timings, "sdpa_agreement": attention.agreement}
    return loss, attention, tuning


def _lr_schedule(cfg: TrainConfig, size: str, p: planlib.Plan, parent: Parent | None,
                 recorded_warmup: int | None = None) -> Schedule:
    """The LR as a function of tokens. A continuation's schedule starts where its parent stopped, from
    the parent's final LR (re-warmed to the peak), so the LR is continuous at the join instead of jumping
    (docs/reference.md §7). Warmup: the given `warmup_tokens`, else a resumed run's recorded one
    (`recorded_warmup`: config.yaml's, so a resume never changes its schedule), else `default_warmup`."""
    budget = p.budget_tokens
    peak = cfg.lr if cfg.lr is not None else default_lr(size if cfg.model is None else None, _arch(cfg))
    start = parent.tokens if parent else 0
    start_lr = float(parent.record.get("lr") or 0.0) if parent else 0.0
    if cfg.warmup_tokens is not None:
        warmup = cfg.warmup_tokens
    elif recorded_warmup is not None:
        warmup = int(recorded_warmup)
    else:
        warmup = default_warmup(p.schedule, budget - start)
    return make_schedule(cfg.schedule, peak, budget, warmup, cfg.min_lr_ratio, cfg.cooldown_fraction,
                         start=start, start_lr=start_lr)


def default_warmup(batches: BatchSchedule, own_tokens: int) -> int:
    """Tokens of warmup when none is given: the longest of one batch, 1% of the run's own tokens
    (`own_tokens`) and its first min(100, ⌈10% of its steps⌉) steps (docs/reference.md §7: 1% alone was
    ~10 steps at 6.7m-A, where the literature finds warmup of about N tokens, ~50 steps, better). A star
    continuation counts its own steps and tokens, from its parent's end (it re-warms from the parent's
    final LR)."""
    steps = min(100, -(-batches.total_steps // 10), batches.total_steps)
    by_steps = batches.tokens_before(batches.start_step + steps) - batches.start_tokens
    return max(batches.stages[0].batch_tokens, own_tokens // 100, by_steps)


def _config_record(plan: RunPlan, cfg: TrainConfig, store: TokenStore, train_split: Split,
                   steps: StepSchedule) -> dict:
    """What config.yaml holds: the resolved configuration (docs/architecture.md, "Run directory")."""
    return {
        "name": plan.name, "size": plan.size, "class": plan.cls, "objective": cfg.objective,
        "model": plan.model_config.to_dict(), "params": plan.model_config.n_params("total"),
        "data": {"path": str(Path(cfg.data).resolve()), "tokenizer_sha256": store.tokenizer_sha256,
                 "train_tokens": int(train_split.n_tokens), "val_tokens": int(store.split("val").n_tokens),
                 "identity": store.identity()},
        "train": cfg.to_dict(),
        "resolved": {"budget": plan.budget, "batch": plan.batch_label, "batch_schedule": steps.batches.to_dict(),
                     "micro_batch": plan.micro_batch, "loss_impl": plan.loss_impl,
                     "sdpa_backend": plan.sdpa_backend or "default", "lr": plan.schedule.peak,
                     "schedule": dataclasses.asdict(plan.schedule), "precision": plan.precision,
                     "device": str(plan.device), "compile": plan.compile,
                     "checkpoint_every": plan.checkpoints.every, "eval_every": plan.eval_every},
        "parent": plan.parent.record if plan.parent else None,
    }


def _continuation(cfg: TrainConfig, point: ParentPoint) -> tuple[Parent, dict]:
    """A star continuation (`--from`, `gerbil.continuation`): the parent (the latest intact checkpoint of the
    run, or the checkpoint given) and the data record the continuation must read. Its model, seq_len and
    seed are the parent's (set on `cfg`); a different given one is refused."""
    theirs = point.model_config().arch
    if cfg.arch is not None and cfg.arch != theirs:
        raise GerbilError(f"--from: --arch {cfg.arch} differs from the parent run's arch {theirs} (a continuation "
                          f"trains its parent's model; leave --arch out)")
    cfg.arch = theirs
    given = ModelConfig.from_dict(dict(cfg.model)) if cfg.model is not None else None
    inherited = inherit(point, "--from", size=cfg.size if given is None else None, model=given,
                        seq_len=cfg.seq_len, seed=cfg.seed, objective=cfg.objective)
    cfg.model, cfg.seq_len, cfg.seed = inherited["model"], inherited["seq_len"], inherited["seed"]
    record = {"run": point.meta.get("run"), "checkpoint": str(point.checkpoint), "tokens": point.tokens,
              "step": point.step, "class": point.meta.get("class"), "lr": point.final_lr()}
    data = point.data_record()
    if cfg.data is None:
        cfg.data = data.get("path")
    return Parent(point.checkpoint, record), data


def _data(cfg: TrainConfig, model_cfg: ModelConfig, recorded: dict) -> tuple[TokenStore, Split, Split | None]:
    """The token store (made with this tokenizer, holding ids the model can embed; a resume or
    continuation must read the very store its run or parent trained on) and its splits."""
    if not cfg.data:
        raise GerbilError("no training data: pass --data STORE (a token store from `gerbil prepare`)")
    cfg.data = str(Path(cfg.data).expanduser().resolve())  # absolute: resumable from any working directory
    store = TokenStore.open(cfg.data, tokenizer_sha256=cfg.tokenizer_sha256 or Tokenizer.load().sha256)
    if recorded:
        _check_same_store(store, recorded, "--resume" if cfg.resume else "--from")
    if store.vocab_size > model_cfg.vocab_size:
        raise GerbilError(f"store vocabulary {store.vocab_size} exceeds the model's {model_cfg.vocab_size}")
    if objective_class(cfg.objective).special_ids and model_cfg.vocab_size <= max(SPECIAL_TOKENS.values()):
        raise GerbilError(f"objective {cfg.objective!r} writes the Blender special tokens (ids up to "
                          f"{max(SPECIAL_TOKENS.values())}); the model's vocabulary has {model_cfg.vocab_size} ids")
    train_split, val_split = store.split("train"), store.split("val")
    if val_split.n_tokens <= cfg.seq_len:
        log.warning("validation split has only %d tokens: no validation loss", val_split.n_tokens)
        val_split = None
    return store, train_split, val_split


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GerbilError(f"cannot write run directory {run_dir}: {e.strerror or e}") from None


def _check_same_store(store: TokenStore, recorded: dict, verb: str) -> None:
    """Refuse a store whose identity differs from the one recorded in a run's config.yaml (`data`)."""
    ident = recorded.get("identity")
    if ident:  # written since 0.2: tokenizer, counts and a fingerprint of sampled bytes
        mine: Any = store.identity()
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
