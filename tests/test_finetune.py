"""Fine-tuning on the training loop of `gerbil train`, on CPU with the tests' tiny model (d=32, 2 layers,
pretrained for 30 steps on stdlib docstrings with the causal objective, so prompts start with <causal>):
classify and sft improve on the untrained model's validation scores, the export runs in a batched
transformers pipeline with gerbil's predictions, a SIGKILL-ed run resumes bitwise, bad rows are counted,
errors are one line, `gerbil predict` answers for both tasks."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gerbil.errors import GerbilError
from gerbil.finetune.config import FinetuneConfig
from gerbil.finetune.finetune import finetune
from gerbil.runs.rundir import RunDir
from helpers import trained_run

pytestmark = pytest.mark.usefixtures("one_thread")

POSITIVE = ["great", "wonderful", "lovely", "excellent", "happy"]
NEGATIVE = ["awful", "terrible", "sad", "horrible", "bad"]
FILLER = "the of and to in a is that for it as with was on be by".split()
FRENCH = {"red": "rouge", "blue": "bleu", "green": "vert", "black": "noir", "white": "blanc", "cat": "chat",
          "dog": "chien", "house": "maison", "water": "eau", "bread": "pain", "sun": "soleil", "moon": "lune"}
TEMPLATES = ["translate {w}", "say {w} in French", "{w} in French", "French for {w}", "the word {w}",
             "what is {w}", "{w}?", "please translate {w}"]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer) -> Path:
    """A tiny causal-objective language model trained by `gerbil train` (30 steps)."""
    return trained_run(tmp_path_factory.mktemp("base"), tokenizer, steps=30, objective="causal")


def sentiment_rows(n: int = 240, seed: int = 0) -> list[dict]:
    """Filler words with one sentiment word somewhere: the label is which list it came from."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 30))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if positive else NEGATIVE))
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def cls_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("cls") / "sentiment.jsonl", sentiment_rows())


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    rows = [{"prompt": t.format(w=w), "completion": f} for w, f in FRENCH.items() for t in TEMPLATES]
    return write_jsonl(tmp_path_factory.mktemp("sft") / "french.jsonl", rows)


def cls_config(base: Path, train: Path, out: Path, **kw) -> dict:
    return dict(dict(base=str(base), task="classify", train=str(train), out=str(out), epochs=4, lr=1e-2,
                     max_len=64, progress=False, patience=0), **kw)


@pytest.fixture(scope="module")
def cls_run(base, cls_file, tmp_path_factory):
    return finetune(cls_config(base, cls_file, tmp_path_factory.mktemp("runs") / "cls"))


