"""piqa (validation, 1,838 items), as lm-evaluation-harness's `piqa` task.

context = "Question: " + goal + "\\nAnswer:"; one continuation " " + solution per solution (sol1, sol2);
gold = label; `acc` and `acc_norm` (log-likelihood / characters of the solution). docs/reference.md §5.
"""
from __future__ import annotations

from gerbil.eval.metrics import multiple_choice
from gerbil.eval.tasks.base import Item, Task, choice_item


def build_item(doc: dict) -> Item:
    return choice_item(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


TASK = Task(
    name="piqa",
    fields=("goal", "sol1", "sol2", "label"),
    content_sha256="c56f6c6640f986ce515baf81382c6a0e705980493d4666ddc9ba1f0ebd83784d",
    build_item=build_item,
    score=lambda items, scores, iters: multiple_choice(items, scores, norm=True),
    metrics=("acc", "acc_norm"),
    chance=0.5,  # accuracy at random guessing: two solutions
)
