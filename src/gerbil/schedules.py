"""Schedules as data: the learning rate and the global batch as functions of tokens trained.

Everything in a run is counted in tokens (docs/architecture.md): the budget, the batch, the LR position,
eval and checkpoint intervals. So a schedule here is a pure function of tokens trained, and "scheduler
state" is just `tokens` — batch ramps, star continuations and resumes leave it well defined.

- LR: `Schedule` (kind + numbers) and `lr_at(tokens, schedule)`; the kinds are a table of functions
  (`LR_SCHEDULES`), not an if-chain, so a new shape is one function.
- Batch: `BatchSchedule` (stages of whole steps, `build_schedule` makes ramps such as 131k-262k) and
  `StepSchedule`, which cuts the last step so a run ends at exactly its budget (`StepPlan`).

Pure Python (no torch): `gerbil plan` uses the same schedules the trainer follows.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from gerbil.errors import OptionError
from gerbil.units import fmt_batch


# ------------------------------------------------------------------------------------------ the LR
@dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of tokens trained (batch ramps leave it well defined).

    `start` is where this run's schedule begins (a star continuation begins at its parent's tokens) and
    `start_lr` the LR there: warmup rises linearly from `start_lr` (0 for a fresh run, the parent's
    final LR for a continuation, so the LR is continuous at the join) to `peak` over `warmup` tokens.
    """

    kind: str  # a key of LR_SCHEDULES: cosine | wsd | constant
    peak: float
    total: int  # tokens at which the schedule ends (the run's budget, counted from the very start)
    warmup: int  # tokens of linear warmup after `start`
    min_ratio: float = 0.1  # cosine floor, as a fraction of the peak
    cooldown: int = 0  # wsd: tokens of the final (1 − sqrt) decay
    start: int = 0
    start_lr: float = 0.0


def _cosine(s: Schedule, t: int) -> float:
    """Half a cosine from the peak (end of warmup) down to `min_ratio × peak` at `total`."""
    begin = s.start + s.warmup
    frac = min(1.0, max(0.0, (t - begin) / max(1, s.total - begin)))
    floor = s.min_ratio * s.peak
    return floor + 0.5 * (s.peak - floor) * (1.0 + math.cos(math.pi * frac))


def _wsd(s: Schedule, t: int) -> float:
    """Warmup-stable-decay: the peak until the last `cooldown` tokens, then 1 − sqrt(progress) to 0
    (Hägele et al. 2024: matches cosine, and any constant-LR point can branch a cooldown)."""
    begin = s.total - s.cooldown
    if t < begin:
        return s.peak
    return s.peak * (1.0 - math.sqrt(min(1.0, (t - begin) / max(1, s.cooldown))))


def _constant(s: Schedule, t: int) -> float:
    """The peak throughout (a cascade trunk: branches add their own cooldown)."""
    return s.peak


#: LR after warmup, by schedule kind.
LR_SCHEDULES: dict[str, Callable[[Schedule, int], float]] = {"cosine": _cosine, "wsd": _wsd,
                                                              "constant": _constant}


def make_schedule(kind: str, peak: float, total: int, warmup: int, min_ratio: float = 0.1,
                  cooldown_fraction: float = 0.2, start: int = 0, start_lr: float = 0.0) -> Schedule:
    """A `Schedule` with its kind checked; wsd's cooldown is `cooldown_fraction` of this run's tokens."""
    if kind not in LR_SCHEDULES:
        raise OptionError(f"unknown schedule {kind!r} ({', '.join(LR_SCHEDULES)})")
    cooldown = int(round(cooldown_fraction * (total - start))) if kind == "wsd" else 0
    return Schedule(kind, float(peak), int(total), int(warmup), float(min_ratio), cooldown, int(start),
                    float(start_lr))


def lr_at(tokens: int, s: Schedule, step_tokens: int = 0) -> float:
    """LR for the step that starts after `tokens` tokens and trains `step_tokens` more.

    Warmup counts the step's own tokens: the first step is not wasted at lr 0, and a warmup of one
    batch means full LR from the first step.
    """
    into = tokens - s.start
    if s.warmup > 0 and into < s.warmup:
        return s.start_lr + (s.peak - s.start_lr) * min(1.0, (into + max(1, step_tokens)) / s.warmup)
    return LR_SCHEDULES[s.kind](s, tokens)


