"""The evaluation tasks: one module (a `Task` record) per task, registered here, and the named groups."""
from __future__ import annotations

from collections.abc import Iterable

from gerbil.errors import GerbilError
from gerbil.eval.tasks import (arc_challenge, arc_easy, boolq, copa, hellaswag, lambada_openai, openbookqa, piqa,
                               sciq, winogrande)
from gerbil.eval.tasks.base import LOSSES, METRIC_KINDS, Column, Item, Task

#: Every task: the seed's table columns first, in their order, then the rest.
TASKS: dict[str, Task] = {t.name: t for t in (
    hellaswag.TASK, lambada_openai.TASK, winogrande.TASK, piqa.TASK, arc_easy.TASK, arc_challenge.TASK,
    sciq.TASK, openbookqa.TASK, boolq.TASK, copa.TASK)}
#: Short names accepted on the command line.
ALIASES: dict[str, str] = {a: t.name for t in TASKS.values() for a in t.aliases}
#: Named task lists (`gerbil eval --tasks seed,piqa`): `seed` = the seed's table (the default of `gerbil
#: eval`, the demo and suites), `pythia` = Pythia's published zero-shot set without WSC and LogiQA (not
#: offline), `all` = every task.
GROUPS: dict[str, tuple[str, ...]] = {
    "seed": ("hellaswag", "lambada_openai", "winogrande"),
    "pythia": ("lambada_openai", "piqa", "winogrande", "arc_easy", "arc_challenge", "sciq"),
    "all": tuple(TASKS),
}
DEFAULT_TASKS: tuple[str, ...] = GROUPS["seed"]


def get_task(name: str) -> Task:
    """The task called `name` (or one of its aliases); unknown names → one-line GerbilError."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in TASKS:
        raise GerbilError(f"unknown task {name!r} (known: {', '.join(TASKS)}; groups: {', '.join(GROUPS)})")
    return TASKS[key]


def resolve_tasks(tasks: str | Iterable[str] | None) -> list[str]:
    """Canonical task names from a comma-separated string or a list of task and group names (default:
    the `seed` group), in the order given, each once."""
    if tasks is None:
        return list(DEFAULT_TASKS)
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    out: list[str] = []
    for t in tasks:
        if not t.strip():
            continue
        group = GROUPS.get(t.strip().lower())
        for name in group if group is not None else (get_task(t).name,):
            if name not in out:
                out.append(name)
    if not out:
        raise GerbilError("no tasks given")
    return out


def table_columns() -> list[tuple[Column, Task]]:
    """The seed's eval columns, in order: (column, task)."""
    return [(c, t) for t in TASKS.values() for c in t.columns]


__all__ = ["TASKS", "ALIASES", "GROUPS", "DEFAULT_TASKS", "LOSSES", "METRIC_KINDS", "Task", "Item", "Column",
           "get_task", "resolve_tasks", "table_columns"]
