"""`gerbil eval` of a T5Blender (issue 21 item 3) against lm-evaluation-harness 0.4.13 itself: HFLM with
``backend="seq2seq"`` on gerbil's native T5ForConditionalGeneration export (context → encoder with no mode
token, continuation → decoder labels). A tiny T5Blender trained a few steps on real prose by `gerbil.train`;
on the first N items of hellaswag, lambada and winogrande every request's log-likelihood must match
within 1e-4 and every is_greedy flag and accuracy must be identical."""
from __future__ import annotations

import math

import pytest

lm_eval = pytest.importorskip("lm_eval")

from helpers import prose_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N = 12
TOL = 1e-4
TASKS = ("hellaswag", "lambada_openai", "winogrande")
T5 = dict(arch="t5", d_model=32, n_layer=2, n_decoder_layer=2, n_head=4, d_kv=8, d_ff=48, rotary_dim=0, rel_buckets=8,
          rel_max_distance=20, seq_len=256, layer_norm_eps=1e-6, init_std=1.0, name="tiny-t5")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer):
    from gerbil.export import export
    from gerbil.train import TrainConfig, train

    root = tmp_path_factory.mktemp("t5eval")
    store = prose_store(root, tokenizer)
    steps = 8
    r = train(TrainConfig(model=dict(T5), arch="t5", data=str(store), objective="blender", seq_len=64, batch_tokens=256,
                          micro_batch=4, tokens=256 * steps, lr=1e-2, warmup_tokens=256, weight_decay=0.0,
                          runs=str(root / "runs"), name="T5Blender-tiny", val_tokens=256, progress=False,
                          checkpoint_every=256 * steps, eval_every=256 * steps))
    export(r.run_dir, r.run_dir / "export", tokenizer=tokenizer)
    return r.run_dir


@pytest.fixture(scope="module")
def native(run):
    from gerbil.eval.evaluate import evaluate

    return evaluate(run / "export", TASKS, limit=N, device="cpu", write=False, progress=False, bootstrap_iters=100)


def test_native_checkpoint_and_export_agree(run, native):
    from gerbil.eval.evaluate import evaluate

    ck = evaluate(run, ["winogrande"], limit=N, device="cpu", write=False, progress=False, bootstrap_iters=100)
    rec = ck["winogrande"]
    assert rec["model"]["backend"] == "seq2seq" and rec["model"]["prefix"] == []  # no mode token
    a = [ll for it in rec["items"] for ll in it["lls"]]
    b = [ll for it in native["winogrande"]["items"] for ll in it["lls"]]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_native_matches_harness_seq2seq_on_export(run, native):
    from gerbil.eval.harness import task_manager
    from gerbil.eval.tasks import get_task

    names = {t: get_task(t).harness_name for t in TASKS}
    tm = task_manager(TASKS)
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={run / 'export'},backend=seq2seq,dtype=float32", device="cpu",
        batch_size=8, tasks=list(names.values()), task_manager=tm, limit=N, log_samples=True,
        bootstrap_iters=100)
    worst = {}
    for t, h in names.items():
        rec = native[t]
        samples = {s["doc_id"]: [(float(r[0][0]), bool(r[0][1])) for r in s["resps"]] for s in out["samples"][h]}
        mine = ([[(it["ll"], it["greedy"])] for it in rec["items"]] if t == "lambada_openai"
                else [list(zip(it["lls"], it["greedy"])) for it in rec["items"]])
        assert sorted(samples) == list(range(N))
        worst[t] = max(abs(a - b) for i in range(N) for (a, _), (b, _) in zip(samples[i], mine[i]))
        assert worst[t] <= TOL, (t, worst[t])
        assert all(ga == gb for i in range(N) for (_, ga), (_, gb) in zip(samples[i], mine[i])), t
        for metric in get_task(t).metrics:
            if metric.startswith("acc"):
                assert math.isclose(rec["metrics"][metric], out["results"][h][f"{metric},none"], abs_tol=1e-12)
            else:
                assert math.isclose(rec["metrics"][metric], out["results"][h][f"{metric},none"], rel_tol=1e-4)
    print("max |Δ loglikelihood| gerbil vs harness HFLM seq2seq:", worst)
    from gerbil.eval.harness import GerbilLM  # the in-process adapter scores a T5Blender the same way

    mine = lm_eval.simple_evaluate(model=GerbilLM(pretrained=str(run)), tasks=[names["winogrande"]],
                                   task_manager=tm, limit=N, log_samples=True, bootstrap_iters=100)
    a = {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in mine["samples"][names["winogrande"]]}
    b = {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in out["samples"][names["winogrande"]]}
    assert max(abs(x - y) for i in b for x, y in zip(a[i], b[i])) <= TOL