# ------------------------------------------------------------------------------------------ the batch
@dataclass(frozen=True)
class BatchStage:
    """`steps` consecutive optimizer steps of `batch_tokens` tokens each."""

    batch_tokens: int
    steps: int


@dataclass(frozen=True)
class BatchSchedule:
    """The global batch size at every optimizer step, as data the trainer can follow exactly.

    Steps are global: a continuation of a run that stopped at step 1000 starts at `start_step` 1000,
    after `start_tokens` tokens. `stages` cover this run's steps in order. Every batch is a multiple
    of `seq_len`, so a stage is `batch_tokens // seq_len` sequences (split into micro-batches by the
    trainer).
    """

    stages: tuple[BatchStage, ...]
    seq_len: int
    start_step: int = 0
    start_tokens: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        for st in self.stages:
            if st.steps <= 0 or st.batch_tokens <= 0 or st.batch_tokens % self.seq_len:
                raise OptionError(f"bad batch stage {st} for seq_len {self.seq_len}")

    @property
    def total_steps(self) -> int:
        """Steps in this run (not counting the parent's)."""
        return sum(st.steps for st in self.stages)

    @property
    def total_tokens(self) -> int:
        """Tokens this run trains on (not counting the parent's)."""
        return sum(st.steps * st.batch_tokens for st in self.stages)

    @property
    def end_step(self) -> int:
        return self.start_step + self.total_steps

    @property
    def end_tokens(self) -> int:
        return self.start_tokens + self.total_tokens

    def _walk(self):
        """(stage, first global step, tokens before it) for every stage, in order — the one walk over the
        stages that step and token lookups share."""
        step, tokens = self.start_step, self.start_tokens
        for st in self.stages:
            yield st, step, tokens
            step += st.steps
            tokens += st.steps * st.batch_tokens

    def _locate(self, step: int) -> tuple[int, int]:
        """(stage index, tokens before `step`) for a global step in [start_step, end_step)."""
        if not self.start_step <= step < self.end_step:
            raise IndexError(f"step {step} is outside this schedule [{self.start_step}, {self.end_step})")
        for i, (st, first, tokens) in enumerate(self._walk()):
            if step < first + st.steps:
                return i, tokens + (step - first) * st.batch_tokens
        raise AssertionError("unreachable")

    def batch_tokens_at(self, step: int) -> int:
        """Global batch in tokens for (0-based, global) optimizer step `step`."""
        return self.stages[self._locate(step)[0]].batch_tokens

    def tokens_before(self, step: int) -> int:
        """Tokens trained since the run's very start (parent included) before `step`."""
        if step == self.end_step:
            return self.end_tokens
        return self._locate(step)[1]

    def batch_at_tokens(self, tokens: int) -> int:
        """Global batch of the step that starts after `tokens` tokens (stages are whole steps; past the
        last stage, the last batch)."""
        for st, _, before in self._walk():
            if tokens < before + st.steps * st.batch_tokens:
                return st.batch_tokens
        return self.stages[-1].batch_tokens

    def label(self) -> str:
        """'131k' or '131k-262k' (first and last batch), as the seed's table shows it."""
        return fmt_batch(self.stages[0].batch_tokens, self.stages[-1].batch_tokens)

    def to_dict(self) -> dict:
        return {"seq_len": self.seq_len, "start_step": self.start_step, "start_tokens": self.start_tokens,
                "stages": [dataclasses.asdict(st) for st in self.stages]}

    @classmethod
    def from_dict(cls, d: dict) -> "BatchSchedule":
        return cls(stages=tuple(BatchStage(int(s["batch_tokens"]), int(s["steps"])) for s in d["stages"]),
                   seq_len=int(d["seq_len"]), start_step=int(d.get("start_step", 0)),
                   start_tokens=int(d.get("start_tokens", 0)))


