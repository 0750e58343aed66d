"""The evaluation tasks: one module (a `Task` record) per task, registered here in the seed's table order."""
from __future__ import annotations

from collections.abc import Iterable

from gerbil.errors import GerbilError
from gerbil.eval.tasks import hellaswag, lambada_openai, winogrande
from gerbil.eval.tasks.base import Column, Item, Task

#: Every task, in the order of the seed's table columns.
TASKS: dict[str, Task] = {t.name: t for t in (hellaswag.TASK, lambada_openai.TASK, winogrande.TASK)}
#: Short names accepted on the command line.
ALIASES: dict[str, str] = {a: t.name for t in TASKS.values() for a in t.aliases}


def get_task(name: str) -> Task:
    """The task called `name` (or one of its aliases); unknown names → one-line GerbilError."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in TASKS:
        raise GerbilError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[key]


def resolve_tasks(tasks: str | Iterable[str] | None) -> list[str]:
    """Canonical task names from a comma-separated string or a list (default: all), in order given."""
    if tasks is None:
        return list(TASKS)
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    out = []
    for t in tasks:
        if t.strip() and (name := get_task(t).name) not in out:
            out.append(name)
    if not out:
        raise GerbilError("no tasks given")
    return out


def table_columns() -> list[tuple[Column, Task]]:
    """The seed's eval columns, in order: (column, task)."""
    return [(c, t) for t in TASKS.values() for c in t.columns]


__all__ = ["TASKS", "ALIASES", "Task", "Item", "Column", "get_task", "resolve_tasks", "table_columns"]
