"""A suite's run entries (`gerbil.suite.expand`) decided into `RunSpec`s: names, parents and budgets. No torch.

* each entry's options pass `TrainConfig`'s validation, its objective, corpus, ratio and class are checked;
* names: given, or the model name (`gerbil.runs.rundir.model_name`; a continuation without a size takes its
  parent's), each usable as a directory and unique;
* parents exist, form no cycle, and a cascade branch's parent is its trunk;
* budgets, parents first: a run from scratch is `gerbil.plan.make_plan`'s plan; a continuation (a star run,
  a cascade branch) is planned from its parent's plan by the one continuation rule (`gerbil.continuation`:
  the parent's model, context and seed, starting at the parent's budget — a branch at the trunk's checkpoint
  at its branch point); the class each run may claim is `gerbil.classes`' rule;
* a cascade trunk has a constant batch and checkpoints at its branches' branch points.
"""
from __future__ import annotations

import math
import re
from typing import Any

from gerbil.classes import base_class, parse_class, star
from gerbil.continuation import ParentPoint, inherit
from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig, ladder_model
from gerbil.plan import Plan, budget_of, make_plan
from gerbil.runs.rundir import model_name
from gerbil.schedules import BatchSchedule
from gerbil.suite.expand import Entry, check_corpus, check_objective, check_train_options, fail, model_of
from gerbil.suite.records import BRANCH_COOLDOWN, CUSTOM, RunSpec
from gerbil.units import DEFAULT_SEQ_LEN


def resolve_runs(entries: list[Entry], models: dict[str, dict], scale: float) -> list[RunSpec]:
    """The suite's `RunSpec`s in file order (see the module docstring); `scale` is its `budget_scale`."""
    info = [_entry(w, opts, extra, models) for w, opts, extra in entries]
    _name(info)
    _link(info)
    by_name = {e["name"]: e for e in info}
    specs: dict[str, RunSpec] = {}
    plans: dict[str, Plan] = {}
    for e in info:
        _build(e["name"], by_name, specs, plans, scale)
    for spec in specs.values():
        if spec.role == "trunk":
            _trunk(spec, by_name[spec.name]["where"], plans[spec.name], specs)
    for spec in specs.values():  # every derived option set still passes TrainConfig
        check_train_options(by_name[spec.name]["where"], spec.options)
    return [specs[e["name"]] for e in info]


