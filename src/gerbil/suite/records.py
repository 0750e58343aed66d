"""A suite's records: `RunSpec` (one run: what it trains, what it waits for, what it costs) and `Suite` (the
validated, expanded suite), and the names of the suite file's own keys. No torch.

They are what `gerbil.suite.spec.load_suite` builds, what `suite.json` stores (`to_dict` / `from_dict`) and
what the workers, the planner and the exporter read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gerbil.classes import CUSTOM_BUDGET, class_text
from gerbil.errors import GerbilError
from gerbil.train.config import TrainConfig
from gerbil.units import DEFAULT_SEQ_LEN

#: cascade mechanics: the trunk cools down over this share of its own budget; each branch leaves the
#: trunk at (1 − BRANCH_COOLDOWN) × its class budget and cools down over the rest
BRANCH_COOLDOWN = 0.2
#: `RunSpec.cls_label` of a run with a budget of its own (no class)
CUSTOM = "custom"
#: TrainConfig fields a suite decides itself (the run's name, its parent, where runs live, resuming)
MANAGED = {"from_run", "runs", "resume"}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


# ------------------------------------------------------------------------------------------ records
@dataclass
class RunSpec:
    """One run of a suite: what it trains (TrainConfig options), what it waits for, what it costs.

    `options` are TrainConfig fields as given (plus the derived ones: `model`/`size`, `tokens` for a
    scaled or ratio budget, the cascade's schedule fields); `from_run` is never among them — it is
    derived at claim time from `parent` (the parent's run directory) or, for a cascade branch, from the
    trunk checkpoint at `branch_at` tokens.
    """

    name: str
    options: dict[str, Any]
    role: str = "run"  # run | star | trunk | branch
    parent: str | None = None
    branch_at: int | None = None  # branch: the trunk's tokens where it leaves (the first step at or after)
    cascade: str | None = None  # the trunk's name, for the trunk and its branches
    corpus: str | None = None
    # the class the run stands for (`gerbil.classes`): "A", a continuation's "A*", a cascade branch's own class
    # (not "A*"); "custom" for a budget of its own (its own token count, or too few tokens for its class)
    cls_label: str = "A"
    size: str = ""
    model: dict = field(default_factory=dict)
    params: int = 0
    seq_len: int = DEFAULT_SEQ_LEN
    budget: int = 0  # total tokens at the end, counted from the very start (a parent's included)
    start: int = 0  # tokens already trained by the parent (the branch point for a branch)
    batch: str = ""
    flops_per_token: int = 0
    mfu: float = 0.0
    scaled: bool = False  # budget = budget_scale × class budget (a proxy, not the class itself)

    @property
    def tokens(self) -> int:
        """Tokens this run trains itself (the loop stops at exactly the budget)."""
        return self.budget - self.start

    @property
    def flops(self) -> float:
        return float(self.flops_per_token) * self.tokens

    @property
    def claimed_class(self) -> str | None:
        """The class the run may be called (`gerbil.classes.claimed_class`, the results table's rule): its
        class, or None for a custom budget — its own token count, or a budget scaled below its class's."""
        return None if self.cls_label == CUSTOM or self.scaled else self.cls_label

    def class_text(self, scale: float | None = None) -> str:
        """How suite plans and model cards show the run's class (`scale`: the suite's `budget_scale`)."""
        if self.scaled:
            how = f"scaled by {scale:g}" if scale else "scaled"
            return f"{CUSTOM_BUDGET} (class {self.cls_label} {how})"
        return class_text(self.claimed_class)

    def train_options(self) -> dict[str, Any]:
        """The options that decide what is trained (runtime knobs left out) — what a changed suite file
        is compared on, field by field."""
        cfg = TrainConfig.from_dict({k: v for k, v in self.options.items()})
        d = cfg.to_dict()
        runtime = TrainConfig.runtime_fields()
        return {k: v for k, v in d.items() if k not in runtime and k not in MANAGED and k != "from_run"}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tokens"] = self.tokens
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Suite:
    """A validated, expanded suite: its runs in file order (which is also the table's row order)."""

    name: str
    runs: list[RunSpec]
    source: str = ""
    description: str = ""
    data: str | None = None
    corpus: str | None = None
    eval_tasks: list[str] = field(default_factory=list)
    eval_limit: int | None = None
    budget_scale: float = 1.0

    def get(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]

    def children(self, name: str) -> list[RunSpec]:
        return [r for r in self.runs if r.parent == name]

    def cascades(self) -> dict[str, list[RunSpec]]:
        """trunk name → [trunk, branches...]."""
        out: dict[str, list[RunSpec]] = {}
        for r in self.runs:
            if r.cascade:
                out.setdefault(r.cascade, []).append(r)
        return out

    def order(self) -> list[RunSpec]:
        """Runs in dependency order (parents first), otherwise in file order."""
        done: set[str] = set()
        out: list[RunSpec] = []
        pending = list(self.runs)
        while pending:
            rest = []
            for r in pending:
                if r.parent is None or r.parent in done:
                    out.append(r)
                    done.add(r.name)
                else:
                    rest.append(r)
            if len(rest) == len(pending):  # validated acyclic: unreachable
                raise GerbilError(f"suite {self.name}: dependency cycle among {', '.join(x.name for x in rest)}")
            pending = rest
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "description": self.description, "data": self.data,
                "corpus": self.corpus, "eval": {"tasks": list(self.eval_tasks), "limit": self.eval_limit},
                "budget_scale": self.budget_scale, "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict) -> "Suite":
        ev = d.get("eval") or {}
        return cls(name=d["name"], runs=[RunSpec.from_dict(r) for r in d.get("runs", [])],
                   source=d.get("source", ""), description=d.get("description", ""), data=d.get("data"),
                   corpus=d.get("corpus"), eval_tasks=list(ev.get("tasks") or []), eval_limit=ev.get("limit"),
                   budget_scale=float(d.get("budget_scale", 1.0)))
