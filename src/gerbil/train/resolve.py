"""A training run's settings, decided once: budget, batch steps, LR schedule, device, precision, files.

`resolve(TrainConfig) -> Resolved` turns what the user asked for into concrete numbers and checks every
input before any training starts (unknown size/class/objective, a store from another tokenizer, a
budget smaller than one batch, an unwritable run directory, `resume` with no checkpoint — each one
line). `train.py` then only executes. The helpers here are small pure functions: the LR schedule
(`lr_at`), the optimizer's parameter groups, precision by device, the run directory's files.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gerbil.train import checkpoint as ckpt
from gerbil import plan as planlib
from gerbil.model.config import ModelConfig
from gerbil.errors import GerbilError

if TYPE_CHECKING:
    from gerbil.train.loop import TrainConfig

log = logging.getLogger(__name__)

# Peak learning rates when none is given. Starting points, not tuned optima: Pythia-70m used 1e-3 and
# narrower models tolerate larger steps (μP-style ∝ 1/width), so the tiny rungs get more.
DEFAULT_LR: dict[str, float] = {"3.3m": 3e-3, "6.7m": 3e-3, "15m": 2e-3, "32m": 1.5e-3, "77m": 1e-3,
                                "104m": 8e-4}
OBJECTIVE_PREFIX = {"plain": "Gerbil", "causal": "Gerbil", "blender": "GerbilBlender", "fim": "GerbilFIM",
                    "mlm": "GerbilMLM"}


# ------------------------------------------------------------------------------------ LR schedule
@dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of tokens trained (batch ramps leave it well defined)."""

    kind: str  # cosine | wsd
    peak: float
    total: int  # tokens at which the schedule ends (the run's budget)
    warmup: int  # tokens of linear warmup
    min_ratio: float = 0.1  # cosine floor
    cooldown: int = 0  # wsd: tokens of the final (1 − sqrt) decay


