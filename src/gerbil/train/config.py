"""`TrainConfig`: every option of a training run, one source for the CLI, YAML recipes and Python.

The fields are `gerbil.options` fields (help, flag, parser, check, section, whether a resume may change
it), so `gerbil train`'s flags are generated from them and one validation serves the command line, a
recipe and Python: an unknown key, a wrongly typed value or a value out of range is a one-line
`OptionError` naming the field, before anything is created. The sections are the `--help` groups:
what is trained, batch and context, the optimizer (`Optimization`, shared with fine-tuning),
checkpoints and validation, and the runtime (`Runtime`, shared).

The YAML/dict spelling of `cls` is ``class`` and of `from_run` is ``from`` (Python keywords); both
spellings are accepted everywhere. Pure Python, no torch.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from typing import Any

from gerbil.data.objectives import objective_class
from gerbil.model.config import ARCHS, T5_SIZES, size_names
from gerbil.options import (FALLBACK, KEYWORD_KEYS, RUNTIME, Optimization, OptionError, Options, Runtime, opt,
                            section)
from gerbil.units import DEFAULT_SEQ_LEN, parse_count

#: TrainConfig field → the objective constructor's option it sets (gerbil.data.objectives)
OBJECTIVE_OPTIONS = {"blender_weights": "weights", "mask_rate": "mask_rate", "spm_rate": "spm_rate",
                     "loss_on": "loss_on"}
#: Defaults decided at resolve time when a field is None (a continuation inherits its parent's instead).
FRESH_DEFAULTS = {"size": "6.7m", "seq_len": DEFAULT_SEQ_LEN, "seed": 0}
#: The architecture of a run that names none (`arch` None: recorded so, as GPT-J runs always were)
DEFAULT_ARCH = "gptj"
#: The default size of a fresh run of each architecture (FRESH_DEFAULTS' is GPT-J's)
DEFAULT_SIZE = {"gptj": "6.7m", "t5": next(iter(T5_SIZES))}


def _parse_model(text: str) -> dict:
    """`--model d_model=32,n_layer=2,n_head=2` (or a JSON object) → ModelConfig fields."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise OptionError(f"model: expected KEY=VALUE pairs, got {part!r}")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def _parse_counts(text: str) -> list[int]:
    return [parse_count(x, "checkpoint_at") for x in str(text).replace(" ", "").split(",") if x]


def _parse_weights(text: str) -> list[float]:
    return [float(x) for x in str(text).replace(" ", "").split(",") if x]


@section("what is trained")
class _Trained(Options):
    arch: str | None = opt(None, "architecture: gptj (decoder-only, the ladder) or t5 (T5Blender encoder-decoder: "
                                 "sizes " + " ".join(T5_SIZES) + "; objectives causal, fim, mlm, blender); default "
                                 "gptj, or the --from run's", choices=ARCHS)
    size: str | None = opt(None, f"ladder size: {size_names()} (default 6.7m; 24m with --arch t5; or the --from "
                                 "run's; ignored when `model` is given)")
    cls: str | None = opt(None, "token class: A B C D E (20/42/76/142/284 tokens per parameter), a star class "
                                "such as E* (with --from), or tokens per parameter (300); default A, or a "
                                "custom budget when --tokens is given", flag="--class", metavar="CLASS")
    # a moved store may be re-pointed on resume: its recorded identity must match (train.resolve)
    data: str | None = opt(None, "token store directory (from `gerbil prepare`)", metavar="STORE", runtime=FALLBACK)
    objective: str = opt("plain", "plain, causal, fim, mlm or blender (causal+FIM+MLM in equal shares)")
    blender_weights: list[float] | None = opt(None, "blender: shares of causal,fim,mlm (default 1,1,1)",
                                              parse=_parse_weights, metavar="C,F,M")
    mask_rate: float = opt(0.15, "mlm/blender: fraction of a chunk's tokens masked", check="unit")
    spm_rate: float = opt(0.0, "fim/blender: fraction of FIM examples in suffix-prefix-middle order",
                          check="fraction")
    loss_on: str = opt("all", "all: every token is a target; target: only what a task asks for (the FIM "
                              "middle, the MLM answers, the text after <causal>)", choices=("all", "target"))
    name: str | None = opt(None, "run name (default: the model name, e.g. GerbilBlender-A-6.7m)", runtime=FALLBACK)
    tokens: int | None = opt(None, "total token budget instead of the class's, e.g. 50M", parse=parse_count,
                             check="positive", metavar="N")
    model: dict | None = opt(None, "explicit model shape instead of --size: d_model=32,n_layer=2,n_head=2"
                                   "[,rotary_dim=8,vocab_size=...] or a JSON object", parse=_parse_model,
                             metavar="FIELDS")
    from_run: str | None = opt(None, "star continuation: continue RUN (weights, optimizer, data position) to "
                                     "--class's budget", flag="--from", metavar="RUN")
    seed: int | None = opt(None, "seed of the initialization and the data order (default 0, or the --from "
                                 "run's)", check="non_negative")


