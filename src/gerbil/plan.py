"""Training plans: class token budgets, batch schedules, steps, FLOPs and time estimates.

Pure Python — this module never imports torch, so `gerbil plan` answers instantly on any machine and
the trainer, the registry and the results table can all reuse it.

A plan turns (model, class) into numbers:

    budget  = ratio × total parameters              (class A 20, B 42, C 76, D 142, E 284; docs/reference.md §3)
    steps   = the exact integer steps of a `BatchSchedule` (constant batch or a ramp such as 131k-262k)
    FLOPs   = flops_per_token × tokens trained      (PaLM's MFU convention, see `flops_per_token`)
    time    = FLOPs / (GPU peak × MFU)              (peaks in `GPUS`; MFU an estimate per size, `default_mfu`)

Star classes (E*, B*) continue an earlier run: `make_plan(..., from_run=RUN)` reads the run's latest
checkpoint `meta.json` (plain JSON) and plans only the tokens still missing from the class budget.

Numbers are written and read the seed's way by `gerbil.units`; the batch schedule is
`gerbil.schedules.BatchSchedule` (the same object the trainer follows).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from gerbil.errors import GerbilError
from gerbil.model.config import SIZES, ModelConfig, default_mfu, get_size
from gerbil.runs.rundir import meta_file, read_meta, resolve_source
from gerbil.schedules import BatchSchedule, build_schedule
from gerbil.units import (DEFAULT_SEQ_LEN, fmt_batch, fmt_duration, fmt_flops, fmt_params, fmt_tokens, parse_batch,
                          parse_batch_spec, parse_count)

# Tokens per total parameter (docs/reference.md §3): A is Chinchilla-optimal; B–D are LLaMA's tokens/parameter
# ratios scaled down to this ladder; E doubles D. A star class ("E*") has the same ratio but continues
# an earlier checkpoint of the same model (the seed's B*-77m row used 40 instead of 42: pass ratio=40).
CLASSES: dict[str, int] = {"A": 20, "B": 42, "C": 76, "D": 142, "E": 284}



def parse_class(cls: str | None, ratio: float | None = None) -> tuple[str, float, bool]:
    """(label, ratio, star) for a class name ('A', 'e*', 'E-star'), a number ('300', '~300') or None.

    An explicit `ratio` overrides the class's ratio but keeps its label ('B*' with ratio 40 is the
    seed's B*-77m). With no class and no ratio the class is A.
    """
    if ratio is not None:
        ratio = float(ratio)
        if not math.isfinite(ratio) or ratio <= 0:
            raise ValueError(f"ratio must be a positive number of tokens per parameter, got {ratio:g}")
    if cls is None or not str(cls).strip():
        if ratio is None:
            return "A", float(CLASSES["A"]), False
        return f"{ratio:g}", ratio, False
    s = str(cls).strip().upper()
    star = False
    for suffix in ("*", "-STAR", "STAR"):
        if s.endswith(suffix):
            s, star = s[: -len(suffix)], True
            break
    if s in CLASSES:
        base = float(CLASSES[s])
        label = s + ("*" if star else "")
    else:
        try:
            base = float(s.lstrip("~"))
        except ValueError:
            raise ValueError(f"unknown class {cls!r} (A, B, C, D, E, a star class such as E*, "
                             f"or tokens per parameter such as 300)") from None
        if not math.isfinite(base) or base <= 0:
            raise ValueError(f"class ratio must be a positive number of tokens per parameter, got {cls!r}")
        label = f"{base:g}" + ("*" if star else "")
    return label, (ratio if ratio is not None else base), star


# ------------------------------------------------------------------------------------------ FLOPs, GPUs
def flops_per_token(model: ModelConfig, seq_len: int = DEFAULT_SEQ_LEN, training: bool = True,
                    encoder_len: int | None = None) -> int:
    """Model FLOPs per token: 6·(N_non_embedding + d·V) + 12·L·T·d for training (docs/reference.md §6).

    An encoder-decoder: the mean over a row of ``encoder_len`` encoder and ``seq_len − encoder_len`` decoder
    positions (`encdec_flops_per_token`; default split: Blender's, `gerbil.data.encdec.default_encoder_len`).

    This is PaLM's MFU convention (Chowdhery et al. 2022, appendix B: 6N + 12·L·H·Q·T):
      - 6 FLOPs per parameter per token (2 forward, 4 backward) for every matmul weight: the blocks
        (non-embedding parameters; their LayerNorms and biases are counted too, < 1% at these sizes)
        and the head d·V — which at vocab 50k is most of the compute of a tiny model. The embedding
        is a lookup and costs no FLOPs, so it is not counted.
      - 12·L·T·d for attention scores and the weighted sum over all T positions (QKᵀ and AV, 2·T·d
        each forward, ×3 for training). A causal kernel skips about half of this work; MFU counts
        it anyway, like PaLM.
    Elementwise work (softmax, GELU, LayerNorm, loss) is ignored. V is the real vocabulary: padded
    head rows are an implementation detail, not model FLOPs. This formula reproduces the MFU column
    of docs/reference.md §6 (6%, 23%, 37% on an H200 at 989 TFLOP/s). Forward only: a third of it.
    """
    if getattr(model, "is_encoder_decoder", False):
        T = int(seq_len)
        te = encoder_len if encoder_len is not None else _default_encoder_len(T)
        f_enc, f_dec = encdec_flops_per_token(model, te, T - te, training)
        return (te * f_enc + (T - te) * f_dec) // T  # the mean over a row's positions
    d, L, V = model.d_model, model.n_layer, model.vocab_size
    train = 6 * (model.n_params("non_embedding") + d * V) + 12 * L * seq_len * d
    return train if training else train // 3


def _default_encoder_len(seq_len: int) -> int:
    from gerbil.data.encdec import check_objective, default_encoder_len

    return default_encoder_len(seq_len, check_objective("blender"))


def encdec_flops_per_token(model, encoder_len: int, decoder_len: int, training: bool = True) -> tuple[int, int]:
    """(FLOPs per encoder token, FLOPs per decoder token) of an encoder-decoder — a T5 `ModelConfig` or a
    warm-start config (`gerbil.model.warmstart.WarmStartConfig`) — on rows of encoder_len + decoder_len.

    The convention of `flops_per_token` (6 per matmul weight per token, 12·L·keys·width for attention),
    counting only matmul weights (no norms, biases, position tables):
      - an encoder token: its stack's weights, plus every decoder layer's cross-attention k/v projections
        (they read the encoder output once per encoder token), plus self-attention over encoder_len keys;
      - a decoder token: its stack's weights (self-attention, cross q/o, MLP), the head d·V, and attention
        over decoder_len (causal, counted whole as PaLM does) + encoder_len keys in every layer.
    Forward only: a third of it.
    """
    d, V = model.d_model, model.vocab_size
    if getattr(model, "arch", "") == "t5":
        i, L_e, L_d = model.n_head * model.d_kv, model.n_layer, model.n_decoder_layer
        block = 4 * d * i + 3 * d * model.d_ff  # q,k,v,o + gated FF (wi_0, wi_1, wo)
    else:  # GPT-J blocks (a warm start): q,k,v,out 4d² + MLP 8d²
        i, L_e = d, model.n_layer
        L_d, block = L_e, 12 * d * d
    enc = 6 * (L_e * block + L_d * 2 * d * i) + 12 * L_e * encoder_len * i
    dec = 6 * (L_d * (block + 2 * d * i) + d * V) + 12 * L_d * (decoder_len + encoder_len) * i
    return (enc, dec) if training else (enc // 3, dec // 3)


@dataclass(frozen=True)
class GPU:
    """Peak dense tensor-core throughput of one GPU at the precision gerbil trains in on it."""

    name: str
    peak_flops: float  # FLOP/s, dense (no 2:4 sparsity), fp32 accumulation
    precision: str  # "bf16" or "fp16" (+ loss scaling, on GPUs without bf16)
    source: str


# Peak numbers from the vendors' datasheets / architecture whitepapers (dense; the "with sparsity"
# figures are twice these). GeForce cards run fp16/bf16 tensor math with fp32 accumulation — what
# PyTorch autocast uses — at half their fp16-accumulate rate, so that halved number is the peak here.
GPUS: dict[str, GPU] = {
    g.name: g
    for g in [
        # Tesla T4 datasheet: "Mixed Precision (FP16/FP32) 65 TFLOPS". Turing has no bf16.
        GPU("T4", 65e12, "fp16", "NVIDIA T4 datasheet: 65 TFLOPS FP16/FP32 mixed precision"),
        # TU106, 240 tensor cores × 64 FMA/clk × 2 × 1.68 GHz boost = 51.6 TFLOPS with fp16
        # accumulate; GeForce Turing halves that with fp32 accumulate (Turing whitepaper). No bf16.
        GPU("RTX 2060", 25.8e12, "fp16", "Turing whitepaper arithmetic: 51.6 TF fp16-acc, half with fp32-acc"),
        # GA106, 112 tensor cores × 128 FMA/clk × 2 × 1.777 GHz = 51 TFLOPS fp16-accumulate; fp16/bf16
        # with fp32 accumulate at half rate on GeForce Ampere (GA102 whitepaper, RTX 3090 71 of 142).
        GPU("RTX 3060", 25.5e12, "bf16", "Ampere GA10x whitepaper arithmetic: 25.5 TF bf16 fp32-acc"),
        # A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity), SXM and PCIe alike.
        GPU("A100", 312e12, "bf16", "NVIDIA A100 datasheet: 312 TFLOPS BF16 dense"),
        # H100 SXM datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity → 989 dense (PCIe: 756).
        GPU("H100", 989e12, "bf16", "NVIDIA H100 SXM datasheet: 989 TFLOPS BF16 dense"),
        # H200 datasheet: same Hopper compute as H100 SXM (more and faster memory).
        GPU("H200", 989e12, "bf16", "NVIDIA H200 datasheet: 989 TFLOPS BF16 dense"),
    ]
}


def get_gpu(name: str) -> GPU:
    """Look up a GPU by name, ignoring case, spaces and dashes ('rtx3060', 'RTX-3060', 'h100')."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for g in GPUS.values():
        if re.sub(r"[^a-z0-9]", "", g.name.lower()) == key:
            return g
    raise ValueError(f"unknown GPU {name!r} (known: {', '.join(GPUS)})")


# ---------------------------------------------------------------------------------- run checkpoints
def read_checkpoint_meta(path: str | Path) -> tuple[Path, dict]:
    """(checkpoint directory, meta dict) for a run directory or a checkpoint directory — no torch.

    What the path is, and a run's latest intact checkpoint, come from `gerbil.runs.rundir` (it follows
    the run's `latest` pointer and skips damaged checkpoints, like the trainer does; the sha256 check is
    skipped here, the size check is kept). The meta must carry `tokens`, `step` and `model`.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such run or checkpoint: {p}")
    src = resolve_source(p, check_hash=False)
    if src.checkpoint is None:
        raise GerbilError(f"{p}: an export folder has no training state to continue; give its run or checkpoint")
    ckpt = src.checkpoint
    try:
        meta = read_meta(ckpt)
    except (OSError, json.JSONDecodeError) as e:
        raise GerbilError(f"cannot read {meta_file(ckpt)}: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise GerbilError(f"{meta_file(ckpt)} has no model config")
    for key in ("tokens", "step"):
        if isinstance(meta.get(key), bool) or not isinstance(meta.get(key), int) or meta[key] < 0:
            raise GerbilError(f"{meta_file(ckpt)}: {key!r} must be a non-negative integer")
    return ckpt, meta


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """Everything `gerbil plan` reports for one run; `to_dict()` is its JSON form."""

    size: str  # ladder name ("6.7m") or the custom model's name ("custom")
    model: ModelConfig
    cls: str  # "A", "E*", "300"
    ratio: float  # tokens per total parameter
    seq_len: int
    budget_tokens: int  # the class's total budget, counted from the run's very start
    start_tokens: int  # already trained by the parent run (0 for a fresh run)
    schedule: BatchSchedule
    flops_per_token: int
    mfu: float
    mfu_source: str
    gpus: tuple[GPU, ...]
    parent: str | None = None  # checkpoint directory continued from
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Seed-style run name, e.g. 'A-6.7m', 'E*-6.7m'."""
        return f"{self.cls}-{self.size}"

    @property
    def params_total(self) -> int:
        return self.model.n_params("total")

    @property
    def params_non_embedding(self) -> int:
        return self.model.n_params("non_embedding")

    @property
    def tokens(self) -> int:
        """Tokens this run still has to train (budget − parent's tokens)."""
        return self.budget_tokens - self.start_tokens

    @property
    def trained_tokens(self) -> int:
        """Tokens this run's whole steps actually consume (≥ `tokens`, by less than one batch)."""
        return self.schedule.total_tokens

    @property
    def steps(self) -> int:
        return self.schedule.total_steps

    @property
    def batch(self) -> str:
        return self.schedule.label()

    @property
    def total_flops(self) -> float:
        """Training FLOPs of this run (the parent's are not counted)."""
        return float(self.flops_per_token) * self.trained_tokens

    def seconds_on(self, gpu: str | GPU) -> float:
        """Estimated wall time on one GPU: FLOPs / (peak × MFU)."""
        g = gpu if isinstance(gpu, GPU) else get_gpu(gpu)
        return self.total_flops / (g.peak_flops * self.mfu)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": self.size,
            "model": self.model.to_dict(),
            "params_total": self.params_total,
            "params_non_embedding": self.params_non_embedding,
            "class": self.cls,
            "ratio": self.ratio,
            "seq_len": self.seq_len,
            "budget_tokens": self.budget_tokens,
            "start_tokens": self.start_tokens,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "steps": self.steps,
            "batch": self.batch,
            "schedule": self.schedule.to_dict(),
            "flops_per_token": self.flops_per_token,
            "flops_formula": "6*(non_embedding_params + d_model*vocab) + 12*n_layer*seq_len*d_model",
            "total_flops": self.total_flops,
            "mfu": self.mfu,
            "mfu_source": self.mfu_source,
            "gpus": {g.name: {"peak_flops": g.peak_flops, "precision": g.precision,
                              "seconds": self.seconds_on(g)} for g in self.gpus},
            "parent": self.parent,
            "notes": list(self.notes),
            "display": {"params": fmt_params(self.params_total), "tokens": fmt_tokens(self.budget_tokens),
                        "batch": self.batch},
        }