def build_schedule(cfg: "TrainConfig", total: int, peak: float, first_batch: int) -> Schedule:
    if cfg.schedule not in ("cosine", "wsd"):
        raise ValueError(f"unknown schedule {cfg.schedule!r} (cosine, wsd)")
    warmup = cfg.warmup_tokens if cfg.warmup_tokens is not None else max(first_batch, total // 100)
    cooldown = int(round(cfg.cooldown_fraction * total)) if cfg.schedule == "wsd" else 0
    return Schedule(cfg.schedule, float(peak), int(total), int(warmup), float(cfg.min_lr_ratio), cooldown)


def lr_at(tokens: int, s: Schedule, step_tokens: int = 0) -> float:
    """LR for the step that starts after `tokens` tokens and trains `step_tokens` more.

    cosine: linear warmup to the peak, then half a cosine down to `min_ratio × peak` at `total`.
    wsd: linear warmup, constant peak, then over the last `cooldown` tokens 1 − sqrt(progress) down to 0
    (Hägele et al. 2024: matches cosine, and any constant-LR point can branch a cooldown).
    """
    if s.warmup > 0 and tokens < s.warmup:
        # warmup counts the step's own tokens: the first step is not wasted at lr 0, and a warmup of
        # one batch means full LR from the first step
        return s.peak * min(1.0, (tokens + max(1, step_tokens)) / s.warmup)
    if s.kind == "cosine":
        frac = min(1.0, max(0.0, (tokens - s.warmup) / max(1, s.total - s.warmup)))
        floor = s.min_ratio * s.peak
        return floor + 0.5 * (s.peak - floor) * (1.0 + math.cos(math.pi * frac))
    start = s.total - s.cooldown
    if tokens < start:
        return s.peak
    return s.peak * (1.0 - math.sqrt(min(1.0, (tokens - start) / max(1, s.cooldown))))


# ------------------------------------------------------------------------------------ batch steps
@dataclass(frozen=True)
class StepPlan:
    """One optimizer step: `full_sequences` of seq_len tokens plus (final step only) one of `last_len`."""

    full_sequences: int
    last_len: int
    tokens: int


@dataclass(frozen=True)
class StepSchedule:
    """The plan's batch schedule, with the final step cut so the run ends exactly at `budget` tokens."""

    batches: planlib.BatchSchedule
    budget: int
    seq_len: int

    def at(self, tokens: int) -> StepPlan:
        # the batch schedule is indexed by step; find the step from tokens (stages are whole steps)
        b = self._batch_at(tokens)
        take = min(b, self.budget - tokens)
        return StepPlan(take // self.seq_len, take % self.seq_len, take)

    def _batch_at(self, tokens: int) -> int:
        t = self.batches.start_tokens
        for st in self.batches.stages:
            if tokens < t + st.steps * st.batch_tokens:
                return st.batch_tokens
            t += st.steps * st.batch_tokens
        return self.batches.stages[-1].batch_tokens


# ------------------------------------------------------------------------------------ device pieces
def pick_device(name: str) -> torch.device:
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GerbilError(f"device {name!r} requested but CUDA is not available")
    return dev


def choose_precision(device: torch.device, requested: str = "auto") -> tuple[str, torch.dtype | None, bool]:
    """(name, autocast dtype or None, use GradScaler) for a device.

    CUDA with bf16 → bf16 autocast; CUDA without (T4, RTX 20xx) → fp16 autocast + GradScaler (loss
    scaling, overflow steps skipped and counted); CPU → fp32 (CPU autocast is slow and only for tests).
    """
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {requested!r} (auto, fp32, bf16, fp16)")
    if requested == "auto":
        if device.type != "cuda":
            requested = "fp32"
        else:
            requested = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if requested == "fp32":
        return "fp32", None, False
    if requested == "bf16":
        return "bf16", torch.bfloat16, False
    return "fp16", torch.float16, device.type == "cuda"


def configure_optimizer(model: torch.nn.Module, weight_decay: float, betas: tuple[float, float],
                        fused: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: every 2-D weight (projections, MLP, the embedding and
    the head) decays; biases and LayerNorm gains do not (nanoGPT / litgpt convention; decaying a gain
    pulls it toward 0, not toward its init of 1). The LR is set per step by the schedule."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=0.0, betas=betas, eps=1e-8, **kw)


def auto_micro_batch(model_cfg: ModelConfig, device: torch.device, seq_len: int, seqs_per_step: int,
                     autocast_dtype: torch.dtype | None, loss_impl: str) -> int:
    """Largest power-of-two micro-batch (≤ 64 sequences and ≤ one step) whose training step fits.

    CUDA: try a forward + backward at each size from the top, keep the first whose peak memory stays
    under 85% of the device (headroom for the optimizer state, fragmentation and compile). CPU: at most
    8k tokens per micro-batch (the head's chunks dominate memory there, and bigger buys no speed).
    """
    top = 1
    while top * 2 <= min(64, seqs_per_step):
        top *= 2
    if device.type != "cuda":
        return max(1, min(top, 8192 // seq_len))
    from gerbil.model.loss import lm_loss
    from gerbil.model.model import GPT

    model = GPT(model_cfg).to(device)
    total_mem = torch.cuda.get_device_properties(device).total_memory
    mb = top
    while mb > 1:
        try:
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.zeros(mb, seq_len, dtype=torch.long, device=device)
            with torch.autocast("cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = lm_loss(model(x), model.lm_head.weight, model.lm_head.bias, x, impl=loss_impl,
                               vocab_size=model_cfg.vocab_size)
            loss.backward()
            peak = torch.cuda.max_memory_allocated(device)
            model.zero_grad(set_to_none=True)
            if peak < 0.85 * total_mem - 3 * 4 * model_cfg.n_params():  # params + grads + Adam m, v
                break
        except torch.cuda.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
        mb //= 2
    del model
    torch.cuda.empty_cache()
    return mb


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak dense FLOP/s of the device from `gerbil.plan.GPUS` (None: CPU or unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for key, gpu in planlib.GPUS.items():
        if key.upper().replace(" ", "") in name.replace(" ", ""):
            return gpu.peak_flops
    return None


# ------------------------------------------------------------------------------------ run directory
@dataclass(frozen=True)
class RunPaths:
    run_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def env(self) -> Path:
        return self.run_dir / "env.json"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines past `step` (written after the checkpoint a resume continues from)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def env_info(device: torch.device) -> dict:
    """Code version, library versions and hardware: what a result needs to be reproduced."""
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    here = Path(__file__).resolve().parent
    git = {}
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            git = {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    info = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv, "git": git or None,
        "python": platform.python_version(), "platform": platform.platform(), "hostname": platform.node(),
        "packages": {p: version(p) for p in ("gerbil-lab", "torch", "numpy", "safetensors", "tokenizers",
                                                "transformers", "pyyaml", "tqdm")},
        "device": str(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory=p.total_memory, capability=f"{p.major}.{p.minor}",
                    cudnn=torch.backends.cudnn.version())
    return info


def write_run_files(paths: RunPaths, r: "Resolved", cfg: "TrainConfig", fresh: bool) -> None:
    """config.yaml (resolved), env.json; a fresh run starts a new metrics.jsonl."""
    import yaml

    resolved = {
        "name": r.name, "size": r.size, "class": r.cls, "objective": cfg.objective,
        "model": r.model_config.to_dict(), "params": r.model_config.n_params("total"),
        "data": {"path": str(Path(cfg.data).resolve()), "tokenizer_sha256": r.store.tokenizer_sha256,
                 "train_tokens": int(r.train_split.n_tokens),
                 "val_tokens": int(r.val_split.n_tokens) if r.val_split is not None else 0},
        "train": cfg.to_dict(),
        "resolved": {"budget": r.budget, "batch": r.batch_label, "batch_schedule": r.steps.batches.to_dict(),
                     "micro_batch": r.micro_batch, "lr": r.schedule.peak,
                     "schedule": dataclasses.asdict(r.schedule), "precision": r.precision,
                     "device": str(r.device), "compile": r.compile, "checkpoint_every": r.checkpoint_every,
                     "eval_every": r.eval_every},
        "parent": r.parent_record,
    }
    paths.config.write_text(yaml.safe_dump(resolved, sort_keys=False))
    paths.env.write_text(json.dumps(env_info(r.device), indent=2) + "\n")
    if fresh:
        paths.metrics.write_text("")


# ------------------------------------------------------------------------------------ resolve
@dataclass
class Resolved:
    cfg: Any  # the effective TrainConfig (a resumed run's own, a star run's inherited model/seed/seq_len)
    name: str
    size: str
    cls: str
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
    paths: RunPaths
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


def run_name(cfg: "TrainConfig") -> str:
    """The run's directory name: `cfg.name`, or seed style `Gerbil[Blender]-<class>-<size>` (E* → E-star)."""
    if cfg.name:
        return cfg.name
    cls, _, star = planlib.parse_class(cfg.cls)
    if cfg.from_run and not star:
        cls += "*"  # a continuation is a star class (plan.make_plan labels it the same way)
    if cfg.model is not None:
        size = cfg.model.get("name") or "custom"
    else:
        from gerbil.model.config import get_size

        size = get_size(cfg.size).name
    prefix = OBJECTIVE_PREFIX.get(cfg.objective.lower(), "Gerbil" + cfg.objective.title())
    return f"{prefix}-{cls.replace('*', '-star')}-{size}"


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GerbilError(f"cannot write run directory {run_dir}: {e.strerror or e}") from None


def _expected_tokenizer_sha(cfg: "TrainConfig") -> str:
    if cfg.tokenizer_sha256:
        return cfg.tokenizer_sha256
    from gerbil.data.tokenizer import Tokenizer

    return Tokenizer.load().sha256


def resolve(cfg: "TrainConfig") -> Resolved:
    """Check every input and decide every number of a run (see the module docstring)."""
    from gerbil.data.loader import resolve_objective
    from gerbil.data.store import TokenStore
    from gerbil.train.loop import TrainConfig

    cfg = dataclasses.replace(cfg)  # never mutate the caller's config; the effective one is `Resolved.cfg`
    resume_from = None
    if cfg.resume:  # continue as the run was configured (its config.yaml), only runtime knobs may change
        run_dir = Path(cfg.runs) / run_name(cfg)
        resume_from = ckpt.latest_checkpoint(run_dir) if run_dir.is_dir() else None
        if resume_from is None:
            raise GerbilError(f"--resume: no complete checkpoint in {run_dir}")
        import yaml

        saved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
        runtime = {k: getattr(cfg, k) for k in ("device", "compile", "progress", "runs", "tokenizer_sha256")}
        cfg = TrainConfig.from_dict(dict(saved, **runtime, resume=True, name=run_dir.name))

    resolve_objective(cfg.objective)  # unknown objective → one-line ValueError, before anything else
    if cfg.seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {cfg.seq_len}")

    # --- parent (star continuation): its latest intact checkpoint
    parent = parent_record = None
    if cfg.from_run and resume_from is None:
        src = Path(cfg.from_run)
        if not src.exists() and (Path(cfg.runs) / cfg.from_run).exists():
            src = Path(cfg.runs) / cfg.from_run
        pc = ckpt.latest_checkpoint(src) if src.exists() else None
        if pc is None:
            raise GerbilError(f"--from: no complete checkpoint in {src}")
        pmeta = json.loads((pc / ckpt.META).read_text())
        parent = {"path": pc, "meta": pmeta}
        # the continuation is the parent's model on the parent's data stream: same model, seq_len and
        # seed (the loader cursor is only meaningful for those); recorded in this run's config.yaml
        cfg.model = dict(pmeta["model"])
        cfg.seq_len = int(pmeta.get("seq_len", cfg.seq_len))
        cfg.seed = int(pmeta.get("seed", cfg.seed))
        parent_record = {"run": pmeta.get("run"), "checkpoint": str(pc), "tokens": pmeta["tokens"],
                         "step": pmeta["step"], "class": pmeta.get("class")}
        if cfg.data is None:
            cfg.data = yaml_data_path(pc.parent.parent)
        if pmeta.get("objective") and pmeta["objective"] != cfg.objective:
            raise ValueError(f"--from run used objective {pmeta['objective']!r}, not {cfg.objective!r}")
    elif resume_from is not None:
        pmeta = json.loads((resume_from / ckpt.META).read_text())
        parent_record = pmeta.get("parent")

    # --- model and budget (gerbil.plan: ratio × total params, batch schedule incl. ramps)
    if cfg.model is not None:
        model_cfg = ModelConfig.from_dict(dict(cfg.model))
        size = model_cfg.name or "custom"
    else:
        from gerbil.model.config import get_size

        size = get_size(cfg.size).name
        model_cfg = get_size(size).model_config(seq_len=max(2048, cfg.seq_len))
    if cfg.seq_len > model_cfg.seq_len:
        raise ValueError(f"seq_len {cfg.seq_len} exceeds the model's context of {model_cfg.seq_len}")
    from_dir = parent["path"] if parent else (resume_from and parent_record and parent_record.get("checkpoint"))
    p = planlib.make_plan(model_cfg if cfg.model is not None else size, cfg.cls, seq_len=cfg.seq_len,
                          batch_tokens=cfg.batch_tokens, from_run=from_dir or None, tokens=cfg.tokens)
    budget = p.budget_tokens
    steps = StepSchedule(p.schedule, budget, cfg.seq_len)
    cls = p.cls

    # --- data: a store made with this tokenizer, holding ids the model can embed
    if not cfg.data:
        raise ValueError("no training data: pass --data STORE (a token store from `gerbil prepare`)")
    store = TokenStore.open(cfg.data, tokenizer_sha256=_expected_tokenizer_sha(cfg))
    if store.vocab_size > model_cfg.vocab_size:
        raise GerbilError(f"store vocabulary {store.vocab_size} exceeds the model's {model_cfg.vocab_size}")
    train_split, val_split = store.split("train"), store.split("val")
    if val_split.n_tokens <= cfg.seq_len:
        log.warning("validation split has only %d tokens: no validation loss", val_split.n_tokens)
        val_split = None

    # --- run directory
    name = run_name(cfg)
    paths = RunPaths(Path(cfg.runs) / name)
    if resume_from is None and ckpt.list_checkpoints(paths.run_dir):
        raise GerbilError(f"run {paths.run_dir} already has checkpoints: pass --resume auto to continue it, "
                          f"or --name for a new run")
    _check_writable(paths.run_dir)

    # --- device, precision, micro-batch
    device = pick_device(cfg.device)
    precision, autocast_dtype, use_scaler = choose_precision(device, cfg.precision)
    seqs_per_step = min(st.batch_tokens for st in p.schedule.stages) // cfg.seq_len
    micro = cfg.micro_batch or auto_micro_batch(model_cfg, device, cfg.seq_len, seqs_per_step, autocast_dtype,
                                                cfg.loss_impl)
    if micro <= 0:
        raise ValueError(f"micro_batch must be positive, got {micro}")
    peak = cfg.lr if cfg.lr is not None else DEFAULT_LR.get(size, 1e-3)
    schedule = build_schedule(cfg, budget, peak, p.schedule.stages[0].batch_tokens)
    every = max(cfg.seq_len, budget // 10)
    return Resolved(
        cfg=cfg, name=name, size=size, cls=cls, model_config=model_cfg, budget=budget, steps=steps,
        batch_label=p.schedule.label() if not parent else planlib.fmt_batch(
            _parent_batch(parent), p.schedule.stages[-1].batch_tokens),
        schedule=schedule, device=device, precision=precision, autocast_dtype=autocast_dtype,
        use_scaler=use_scaler, compile=bool(cfg.compile and device.type == "cuda"), micro_batch=micro,
        eval_micro_batch=micro, checkpoint_every=int(cfg.checkpoint_every or every),
        eval_every=int(cfg.eval_every or every), paths=paths, store=store, train_split=train_split,
        val_split=val_split, resume_from=resume_from, parent=parent, parent_record=parent_record,
        flops_per_token=planlib.flops_per_token(model_cfg, cfg.seq_len), peak_flops=peak_flops(device, precision),
    )


def _parent_batch(parent: dict) -> int:
    """The parent's first batch (for the seed-style label '131k-262k' of a star run)."""
    try:
        import yaml

        conf = yaml.safe_load((Path(parent["path"]).parent.parent / "config.yaml").read_text())
        return int(conf["resolved"]["batch_schedule"]["stages"][0]["batch_tokens"])
    except (OSError, KeyError, TypeError, ValueError):
        return 0


def yaml_data_path(run_dir: Path) -> str | None:
    """The token store a run trained on (from its config.yaml), for `--from` without `--data`."""
    import yaml

    try:
        return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["data"]["path"]
    except (OSError, KeyError, TypeError):
        return None