@section("batch and context")
class _Batch(Options):
    seq_len: int | None = opt(None, f"sequence length in tokens (default {DEFAULT_SEQ_LEN}, or the --from run's)",
                              check="positive", metavar="T")
    batch_tokens: int | str | None = opt(None, "global batch in tokens (131072, 131k) or a ramp such as "
                                               "131k-262k; default the seed's per size", metavar="B")
    micro_batch: int | None = opt(None, "sequences per forward pass (default: automatic)", check="positive",
                                  metavar="N")
    warmup_tokens: int | None = opt(None, "tokens of linear warmup (default: the longest of one batch, 1%% of "
                                          "the run's tokens and its first min(100, 10%% of its) steps; a "
                                          "resumed run keeps its own)", parse=parse_count, check="non_negative",
                                    metavar="N")
    loss_impl: str = opt("auto", "head + cross-entropy: auto (on CUDA the fastest of triton, compiled, eager and "
                                 "full, timed on the run's micro-batch at its start; eager elsewhere), chunked "
                                 "(compiled on CUDA, eager elsewhere), compiled, eager, full (plain logits) or "
                                 "triton (the fused kernels)", choices=("auto", "chunked", "compiled", "eager", "full",
                                                                       "triton"))


@section("checkpoints and validation")
class _Bookkeeping(Options):
    checkpoint_every: int | None = opt(None, "tokens between checkpoints (default: 10 per run; a final one "
                                             "always)", parse=parse_count, check="positive", metavar="TOKENS")
    keep_checkpoints: int = opt(3, "newest checkpoints kept (0: all)", check="non_negative", metavar="N")
    checkpoints: str = opt("interval", "interval: a checkpoint every --checkpoint-every tokens, the newest "
                                       "--keep-checkpoints kept; log: also at steps 1, 2, 4, 8, ... (Pythia-style), "
                                       "and none of them ever deleted", choices=("interval", "log"))
    checkpoint_at: list[int] | None = opt(None, "also checkpoint at these token counts (the first step boundary at "
                                               "or after each; never deleted), e.g. 10M,20M — cascade branch points",
                                          parse=_parse_counts, metavar="T1,T2")
    eval_every: int | None = opt(None, "tokens between validations (default: 10 per run; one at the end "
                                       "always)", parse=parse_count, check="positive", metavar="TOKENS")
    val_tokens: int = opt(1_048_576, "validation size in tokens: the val split's first val_tokens // seq_len "
                                     "windows (in causal mode for causal/blender)", parse=parse_count,
                          check="non_negative", metavar="N")
    runs: str = opt("runs", "folder holding run directories", metavar="DIR", runtime=RUNTIME)
    tokenizer_sha256: str | None = opt(None, "expected tokenizer of the store (default: gerbil's own)",
                                       cli=False, runtime=RUNTIME)


# a dataclass takes its fields from the last base first: the sections are listed last to first
@dataclass
class TrainConfig(Runtime, _Bookkeeping, Optimization, _Batch, _Trained):
    """Everything `gerbil train` takes; the YAML recipe keys are these names (``class`` for `cls`,
    ``from`` for `from_run`)."""

    _what = "training option"
    _aliases = KEYWORD_KEYS
    _resume_advice = "leave it out (or start a new run with --name, or continue this one with --from)"

    lr: float | None = Optimization.with_default(
        "lr", None, help="peak learning rate (default: per size, gerbil.model.config.SIZES)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blender_weights is not None and len(self.blender_weights) != 3:
            raise OptionError(f"blender_weights: expected three numbers (causal, fim, mlm), got {self.blender_weights}")

    def objective_options(self) -> dict[str, Any]:
        """The options of this run's objective (`gerbil.data.objectives.get_objective(objective, **them)`):
        the objective-option fields its class takes; a non-default value for an option the objective does
        not take is a one-line error naming it."""
        takes = set(inspect.signature(objective_class(self.objective).__init__).parameters)
        fresh = TrainConfig()
        out: dict[str, Any] = {}
        for name, key in OBJECTIVE_OPTIONS.items():
            value = getattr(self, name)
            if key in takes:
                if value is not None:
                    out[key] = value
            elif value != getattr(fresh, name):
                raise OptionError(f"{name}: does not apply to objective {self.objective!r}")
        return out

    def to_dict(self) -> dict:
        """Plain data (YAML-able); `cls` is written as ``class`` (config.yaml's `train` since 0.1)."""
        d = dataclasses.asdict(self)
        d["class"] = d.pop("cls")
        return d
