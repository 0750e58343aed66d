"""Native evaluator: request building and encoding against the harness's own code, the batched scorer
against a plain per-request forward, metrics, Blender prefix, outputs and bad input (CPU, seconds)."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from gerbil.data.objectives import CAUSAL
from gerbil.errors import GerbilError
from gerbil.eval import evaluate as E
from gerbil.eval.encoding import RequestEncoder
from gerbil.eval.metrics import perplexity_stderr
from gerbil.eval.scoring import Scorer
from gerbil.eval.tasks import TASKS, Item, get_task, resolve_tasks
from gerbil.runs.rundir import RunDir


@pytest.fixture(scope="module")
def docs(assets_home):
    return {t: E.load_docs(t)[0] for t in TASKS}


@pytest.fixture(scope="module")
def tiny_model():
    from helpers import tiny_model

    return tiny_model()


# ------------------------------------------------------------------------------- requests = harness's
def test_hellaswag_and_winogrande_requests_match_harness_task_code(docs):
    """Contexts/continuations built by gerbil equal those from the harness's own task functions."""
    pytest.importorskip("lm_eval")
    import datasets
    from lm_eval.tasks.hellaswag import utils as hs
    from lm_eval.tasks.winogrande import preprocess_winogrande as wg

    raw = docs["hellaswag"][:300]
    processed = hs.process_docs(datasets.Dataset.from_list(raw))
    for d, p in zip(raw, processed):
        it = get_task('hellaswag').build_item(d)
        assert it.requests == [(p["query"], " " + c) for c in p["choices"]]
        assert it.gold == p["gold"] and it.choices == p["choices"]
    for d in docs["winogrande"][:300]:
        it = get_task('winogrande').build_item(d)
        cont = wg.doc_to_target(d)
        assert it.requests == [(c, " " + cont) for c in wg.doc_to_choice(d)]
        assert it.gold == wg.doc_to_text(d)


def test_lambada_requests_match_harness_template(docs):
    pytest.importorskip("lm_eval")
    from lm_eval.utils import apply_template

    for d in docs["lambada_openai"][:300]:
        it = get_task('lambada').build_item(d)
        assert it.requests == [(apply_template("{{text.split(' ')[:-1]|join(' ')}}", d),
                                apply_template("{{' '+text.split(' ')[-1]}}", d))]


def test_encoding_matches_templatelm(tokenizer):
    """`RequestEncoder.encode_pairs` = `TemplateLM.loglikelihood`'s encoding (trailing spaces, empty context)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.model import TemplateLM

    class Probe(TemplateLM):
        eot_token_id = 50256

        def tok_encode(self, string, add_special_tokens=None, **kw):
            return tokenizer.encode(string, allow_special=True)

        def _loglikelihood_tokens(self, requests, **kw):
            return [(r[1], r[2]) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    class Req:
        def __init__(self, args):
            self.args = args

    pairs = [("Hello there", " world"), ("Trailing spaces  ", "word"), ("", " only continuation"),
             ("", "<|endoftext|>x"), ("a<causal>b", " c d"), ("Numbers 123", "456 and more"),
             ("tab\t", "after tab")]
    want = Probe().loglikelihood([Req(p) for p in pairs], disable_tqdm=True)
    enc = RequestEncoder(lambda ts: [tokenizer.encode(t, allow_special=True) for t in ts])
    assert enc.encode_pairs(pairs) == [(list(a), list(b)) for a, b in want]
    pre = RequestEncoder(enc.encode_batch, prefix=[CAUSAL]).encode_pairs(pairs[:1])
    assert pre[0][0][0] == CAUSAL and pre[0][0][1:] == want[0][0]


# -------------------------------------------------------------------------------------------- scorer
def _reference(model, ctx, cont):
    ids = torch.tensor([(ctx + cont)[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model(ids)).float(), -1)[0, len(ctx) - 1:]
    tgt = torch.tensor(cont)
    return float(logp.gather(1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all())


@pytest.mark.parametrize("share", [True, False])
def test_scorer_matches_per_request_forward(tiny_model, share):
    rng = random.Random(0)
    groups = []
    for _ in range(12):
        ctx = [rng.randrange(50257) for _ in range(rng.randrange(1, 40))]
        # shared context; some continuations share their first tokens too (trie beyond the context)
        head = [rng.randrange(50257) for _ in range(rng.randrange(0, 3))]
        conts = [head + [rng.randrange(50257) for _ in range(rng.randrange(1, 9))] for _ in range(rng.randrange(1, 5))]
        groups.append([(ctx, c) for c in conts])
    # a group whose requests differ in the context (winogrande-like) and one continuation longer
    groups.append([([5, 6, 7, 8], [9, 10]), ([5, 6, 11], [9, 10, 12])])
    got = Scorer(tiny_model, batch_tokens=300, share_prefix=share).score(groups)
    for g, s in zip(groups, got):
        for (ctx, cont), (ll, greedy) in zip(g, s):
            ref_ll, ref_greedy = _reference(tiny_model, ctx, cont)
            assert abs(ll - ref_ll) < 1e-4
            assert greedy == ref_greedy


def test_scorer_greedy_detected(tiny_model):
    """A continuation made of the model's own argmax tokens is greedy."""
    ctx = [464, 2068, 7586]
    cont = []
    with torch.no_grad():
        for _ in range(3):
            h = tiny_model(torch.tensor([ctx + cont]))
            cont.append(int(tiny_model.logits(h[0, -1]).argmax()))
    [[(ll, greedy)], [(ll2, greedy2)]] = Scorer(tiny_model).score([[(ctx, cont)], [(ctx, cont[:-1] + [0])]])
    assert greedy and not greedy2


