"""The options of every verb: one dataclass per verb, one source for its flags, its YAML and Python.

A verb's options are a dataclass of `opt` fields (`Options`). Each field carries its help, command-line
spelling, parser, range check and `--help` section, so

- the verb's flags are generated from the fields (`add_arguments`, one argparse argument group per
  section), and `config_from_args` builds the dataclass from what was given;
- one validation (`Options.__post_init__`) serves the CLI, a YAML recipe (`from_yaml`) and Python: an
  unknown key, a wrongly typed value or a value out of range is a one-line `OptionError` naming it;
- a field says whether it may change when a run is resumed (`runtime`), and `resumed` is the one
  resume rule of every verb that resumes: the recorded options, a changed one refused with one wording
  (`refuse_changes`, also what `gerbil suite run` says of a changed suite file), runtime ones overlaid.

Option groups two verbs share are declared once, as dataclasses composed into the verbs' options:
`Optimization` (AdamW and the LR schedule) and `Runtime` (device, precision, compile, resume, logs) in
`gerbil.train.config.TrainConfig` and `gerbil.finetune.config.FinetuneConfig`; a verb changes a shared
field's default with `Group.with_default`. Pure Python, no torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

from gerbil.errors import OptionError

O = TypeVar("O", bound="Options")

#: `opt(runtime=...)`: how a field behaves when a run is resumed
FIXED = False  # what is trained: the recorded value; a different given one is refused
RUNTIME = True  # how or where it runs: the given value
FALLBACK = "fallback"  # where an input is (a store, a base model that moved): the given value, else the recorded
#: YAML/dict spellings of fields whose names would be Python keywords (`Options._aliases`)
KEYWORD_KEYS = {"class": "cls", "from": "from_run"}


def opt(default: Any, help: str, *, flag: str | tuple[str, ...] | None = None,
        parse: Callable[[str], Any] | None = None, check: str | None = None, choices: tuple[str, ...] | None = None,
        metavar: str | None = None, cli: bool = True, items: type = float, runtime: bool | str = FIXED,
        nargs: str | None = None, repeat: bool = False, required: bool = False, const: str | None = None) -> Any:
    """A field of an options dataclass with what the CLI, the validation and resuming need to know.

    flag: the command-line spelling(s) (default ``--field-name``; a name without dashes is a positional
    argument, optional unless `required`); parse: turns a command-line (or YAML) string into the value,
    e.g. `parse_count` for "50M"; check: "positive", "non_negative", "fraction" ([0, 1]) or "unit"
    ((0, 1)); choices: allowed strings; items: what a list field holds (numbers, or `str`); runtime:
    `FIXED`, `RUNTIME` or `FALLBACK` (see `resumed`); nargs "+" / repeat: a list from several values or
    a repeated flag; const: the flag's one value (``--resume auto``; the bare flag means the same): True.
    """
    return field(default=default, metadata={
        "help": help, "flag": flag, "parse": parse, "check": check, "choices": choices, "metavar": metavar,
        "cli": cli, "items": items, "runtime": runtime, "nargs": nargs, "repeat": repeat, "required": required,
        "const": const})


def section(title: str, about: str | None = None) -> Callable[[type], type]:
    """Class decorator: a dataclass of `opt` fields that is one section of `--help` (an argument group
    with this title, and `about` under it)."""
    def wrap(cls: type) -> type:
        for name in inspect.get_annotations(cls):
            f = cls.__dict__.get(name)
            if isinstance(f, dataclasses.Field):
                f.metadata = types.MappingProxyType({**f.metadata, "section": title, "about": about})
        return dataclass(cls)
    return wrap


class Options:
    """What every options dataclass of `opt` fields shares: one validation of each field on construction
    (`__post_init__`), construction from a mapping (`from_dict`) or a YAML file (`from_yaml`), and
    plain-data output. Subclasses name what their keys are (`_what`, in the unknown-key error), the YAML
    spellings of fields whose names are Python keywords (`_aliases`) and what a refused change on resume
    advises instead (`_resume_advice`)."""

    _what = "option"
    _aliases: dict[str, str] = {}  # YAML/dict key → field name
    _resume_advice = "leave it out"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_field(f, getattr(self, f.name), self.key_of(f.name)))

    @classmethod
    def key_of(cls, name: str) -> str:
        """A field's key in YAML and messages (``class`` for `cls`)."""
        return {v: k for k, v in cls._aliases.items()}.get(name, name)

    @classmethod
    def flag_of(cls, name: str) -> str:
        """A field's command-line spelling (its first), e.g. ``--class``, ``--seq-len``, ``RUN_OR_EXPORT``."""
        return _flags(cls.__dataclass_fields__[name])[0]

    @classmethod
    def runtime_fields(cls) -> tuple[str, ...]:
        """Names of the fields a resumed run may change (`RUNTIME` and `FALLBACK`): how or where it runs,
        never what is trained."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime"))

    @classmethod
    def _key(cls, key: Any) -> str:
        k = str(key).replace("-", "_")
        return cls._aliases.get(k, k)

    @classmethod
    def from_dict(cls: type[O], d: Mapping) -> O:
        """From a recipe/config mapping; the `_aliases` spellings and dashed keys accepted. An unknown key
        is a one-line error naming it."""
        if not isinstance(d, Mapping):
            raise OptionError(f"a {cls._what} mapping is needed, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        out = {}
        for key, value in d.items():
            k = cls._key(key)
            if k not in names:
                raise OptionError(f"unknown {cls._what} {key!r} (known: {', '.join(sorted(map(cls.key_of, names)))})")
            out[k] = value
        return cls(**out)

    @classmethod
    def from_yaml(cls: type[O], path: str | Path, overrides: dict | None = None) -> O:
        """A recipe file; `overrides` (e.g. the CLI flags that were given) win over its keys."""
        data = read_yaml_mapping(path, "a recipe")
        data = {cls._key(k): v for k, v in data.items()}
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """Plain data (YAML-able)."""
        return dataclasses.asdict(self)

    @classmethod
    def with_default(cls, name: str, default: Any, help: str | None = None) -> Any:
        """This group's field `name` with another default (and help): how a verb tunes a shared option,
        e.g. ``lr: float = Optimization.with_default("lr", 1e-3)``; flag, check and section stay."""
        meta = dict(cls.__dataclass_fields__[name].metadata)
        if help is not None:
            meta["help"] = help
        return field(default=default, metadata=meta)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping; a missing file, a syntax error or another shape is one line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise OptionError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise OptionError(f"{p}: {what} must be UTF-8 text; byte 0x{e.object[e.start]:02x} at line {line} is "
                          f"not") from None
    try:
        data = yaml.load(text, Loader=_unique_key_loader())
    except _DuplicateKey as e:
        raise OptionError(f"{p}: {e}; say it once") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise OptionError(f"{p}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionError(f"{p}: {what} must be a mapping of options, got {type(data).__name__}")
    return data


class _DuplicateKey(Exception):
    pass


def _unique_key_loader() -> type:
    """yaml.SafeLoader refusing a key given twice in one mapping (PyYAML keeps the last silently: a
    recipe with two `lr:` lines would train with the second and never say so)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if first is not None:
                    raise _DuplicateKey(f"key {key!r} is given twice (lines {first} and {line})")
                seen[key] = line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