def _default_batch(model: ModelConfig, size: str | None) -> int:
    """The seed's batch for a ladder size; for a custom model, the rung nearest in total parameters."""
    if size in SIZES:
        return SIZES[size].batch_tokens
    n = math.log(model.n_params())
    nearest = min(SIZES.values(), key=lambda s: abs(math.log(s.model_config().n_params()) - n))
    return nearest.batch_tokens


def make_plan(size: str | ModelConfig | None, cls: str | None = None, seq_len: int = DEFAULT_SEQ_LEN,
              batch_tokens: int | str | tuple[int, int] | None = None, ratio: float | None = None,
              from_run: str | Path | None = None, *, tokens: int | str | None = None,
              ramp_tokens: int | str | None = None, ramp_shape: str = "step", quantum: int | None = None,
              mfu: float | None = None, gpus: Iterable[str] | None = None) -> Plan:
    """Plan one training run.

    size:         a ladder name ("6.7m"), a ModelConfig for a custom model, or None with `from_run`.
    cls:          "A".."E", a star class ("E*"), or tokens per parameter ("300"); default A.
    batch_tokens: global batch in tokens — an int, "131k", a ramp "131k-262k" or a (start, end) pair;
                  default the seed's batch for the size (rounded to a multiple of seq_len).
    ratio:        tokens per total parameter, overriding the class's.
    from_run:     a run or checkpoint directory to continue (star class): the budget counts the
                  tokens it already trained, and steps continue from its step.
    tokens:       an explicit total budget (e.g. "500M"), overriding class and ratio.
    ramp_tokens:  where a ramp ends, in tokens since the run's very start. Default: the parent's
                  tokens for a continuation (the parent ran at the first batch), otherwise half the
                  budget — both how the seed's star rows (E*-6.7m, B*-77m) were trained.
    ramp_shape:   "step" (one switch) or "linear" (see `build_schedule`); quantum: ramp granularity.
    mfu:          model FLOPs utilization for the time estimate (0 < mfu ≤ 1); default `default_mfu`.
    gpus:         GPU names to estimate; default all of `GPUS`.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    label, r, star = parse_class(cls, ratio)
    notes: list[str] = []

    # --- the model: a ladder size, a custom ModelConfig, or the parent run's model
    meta, parent = None, None
    if isinstance(size, ModelConfig):
        model, size_name = size, size.name or "custom"
    elif size is not None:
        spec = get_size(str(size))
        # the ladder model at this context length (seq_len only bounds rope tables: no parameters)
        model, size_name = spec.model_config(seq_len=seq_len), spec.name
    elif from_run is None:
        raise ValueError("no model: give a size (e.g. 6.7m), a ModelConfig, or a run to continue")
    if from_run is not None:
        ckpt, meta = read_checkpoint_meta(from_run)
        parent = str(ckpt)
        try:
            run_model = ModelConfig.from_dict(meta["model"])
        except (TypeError, ValueError) as e:
            raise GerbilError(f"{meta_file(ckpt)}: bad model config: {e}") from None
        run_size = str(meta.get("size") or run_model.name or "custom")
        if size is None:
            model, size_name = run_model, run_size
        elif run_model.n_params() != model.n_params() or run_model.d_model != model.d_model \
                or run_model.n_layer != model.n_layer:
            raise ValueError(f"run {from_run} is a {run_size} model, not {size_name}")
        else:
            model, size_name = run_model, run_size
        if not star:
            label += "*"  # a continued run is a star run by definition (docs/reference.md §3)
    elif star:
        notes.append(f"{label} planned from scratch; pass from_run (--from RUN) to continue an earlier run")
    if seq_len > model.seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's context of {model.seq_len}")

    # --- the budget: ratio × total parameters (or an explicit total)
    n_total = model.n_params("total")
    if tokens is not None:
        budget = parse_count(tokens, "token budget")
        r = budget / n_total
        if cls is None and ratio is None:
            label = f"{r:.3g}"
    else:
        budget = int(round(r * n_total))
    start_tokens = int(meta["tokens"]) if meta else 0
    start_step = int(meta["step"]) if meta else 0
    if budget <= start_tokens:
        raise ValueError(f"run {from_run} already trained {fmt_tokens(start_tokens)} tokens, "
                         f"class {label} budget is {fmt_tokens(budget)}: nothing left to train")

    # --- the batch: explicit, a ramp, or the seed's default for the size
    if batch_tokens is None:
        b = _default_batch(model, size_name if size_name in SIZES else None)
        if b % seq_len:  # the seed's defaults are "about 131k": round to whole sequences
            b = max(seq_len, int(math.floor(b / seq_len + 0.5)) * seq_len)
            notes.append(f"default batch rounded to {b} tokens = {b // seq_len} × {seq_len}")
        b0 = b1 = b
    elif isinstance(batch_tokens, tuple):
        b0, b1 = (parse_batch(int(x), seq_len) for x in batch_tokens)
        if b1 < b0:
            raise ValueError(f"batch ramp {fmt_batch(b0, b1)} shrinks")
    else:
        b0, b1 = parse_batch_spec(batch_tokens, seq_len)
    if ramp_tokens is not None:
        span = parse_count(ramp_tokens, "ramp span")
    else:
        span = start_tokens if meta else budget // 2
    schedule = build_schedule(budget - start_tokens, seq_len, b0, b1, ramp_tokens=span,
                              ramp_shape=ramp_shape, quantum=quantum, start_step=start_step,
                              start_tokens=start_tokens)
    first = schedule.stages[0].batch_tokens
    if budget - start_tokens < first:  # less than one step: surely a mistake (e.g. tokens vs params)
        raise ValueError(f"token budget {budget - start_tokens:,} is smaller than one batch "
                         f"({first:,} tokens)")

    # --- FLOPs and time
    if mfu is None:
        u, source = default_mfu(model), ("estimate: plain compiled PyTorch GPT-J measured on one H200 "
                                          "(docs/reference.md §6), not gerbil's own throughput")
    else:
        u, source = float(mfu), "given"
        if not (0 < u <= 1):
            raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    gpu_list = tuple(get_gpu(g) for g in gpus) if gpus is not None else tuple(GPUS.values())
    return Plan(size=size_name, model=model, cls=label, ratio=r, seq_len=seq_len, budget_tokens=budget,
                start_tokens=start_tokens, schedule=schedule,
                flops_per_token=flops_per_token(model, seq_len), mfu=u, mfu_source=source,
                gpus=gpu_list, parent=parent, notes=notes)


def make_ladder(cls: str | None = None, sizes: Sequence[str] | None = None, **kwargs) -> list[Plan]:
    """One plan per ladder size (default all six) for the same class and options."""
    return [make_plan(s, cls, **kwargs) for s in (sizes or list(SIZES))]


# ---------------------------------------------------------------------------------------- rendering
def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _ratio_str(r: float) -> str:
    return f"{r:g}" if float(r).is_integer() else f"{r:.3g}"


def format_plan(plan: Plan) -> str:
    """A readable multi-line report of one plan (what `gerbil plan` prints)."""
    m = plan.model
    sched = plan.schedule
    lines = [f"Gerbil-{plan.name} plan",
             f"  model        {plan.size}: d_model {m.d_model}, n_layer {m.n_layer}, n_head {m.n_head}, "
             f"rotary_dim {m.rotary_dim}, vocab {m.vocab_size}",
             f"  params       {fmt_params(plan.params_total)} = {plan.params_total:,} total, "
             f"{plan.params_non_embedding:,} non-embedding",
             f"  class        {plan.cls}: {_ratio_str(plan.ratio)} tokens per parameter",
             f"  tokens       {fmt_tokens(plan.budget_tokens)} = {plan.budget_tokens:,}"]
    if plan.start_tokens:
        lines.append(f"  continues    {plan.parent} at step {sched.start_step:,}, "
                     f"{fmt_tokens(plan.start_tokens)} trained; {fmt_tokens(plan.tokens)} to go")
    lines += [f"  batch        {plan.batch} tokens, seq_len {plan.seq_len}"]
    for st in sched.stages if 1 < len(sched.stages) <= 8 else ():
        lines.append(f"                 {st.steps:>9,} steps × {st.batch_tokens:,} tokens "
                     f"({st.batch_tokens // plan.seq_len} sequences)")
    if len(sched.stages) > 8:
        lines.append(f"                 {len(sched.stages)} ramp stages (see --json)")
    lines += [f"  steps        {plan.steps:,} ({plan.trained_tokens:,} tokens trained)",
              f"  FLOPs        {fmt_flops(plan.total_flops)} = {plan.flops_per_token:,} per token "
              f"× {plan.trained_tokens:,}",
              "               per token: 6·(non-embedding + d·V) + 12·L·T·d",
              f"  time         at {plan.mfu:.0%} MFU ({plan.mfu_source}):", ""]
    rows = [[g.name, g.precision, f"{g.peak_flops / 1e12:g}", fmt_duration(plan.seconds_on(g))]
            for g in plan.gpus]
    lines += ["    " + s for s in _table(["GPU", "precision", "peak TFLOP/s", "time"], rows,
                                       [False, False, True, True]).splitlines()]
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def format_ladder(plans: Sequence[Plan]) -> str:
    """One row per plan (the `--size all` ladder), times on each GPU of the first plan."""
    gpus = plans[0].gpus if plans else ()
    header = ["model", "params", "non-emb", "class", "ratio", "tokens", "batch", "steps", "FLOPs"]
    header += [g.name for g in gpus]
    rows = []
    for p in plans:
        rows.append([p.size, fmt_params(p.params_total), fmt_params(p.params_non_embedding), p.cls,
                     _ratio_str(p.ratio), fmt_tokens(p.budget_tokens), p.batch, f"{p.steps:,}",
                     fmt_flops(p.total_flops)] + [fmt_duration(p.seconds_on(g)) for g in gpus])
    out = _table(header, rows, [False] + [True] * (len(header) - 1))
    mfus = ", ".join(f"{p.size} {p.mfu:.0%}" for p in plans)
    return out + f"\n\ntimes at MFU {mfus} ({plans[0].mfu_source if plans else ''})"