def test_scorer_truncates_like_hflm(tiny_model):
    """Requests longer than max_length + 1 are cut from the left, as HFLM does."""
    ctx, cont = list(range(100, 400)), [7, 8]
    (ll, _), = Scorer(tiny_model, max_length=64).score([[(ctx, cont)]])[0]
    ref, _ = _reference(tiny_model, (ctx + cont)[-65:][:-2], cont)
    assert abs(ll - ref) < 1e-4


# ------------------------------------------------------------------------------------------- metrics
def test_metrics_and_stderrs_follow_the_harness():
    items = [Item([("c", " a"), ("c", " bb")], gold=1, choices=["a", "bb"]),
             Item([("c", " a"), ("c", " bb")], gold=0, choices=["a", "bb"])]
    scores = [[(-3.0, False), (-4.0, False)], [(-1.0, True), (-3.0, False)]]
    m, per = get_task("hellaswag").score(items, scores, 1000)
    # item 0: acc picks 0 (wrong), acc_norm picks 1 (-4/2 > -3/1); item 1: both pick 0
    assert m["acc"] == 0.5 and m["acc_norm"] == 1.0
    assert math.isclose(m["acc_stderr"], 0.5)  # sample sd (n-1) / sqrt(n) of [0, 1]
    assert per[0]["pred_norm"] == 1


def test_task_groups():
    from gerbil.eval.tasks import GROUPS

    assert resolve_tasks(None) == ["hellaswag", "lambada_openai", "winogrande"] == resolve_tasks("seed")
    assert resolve_tasks("pythia") == ["lambada_openai", "piqa", "winogrande", "arc_easy", "arc_challenge", "sciq"]
    assert resolve_tasks("all") == list(TASKS) and len(TASKS) == 10
    assert resolve_tasks("seed, piqa,lambada") == ["hellaswag", "lambada_openai", "winogrande", "piqa"]
    assert set(GROUPS["all"]) >= {"piqa", "arc_easy", "arc_challenge", "sciq", "openbookqa", "boolq", "copa"}
    with pytest.raises(GerbilError, match="groups: seed, pythia, all"):
        resolve_tasks("pythia,bogus")


