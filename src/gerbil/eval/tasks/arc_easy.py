"""arc_easy (ARC-Easy test, 2,376 items), as lm-evaluation-harness's `arc_easy` task.

context = "Question: " + question + "\\nAnswer:"; one continuation " " + text per choice (3–5 choices);
gold = choices.label.index(answerKey); `acc` and `acc_norm` (log-likelihood / characters of the choice).
The test items come from OLMo's processed docs (docs/assets.md). docs/reference.md §5.
"""
from __future__ import annotations

from gerbil.eval.metrics import multiple_choice
from gerbil.eval.tasks.base import Item, Task, choice_item

FIELDS = ("id", "question", "choices", "answerKey")


def build_item(doc: dict) -> Item:
    choices = doc["choices"]
    return choice_item(f"Question: {doc['question']}\nAnswer:", list(choices["text"]),
                       list(choices["label"]).index(doc["answerKey"]))


def score(items, scores, iters):
    return multiple_choice(items, scores, norm=True)


TASK = Task(
    name="arc_easy",
    fields=FIELDS,
    content_sha256="6ab67a8c459dcc830416c8a6e68234cf3c17a80e581c407b746a3a0063c17056",
    build_item=build_item,
    score=score,
    metrics=("acc", "acc_norm"),
    chance=0.25,  # accuracy at random guessing: four choices (a few items have 3 or 5)
)
