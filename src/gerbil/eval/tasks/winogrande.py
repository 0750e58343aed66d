"""winogrande (winogrande_xl validation, 1,267 items), as lm-evaluation-harness's `winogrande` task.

Partial scoring (`preprocess_winogrande.py`): one context per option, sentence[:blank] + option, and the
shared continuation " " + sentence[blank+1:].strip(); `acc` = the option whose context gives the
continuation the higher log-likelihood. docs/reference.md §5.
"""
from __future__ import annotations

from gerbil.eval.metrics import multiple_choice
from gerbil.eval.tasks.base import Column, Item, Task


def build_item(doc: dict) -> Item:
    s = doc["sentence"]
    i = s.index("_")
    cont = " " + s[i + 1:].strip()
    options = [doc["option1"], doc["option2"]]
    gold = {"1": 0, "2": 1}[str(doc["answer"])]
    return Item([(s[:i] + o, cont) for o in options], gold, [s[:i] + o for o in options])


TASK = Task(
    name="winogrande",
    fields=("sentence", "option1", "option2", "answer"),
    content_sha256="a5d688f9f07dc313f6a9dd616e787e7cec260b267d92940a4cb6d5f539e2cb50",
    build_item=build_item,
    score=lambda items, scores, iters: multiple_choice(items, scores),
    metrics=("acc",),
    chance=0.5,  # accuracy at random guessing: two options
    columns=(Column("winogrande acc ↑", "acc", "pct"),),
    aliases=("winogrande_xl",),
)
