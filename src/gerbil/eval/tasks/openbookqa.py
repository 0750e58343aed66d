"""openbookqa (main test, 500 items), as lm-evaluation-harness's `openbookqa` task.

context = question_stem (no template); one continuation " " + text per choice; gold =
choices.label.index(answerKey.lstrip()); `acc` and `acc_norm`. The test items come from OLMo's processed
docs (docs/assets.md). docs/reference.md §5.
"""
from __future__ import annotations

from gerbil.eval.metrics import multiple_choice
from gerbil.eval.tasks.base import Item, Task, choice_item


def build_item(doc: dict) -> Item:
    choices = doc["choices"]
    return choice_item(doc["question_stem"], list(choices["text"]),
                       list(choices["label"]).index(doc["answerKey"].lstrip()))


TASK = Task(
    name="openbookqa",
    fields=("id", "question_stem", "choices", "answerKey"),
    content_sha256="2d88c751b4b55673b491a75c7d42bb28fa51fd91cafbc20702c2a9089bb191be",
    build_item=build_item,
    score=lambda items, scores, iters: multiple_choice(items, scores, norm=True),
    metrics=("acc", "acc_norm"),
    chance=0.25,  # accuracy at random guessing: four choices
)
