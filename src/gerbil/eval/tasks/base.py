"""The `Task` record: everything gerbil knows about one evaluation task, in one place.

A task is a small module in this folder that builds one `Task`: its name, the asset holding its items
(`gerbil.assets.EVAL_SETS`, where the item count is checked), the fields and content hash of the
official set, how an item becomes (context, continuation) requests, how request scores become metrics,
its columns in the seed's table and its lm-evaluation-harness YAML. Adding a task is one file plus one
line in `tasks/__init__.py` (and its asset entry). Every task also reports the task losses `LOSSES`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: a request's score as the harness defines it: (summed continuation log-likelihood, is_greedy)
Score = tuple[float, bool]

#: The task losses every task reports besides the harness's metrics (`gerbil.eval.metrics.gold_losses`,
#: docs/reference.md §5): the gold continuation's negative log-likelihood in bits per UTF-8 byte and in
#: nats per token, each a mean over items (with `<key>_stderr`).
LOSSES: tuple[str, ...] = ("bpb", "nll_per_token")
#: How each metric key is read: "pct" = a fraction shown in %, higher is better; "ppl" = a perplexity,
#: lower is better; "loss" = a loss (bits or nats), lower is better.
METRIC_KINDS: dict[str, str] = {"acc": "pct", "acc_norm": "pct", "perplexity": "ppl", "bpb": "loss",
                                "nll_per_token": "loss", "log_perplexity": "loss"}


@dataclass
class Item:
    """One scored item: its requests (context, continuation), gold index and choice texts."""

    requests: list[tuple[str, str]]
    gold: int = 0  # the gold request (its continuation's loss is the task loss)
    choices: list[str] = field(default_factory=list)  # for acc_norm (character lengths)


def choice_item(context: str, choices: list[str], gold: int, delimiter: str = " ") -> Item:
    """A harness `multiple_choice` item: one request (context, delimiter + choice) per choice (the
    task's `target_delimiter`, " " by default), `acc_norm` lengths from the choices themselves."""
    return Item([(context, delimiter + c) for c in choices], gold, list(choices))


@dataclass(frozen=True)
class Column:
    """One column of the seed's results table: its header, the metric it shows and how it is written
    ("pct": a fraction in %, "ppl": a perplexity with 4 decimals)."""

    header: str
    metric: str
    kind: str


@dataclass(frozen=True)
class Task:
    name: str
    fields: tuple[str, ...]  # the fields an item is built from (hashed by `content_sha256`)
    content_sha256: str  # of the official set's fields: another copy's numbers are not the seed's
    build_item: Callable[[dict], Item]
    score: Callable[[Sequence[Item], Sequence[Sequence[Score]], int], tuple[dict, list[dict]]]
    metrics: tuple[str, ...]  # headline metrics in display order (each also has `<metric>_stderr`)
    chance: float  # `acc` at random guessing (1 / number of choices; 0 for an exact-match task): the task law's floor
    columns: tuple[Column, ...] = ()
    aliases: tuple[str, ...] = ()
    note: str | None = None  # a caveat printed with its results and stored in its records
    harness_split: str | None = None  # the harness's split when the offline one differs (see `split`)
    losses: tuple[str, ...] = LOSSES  # task-loss keys in its metrics (lambada adds log_perplexity)
    asset: str | None = None  # its `gerbil.assets.EVAL_SETS` key, if not its name

    @property
    def data_set(self) -> str:
        """The eval set holding its items (`gerbil.assets.eval_set(task.data_set)`)."""
        return self.asset or self.name

    @property
    def split(self) -> str:
        """The split gerbil scores (`gerbil.assets.EVAL_SETS`)."""
        from gerbil.assets import EVAL_SETS

        return EVAL_SETS[self.data_set].split

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """Every metric key of its records, headline metrics first (each with `<key>_stderr`)."""
        return self.metrics + self.losses

    @property
    def n_items(self) -> int:
        """The full set's item count (checked when the asset is converted: `gerbil.assets.EVAL_SETS`)."""
        from gerbil.assets import EVAL_SETS

        return EVAL_SETS[self.data_set].items

    @property
    def harness_name(self) -> str:
        """The task's name in lm-evaluation-harness (`gerbil_<name>`, tag `gerbil`)."""
        return f"gerbil_{self.name}"

    @property
    def harness_yaml(self) -> Path:
        """The harness task template (`<name>.yaml` beside this module; `gerbil.eval.harness.task_dir`)."""
        return Path(__file__).parent / f"{self.name}.yaml"

    def digest(self, docs: Sequence[dict]) -> str:
        """sha256 of this task's fields in `docs`: one compact JSON list per item, newline-terminated —
        independent of how the JSONL is serialized."""
        h = hashlib.sha256()
        for d in docs:
            h.update(json.dumps([d[k] for k in self.fields], ensure_ascii=False, separators=(",", ":")).encode())
            h.update(b"\n")
        return h.hexdigest()
