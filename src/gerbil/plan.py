"""Training plans: class token budgets, batch schedules, steps, FLOPs and time estimates.

Pure Python — this module never imports torch, so `gerbil plan` answers instantly on any machine and
the trainer, the registry and the results table can all reuse it.

A plan turns (model, class) into numbers:

    budget  = ratio × total parameters              (class A 20, B 42, C 76, D 142, E 284; docs/reference.md §3)
    steps   = the exact integer steps of a `BatchSchedule` (constant batch or a ramp such as 131k-262k)
    FLOPs   = flops_per_token × tokens trained      (PaLM's MFU convention, see `flops_per_token`)
    time    = FLOPs / (GPU peak × MFU)              (peaks in `GPUS`; MFU an estimate per size, `default_mfu`)

Star classes (E*, B*) continue an earlier run: `make_plan(..., from_run=RUN)` reads the run's latest
checkpoint `meta.json` (plain JSON) and plans only the tokens still missing from the class budget (the
one continuation rule: `gerbil.continuation`). Class labels and when a budget may claim its class:
`gerbil.classes`.

Numbers are written and read the seed's way by `gerbil.units`; the batch schedule is
`gerbil.schedules.BatchSchedule` (the same object the trainer follows).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from gerbil.classes import CLASSES, class_text, claimed_class, parse_class, star
from gerbil.continuation import ParentPoint, inherit
from gerbil.data.encdec import check_objective, default_encoder_len
from gerbil.errors import OptionError
from gerbil.model.config import (SIZES, T5_SIZES, ModelConfig, default_mfu, get_arch_size, ladder_model,
                                 nearest_rung)
from gerbil.schedules import BatchSchedule, build_schedule
from gerbil.units import (DEFAULT_SEQ_LEN, fmt_batch, fmt_duration, fmt_flops, fmt_params, fmt_table, fmt_tokens,
                          parse_batch, parse_batch_spec, parse_count)

__all__ = ["CLASSES", "GPU", "GPUS", "Plan", "budget_of", "encdec_flops_per_token", "flops_per_token", "format_ladder",
           "format_plan", "get_gpu", "make_ladder", "make_plan", "parse_class"]


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
    raise OptionError(f"unknown GPU {name!r} (known: {', '.join(GPUS)})")


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """Everything `gerbil plan` reports for one run; `to_dict()` is its JSON form."""

    size: str  # ladder name ("6.7m") or the custom model's name ("custom")
    model: ModelConfig
    cls: str | None  # "A", "E*", "300"; None: a custom budget (`gerbil.classes.claimed_class`)
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
    continues: ParentPoint | None = None  # the parent of a continuation

    @property
    def name(self) -> str:
        """Seed-style run name, e.g. 'A-6.7m', 'E*-6.7m' ('6.7m' for a custom budget)."""
        return f"{self.cls}-{self.size}" if self.cls else self.size

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
        """The batch label: the schedule's; a continuation's starts at its parent's first batch (the seed's
        "131k-262k" star rows; `ParentPoint.batch_label`)."""
        own = self.schedule.label()
        if self.continues is None:
            return own
        return self.continues.batch_label(self.schedule.stages[-1].batch_tokens, own)

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


def budget_of(model: ModelConfig, cls: str | None = None, ratio: float | None = None,
              tokens: int | str | None = None, continues: bool = False) -> tuple[str | None, float, int]:
    """(class label, tokens per parameter, budget in tokens) of a run of `model`: ratio × total parameters,
    or an explicit total `tokens`. The label is the class the budget may claim (`claimed_class`): None for
    its own token count without a class, or one short of the class's ratio (a custom budget); a
    continuation's is a star class."""
    label, r, _ = parse_class(cls, ratio)
    if continues:
        label = star(label)
    n_total = model.n_params("total")
    if tokens is not None:
        budget = parse_count(tokens, "token budget")
        r = budget / n_total
        if cls is None and ratio is None:
            return None, r, budget  # its own token count: no class
    else:
        budget = int(round(r * n_total))
    return claimed_class(label, budget / n_total), r, budget