def _entry(w: str, opts: dict, extra: dict, models: dict[str, dict]) -> dict[str, Any]:
    """One entry checked: its options, objective, corpus, ratio, class; the model it names (None: its parent's)."""
    check_train_options(w, opts)
    check_objective(w, opts.get("objective", "plain"), opts.get("arch"))
    check_corpus(w, extra.get("corpus"))
    ratio = extra.get("ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0):
        raise fail(w, f"ratio: expected a positive number of tokens per parameter, got {ratio!r}")
    try:
        label, _, starred = parse_class(opts.get("cls"), ratio)
    except ValueError as e:
        raise fail(w, f"class: {e}") from None
    size_label, model = model_of(w, opts, models)
    parent = extra.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise fail(w, f"parent: expected a run name, got {parent!r}")
    if starred and parent is None and extra.get("role") is None:
        raise fail(w, f"class {label} has no budget of its own: a star class continues a run (give `parent: NAME`)")
    if not size_label and parent is None:
        raise fail(w, "no model: give a size (e.g. 6.7m) or a model")
    return dict(where=w, opts=opts, extra=extra, label=star(label) if parent else label, size=size_label,
                model=model, parent=parent, name=extra.get("name"))


def _name(info: list[dict[str, Any]]) -> None:
    """Names: given, or the model name (a continuation without a size takes its parent's); usable, unique."""
    for _ in range(len(info) + 1):
        known = {e["name"]: e for e in info if e["name"]}
        for e in info:
            if e["name"] is not None:
                continue
            size, arch = (e["model"] or {}).get("name") or e["size"], _arch(e)
            if not size and e["parent"] in known:
                p = known[e["parent"]]
                size, arch = (p["model"] or {}).get("name") or p["size"] or None, _arch(p)
            if size:
                suffix = e["extra"].get("suffix", "")
                e["name"] = model_name(e["opts"].get("objective", "plain"), e["label"], size, arch) + suffix
    seen: dict[str, str] = {}
    for e in info:
        if e["name"] is None:
            raise fail(e["where"], f"parent {e['parent']!r} is not a run of this suite")
        if not isinstance(e["name"], str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", e["name"]):
            raise fail(e["where"], f"name: {e['name']!r} is not a usable directory name")
        if e["name"] in seen:
            raise fail(e["where"], f"two runs are named {e['name']!r} (the other: {seen[e['name']]}); give one a "
                                   f"`name`")
        seen[e["name"]] = e["where"]


def _arch(e: dict[str, Any]) -> str:
    """An entry's architecture: its `arch`, else its explicit model's, else GPT-J."""
    return e["opts"].get("arch") or (e["model"] or {}).get("arch") or "gptj"


def _link(info: list[dict[str, Any]]) -> None:
    """Parents: a cascade branch's is its trunk; each exists, none continues itself, no cycle."""
    names = {e["name"] for e in info}
    trunks = {e["extra"]["trunk_key"]: e["name"] for e in info if e["extra"].get("role") == "trunk"}
    for e in info:
        if e["extra"].get("role") == "branch":
            e["parent"] = trunks[e["extra"]["branch_of"]]
        if e["parent"] is not None and e["parent"] not in names:
            raise fail(e["where"], f"parent {e['parent']!r} is not a run of this suite")
        if e["parent"] == e["name"]:
            raise fail(e["where"], f"parent: {e['name']!r} cannot continue itself")
    parent_of = {e["name"]: e["parent"] for e in info}
    for e in info:
        chain, cur = [e["name"]], parent_of[e["name"]]
        while cur is not None:
            if cur in chain:
                raise fail(e["where"], f"parent cycle: {' -> '.join(chain[chain.index(cur):] + [cur])}")
            chain.append(cur)
            cur = parent_of[cur]


def _build(name: str, by_name: dict[str, dict], specs: dict[str, RunSpec], plans: dict[str, Plan],
           scale: float) -> RunSpec:
    """The RunSpec of `name`, its parent's first (recursively)."""
    if name in specs:
        return specs[name]
    e = by_name[name]
    w, extra, parent = e["where"], e["extra"], e["parent"]
    opts = {k: v for k, v in e["opts"].items() if k != "name"}
    role = extra.get("role") or ("star" if parent else "run")
    nominal, ratio, _ = parse_class(opts.get("cls"), extra.get("ratio"))
    if role == "trunk":
        opts.update(schedule="wsd", cooldown_fraction=BRANCH_COOLDOWN)
    ps = _build(parent, by_name, specs, plans, scale) if parent is not None else None
    size_label, model = _model_options(w, e, opts, ps)
    seq_len = opts["seq_len"] = int(opts.get("seq_len") or DEFAULT_SEQ_LEN)
    opts["seed"] = int(opts.get("seed") or 0)
    arch = opts.get("arch") or "gptj"
    mc = ModelConfig.from_dict(dict(model)) if model is not None else ladder_model(size_label, seq_len, arch)
    tokens, scaled = opts.get("tokens"), False
    if tokens is None and (scale != 1.0 or extra.get("ratio") is not None):
        tokens = opts["tokens"] = int(round(scale * ratio * mc.n_params("total")))  # a proxy keeps the ratios
        scaled = scale != 1.0
    point, branch_at = None, None
    if ps is not None:
        start = ps.budget  # a run stops at exactly its budget
        if role == "branch":  # where the trunk checkpoints for it: the first step boundary at its branch point
            branch_at = int(math.ceil((1 - BRANCH_COOLDOWN) * budget_of(mc, opts.get("cls"), None, tokens)[2]))
            start = _boundary(plans[parent].schedule, branch_at)
            opts.update(schedule="wsd", cooldown_fraction=1.0, warmup_tokens=0)
        first = None if role == "branch" else plans[parent].schedule.stages[0].batch_tokens
        point = ParentPoint(model=ps.model, size=ps.size, seq_len=ps.seq_len, seed=ps.options["seed"],
                            objective=ps.options.get("objective", "plain"), tokens=start, first_batch=first,
                            who=f"parent {parent}",
                            child="the cooldown branch" if role == "branch" else "the continuation")
    try:
        plan = make_plan(None if point else (mc if model is not None else size_label), opts.get("cls"),
                         seq_len=seq_len, batch_tokens=opts.get("batch_tokens"), tokens=tokens, from_run=point,
                         arch=arch)
    except (ValueError, GerbilError) as err:
        raise fail(w, str(err)) from None
    plans[name] = plan
    if role == "branch":
        cls_label = base_class(nominal)  # a branch stands for its class (its checkpoints say "A*": continued)
    elif scaled:
        cls_label = star(nominal) if parent else nominal  # the class it is a proxy of (`RunSpec.scaled`)
    else:  # the class its budget may claim (`gerbil.classes.claimed_class`), as train records it
        cls_label = plan.cls or CUSTOM
    specs[name] = RunSpec(
        name=name, options=opts, role=role, parent=parent, branch_at=branch_at,
        cascade=parent if role == "branch" else (name if role == "trunk" else None), corpus=extra.get("corpus"),
        cls_label=cls_label, size=size_label, model=mc.to_dict(), params=mc.n_params("total"), seq_len=seq_len,
        budget=plan.budget_tokens, start=plan.start_tokens, batch=plan.batch, flops_per_token=plan.flops_per_token,
        mfu=plan.mfu, scaled=scaled)
    return specs[name]


def _model_options(w: str, e: dict, opts: dict, ps: RunSpec | None) -> tuple[str, dict | None]:
    """(size label, custom model or None) of a run, set in `opts`: its own, or — a continuation — its
    parent's model, context and seed (`gerbil.continuation.inherit` refuses a given one that differs)."""
    if ps is None:
        if e["model"] is not None:
            opts.pop("size", None)
            opts["model"] = e["model"]
        else:
            opts.pop("model", None)
            opts["size"] = e["size"]
        return e["size"], e["model"]
    point = ParentPoint(model=ps.model, size=ps.size, seq_len=ps.seq_len, seed=ps.options["seed"],
                        objective=ps.options.get("objective", "plain"), tokens=ps.budget, who=f"parent {ps.name}")
    given = ModelConfig.from_dict(dict(e["model"])) if e["model"] is not None else None
    inherit(point, w, size=e["size"] if e["size"] and given is None else None, model=given,
            seq_len=e["opts"].get("seq_len"), seed=e["opts"].get("seed"), objective=opts.get("objective", "plain"))
    for key in ("arch", "size", "model", "seq_len", "seed"):
        opts.pop(key, None)
        if ps.options.get(key) is not None:
            opts[key] = ps.options[key]
    return ps.size, ps.options.get("model")


def _boundary(schedule: BatchSchedule, tokens: int) -> int:
    """The first step boundary at or after `tokens` (where `checkpoint_at` puts a checkpoint)."""
    t = schedule.start_tokens
    for st in schedule.stages:
        end = t + st.steps * st.batch_tokens
        if tokens <= end:
            steps = max(0, -(-(tokens - t) // st.batch_tokens))
            return t + steps * st.batch_tokens
        t = end
    return t


def _trunk(spec: RunSpec, where: str, plan: Plan, specs: dict[str, RunSpec]) -> None:
    """A cascade trunk: a constant batch (branches leave it at step boundaries), a checkpoint at each
    branch point."""
    if len({st.batch_tokens for st in plan.schedule.stages}) > 1:
        raise fail(where, "a cascade trunk needs a constant batch (its branches leave it at step boundaries)")
    spec.options["checkpoint_at"] = sorted(s.branch_at for s in specs.values() if s.parent == spec.name
                                           and s.role == "branch")
