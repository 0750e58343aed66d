"""gerbil's evaluator against lm-evaluation-harness itself (not a re-implementation).

The harness (`lm_eval.simple_evaluate`, model "hf" = `HFLM`, transformers' `GPTJForCausalLM`) runs in
process on gerbil's export of a tiny trained model, offline, on gerbil's local task YAMLs (the harness's
own task definitions pointed at the cached JSONL). On the first 100 items of each seed task (the first
30 of each other task), every request's log-likelihood must match gerbil's native evaluator within 1e-4
and every is_greedy flag, prediction and accuracy must be identical; the standard errors must match too
(perplexity's bootstrap draw for draw). No item differs on this model; if one ever does, the assertion
message names it. The task losses (bpb, nats per token) are recomputed from the harness's own
log-likelihoods and request strings, so their definition is checked against the harness's requests.

The in-process adapter (`GerbilLM` via `simple_evaluate(model=...)`) must give the same numbers, and
its rolling log-likelihood and greedy generation must equal `HFLM`'s.
"""
from __future__ import annotations

import math

import pytest

lm_eval = pytest.importorskip("lm_eval")

from helpers import stdlib_prose, trained_run  # noqa: E402

N = 100
N_MORE = 30  # items of each task beyond the seed's three (boolq's and sciq's contexts are long)
TOL = 1e-4
BOOT = 1000  # bootstrap resamples for perplexity's stderr (the harness's default is 100,000)
TASKS = ("hellaswag", "lambada_openai", "winogrande")
MORE = ("piqa", "arc_easy", "arc_challenge", "sciq", "openbookqa", "boolq", "copa")


def harness_name(task: str) -> str:
    from gerbil.eval.tasks import get_task

    return get_task(task).harness_name


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer):
    """A trained tiny run with its export (run/export)."""
    from gerbil.export import export

    run_dir = trained_run(tmp_path_factory.mktemp("parity"), tokenizer)
    export(run_dir, run_dir / "export", tokenizer=tokenizer)
    return run_dir


@pytest.fixture(scope="module")
def tm(assets_home):
    """One harness TaskManager for the module (indexing the harness's task folder takes ~15 s)."""
    from gerbil.eval.harness import task_manager

    return task_manager(TASKS + MORE)


@pytest.fixture(scope="module")
def native(run):
    from gerbil.eval.evaluate import evaluate

    return evaluate(run / "export", TASKS, limit=N, device="cpu", write=False, progress=False,
                    bootstrap_iters=BOOT)


def _harness_lls(samples: list[dict]) -> dict[int, list[tuple[float, bool]]]:
    """doc_id → [(loglikelihood, is_greedy) per request] from the harness's logged samples."""
    out = {}
    for s in samples:
        out[s["doc_id"]] = [(float(r[0][0]), bool(r[0][1])) for r in s["resps"]]
    return out


def _native_lls(rec: dict, task: str) -> list[list[tuple[float, bool]]]:
    if task == "lambada_openai":
        return [[(it["ll"], it["greedy"])] for it in rec["items"]]
    return [list(zip(it["lls"], it["greedy"])) for it in rec["items"]]


def _harness_bpb(task: str, h_samples: list[dict], rec: dict) -> float:
    """Mean bits per byte of the gold continuations from the harness's own log-likelihoods and request
    strings (the continuation as the harness passes it, leading space included; no context in these
    tasks ends in whitespace, so nothing moves into it)."""
    vals = []
    for s in sorted(h_samples, key=lambda s: s["doc_id"]):
        gold = 0 if task == "lambada_openai" else rec["items"][s["doc_id"]]["gold"]
        ctx, cont = s["arguments"][gold]
        assert ctx == ctx.rstrip()
        vals.append(-float(s["resps"][gold][0][0]) / math.log(2) / len(cont.encode("utf-8")))
    return sum(vals) / len(vals)


def _compare(task: str, h_results: dict, h_samples: list[dict], rec: dict, who: str) -> float:
    from gerbil.eval.tasks import get_task

    n = rec["n_items"]
    hl = _harness_lls(h_samples)
    nl = _native_lls(rec, task)
    assert sorted(hl) == list(range(n)), f"{who}: harness scored {len(hl)} {task} items"
    worst, bad = 0.0, []
    for i in range(n):
        assert len(hl[i]) == len(nl[i]), f"{task} item {i}: {len(hl[i])} vs {len(nl[i])} requests"
        for j, ((a, ga), (b, gb)) in enumerate(zip(hl[i], nl[i])):
            d = abs(a - b)
            worst = max(worst, d)
            if d > TOL or ga != gb:
                bad.append(f"item {i} request {j}: harness ({a:.6f}, {ga}) vs gerbil ({b:.6f}, {gb})")
    assert not bad, f"{who} {task}: {len(bad)} requests differ: " + "; ".join(bad[:5])
    h = h_results[harness_name(task)]
    harness_metrics = get_task(task).metrics  # the task losses are gerbil's own (checked below)
    assert sorted(k for k in h if k.endswith(",none") and "stderr" not in k) == sorted(
        f"{m},none" for m in harness_metrics), (task, sorted(h))
    for metric in harness_metrics:
        for key, value in ((f"{metric},none", rec["metrics"][metric]),
                           (f"{metric}_stderr,none", rec["metrics"][f"{metric}_stderr"])):
            hv = h[key]
            if metric.startswith("acc"):  # accuracies and their stderrs: identical predictions → equal
                assert math.isclose(value, hv, rel_tol=1e-9, abs_tol=1e-12), (task, key, value, hv)
            else:  # perplexity and its bootstrap stderr: functions of the lls (≤ 1e-4 apart)
                assert math.isclose(value, hv, rel_tol=1e-4), (task, key, value, hv)
    assert math.isclose(rec["metrics"]["bpb"], _harness_bpb(task, h_samples, rec), rel_tol=1e-5), task
    return worst