# ---------------------------------------------------------------------------------------- shared groups
@section("optimizer and learning-rate schedule")
class Optimization(Options):
    """AdamW and the LR schedule, as every training verb takes them."""

    lr: float | None = opt(None, "peak learning rate", check="positive")
    schedule: str = opt("cosine", "cosine (warmup, cosine to min_lr_ratio), wsd (warmup, constant, 1-sqrt "
                                  "cooldown) or constant", choices=("cosine", "wsd", "constant"))
    min_lr_ratio: float = opt(0.1, "cosine floor as a fraction of the peak", check="fraction")
    cooldown_fraction: float = opt(0.2, "wsd: share of the run spent cooling down (Hägele et al. 2024)",
                                   check="fraction")
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices", check="non_negative")
    beta1: float = opt(0.9, "AdamW beta1", check="unit")
    beta2: float = opt(0.95, "AdamW beta2", check="unit")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: no clipping)", check="non_negative")


@section("logging and runtime", "All but --log-every and --precision may change when a run is resumed.")
class Runtime(Options):
    """How a training run executes and reports: where, how fast, how loud; resuming."""

    log_every: int = opt(1, "steps between metrics.jsonl lines", check="positive", metavar="N")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", runtime=RUNTIME)
    precision: str = opt("auto", "auto (bf16 on CUDA that has it, fp16 + loss scaling on older CUDA, fp32 on "
                                 "CPU), fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool | None = opt(None, "torch.compile the model and its loss (default: on CUDA only; --compile "
                                     "forces it, also on a CPU, --no-compile never)", runtime=RUNTIME)
    deterministic: bool = opt(False, "deterministic algorithms (bitwise-exact resume on a GPU; slower)",
                              runtime=RUNTIME)
    sdpa_backend: str = opt("auto", "attention kernel: auto (on CUDA the fastest of flash, cudnn and efficient, timed "
                                    "on the run's shape at its start; PyTorch's choice elsewhere), default "
                                    "(PyTorch's choice), or one pinned: flash, cudnn, efficient, math",
                            choices=("auto", "default", "flash", "cudnn", "efficient", "math"), runtime=RUNTIME)
    resume: bool = opt(False, "continue this run from its latest intact checkpoint, or start it if it has "
                              "none yet (--resume auto)", flag="--resume", const="auto", runtime=RUNTIME)
    progress: bool | None = opt(None, "progress bar (default: when stderr is a terminal)", runtime=RUNTIME)
    log: str | None = opt(None, "also mirror metrics to: tensorboard, wandb (comma-separated)", runtime=RUNTIME)


# ---------------------------------------------------------------------------------------- resuming
def resumed(given: O, recorded: Mapping[str, Any], where: Any) -> O:
    """The one resume rule: the options of the run at `where` continued with `given`.

    The result is the `recorded` options (a run's own config.yaml section), with the runtime fields
    overlaid from `given` (`RUNTIME`: the given value; `FALLBACK`: the given value, or the recorded one
    when none is given). A fixed option that was given (not its default) and differs from the recorded
    value is refused (`refuse_changes`): a resumed run continues exactly as it was configured.
    """
    cls = type(given)
    saved = cls.from_dict(dict(recorded))
    fresh = cls()
    asked = {f.name: getattr(given, f.name) for f in dataclasses.fields(cls)
             if not f.metadata.get("runtime") and getattr(given, f.name) != getattr(fresh, f.name)}
    refuse_changes(asked, {n: getattr(saved, n) for n in asked}, where=str(where), advice=cls._resume_advice,
                   spell=cls.flag_of)
    overlay = {}
    for f in dataclasses.fields(cls):
        kind, value = f.metadata.get("runtime"), getattr(given, f.name)
        if kind is RUNTIME or (kind == FALLBACK and value is not None):
            overlay[f.name] = value
    return dataclasses.replace(saved, **overlay)


def refuse_changes(given: Mapping[str, Any], recorded: Mapping[str, Any], *, where: str, advice: str,
                   action: str = "--resume", spell: Callable[[str], str] = str) -> None:
    """Refuse the first key of `given` whose value differs from `recorded`'s (keys `recorded` lacks are
    not compared): an `OptionError` in the one wording of every verb that continues a run, e.g.
    "--resume continues runs/x as it was configured, but --lr 0.5 differs from the run's 0.01; leave it
    out" (a recorded None: "... from the run's, which was left to its default"). `spell` turns a key into
    its name for the user (a flag, or a suite file's key)."""
    for key, mine in given.items():
        if key in recorded and _plain(mine) != _plain(recorded[key]):
            theirs = recorded[key]
            was = f"the run's {theirs!r}" if theirs is not None else "the run's, which was left to its default"
            raise OptionError(f"{action} continues {where} as it was configured, but {spell(key)} {mine!r} differs "
                              f"from {was}; {advice}")


def _plain(x: Any) -> Any:
    """Lists and tuples compare equal (YAML and JSON give lists)."""
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


# ---------------------------------------------------------------------------------------- validation
def _allowed_types(annotation: Any) -> tuple[set[type], bool]:
    """({int, float, str, bool, list, dict} subset, None allowed) from a field's annotation string/type."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, {"list": list, "dict": dict, "int": int, "float": float, "str": str, "bool": bool,
                           "None": None})  # options' annotations use only these names
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


_INT64_MAX = 2**63 - 1  # what torch and numpy hold; a larger integer option is a typo


def check_range(name: str, value: Any, check: str | None) -> Any:
    """`value` under one of `opt`'s range checks ("positive", "non_negative", "fraction", "unit"; None:
    none), or a one-line OptionError naming it (`name`: a field, or a flag such as ``--nproc`` that is
    not an `opt` field). None passes (an optional value not given)."""
    if check and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = {"positive": value > 0, "non_negative": value >= 0, "fraction": 0 <= value <= 1,
              "unit": 0 < value < 1}[check]
        if not ok:
            want = {"positive": "> 0", "non_negative": ">= 0", "fraction": "in [0, 1]", "unit": "in (0, 1)"}[check]
            raise OptionError(f"{name}: must be {want}, got {value!r}")
    return value


def _check_field(f: dataclasses.Field, value: Any, name: str) -> Any:
    """The value of field `f`, converted where its parser allows (e.g. '50M'), or a one-line OptionError
    naming the field (`name`: its spelling in messages)."""
    kinds, optional = _allowed_types(f.type)
    meta = f.metadata
    if value is None:
        if optional:
            return None
        raise OptionError(f"{name}: a value is required")
    if isinstance(value, str) and meta.get("parse") and (str not in kinds or list in kinds):
        try:
            value = meta["parse"](value)
        except ValueError as e:
            raise OptionError(f"{name}: {e}") from None
    if isinstance(value, bool) and bool not in kinds:
        raise OptionError(f"{name}: expected {_type_name(kinds)}, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64_MAX:
        raise OptionError(f"{name}: a number of {len(str(abs(value)))} digits is too large")
    if isinstance(value, int) and not isinstance(value, bool) and float in kinds and int not in kinds:
        value = float(value)
    if isinstance(value, tuple) and list in kinds:
        value = list(value)
    if not any(isinstance(value, k) for k in kinds):
        raise OptionError(f"{name}: expected {_type_name(kinds)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"{name}: must be a finite number, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise OptionError(f"{name}: {value!r} is not one of {', '.join(meta['choices'])}")
    check_range(name, value, meta.get("check"))
    if list in kinds and isinstance(value, list):
        if meta.get("items", float) is str:
            if not all(isinstance(x, str) for x in value):
                raise OptionError(f"{name}: expected a list of strings, got {value!r}")
        elif not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            raise OptionError(f"{name}: expected a list of numbers, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------- the CLI
def _flags(f: dataclasses.Field) -> tuple[str, ...]:
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    return (flag,) if isinstance(flag, str) else tuple(flag)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Options]) -> None:
    """One flag per field of `cls` (`--seq-len`, `--class`, `--from`, `--resume auto`, `--no-compile`,
    ...), in one argument group per section, in field order. Flags not given are absent from the
    namespace (argparse.SUPPRESS), so a recipe's or the dataclass's value stays in place; values are
    parsed and checked by `cls` itself (`config_from_args`)."""
    groups: dict[str | None, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        title = meta.get("section")
        if title not in groups:
            groups[title] = parser.add_argument_group(title, meta.get("about")) if title else parser
        _add_field(groups[title], f)


def _add_field(group: Any, f: dataclasses.Field) -> None:
    meta, flags = f.metadata, _flags(f)
    if not flags[0].startswith("-"):  # a positional argument (e.g. finetune's RUN_OR_EXPORT)
        nargs = meta.get("nargs") or (None if meta.get("required") else "?")
        group.add_argument(f.name, nargs=nargs, default=argparse.SUPPRESS, metavar=meta.get("metavar") or flags[0],
                           help=meta["help"])
        return
    kinds, _ = _allowed_types(f.type)
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    shown = "" if default is None or meta.get("required") else f" (default {default})"
    kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + shown.replace("%", "%%")}
    if meta.get("required"):
        kw["required"] = True
    if meta.get("const"):  # `--resume auto`: the only value; the bare flag means the same
        group.add_argument(*flags, nargs="?", const=meta["const"], choices=(meta["const"],), **kw)
    elif kinds == {bool}:
        group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
    else:
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        else:
            kw["metavar"] = meta.get("metavar") or f.name.upper()
        if meta.get("repeat"):
            kw["action"] = "append"
        elif meta.get("nargs"):
            kw["nargs"] = meta["nargs"]
        group.add_argument(*flags, **kw)


def setup_logging() -> None:
    """What a verb that runs library code logs: INFO lines on stderr (unless logging is set up already)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def config_from_args(args: argparse.Namespace, cls: type[O], recipe: str | None = None) -> O:
    """The options (`cls`) of a command line: the recipe (a YAML file of the same keys), if any, then the
    flags that were given (they win)."""
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            given[f.name] = True if f.metadata.get("const") else _from_cli(f, value)
    try:
        return cls.from_yaml(recipe, given) if recipe else cls.from_dict(given)
    except OptionError as e:  # a flag's value out of range: name the flag the user typed (--poll, not poll)
        text = str(e)
        for name in given:
            key = cls.key_of(name)
            if text.startswith(key + ":") and cls.flag_of(name).startswith("-"):
                raise OptionError(cls.flag_of(name) + text[len(key):]) from None
        raise


def _from_cli(f: dataclasses.Field, value: Any) -> Any:
    """A command-line string as the field's type (int/float fields from text; '50M' via the parser)."""
    if not isinstance(value, str):
        return value
    kinds, _ = _allowed_types(f.type)
    name = _flags(f)[0]
    if f.metadata.get("parse"):
        try:
            return f.metadata["parse"](value)
        except ValueError as e:
            raise OptionError(f"{name}: {e}") from None
    if str in kinds:
        return value
    for k in (int, float):
        if k in kinds:
            try:
                return k(value)
            except ValueError:
                pass
    raise OptionError(f"{name}: expected {_type_name(kinds)}, got {value!r}")
