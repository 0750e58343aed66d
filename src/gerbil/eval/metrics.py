"""Metrics and standard errors exactly as lm-evaluation-harness computes them (`lm_eval/api/metrics.py`)."""
from __future__ import annotations

import math
from collections.abc import Sequence

BOOTSTRAP_ITERS = 100_000  # the harness's default `bootstrap_iters`


def mean_stderr(xs: Sequence[float]) -> float:
    """The harness's `mean_stderr`: sample standard deviation (n−1) / sqrt(n)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def perplexity_stderr(lls: Sequence[float], iters: int = BOOTSTRAP_ITERS) -> float:
    """The harness's bootstrap standard error of exp(−mean(ll)), draw for draw.

    The harness draws `iters // 1000` chunks of min(1000, iters) resamples, chunk i with
    ``random.Random(i).choices(xs, k=n)`` (= floor(random() · n)); numpy's RandomState seeded with
    the array [i] is the same Mersenne Twister stream, so the resamples are identical.
    """
    import numpy as np

    xs = np.asarray(lls, dtype=np.float64)
    n = len(xs)
    if n < 2 or iters <= 0:
        return float("nan")
    chunk = min(1000, iters)
    reps = []
    for i in range(iters // chunk):
        u = np.random.RandomState([i]).random_sample(chunk * n)
        idx = np.floor(u * n).astype(np.int64).reshape(chunk, n)
        reps.append(np.exp(-xs[idx].mean(axis=1)))
    r = np.concatenate(reps)
    return float(math.sqrt(((r - r.mean()) ** 2).sum() / (len(r) - 1)))


def multiple_choice(items, scores, norm: bool = False) -> tuple[dict, list[dict]]:
    """`acc` = argmax of the summed log-likelihoods; with `norm`, also `acc_norm` = argmax of
    log-likelihood / len(choice in characters) (hellaswag). Returns (metrics with stderrs, per item)."""
    import numpy as np

    per_item, accs, norms = [], [], []
    for it, s in zip(items, scores):
        lls = np.array([x[0] for x in s])
        pred = int(np.argmax(lls))
        rec = {"lls": [float(x) for x in lls], "greedy": [bool(x[1]) for x in s], "gold": it.gold,
               "pred": pred, "acc": float(pred == it.gold)}
        accs.append(rec["acc"])
        if norm:
            lens = np.array([float(len(c)) for c in it.choices])
            pn = int(np.argmax(lls / lens))
            rec["pred_norm"], rec["acc_norm"] = pn, float(pn == it.gold)
            norms.append(rec["acc_norm"])
        per_item.append(rec)
    metrics = {"acc": sum(accs) / len(accs), "acc_stderr": mean_stderr(accs)}
    if norm:
        metrics.update(acc_norm=sum(norms) / len(norms), acc_norm_stderr=mean_stderr(norms))
    return metrics, per_item


def gold_losses(items, scores, tokens: Sequence[int]) -> tuple[dict, list[dict]]:
    """The task losses (`gerbil.eval.tasks.LOSSES`) of the gold continuations.

    Per item, with ll = the summed log-likelihood of the gold request's continuation tokens:
    ``bpb`` = −ll / ln 2 / bytes, bytes = the UTF-8 length of the continuation text those tokens encode
    (the request's continuation, its leading space included, after `move_trailing_space`) — OLMo's
    `bpb` ("v2": the leading space counts); ``nll_per_token`` = −ll / the number of those tokens
    (`tokens[i]`), in nats. Each metric is the mean over items, as OLMo averages bpb, with the
    harness's `mean_stderr`. Returns (metrics, per item {"gold_bytes", "gold_tokens"}).
    """
    from gerbil.eval.encoding import move_trailing_space

    bpb, per_token, per_item = [], [], []
    for it, s, n in zip(items, scores, tokens):
        nll = -float(s[it.gold][0])
        nbytes = len(move_trailing_space(*it.requests[it.gold])[1].encode("utf-8"))
        bpb.append(nll / math.log(2) / nbytes)
        per_token.append(nll / n)
        per_item.append({"gold_bytes": nbytes, "gold_tokens": int(n)})
    metrics = {"bpb": sum(bpb) / len(bpb), "bpb_stderr": mean_stderr(bpb),
               "nll_per_token": sum(per_token) / len(per_token), "nll_per_token_stderr": mean_stderr(per_token)}
    return metrics, per_item
