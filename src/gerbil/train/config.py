"""`TrainConfig`: every option of a training run, one source for the CLI, YAML recipes and Python.

Each field carries its own help text, command-line spelling, parser and range check (`opt`), so

- `gerbil train`'s flags are generated from the fields (`add_arguments`): every option can be set on
  the command line, in a recipe and in Python, with one list of names;
- one validation (`TrainConfig.__post_init__`) serves all three: an unknown key, a wrongly typed value
  or a value out of range is a one-line `ValueError` naming the field, before anything is created.

The YAML/dict spelling of `cls` is ``class`` and of `from_run` is ``from`` (Python keywords); both
spellings are accepted everywhere. Pure Python, no torch.

The machinery is not TrainConfig's alone: `Options` (construction from a mapping or YAML, the one
validation) and `add_arguments` / `config_from_args` (flags) serve any dataclass of `opt` fields —
`gerbil finetune`'s `gerbil.finetune.config.FinetuneConfig` is the other one.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gerbil.model.config import size_names
from gerbil.units import parse_count

#: Fields that only say *how* to run (where, how fast, how loud), never *what* is trained: a resumed run
#: may change them; every other field is fixed by the run's own config.yaml. (`data` may re-point a
#: moved store only if it is the same store: its recorded identity must match.)
RUNTIME_FIELDS = ("device", "compile", "progress", "runs", "tokenizer_sha256", "resume", "data", "deterministic",
                  "log", "name")
#: TrainConfig field → the objective constructor's option it sets (gerbil.data.objectives)
OBJECTIVE_OPTIONS = {"blender_weights": "weights", "mask_rate": "mask_rate", "spm_rate": "spm_rate",
                     "loss_on": "loss_on"}
#: Defaults decided at resolve time when a field is None (a continuation inherits its parent's instead).
FRESH_DEFAULTS = {"size": "6.7m", "seq_len": 2048, "seed": 0}
_KEY_ALIASES = {"class": "cls", "from": "from_run"}
_ALIAS_OF = {v: k for k, v in _KEY_ALIASES.items()}


def opt(default: Any, help: str, *, flag: str | None = None, parse: Callable[[str], Any] | None = None,
        check: str | None = None, choices: tuple[str, ...] | None = None, metavar: str | None = None,
        cli: bool = True, items: type = float) -> Any:
    """A config field with what the CLI and the validation need to know about it.

    parse: turns a command-line (or YAML) string into the value, e.g. `parse_count` for "50M";
    check: "positive", "non_negative", "fraction" ([0, 1]) or "unit" ((0, 1)); choices: allowed strings;
    flag: the command-line spelling (default ``--field-name``; a name without dashes is an optional
    positional argument); items: what a list field holds (numbers, or `str`).
    """
    return field(default=default, metadata={"help": help, "flag": flag, "parse": parse, "check": check,
                                            "choices": choices, "metavar": metavar, "cli": cli,
                                            "items": items})


def _parse_model(text: str) -> dict:
    """`--model d_model=32,n_layer=2,n_head=2` (or a JSON object) → ModelConfig fields."""
    import json

    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"model: expected KEY=VALUE pairs, got {part!r}")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def _parse_counts(text: str) -> list[int]:
    return [parse_count(x, "checkpoint_at") for x in str(text).replace(" ", "").split(",") if x]


def _parse_weights(text: str) -> list[float]:
    return [float(x) for x in str(text).replace(" ", "").split(",") if x]


class Options:
    """What every options dataclass of `opt` fields shares: one validation of each field on construction
    (`__post_init__`), construction from a mapping (`from_dict`) or a YAML file (`from_yaml`), and
    plain-data output. Subclasses name what their keys are (`_what`, in the unknown-key error) and the
    YAML spellings of fields whose names are Python keywords (`_aliases`)."""

    _what = "option"
    _aliases: dict[str, str] = {}  # YAML/dict key → field name

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_field(f, getattr(self, f.name), self._display_name(f.name)))

    @classmethod
    def _display_name(cls, name: str) -> str:
        return {v: k for k, v in cls._aliases.items()}.get(name, name)

    @classmethod
    def _key(cls, key: Any) -> str:
        k = str(key).replace("-", "_")
        return cls._aliases.get(k, k)

    @classmethod
    def from_dict(cls, d: dict):
        """From a recipe/config mapping; the `_aliases` spellings and dashed keys accepted. An unknown key
        is a one-line error naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"a {cls._what} mapping is needed, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        out = {}
        for key, value in d.items():
            k = cls._key(key)
            if k not in names:
                raise ValueError(f"unknown {cls._what} {key!r} (known: {', '.join(sorted(names))})")
            out[k] = value
        return cls(**out)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None):
        """A recipe file; `overrides` (e.g. the CLI flags that were given) win over its keys."""
        data = read_yaml_mapping(path, "a recipe")
        data = {cls._key(k): v for k, v in data.items()}
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """Plain data (YAML-able)."""
        return dataclasses.asdict(self)

    def differences(self, other: "Options", fields: tuple[str, ...] | None = None) -> list[str]:
        """Names of the fields whose values differ (all fields, or `fields`)."""
        names = fields or tuple(f.name for f in dataclasses.fields(self))
        return [n for n in names if getattr(self, n) != getattr(other, n)]