@pytest.fixture(scope="module")
def sft_run(base, sft_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sft"
    return finetune(dict(base=str(base), task="sft", train=str(sft_file), out=str(out), epochs=15, lr=2e-2,
                         val_fraction=0.2, select="exact_match", patience=0, progress=False))


@pytest.fixture()
def cli(monkeypatch):
    """gerbil.cli.main with the finetune and predict verbs (cli.py adds them with the same two calls)."""
    from gerbil import cli as cli_module
    from gerbil.finetune.command import add_finetune_parser, add_predict_parser

    real = cli_module.build_parser

    def build():
        parser = real()
        sub = parser._subparsers._group_actions[0]
        if "finetune" not in sub.choices:
            add_finetune_parser(sub)
            add_predict_parser(sub)
        return parser

    monkeypatch.setattr(cli_module, "build_parser", build)
    return cli_module.main


def metrics(run_dir: Path) -> list[dict]:
    return list(RunDir(run_dir).read_metrics())


# ------------------------------------------------------------------------------------------ classify
def test_classify_improves_on_the_untrained_model_and_keeps_the_best(cls_run):
    info = cls_run.info
    first, best = info["initial_validation"], info["best"]["metrics"]
    assert best["val_macro_f1"] > first["val_macro_f1"] + 0.3 and best["val_accuracy"] >= 0.8
    assert best["val_loss"] < first["val_loss"] and info["labels"] == ["neg", "pos"]
    rows = metrics(cls_run.run_dir)
    assert rows[0]["step"] == 0 and "val_macro_f1" in rows[0]
    assert [r["epoch"] for r in rows if "val_loss" in r and r["step"]] == [1.0, 2.0, 3.0, 4.0]
    assert rows[-1]["tokens"] == cls_run.tokens == cls_run.info["budget"]
    # the best checkpoint is the result; the run keeps it and the newest (to resume from), nothing else
    assert cls_run.checkpoint.name == info["best"]["checkpoint"]
    kept = {c.name for c in RunDir(cls_run.run_dir).list_checkpoints()}
    assert kept == {info["best"]["checkpoint"], f"step-{cls_run.steps:08d}"}
    conf = yaml.safe_load((cls_run.run_dir / "config.yaml").read_text())
    assert conf["task"] == "classify" and conf["resolved"]["prefix"] == [50260]  # <causal>: a causal base
    assert conf["data"]["labels"]["names"] == ["neg", "pos"] and conf["data"]["split"]["fraction"] == 0.1
    assert FinetuneConfig.from_dict(conf["finetune"]).lr == 1e-2


def test_grad_clip_0_is_no_clipping(base, cls_file, tmp_path):
    """`grad_clip: 0` ("no clipping") once clipped every gradient to 0: with weight decay 0 the weights
    never moved. Now the body moves away from the base model's."""
    from gerbil.export import load_model

    r = finetune(cls_config(base, cls_file, tmp_path / "ft", grad_clip=0.0, weight_decay=0.0, epochs=1))
    tuned, base_sd = load_model(r.run_dir)[0].state_dict(), load_model(base)[0].state_dict()
    moved = [k for k in tuned if k in base_sd and not torch.equal(tuned[k], base_sd[k])]
    assert "wte.weight" in moved and "h.0.mlp.fc_in.weight" in moved


def test_classifier_loss_is_weighted_cross_entropy_at_the_last_token():
    from gerbil.model.classifier import Classifier, classify_loss
    from helpers import tiny_model

    torch.manual_seed(0)
    model = Classifier.from_gpt(tiny_model(vocab_size=1024), 3, seed=1)
    x = torch.randint(0, 1000, (4, 9))
    y = torch.full((4, 9), -100)
    last, labels = torch.tensor([8, 3, 5, 0]), torch.tensor([0, 2, 1, 2])
    y[torch.arange(4), last] = labels
    w = torch.tensor([1.0, 2.0, 0.5])
    logits = model.classify(x, last)
    expect = torch.nn.functional.cross_entropy(logits, labels, weight=w)
    assert torch.allclose(classify_loss(model, model.score, x, y, w), expect, atol=1e-6)


def test_head_tail_truncation_and_the_prefix(tokenizer):
    from gerbil.finetune.batches import encode_classify

    text = " ".join(f"w{i}" for i in range(100))
    ids = tokenizer.encode(text)
    end = encode_classify([text], [0], tokenizer, [50260], 21, "end").ids[0].tolist()
    both = encode_classify([text], [0], tokenizer, [50260], 21, "head_tail").ids[0].tolist()
    assert end == [50260] + ids[-20:] and both == [50260] + ids[:5] + ids[-15:]


# ------------------------------------------------------------------------------------------ sft
def test_sft_improves_on_the_untrained_model(sft_run):
    first, best = sft_run.info["initial_validation"], sft_run.info["best"]["metrics"]
    assert first["val_exact_match"] == 0.0 and best["val_exact_match"] >= 0.25
    assert best["val_loss"] < first["val_loss"] / 3


def test_packing_computes_each_example_as_alone(base, tokenizer):
    """A packed micro-batch (block-diagonal attention, positions restarting) has the loss of the same
    examples one per row."""
    from gerbil.export import load_model
    from gerbil.finetune.batches import encode_sft, pack_rows, sft_batch, sft_packed_batch
    from gerbil.finetune.workloads import sft_loss

    model, _ = load_model(base)
    data = encode_sft([f"say {w}" for w in FRENCH], list(FRENCH.values()), tokenizer, [50260], "{prompt}\n",
                      False, 64)
    idx = list(range(len(data)))
    rows = pack_rows([len(data.ids[i]) - 1 for i in idx], 24)
    assert len(rows) < len(idx)  # really packed
    packed = sft_packed_batch(data, [[idx[j] for j in row] for row in rows])
    one_per_row = sft_batch(data, idx)
    head, V = model.lm_head, model.config.vocab_size
    with torch.no_grad():
        a, b = sft_loss(model, head, V, packed), sft_loss(model, head, V, one_per_row)
    assert (packed[1] != -100).sum() == (one_per_row[1] != -100).sum()
    assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_batched_greedy_is_generate_ids(base, tokenizer):
    from gerbil.export import load_model
    from gerbil.finetune.decode import greedy
    from gerbil.generate import generate_ids

    model, _ = load_model(base)
    prompts = [[50260] + tokenizer.encode(t) for t in ("The", "Return the value of", "a", "This module is")]
    batched = greedy(model, prompts, 7, batch_size=3)
    for p, (ids, lp) in zip(prompts, batched):
        assert ids == generate_ids(model, p, 7, temperature=0)
        assert lp < 0


# ------------------------------------------------------------------------------------------ export
def test_exported_classifier_in_a_batched_pipeline_gives_gerbils_predictions(cls_run, cls_file, tmp_path):
    from transformers import pipeline

    from gerbil.export import export, load
    from gerbil.finetune.predict import Predictor

    out = export(cls_run.run_dir, tmp_path / "export")
    conf = json.loads((out / "config.json").read_text())
    assert conf["architectures"] == ["GPTJForSequenceClassification"]
    assert conf["id2label"] == {"0": "neg", "1": "pos"} and conf["pad_token_id"] == 50256
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert (tok["padding_side"], tok["truncation_side"], tok["pad_token"]) == ("right", "left", "<|endoftext|>")
    texts = [json.loads(line)["text"] for line in cls_file.read_text().splitlines()[:9]]
    texts.append("the of and " * 40 + "wonderful")  # longer than max_len 64: both keep the end
    pipe = pipeline("text-classification", model=str(out), device="cpu")
    hf = pipe(texts, batch_size=4, truncation=True)  # padded batches of mixed lengths
    ours = Predictor.load(cls_run.run_dir)(texts)
    assert [h["label"] for h in hf] == [o["label"] for o in ours]
    np.testing.assert_allclose([h["score"] for h in hf], [o["probability"] for o in ours], rtol=1e-5, atol=1e-6)
    model, meta = load(out)  # and back into gerbil: the same classifier
    assert type(model).__name__ == "Classifier" and meta["finetune"]["label_names"] == ["neg", "pos"]
    back = Predictor.load(out)(texts)
    assert [b["label"] for b in back] == [o["label"] for o in ours]
    np.testing.assert_allclose([b["probability"] for b in back], [o["probability"] for o in ours], rtol=1e-6)


def test_sft_exports_as_a_causal_model(sft_run, tmp_path):
    from gerbil.export import export, read_info

    out = export(sft_run.run_dir, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPTJForCausalLM"]
    info = read_info(out)
    assert info["finetune"]["task"] == "sft" and info["finetune"]["template"] == "{prompt}\n"


# ------------------------------------------------------------------------------------------ resume
KILL = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import gerbil.train.loop as T
    from gerbil.finetune.finetune import finetune
    kill_at, calls = int(sys.argv[2]), [0]
    real = T.train_step
    def step(*a, **k):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like a power cut
        return real(*a, **k)
    T.train_step = step
    finetune(json.loads(sys.argv[1]))
""")


def test_sigkill_then_resume_is_bitwise_identical(base, cls_file, tmp_path):
    kw = dict(epochs=3, batch_size=32, class_weights="balanced")
    straight = finetune(cls_config(base, cls_file, tmp_path / "a", **kw))
    cfg = cls_config(base, cls_file, tmp_path / "b", **kw)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", KILL, json.dumps(cfg), "10"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_b = RunDir(tmp_path / "b")
    assert run_b.latest_checkpoint().name == "step-00000007"  # epoch 1 ends at step 7; steps 8-9 were lost
    resumed = finetune(dict(cfg, resume=True))
    loss = lambda rd: [(m["step"], m.get("loss"), m.get("val_macro_f1")) for m in metrics(rd)]  # noqa: E731
    assert loss(run_b.path) == loss(straight.run_dir) and resumed.steps == straight.steps == 21
    for a, b in ((straight.checkpoint, resumed.checkpoint),
                 (RunDir(straight.run_dir).latest_checkpoint(), run_b.latest_checkpoint())):
        assert a.name == b.name and (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert resumed.info["best"] == straight.info["best"]


def test_resume_auto_starts_a_run_that_has_no_checkpoint_yet(base, cls_file, tmp_path):
    """`--resume auto` means what it means for `gerbil train`: continue the run if it has a checkpoint,
    start it otherwise, so the same command can be rerun after any interruption."""
    cfg = cls_config(base, cls_file, tmp_path / "run", epochs=1, resume=True)
    first = finetune(cfg)
    assert first.steps > 0 and RunDir(first.run_dir).latest_checkpoint() is not None
    again = finetune(cfg)  # nothing left to train: the finished run is reported again
    assert (again.steps, again.tokens) == (first.steps, first.tokens)


def test_resume_refuses_changed_options_and_data(cls_run, cls_file, tmp_path):
    base_cfg = dict(out=str(cls_run.run_dir), resume=True, progress=False)
    with pytest.raises(GerbilError, match=r"--lr 0.5 differs from the run's 0.01"):
        finetune(dict(base_cfg, lr=0.5))
    conf = yaml.safe_load((cls_run.run_dir / "config.yaml").read_text())
    moved = tmp_path / "other.jsonl"
    moved.write_text(cls_file.read_text() + json.dumps({"text": "one more", "label": "pos"}) + "\n")
    conf["finetune"]["train"] = str(moved)  # the run now names a file whose content changed
    (cls_run.run_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    try:
        with pytest.raises(GerbilError, match="train file .* is not the one this run was fine-tuned on"):
            finetune(base_cfg)
    finally:
        conf["finetune"]["train"] = str(cls_file)
        (cls_run.run_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))


# ------------------------------------------------------------------------------------------ data, CLI
def test_bad_rows_are_counted_and_skipped(base, tmp_path):
    rows = [json.dumps(r) for r in sentiment_rows(80, seed=3)]
    rows += ["{not json", json.dumps({"text": "", "label": "pos"}), json.dumps({"text": "no label"}),
             json.dumps({"text": ["a list"], "label": "neg"}), json.dumps({"text": "x", "label": True})]
    train = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = finetune(cls_config(base, train, tmp_path / "run", epochs=1))
    record = yaml.safe_load((r.run_dir / "config.yaml").read_text())["data"]["train"]
    assert record["bad_total"] == 5 and record["usable_rows"] == 80
    assert {k: v for k, v in record["bad_rows"].items() if v} == {"invalid_json": 1, "empty": 1,
                                                                  "missing_field": 1, "non_string": 1,
                                                                  "bad_label": 1}
    assert sum(r.info["examples"].values()) == 80 and r.info["examples"]["val"] >= 8


@pytest.mark.parametrize("argv, message", [
    (["--task", "classify", "--train", "T.jsonl", "--out", "o"], "fine-tuning needs RUN_OR_EXPORT"),
    (["BASE", "--task", "classify", "--train", "T.jsonl", "--out", "o", "--epochs", "0"], "epochs: must be > 0"),
    (["BASE", "--task", "classify", "--train", "T.jsonl", "--out", "o", "--lr", "fast"], "lr: expected a number"),
    (["BASE", "--task", "classify", "--train", "T.jsonl", "--out", "o", "--class-weights", "1,x"], "--class-weights:"),
    (["BASE", "--task", "sft", "--train", "T.jsonl", "--out", "o", "--select", "macro_f1"], "select: 'macro_f1' is not"),
    (["BASE", "--task", "classify", "--train", "T.jsonl", "--out", "o", "--template", "no placeholder"], "template:"),
    (["nowhere", "--task", "classify", "--train", "T.jsonl", "--out", "o"], "no such run, checkpoint or export"),
    (["BASE", "--task", "classify", "--train", "missing.jsonl", "--out", "o"], "missing.jsonl: no such file"),
    (["BASE", "--task", "classify", "--train", "T.jsonl", "--out", "o", "--class-weights", "1,2,3"], "3 weights for 2"),
    (["BASE", "--task", "classify", "--train", "T.jsonl", "--out", "o", "--max-len", "4096"], "exceeds the base model"),
])
def test_cli_errors_are_one_line(cli, base, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "T.jsonl", sentiment_rows(20))
    assert cli(["finetune", *[str(base) if a == "BASE" else a for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gerbil finetune: error: ") and message in err, err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_every_option_is_a_flag_and_cli_yaml_python_agree(cli, tmp_path):
    import dataclasses

    from gerbil import cli as cli_module
    from gerbil.options import config_from_args

    parser = cli_module.build_parser()
    ft = parser._subparsers._group_actions[0].choices["finetune"]
    dests = {a.dest for a in ft._actions}
    assert {f.name for f in dataclasses.fields(FinetuneConfig)} <= dests
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: classify\ntrain: t.jsonl\nepochs: 2\nlabel_names: [ham, spam]\nlr: 0.003\n"
                      "truncate: head_tail\nclass_weights: balanced\n")
    flags = ["finetune", "RUN", "--task", "classify", "--train", "t.jsonl", "--epochs", "2", "--label-names",
             "ham,spam", "--lr", "0.003", "--truncate", "head_tail", "--class-weights", "balanced"]
    from_flags = config_from_args(parser.parse_args(flags), FinetuneConfig)
    from_yaml = FinetuneConfig.from_yaml(recipe, {"base": "RUN"})
    in_python = FinetuneConfig(base="RUN", task="classify", train="t.jsonl", epochs=2, label_names=["ham", "spam"],
                               lr=0.003, truncate="head_tail", class_weights="balanced")
    assert from_flags == from_yaml == in_python
    with pytest.raises(ValueError, match=re.escape("unknown fine-tuning option 'colour'")):
        FinetuneConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="label_names: expected a list of strings"):
        FinetuneConfig(label_names=[1, 2])


def test_predict_both_tasks(cli, cls_run, sft_run, cls_file, tmp_path, capsys):
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"text": "the great of and"}, {"text": "to awful be by"},
                                                 "{broken", {"text": "a lovely it"}])
    out = tmp_path / "pred.csv"
    assert cli(["predict", str(cls_run.run_dir), "--input", str(inputs), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "row,label,probability,p_neg,p_pos" and len(lines) == 4  # the broken row is skipped
    assert [ln.split(",")[0] for ln in lines[1:]] == ["1", "2", "4"]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "translate cat"}, {"prompt": "sun in French"}])
    capsys.readouterr()
    assert cli(["predict", str(sft_run.run_dir), "--input", str(prompts)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(r) for r in rows] == [{"row", "completion", "logprob"}] * 2
    assert all(r["logprob"] <= 0 for r in rows)
    assert cli(["predict", str(sft_run.run_dir), "--input", str(prompts), "--output", str(tmp_path / "x.txt")]) == 2
    assert "unknown output format" in capsys.readouterr().err