def test_gold_losses_count_the_scored_bytes():
    """bpb = −ll / ln 2 / UTF-8 bytes of the gold continuation, leading space included, plus any trailing
    context whitespace the harness moves into it; nll_per_token = −ll / its token count; means over items."""
    from gerbil.eval.metrics import gold_losses

    items = [Item([("Q:", " no"), ("Q:", " yes")], gold=1),   # " yes": 4 bytes
             Item([("Le mot est ", "été")], gold=0),          # " " moves in: " été" = 6 bytes
             Item([("", "naïve")], gold=0)]                   # empty context: "naïve" = 6 bytes
    scores = [[(-9.0, False), (-2.0, True)], [(-3.0, False)], [(-12.0, False)]]
    m, per = gold_losses(items, scores, [1, 2, 3])
    assert [p["gold_bytes"] for p in per] == [4, 6, 6] and [p["gold_tokens"] for p in per] == [1, 2, 3]
    ln2 = math.log(2)
    assert m["bpb"] == pytest.approx((2 / 4 + 3 / 6 + 12 / 6) / ln2 / 3)
    assert m["nll_per_token"] == pytest.approx((2 / 1 + 3 / 2 + 12 / 3) / 3)
    assert m["bpb_stderr"] > 0 and m["nll_per_token_stderr"] > 0


def test_perplexity_stderr_is_the_harness_bootstrap():
    pytest.importorskip("lm_eval")
    import os

    from lm_eval.api import metrics as M

    lls = [-random.Random(i).uniform(1, 12) for i in range(57)]
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        want = M.bootstrap_stderr(M.perplexity, lls, iters=2000)
    finally:
        del os.environ["DISABLE_MULTIPROC"]
    assert math.isclose(perplexity_stderr(lls, 2000), want, rel_tol=1e-9)


# ----------------------------------------------------------------------------------- end to end
def _save_run(run_dir, model, objective="plain"):
    from gerbil.train.checkpoint import save_checkpoint

    save_checkpoint(RunDir(run_dir).checkpoints, 5, model, {"step": 5},
                    {"model": model.config.to_dict(), "tokens": 1234, "objective": objective, "size": "tiny"})
    return run_dir


def test_evaluate_run_writes_records(tmp_path, tiny_model, assets_home):
    run = _save_run(tmp_path / "run", tiny_model)
    out = tmp_path / "summary.json"
    res = E.evaluate(run, "winogrande,lambada", limit=7, device="cpu", output=out, progress=False,
                     bootstrap_iters=1000)
    rec = json.loads((run / "eval" / "winogrande.partial.json").read_text())
    assert rec["partial"] and rec["n_items"] == 7 and rec["limit"] == 7 and len(rec["items"]) == 7
    assert rec["model"]["sha256"] == E.model_sha256(tiny_model) and rec["model"]["step"] == 5
    assert rec["data"]["content_sha256"] == get_task("winogrande").content_sha256
    assert not (run / "eval" / "winogrande.json").exists()  # a --limit result never looks full
    summary = json.loads(out.read_text())["results"]
    assert set(summary) == {"winogrande", "lambada_openai"} and summary["winogrande"]["partial"] is True
    assert summary["lambada_openai"]["acc"] == res["lambada_openai"]["metrics"]["acc"]
    # the task losses, in the record and in the --output file
    lam = res["lambada_openai"]["metrics"]
    assert lam["log_perplexity"] == pytest.approx(math.log(lam["perplexity"]))
    for task, r in res.items():
        for k in get_task(task).metric_keys:
            assert summary[task][k] == r["metrics"][k] and f"{k}_stderr" in r["metrics"], (task, k)
        assert r["metrics"]["bpb"] > 0 and r["metrics"]["nll_per_token"] > 0
    it = rec["items"][0]
    ll = it["lls"][it["gold"]]
    assert rec["metrics"]["bpb"] == pytest.approx(
        sum(-x["lls"][x["gold"]] / math.log(2) / x["gold_bytes"] for x in rec["items"]) / 7)
    assert ll < 0 and it["gold_tokens"] >= 1 and rec["split"] == rec["harness_split"] and rec["note"] is None


