"""hellaswag (validation, 10,042 items), as lm-evaluation-harness's `hellaswag` task.

query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()); one continuation
" " + preprocess(ending) per ending (`lm_eval/tasks/hellaswag/utils.py`); `acc` and `acc_norm`
(log-likelihood / characters of the ending). docs/reference.md §5.
"""
from __future__ import annotations

import re

from gerbil.eval.metrics import multiple_choice
from gerbil.eval.tasks.base import Column, Item, Task


def preprocess(text: str) -> str:
    """The harness's hellaswag `preprocess`: strip, " [title]" → ". ", drop "[...]", "  " → " "."""
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def build_item(doc: dict) -> Item:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = preprocess(doc["activity_label"] + ": " + ctx)
    choices = [preprocess(e) for e in doc["endings"]]
    return Item([(query, " " + c) for c in choices], int(doc["label"]), choices)


TASK = Task(
    name="hellaswag",
    fields=("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    content_sha256="404b1702f388b52faedcb365c1bc7941598ab67ced3fb95633c7ab7e4aed269d",
    build_item=build_item,
    score=lambda items, scores, iters: multiple_choice(items, scores, norm=True),
    metrics=("acc", "acc_norm"),
    chance=0.25,  # accuracy at random guessing: four endings
    columns=(Column("hellaswag acc ↑", "acc", "pct"),),
)