def make_plan(size: str | ModelConfig | None, cls: str | None = None, seq_len: int | None = None,
              batch_tokens: int | str | tuple[int, int] | None = None, ratio: float | None = None,
              from_run: str | Path | ParentPoint | None = None, *, tokens: int | str | None = None,
              ramp_tokens: int | str | None = None, ramp_shape: str = "step", quantum: int | None = None,
              mfu: float | None = None, gpus: Iterable[str] | None = None, arch: str = "gptj") -> Plan:
    """Plan one training run.

    size:         a ladder name ("6.7m"), a ModelConfig for a custom model, or None with `from_run`.
    cls:          "A".."E", a star class ("E*"), or tokens per parameter ("300"); default A.
    seq_len:      the training context; default 2048, or the parent's for a continuation.
    batch_tokens: global batch in tokens — an int, "131k", a ramp "131k-262k" or a (start, end) pair;
                  default the seed's batch for the size (rounded to a multiple of seq_len).
    ratio:        tokens per total parameter, overriding the class's.
    from_run:     a run or checkpoint directory to continue, or a `ParentPoint` (a star class,
                  `gerbil.continuation`): the model, context and start are the parent's, the budget counts
                  the tokens it already trained, and steps continue from its step.
    tokens:       an explicit total budget (e.g. "500M"), overriding class and ratio.
    ramp_tokens:  where a ramp ends, in tokens since the run's very start. Default: the parent's
                  tokens for a continuation (the parent ran at the first batch), otherwise half the
                  budget — both how the seed's star rows (E*-6.7m, B*-77m) were trained.
    ramp_shape:   "step" (one switch) or "linear" (see `build_schedule`); quantum: ramp granularity.
    mfu:          model FLOPs utilization for the time estimate (0 < mfu ≤ 1); default `default_mfu`.
    gpus:         GPU names to estimate; default all of `GPUS`.
    arch:         the architecture a size names: "gptj" (the ladder) or "t5" (`T5_SIZES`: T5Blender, whose
                  budget and batch count encoder + decoder tokens and whose FLOPs per token are the mean over
                  a Blender row, `encdec_flops_per_token`).
    """
    parent = ParentPoint.read(from_run, check_hash=False) if isinstance(from_run, (str, Path)) else from_run
    model, size_name, seq_len = _plan_model(size, seq_len, parent, arch)
    label, r, budget = budget_of(model, cls, ratio, tokens, continues=parent is not None)
    notes: list[str] = []
    if parent is None and parse_class(cls, ratio)[2]:
        notes.append(f"{label} planned from scratch; pass from_run (--from RUN) to continue an earlier run")
    start = parent.tokens if parent is not None else 0
    if budget <= start:
        raise OptionError(f"{_budget_name(label)} has no budget left: the {parent.who} ends at "
                          f"{fmt_tokens(start)} tokens and the budget is {fmt_tokens(budget)} (nothing left to train)")
    schedule = _plan_schedule(model, size_name, seq_len, budget, batch_tokens, parent, ramp_tokens, ramp_shape,
                              quantum, notes)
    if mfu is None:
        u, source = default_mfu(model), ("estimate: plain compiled PyTorch GPT-J measured on one H200 "
                                          "(docs/reference.md §6), not gerbil's own throughput")
    else:
        u, source = float(mfu), "given"
        if not (0 < u <= 1):
            raise OptionError(f"mfu must be in (0, 1], got {mfu}")
    gpu_list = tuple(get_gpu(g) for g in gpus) if gpus is not None else tuple(GPUS.values())
    return Plan(size=size_name, model=model, cls=label, ratio=r, seq_len=seq_len, budget_tokens=budget,
                start_tokens=start, schedule=schedule, flops_per_token=flops_per_token(model, seq_len), mfu=u,
                mfu_source=source, gpus=gpu_list, parent=str(parent.checkpoint) if parent and parent.checkpoint
                else None, notes=notes, continues=parent)


def _budget_name(label: str | None) -> str:
    """'class E*' or 'the custom budget' — how an error names a run's budget."""
    return f"class {label}" if label else "the custom budget"


def _plan_model(size: str | ModelConfig | None, seq_len: int | None, parent: ParentPoint | None,
                arch: str = "gptj") -> tuple[ModelConfig, str, int]:
    """(model, size name, seq_len): a ladder size at its context (`ladder_model`), a custom model, or —
    for a continuation — the parent's model and context (`gerbil.continuation.inherit`)."""
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0):
        raise OptionError(f"seq_len must be a positive integer, got {seq_len!r}")
    if parent is not None:
        given = size if isinstance(size, ModelConfig) else None
        seq_len = inherit(parent, "--from", size=None if given or size is None else str(size), model=given,
                          seq_len=seq_len)["seq_len"]
        model, size_name = parent.model_config(), parent.size
    elif isinstance(size, ModelConfig):
        model, size_name, seq_len = size, size.name or "custom", seq_len or DEFAULT_SEQ_LEN
    elif size is not None:
        seq_len = seq_len or DEFAULT_SEQ_LEN
        size_name = get_arch_size(arch, str(size)).name
        model = ladder_model(size_name, seq_len, arch)
    else:
        raise OptionError("no model: give a size (e.g. 6.7m), a ModelConfig, or a run to continue")
    if seq_len > model.seq_len:
        raise OptionError(f"seq_len {seq_len} exceeds the model's context of {model.seq_len}")
    return model, size_name, seq_len


