"""copa (SuperGLUE COPA validation, 100 items), as lm-evaluation-harness's `copa` task
(`lm_eval/tasks/super_glue/copa/utils.py`).

context = premise without its final character (the period) + " because" (question "cause") or
" therefore" ("effect"); choices = " " + each alternative with its first letter lower-cased, and the
harness puts its target delimiter " " before each, so a continuation starts with two spaces; gold =
label; `acc` only; the task loss counts both spaces' bytes. docs/reference.md §5.
"""
from __future__ import annotations

from gerbil.eval.metrics import multiple_choice
from gerbil.eval.tasks.base import Item, Task, choice_item

CONNECTORS = {"cause": "because", "effect": "therefore"}


def _lower_first(choice: str) -> str:
    return choice[0].lower() + choice[1:]


def build_item(doc: dict) -> Item:
    context = doc["premise"].strip()[:-1] + f" {CONNECTORS[doc['question']]}"
    choices = [" " + _lower_first(doc["choice1"]), " " + _lower_first(doc["choice2"])]
    target = " " + _lower_first(doc["choice1"] if doc["label"] == 0 else doc["choice2"])
    return choice_item(context, choices, choices.index(target))  # the harness: choices.index(target)


TASK = Task(
    name="copa",
    fields=("premise", "choice1", "choice2", "question", "label"),
    content_sha256="b751e2b2bebee388958b10c167d34f8daa542919cfdc85354670cb7d29553ad2",
    build_item=build_item,
    score=lambda items, scores, iters: multiple_choice(items, scores),
    metrics=("acc",),
    chance=0.5,  # accuracy at random guessing: two alternatives
)