@dataclass
class TrainConfig(Options):
    """Everything `gerbil train` takes; the YAML recipe keys are these names (``class`` for `cls`)."""

    _what = "training option"
    _aliases = _KEY_ALIASES

    # --- what is trained
    size: str | None = opt(None, f"ladder size: {size_names()} (default 6.7m, or the --from run's; "
                                 "ignored when `model` is given)")
    cls: str | None = opt(None, "token class: A B C D E (20/42/76/142/284 tokens per parameter), a star class "
                                "such as E* (with --from), or tokens per parameter (300); default A, or a "
                                "custom budget when --tokens is given", flag="--class", metavar="CLASS")
    data: str | None = opt(None, "token store directory (from `gerbil prepare`)", metavar="STORE")
    objective: str = opt("plain", "plain, causal, fim, mlm or blender (causal+FIM+MLM in equal shares)")
    blender_weights: list[float] | None = opt(None, "blender: shares of causal,fim,mlm (default 1,1,1)",
                                              parse=_parse_weights, metavar="C,F,M")
    mask_rate: float = opt(0.15, "mlm/blender: fraction of a chunk's tokens masked", check="unit")
    spm_rate: float = opt(0.0, "fim/blender: fraction of FIM examples in suffix-prefix-middle order",
                          check="fraction")
    loss_on: str = opt("all", "all: every token is a target; target: only what a task asks for (the FIM "
                              "middle, the MLM answers, the text after <causal>)", choices=("all", "target"))
    name: str | None = opt(None, "run name (default: the model name, e.g. GerbilBlender-A-6.7m)")
    tokens: int | None = opt(None, "total token budget instead of the class's, e.g. 50M", parse=parse_count,
                             check="positive", metavar="N")
    model: dict | None = opt(None, "explicit model shape instead of --size: d_model=32,n_layer=2,n_head=2"
                                   "[,rotary_dim=8,vocab_size=...] or a JSON object", parse=_parse_model,
                             metavar="FIELDS")
    from_run: str | None = opt(None, "star continuation: continue RUN (weights, optimizer, data position) to "
                                     "--class's budget", flag="--from", metavar="RUN")
    seed: int | None = opt(None, "seed of the initialization and the data order (default 0, or the --from "
                                 "run's)", check="non_negative")
    # --- how: batch, optimizer, schedule
    seq_len: int | None = opt(None, "sequence length in tokens (default 2048, or the --from run's)",
                              check="positive", metavar="T")
    batch_tokens: int | str | None = opt(None, "global batch in tokens (131072, 131k) or a ramp such as "
                                               "131k-262k; default the seed's per size", metavar="B")
    micro_batch: int | None = opt(None, "sequences per forward pass (default: automatic)", check="positive",
                                  metavar="N")
    lr: float | None = opt(None, "peak learning rate (default: per size, gerbil.model.config.SIZES)",
                           check="positive")
    schedule: str = opt("cosine", "cosine (warmup, cosine to min_lr_ratio), wsd (warmup, constant, 1-sqrt "
                                  "cooldown) or constant", choices=("cosine", "wsd", "constant"))
    warmup_tokens: int | None = opt(None, "tokens of linear warmup (default: 1%% of the budget, at least one "
                                          "batch)", parse=parse_count, check="non_negative", metavar="N")
    min_lr_ratio: float = opt(0.1, "cosine floor as a fraction of the peak", check="fraction")
    cooldown_fraction: float = opt(0.2, "wsd: share of the budget spent cooling down (Hägele et al. 2024)",
                                   check="fraction")
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices", check="non_negative")
    beta1: float = opt(0.9, "AdamW beta1", check="unit")
    beta2: float = opt(0.95, "AdamW beta2", check="unit")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: no clipping)", check="non_negative")
    loss_impl: str = opt("chunked", "chunked (single-pass head + cross-entropy) or full (plain logits)",
                         choices=("chunked", "full"))
    # --- bookkeeping
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
    log_every: int = opt(1, "steps between metrics.jsonl lines", check="positive", metavar="N")
    runs: str = opt("runs", "folder holding run directories", metavar="DIR")
    # --- runtime (may change on resume)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    precision: str = opt("auto", "auto (bf16 on CUDA that has it, fp16 + loss scaling on older CUDA, fp32 on "
                                 "CPU), fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool | None = opt(None, "torch.compile the model and the loss (default: on CUDA only; --compile "
                                     "forces it, also on a CPU, --no-compile never)")
    deterministic: bool = opt(False, "deterministic algorithms (bitwise-exact resume on a GPU; slower)")
    resume: bool = opt(False, "continue this run from its latest intact checkpoint (--resume auto)",
                       flag="--resume")
    tokenizer_sha256: str | None = opt(None, "expected tokenizer of the store (default: gerbil's own)",
                                       cli=False)
    progress: bool | None = opt(None, "progress bar (default: when stderr is a terminal)")
    log: str | None = opt(None, "also mirror metrics to: tensorboard, wandb (comma-separated)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blender_weights is not None and len(self.blender_weights) != 3:
            raise ValueError(f"blender_weights: expected three numbers (causal, fim, mlm), got {self.blender_weights}")

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a recipe/config mapping; `class`/`from` and dashed spellings accepted. An unknown key is
        a one-line error naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"a training config must be a mapping of options, got {type(d).__name__}")
        return super().from_dict(d)

    def objective_options(self) -> dict[str, Any]:
        """The options of this run's objective (`gerbil.data.objectives.get_objective(objective, **them)`):
        the objective-option fields its class takes; a non-default value for an option the objective does
        not take is a one-line error naming it."""
        import inspect

        from gerbil.data.objectives import objective_class

        takes = set(inspect.signature(objective_class(self.objective).__init__).parameters)
        fresh = TrainConfig()
        out: dict[str, Any] = {}
        for name, key in OBJECTIVE_OPTIONS.items():
            value = getattr(self, name)
            if key in takes:
                if value is not None:
                    out[key] = value
            elif value != getattr(fresh, name):
                raise ValueError(f"{name}: does not apply to objective {self.objective!r}")
        return out

    def to_dict(self) -> dict:
        """Plain data (YAML-able); `cls` is written as ``class``."""
        d = dataclasses.asdict(self)
        d["class"] = d.pop("cls")
        return d


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping; a missing file, a syntax error or another shape is one line."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{p}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: {what} must be a mapping of options, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------- validation
def _allowed_types(annotation: Any) -> tuple[set[type], bool]:
    """({int, float, str, bool, list, dict} subset, None allowed) from a field's annotation string/type."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, {"list": list, "dict": dict, "int": int, "float": float, "str": str, "bool": bool,
                           "None": None})  # the annotations above use only these names
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    kinds, optional = set(), False
    for a in args:
        if a is type(None) or a is None:
            optional = True
        else:
            kinds.add(typing.get_origin(a) or a)
    return kinds, optional


def _type_name(kinds: set[type]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping"}
    return " or ".join(names[k] for k in (int, float, str, bool, list, dict) if k in kinds)


def _check_field(f: dataclasses.Field, value: Any, name: str | None = None) -> Any:
    """The value of field `f`, converted where its parser allows (e.g. '50M'), or a one-line ValueError
    naming the field (`name`: its spelling in messages, default the field name)."""
    name = name or _ALIAS_OF.get(f.name, f.name)
    kinds, optional = _allowed_types(f.type)
    meta = f.metadata
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name}: a value is required")
    if isinstance(value, str) and str not in kinds and meta.get("parse"):
        try:
            value = meta["parse"](value)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if list in kinds and isinstance(value, str) and meta.get("parse"):
        value = meta["parse"](value)
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"{name}: expected {_type_name(kinds)}, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and float in kinds and int not in kinds:
        value = float(value)
    if isinstance(value, tuple) and list in kinds:
        value = list(value)
    if not any(isinstance(value, k) for k in kinds):
        raise ValueError(f"{name}: expected {_type_name(kinds)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(meta['choices'])}")
    check = meta.get("check")
    if check and isinstance(value, (int, float)):
        ok = {"positive": value > 0, "non_negative": value >= 0, "fraction": 0 <= value <= 1,
              "unit": 0 < value < 1}[check]
        if not ok:
            want = {"positive": "> 0", "non_negative": ">= 0", "fraction": "in [0, 1]", "unit": "in (0, 1)"}[check]
            raise ValueError(f"{name}: must be {want}, got {value!r}")
    if list in kinds and isinstance(value, list):
        if meta.get("items", float) is str:
            if not all(isinstance(x, str) for x in value):
                raise ValueError(f"{name}: expected a list of strings, got {value!r}")
        elif not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------- the CLI
def add_arguments(parser: argparse.ArgumentParser, cls: type = None) -> None:
    """One flag per field of `cls` (default `TrainConfig`: `--seq-len`, `--class`, `--from`, `--resume
    auto`, `--no-compile`, ...). Flags not given are absent from the namespace (argparse.SUPPRESS), so a
    recipe's or the dataclass's value stays in place; values are parsed and checked by `cls` itself."""
    for f in dataclasses.fields(cls or TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if not flag.startswith("-"):  # an optional positional argument (e.g. finetune's RUN_OR_EXPORT)
            parser.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, metavar=meta.get("metavar") or flag,
                                help=meta["help"])
            continue
        kinds, _ = _allowed_types(f.type)
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default is None else f" (default {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": meta["help"].replace("%%", "%%") + shown.replace("%", "%%")}
        if f.name == "resume":  # `--resume auto` (the only mode; the bare flag means the same)
            parser.add_argument(flag, nargs="?", const="auto", choices=("auto",), **kw)
        elif kinds == {bool}:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
            else:
                kw["metavar"] = meta.get("metavar") or f.name.upper()
            parser.add_argument(flag, **kw)


def config_from_args(args: argparse.Namespace, recipe: str | None = None, cls: type = None) -> Any:
    """The config (`cls`, default TrainConfig) of a command line: the recipe (if any), then the given flags."""
    cls = cls or TrainConfig
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if f.name == "resume":
                value = True
            given[f.name] = _from_cli(f, value)
    if recipe:
        return cls.from_yaml(recipe, given)
    return cls.from_dict(given)


def _from_cli(f: dataclasses.Field, value: Any) -> Any:
    """A command-line string as the field's type (int/float fields from text; '50M' via the parser)."""
    if not isinstance(value, str):
        return value
    kinds, _ = _allowed_types(f.type)
    name = "--" + (f.metadata.get("flag") or f.name.replace("_", "-")).lstrip("-")
    if f.metadata.get("parse"):
        try:
            return f.metadata["parse"](value)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if str in kinds:
        return value
    for k in (int, float):
        if k in kinds:
            try:
                return k(value)
            except ValueError:
                pass
    raise ValueError(f"{name}: expected {_type_name(kinds)}, got {value!r}")
