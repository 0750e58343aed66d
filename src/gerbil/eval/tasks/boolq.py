"""boolq (SuperGLUE BoolQ validation, 3,270 items), as lm-evaluation-harness's `boolq` task.

context = passage + "\\nQuestion: " + question + "?\\nAnswer:"; continuations " no" and " yes"; gold =
label (1 = yes); `acc` only. Passages are SuperGLUE's ("Title -- text"), from OLMo's docs
(docs/assets.md). docs/reference.md §5.
"""
from __future__ import annotations

from gerbil.eval.metrics import multiple_choice
from gerbil.eval.tasks.base import Item, Task, choice_item


def build_item(doc: dict) -> Item:
    return choice_item(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"],
                       int(doc["label"]))


TASK = Task(
    name="boolq",
    fields=("question", "passage", "label", "idx"),
    content_sha256="413a4328eeadb8dd3cc139632bbf7b5a3a4e54dc40132b13ee3a6630728bb6e6",
    build_item=build_item,
    score=lambda items, scores, iters: multiple_choice(items, scores),
    metrics=("acc",),
    chance=0.5,  # accuracy at random guessing: yes / no
    asset="boolq_superglue",  # the `boolq` eval set is google/boolq (no titles), for fine-tuning
)