@pytest.mark.slow
def test_native_matches_harness_hf_on_export(run, native, tm):
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={run / 'export'},dtype=float32", device="cpu", batch_size=16,
        tasks=[harness_name(t) for t in TASKS], task_manager=tm, limit=N, log_samples=True,
        bootstrap_iters=BOOT)
    worst = {t: _compare(t, out["results"], out["samples"][harness_name(t)], native[t], "hf") for t in TASKS}
    print("max |Δ loglikelihood| gerbil vs harness HFLM:", worst)
    # the model is trained (its loss fell well below a random init's ln(50264) = 10.8)
    from gerbil.runs.rundir import RunDir

    assert RunDir(run).latest_meta()["train_loss"] < 9.0


@pytest.fixture(scope="module")
def more_tasks(run, tm):
    """The other tasks, native and harness (HFLM on the export), on their first N_MORE items."""
    from gerbil.eval.evaluate import evaluate

    native = evaluate(run / "export", MORE, limit=N_MORE, device="cpu", write=False, progress=False,
                      bootstrap_iters=BOOT)
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={run / 'export'},dtype=float32", device="cpu", batch_size=16,
        tasks=[harness_name(t) for t in MORE], task_manager=tm, limit=N_MORE,
        log_samples=True, bootstrap_iters=BOOT)
    return native, out


@pytest.mark.slow
@pytest.mark.parametrize("task", MORE)
def test_task_matches_harness_hf_on_export(more_tasks, task):
    """Each task beyond the seed's: requests, log-likelihoods (≤ 1e-4), is_greedy, predictions and
    accuracies (acc, and acc_norm where the harness reports it) as the harness's own task scores them."""
    from gerbil.eval.evaluate import load_docs
    from gerbil.eval.tasks import get_task

    native, out = more_tasks
    samples = sorted(out["samples"][harness_name(task)], key=lambda s: s["doc_id"])
    docs = load_docs(task)[0][:N_MORE]
    for s, doc in zip(samples, docs):  # gerbil's requests are the harness's strings, item for item
        item = get_task(task).build_item(doc)
        assert [tuple(a) for a in s["arguments"]] == item.requests, (task, s["doc_id"])
    worst = _compare(task, out["results"], samples, native[task], "hf")
    print(f"{task}: max |Δ loglikelihood| gerbil vs harness HFLM {worst:.2e}")


@pytest.mark.slow
def test_in_process_adapter_matches(run, native, tm):
    from gerbil.eval.harness import GerbilLM
    from gerbil.export import load_model

    model, _ = load_model(run)
    lm = GerbilLM(model=model, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=[harness_name(t) for t in TASKS], task_manager=tm,
                                  limit=N, log_samples=True, bootstrap_iters=BOOT)
    for t in TASKS:
        _compare(t, out["results"], out["samples"][harness_name(t)], native[t], "GerbilLM")


def test_registered_with_harness():
    import gerbil.eval.harness  # noqa: F401
    from lm_eval.api.registry import get_model

    assert get_model("gerbil").__name__ == "GerbilLM"
    assert get_model("hf").__name__ == "HFLM"  # registering gerbil must not hide the built-in models


def test_rolling_loglikelihood_matches_hflm(run):
    """`GerbilLM.loglikelihood_rolling` (perplexity tasks) = HFLM's on texts longer than the context."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from gerbil.eval.harness import GerbilLM
    from gerbil.export import load_model

    text = stdlib_prose(6000)
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=0)
            for t in (text[:5000], text[5000:5400], "Short one.")]
    hf = HFLM(pretrained=str(run / "export"), device="cpu", dtype="float32", batch_size=4)
    want = hf.loglikelihood_rolling(reqs, disable_tqdm=True)
    model, _ = load_model(run)
    got = GerbilLM(model=model, device="cpu").loglikelihood_rolling(reqs, disable_tqdm=True)
    assert got == pytest.approx(want, abs=1e-3)  # sums over ~1,000 tokens: fp32 rounding ~1e-4


def test_generate_until_matches_hflm(run):
    """`GerbilLM.generate_until` (greedy, stop strings, max_gen_toks) = HFLM's on the export."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from gerbil.eval.harness import GerbilLM
    from gerbil.export import load_model

    text = stdlib_prose(3000)
    cases = [(text[:400], {"until": ["\n\n"], "max_gen_toks": 24, "do_sample": False}),
             (text[400:700], {"until": [".", ","], "max_gen_toks": 16, "do_sample": False}),
             ("The", {"until": ["the"], "max_gen_toks": 12, "do_sample": False}),
             (text[700:760], {"max_gen_toks": 8, "do_sample": False})]
    reqs = [Instance(request_type="generate_until", doc={}, arguments=(c, kw), idx=i)
            for i, (c, kw) in enumerate(cases)]
    hf = HFLM(pretrained=str(run / "export"), device="cpu", dtype="float32", batch_size=1)
    want = hf.generate_until(reqs, disable_tqdm=True)
    model, _ = load_model(run)
    got = GerbilLM(model=model, device="cpu").generate_until(reqs, disable_tqdm=True)
    assert got == want
    assert any(w for w in want)  # something was generated, not only empty strings