def test_offline_split_is_said_in_results(tmp_path, tiny_model, assets_home, capsys):
    """A task scored on another split than the harness's (sciq) says so in its record, in the --output
    file and on the command line."""
    from gerbil.cli import main

    run = _save_run(tmp_path / "run", tiny_model)
    out = tmp_path / "out.json"
    assert main(["eval", str(run), "--tasks", "sciq,copa", "--limit", "3", "--device", "cpu",
                 "--output", str(out)]) == 0
    rec = json.loads((run / "eval" / "sciq.partial.json").read_text())
    assert (rec["split"], rec["harness_split"]) == ("validation", "test") and "validation" in rec["note"]
    summary = json.loads(out.read_text())["results"]
    assert summary["sciq"]["note"] == rec["note"] and "note" not in summary["copa"]
    printed = capsys.readouterr().out
    assert "note: sciq is scored on its validation split" in printed and "copa" in printed and "bpb" in printed


def test_blender_models_get_the_causal_prefix(tmp_path, tiny_model, assets_home):
    run = _save_run(tmp_path / "blend", tiny_model, objective="blender")
    em = E.load_for_eval(run)
    assert em.encoder.prefix == [CAUSAL]
    (ctx, _), = em.encoder.encode_pairs([("Hello", " world")])
    assert ctx[0] == CAUSAL
    assert E.load_for_eval(_save_run(tmp_path / "plain", tiny_model)).encoder.prefix == []


def test_export_eval_matches_run_eval(tmp_path, tiny_model, tokenizer, assets_home):
    from gerbil.export import export

    run = _save_run(tmp_path / "run", tiny_model)
    exp = export(run, tmp_path / "exp", tokenizer=tokenizer)
    a = E.evaluate(run, "winogrande", limit=5, write=False, progress=False, device="cpu")
    b = E.evaluate(exp, "winogrande", limit=5, write=False, progress=False, device="cpu")
    for x, y in zip(a["winogrande"]["items"], b["winogrande"]["items"]):
        assert x["lls"] == pytest.approx(y["lls"], abs=1e-5)


# --------------------------------------------------------------------------------------- bad input
def test_bad_input_one_line_errors(tmp_path, tiny_model, assets_home):
    with pytest.raises(GerbilError, match="unknown task"):
        resolve_tasks("hellaswag,nope")
    with pytest.raises(GerbilError, match="no such run"):
        E.load_for_eval(tmp_path / "missing")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(GerbilError, match="no complete checkpoint"):
        E.load_for_eval(tmp_path / "empty")
    from gerbil.export import export

    exp = export(tiny_model, tmp_path / "exp", tokenizer=False)
    with pytest.raises(GerbilError, match="no tokenizer"):
        E.load_for_eval(exp)
    src = E.load_docs("winogrande")[1]
    lines = src.read_text().splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(GerbilError, match="items"):
        E.load_docs("winogrande", short)
    changed = tmp_path / "changed.jsonl"
    d = json.loads(lines[0])
    d["option1"] = "Someone"
    changed.write_text("\n".join([json.dumps(d)] + lines[1:]) + "\n")
    with pytest.raises(GerbilError, match="sha256"):
        E.load_docs("winogrande", changed)


def test_cli_eval_errors_are_one_line(tmp_path, capsys):
    from gerbil.cli import main

    assert main(["eval", str(tmp_path / "nothing"), "--tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such run" in err
    assert main(["eval", str(tmp_path), "--tasks", "bogus"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_gerbil_lm_adapter_blender_prefix(tiny_model, tokenizer):
    """The in-process harness adapter puts `<causal>` before a Blender model's contexts, like the
    native evaluator, and scores exactly what the native scorer scores."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from gerbil.eval.harness import GerbilLM

    pairs = [("The cat sat on the", " mat"), ("The cat sat on the", " hat"), ("Hello  ", "world")]
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=0) for p in pairs]
    for objective, prefix in (("blender", [CAUSAL]), ("plain", [])):
        got = GerbilLM(model=tiny_model, tokenizer=tokenizer, objective=objective,
                       device="cpu").loglikelihood(reqs, disable_tqdm=True)
        enc = RequestEncoder(lambda ts: tokenizer.encode_batch(ts, allow_special=True), prefix=prefix)
        want = Scorer(tiny_model, share_prefix=False).score([[e] for e in enc.encode_pairs(pairs)])
        assert [g[0] for g in got] == pytest.approx([w[0][0] for w in want], abs=1e-5)
        assert all(e[0][0] == CAUSAL for e in enc.encode_pairs(pairs)) == bool(prefix)