def build_schedule(tokens: int, seq_len: int, batch_start: int, batch_end: int | None = None, *,
                   ramp_tokens: int | None = None, ramp_shape: str = "step", quantum: int | None = None,
                   start_step: int = 0, start_tokens: int = 0) -> BatchSchedule:
    """Steps that train at least `tokens` new tokens, with the batch growing from start to end.

    The ramp is measured in tokens since the run's very start (a continuation's parent included),
    so it does not depend on the batch sizes themselves:
      - "step":   `batch_start` before `ramp_tokens`, `batch_end` from there on (how the seed's star
                  runs went: the parent at 131k, the continuation at 262k);
      - "linear": the batch grows linearly with tokens trained, in multiples of `quantum` (default
                  seq_len; pass micro_batch × seq_len for whole micro-batches), reaching `batch_end`
                  at `ramp_tokens`.
    Whole steps only: the last step may overshoot the budget by less than one batch (a class budget
    is a minimum, and a partial last batch would change the gradient noise of that step).
    """
    if tokens <= 0:
        raise OptionError(f"token budget must be positive, got {tokens}")
    b0 = int(batch_start)
    b1 = b0 if batch_end is None else int(batch_end)
    for b in (b0, b1):
        if b <= 0 or b % seq_len:
            raise OptionError(f"batch {b} tokens is not a positive multiple of seq_len {seq_len}")
    if b1 < b0:
        raise OptionError(f"batch ramp {fmt_batch(b0, b1)} shrinks")
    if ramp_shape not in ("step", "linear"):
        raise OptionError(f"unknown ramp shape {ramp_shape!r} (step, linear)")
    q = int(quantum or seq_len)
    if q <= 0 or q % seq_len:
        raise OptionError(f"ramp quantum {q} is not a positive multiple of seq_len {seq_len}")
    span = int(ramp_tokens) if ramp_tokens is not None else 0
    if b1 != b0 and span < 0:
        raise OptionError(f"ramp span must not be negative, got {span}")

    def level(t: int) -> tuple[int, int | None]:
        """(batch at tokens t, tokens at which the batch next changes or None)."""
        if b1 == b0 or t >= span:
            return b1, None
        if ramp_shape == "step":
            return b0, span
        # linear: batch = b0 + k·q with k = floor((b1-b0)·t / (span·q)), capped at b1
        k = (b1 - b0) * t // (span * q)
        b = min(b1, b0 + k * q)
        if b >= b1:
            return b1, None
        nxt = -(-(k + 1) * q * span // (b1 - b0))  # first t reaching level k+1
        return b, min(nxt, span)

    stages: list[BatchStage] = []
    t, target = int(start_tokens), int(start_tokens) + int(tokens)
    while t < target:
        b, change = level(t)
        stop = target if change is None else min(change, target)
        n = -(-(stop - t) // b)  # ceil: whole steps until the next change (or the budget)
        if stages and stages[-1].batch_tokens == b:
            stages[-1] = BatchStage(b, stages[-1].steps + n)
        else:
            stages.append(BatchStage(b, n))
        t += n * b
    return BatchSchedule(tuple(stages), seq_len, int(start_step), int(start_tokens))


# ------------------------------------------------------------------------------------------ exact steps
@dataclass(frozen=True)
class StepPlan:
    """One optimizer step: `full_sequences` of seq_len tokens plus (final step only) one of `last_len`."""

    full_sequences: int
    last_len: int
    tokens: int


@dataclass(frozen=True)
class StepSchedule:
    """The batch schedule, with the final step cut so the run ends exactly at `budget` tokens."""

    batches: BatchSchedule
    budget: int
    seq_len: int

    def at(self, tokens: int) -> StepPlan:
        """The step that starts after `tokens` tokens."""
        take = min(self.batches.batch_at_tokens(tokens), self.budget - tokens)
        return StepPlan(take // self.seq_len, take % self.seq_len, take)

    def plans(self, tokens: int):
        """Every remaining step from `tokens` to the budget, in order (what a prefetcher walks)."""
        while tokens < self.budget:
            p = self.at(tokens)
            yield p
            tokens += p.tokens
