"""arc_challenge (ARC-Challenge test, 1,172 items), as lm-evaluation-harness's `arc_challenge` task:
arc_easy's prompt and metrics on the Challenge set (`tasks/arc_easy.py`). docs/reference.md §5."""
from __future__ import annotations

from gerbil.eval.tasks.arc_easy import FIELDS, build_item, score
from gerbil.eval.tasks.base import Task

TASK = Task(
    name="arc_challenge",
    fields=FIELDS,
    content_sha256="24769cf5136d19acd64843e72029e1932d5bc5e8c68a37043b92450591559efd",
    build_item=build_item,
    score=score,
    metrics=("acc", "acc_norm"),
    chance=0.25,  # accuracy at random guessing: four choices (a few items have 3 or 5)
)