def _plan_schedule(model: ModelConfig, size_name: str, seq_len: int, budget: int,
                   batch_tokens: int | str | tuple[int, int] | None, parent: ParentPoint | None,
                   ramp_tokens: int | str | None, ramp_shape: str, quantum: int | None,
                   notes: list[str]) -> BatchSchedule:
    """The batch schedule from the parent's tokens (or 0) to the budget: an explicit batch or ramp, else the
    seed's batch for the size (for a custom model, the nearest rung's)."""
    if batch_tokens is None:
        presets = T5_SIZES if model.arch == "t5" else SIZES
        b = presets[size_name].batch_tokens if size_name in presets else nearest_rung(model).batch_tokens
        if b % seq_len:  # the seed's defaults are "about 131k": round to whole sequences
            b = max(seq_len, int(math.floor(b / seq_len + 0.5)) * seq_len)
            notes.append(f"default batch rounded to {b} tokens = {b // seq_len} × {seq_len}")
        b0 = b1 = b
    elif isinstance(batch_tokens, tuple):
        b0, b1 = (parse_batch(int(x), seq_len) for x in batch_tokens)
        if b1 < b0:
            raise OptionError(f"batch ramp {fmt_batch(b0, b1)} shrinks")
    else:
        b0, b1 = parse_batch_spec(batch_tokens, seq_len)
    start = parent.tokens if parent is not None else 0
    span = parse_count(ramp_tokens, "ramp span") if ramp_tokens is not None else (start if parent else budget // 2)
    schedule = build_schedule(budget - start, seq_len, b0, b1, ramp_tokens=span, ramp_shape=ramp_shape,
                              quantum=quantum, start_step=parent.step if parent else 0, start_tokens=start)
    first = schedule.stages[0].batch_tokens
    if budget - start < first and parent is not None:
        raise OptionError(f"{parent.child} trains only {budget - start:,} tokens, less than one batch of {first:,} "
                          f"(a smaller batch_tokens, or a larger budget)")
    if budget - start < first:  # less than one step: surely a mistake (e.g. tokens vs params)
        raise OptionError(f"token budget {budget - start:,} is smaller than one batch ({first:,} tokens)")
    return schedule


def make_ladder(cls: str | None = None, sizes: Sequence[str] | None = None, **kwargs) -> list[Plan]:
    """One plan per ladder size (default all six) for the same class and options."""
    return [make_plan(s, cls, **kwargs) for s in (sizes or list(SIZES))]


# ---------------------------------------------------------------------------------------- rendering
def _ratio_str(r: float) -> str:
    return f"{r:g}" if float(r).is_integer() else f"{r:.3g}"


def format_plan(plan: Plan) -> str:
    """A readable multi-line report of one plan (what `gerbil plan` prints)."""
    m = plan.model
    sched = plan.schedule
    shape = (f"T5 encoder-decoder: d_model {m.d_model}, {m.n_layer} encoder + {m.n_decoder_layer} decoder layers, "
             f"{m.n_head} heads of {m.d_kv}, d_ff {m.d_ff}" if m.arch == "t5" else
             f"d_model {m.d_model}, n_layer {m.n_layer}, n_head {m.n_head}, rotary_dim {m.rotary_dim}")
    lines = [f"{'T5Blender' if m.arch == 't5' else 'Gerbil'}-{plan.name} plan",
             f"  model        {plan.size}: {shape}, vocab {m.vocab_size}",
             f"  params       {fmt_params(plan.params_total)} = {plan.params_total:,} total, "
             f"{plan.params_non_embedding:,} non-embedding",
             f"  class        {class_text(plan.cls)}: {_ratio_str(plan.ratio)} tokens per parameter",
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
              *_flops_lines(plan),
              f"  time         at {plan.mfu:.0%} MFU ({plan.mfu_source}):", ""]
    rows = [[g.name, g.precision, f"{g.peak_flops / 1e12:g}", fmt_duration(plan.seconds_on(g))]
            for g in plan.gpus]
    lines += ["    " + s for s in fmt_table(["GPU", "precision", "peak TFLOP/s", "time"], rows,
                                       [False, False, True, True]).splitlines()]
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _flops_lines(plan: Plan) -> list[str]:
    """How a plan's FLOPs per token are counted: the decoder-only formula, or an encoder-decoder's two."""
    m = plan.model
    if not getattr(m, "is_encoder_decoder", False):
        return ["               per token: 6·(non-embedding + d·V) + 12·L·T·d"]
    te = _default_encoder_len(plan.seq_len)
    f_enc, f_dec = encdec_flops_per_token(m, te, plan.seq_len - te)
    return [f"               per encoder token {f_enc:,}, per decoder token {f_dec:,}: the mean over rows of "
            f"{te} encoder + {plan.seq_len - te} decoder positions (Blender's split)"]


def format_ladder(plans: Sequence[Plan]) -> str:
    """One row per plan (the `--size all` ladder), times on each GPU of the first plan."""
    gpus = plans[0].gpus if plans else ()
    header = ["model", "params", "non-emb", "class", "ratio", "tokens", "batch", "steps", "FLOPs"]
    header += [g.name for g in gpus]
    rows = []
    for p in plans:
        rows.append([p.size, fmt_params(p.params_total), fmt_params(p.params_non_embedding), class_text(p.cls),
                     _ratio_str(p.ratio), fmt_tokens(p.budget_tokens), p.batch, f"{p.steps:,}",
                     fmt_flops(p.total_flops)] + [fmt_duration(p.seconds_on(g)) for g in gpus])
    out = fmt_table(header, rows, [False] + [True] * (len(header) - 1))
    mfus = ", ".join(f"{p.size} {p.mfu:.0%}" for p in plans)
    return out + f"\n\ntimes at MFU {mfus} ({plans[0].mfu_source if plans else ''})"
