"""`gerbil finetune --task seq2seq` on encoder-decoders (a `gerbil warmstart` of the tests' tiny Blender model,
and a tiny T5Blender checkpoint), through the loop of `gerbil train`: it improves on the untrained model,
batched greedy decoding is one-at-a-time decoding, a SIGKILL-ed run resumes bitwise, empty targets are
counted and skipped, a decoder-only base is refused in one line, `gerbil predict` answers, and the
fine-tuned export gives gerbil's logits and greedy output in AutoModelForSeq2SeqLM (trust_remote_code)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from helpers import trained_run

from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.export import export, load_model
from gerbil.finetune.decode import greedy_seq2seq
from gerbil.finetune.finetune import finetune
from gerbil.finetune.predict import predict
from gerbil.model.warmstart import WarmStartEncDec
from gerbil.runs.rundir import RunDir
from gerbil.warmstart_command import warmstart

pytestmark = pytest.mark.usefixtures("one_thread")

FRENCH = {"red": "rouge", "blue": "bleu", "green": "vert", "black": "noir", "white": "blanc", "cat": "chat",
          "dog": "chien", "house": "maison", "water": "eau", "bread": "pain", "sun": "soleil", "moon": "lune"}
TEMPLATES = ["translate {w}", "say {w} in French", "{w} in French", "French for {w}", "the word {w}",
             "what is {w}", "{w}?", "please translate {w}"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer) -> Path:
    return trained_run(tmp_path_factory.mktemp("base"), tokenizer, steps=10, objective="blender")


@pytest.fixture(scope="module")
def ws(base, tmp_path_factory) -> Path:
    return warmstart(dict(base=str(base), out=str(tmp_path_factory.mktemp("ws") / "run"))).path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    rows = [{"source": t.format(w=w), "target": f} for w, f in FRENCH.items() for t in TEMPLATES]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "french.jsonl", rows)


def config(base: Path, train: Path, out: Path, **kw) -> dict:
    return dict(dict(base=str(base), task="seq2seq", train=str(train), out=str(out), epochs=3, lr=1e-2,
                     max_len=24, prompt_field="source", completion_field="target", val_fraction=0.2,
                     exact_match_examples=8, patience=0, progress=False), **kw)


@pytest.fixture(scope="module")
def ft_run(ws, pairs, tmp_path_factory):
    return finetune(config(ws, pairs, tmp_path_factory.mktemp("runs") / "ft", epochs=8, lr=2e-2))


def test_seq2seq_improves_on_the_untrained_model(ft_run):
    info = ft_run.info
    assert info["task"] == "seq2seq" and ft_run.steps == 8 * 5  # 77 training pairs, batch 16
    assert info["best"]["metrics"]["val_loss"] < info["initial_validation"]["val_loss"] - 1.0
    meta = RunDir(ft_run.run_dir).read_config()
    assert meta["model"]["arch"] == "gptj-warmstart" and meta["resolved"]["prompt_format"] == "plain"
    model, m = load_model(ft_run.run_dir)  # its best checkpoint, an encoder-decoder with its record
    assert isinstance(model, WarmStartEncDec) and m["finetune"]["task"] == "seq2seq"
    assert m["finetune"]["decoder_start_id"] == model.config.decoder_start_id
    assert model.cross[0].out_proj.weight.abs().sum() > 0  # the cross-attention learned


def test_batched_greedy_is_one_at_a_time(ft_run, tokenizer):
    model, _ = load_model(ft_run.run_dir)
    sources = [tokenizer.encode(t.format(w=w) + "\n") for w, t in zip(FRENCH, TEMPLATES * 2)]
    start = model.config.decoder_start_id
    batched = greedy_seq2seq(model, sources, 6, start, batch_size=5)
    alone = [greedy_seq2seq(model, [s], 6, start)[0] for s in sources]
    assert [b[0] for b in batched] == [a[0] for a in alone]
    assert all(abs(b[1] - a[1]) < 1e-5 and b[1] <= 0 for b, a in zip(batched, alone))


def test_predict_and_the_export_in_transformers(ft_run, pairs, tmp_path, tokenizer):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    rows = predict(ft_run.run_dir, pairs, tmp_path / "out.jsonl", field="source")
    assert len(rows) == 96 and {"row", "completion", "logprob"} <= set(rows[0])
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 96
    out = export(ft_run.run_dir, tmp_path / "export")
    hf = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(out)
    model, meta = load_model(ft_run.run_dir)
    assert json.loads((out / "config.json").read_text())["gerbil"]["finetune"]["task"] == "seq2seq"
    texts = ["translate cat\n", "what is water\n", "moon?\n"]
    enc = tok(texts, return_tensors="pt", padding=True)
    assert enc.input_ids[0].tolist()[: len(tokenizer.encode(texts[0]))] == tokenizer.encode(texts[0])
    start = model.config.decoder_start_id
    dec = torch.tensor([[start] + tokenizer.encode(" chat")] * 3)
    with torch.no_grad():
        ours = model.logits(model(enc.input_ids, dec, encoder_mask=enc.attention_mask))
        theirs = hf(**enc, decoder_input_ids=dec).logits
        assert (ours - theirs).abs().max().item() <= 1e-5
        generated = hf.generate(**enc, max_new_tokens=6, do_sample=False)
    mine = greedy_seq2seq(model, [tokenizer.encode(t) for t in texts], 6, start)
    for row, (ids, _) in zip(generated.tolist(), mine):
        assert row[0] == start
        new = row[1:][: len(ids) + 1]  # transformers pads a finished row with <|endoftext|> (its eos)
        assert new[: len(ids)] == ids and (len(new) == len(ids) or new[len(ids)] == EOT_ID)


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
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    T.train_step = step
    finetune(json.loads(sys.argv[1]))
""")


def test_sigkill_then_resume_is_bitwise_identical(ws, pairs, tmp_path):
    straight = finetune(config(ws, pairs, tmp_path / "a"))
    cfg = config(ws, pairs, tmp_path / "b")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", KILL, json.dumps(cfg), "8"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_b = RunDir(tmp_path / "b")
    assert run_b.latest_checkpoint().name == "step-00000005"  # epoch 1 ends at step 5
    resumed = finetune(dict(cfg, resume=True))
    loss = lambda rd: [(m["step"], m.get("loss"), m.get("val_loss")) for m in RunDir(rd).read_metrics()]  # noqa: E731
    assert loss(run_b.path) == loss(straight.run_dir) and resumed.steps == straight.steps == 15
    a, b = RunDir(straight.run_dir).latest_checkpoint(), run_b.latest_checkpoint()
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_bad_rows_and_bases(base, ws, pairs, tmp_path):
    rows = pairs.read_text().splitlines()[:40]
    rows += [json.dumps({"source": "blue", "target": ""}), json.dumps({"source": "", "target": "x"}),
             json.dumps({"source": "red"}), "{oops"]
    train = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = finetune(config(ws, train, tmp_path / "run", epochs=1))
    record = yaml.safe_load((r.run_dir / "config.yaml").read_text())["data"]["train"]
    assert record["usable_rows"] == 40 and record["bad_total"] == 4
    assert {k: v for k, v in record["bad_rows"].items() if v} == {"empty": 2, "missing_field": 1, "invalid_json": 1}
    with pytest.raises(GerbilError, match="needs an encoder-decoder base.*gerbil warmstart"):
        finetune(config(base, pairs, tmp_path / "x"))
    with pytest.raises(GerbilError, match="is an encoder-decoder: fine-tune it with --task seq2seq"):
        finetune(config(ws, pairs, tmp_path / "y", task="sft"))
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_any_encoder_decoder_t5blender(pairs, tmp_path):
    """The same verb fine-tunes a T5Blender checkpoint (arch t5) from a CSV file: the path is by interface,
    not by model."""
    from gerbil.model.config import ModelConfig
    from gerbil.model.t5 import T5
    from gerbil.train.checkpoint import save_checkpoint

    cfg = ModelConfig(arch="t5", d_model=32, n_layer=1, n_decoder_layer=1, n_head=2, d_kv=16, d_ff=32, rotary_dim=0,
                      seq_len=64)
    ckpt = save_checkpoint(tmp_path / "t5" / "checkpoints", 1, T5(cfg), {},
                           {"model": cfg.to_dict(), "objective": "blender", "seq_len": 64})
    import csv  # the CSV reader of --task sft, as every reader is shared

    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["source", "target"])
        w.writeheader()
        w.writerows(json.loads(line) for line in pairs.read_text().splitlines())
    r = finetune(config(ckpt, tmp_path / "pairs.csv", tmp_path / "ft", epochs=1))
    assert r.info["task"] == "seq2seq" and r.steps == 5
    rows = predict(r.run_dir, pairs, field="source")
    assert len(rows) == 96 and all(isinstance(x["completion"], str) for x in rows)


def test_greedy_when_a_longer_row_finishes_first():
    """Decoder-only batched greedy: a row with a longer prompt that stops while shorter rows go on (the
    batch then runs narrower than that row) — a regression: its last position was read out of range."""
    import types

    from gerbil.finetune.decode import greedy

    V = 8

    class Chain(torch.nn.Module):  # next token = (t + 1) % V; token 5 is followed by 0, the stop token
        config = types.SimpleNamespace(seq_len=64)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            return torch.nn.functional.one_hot(ids.clamp(max=V - 1), V).float()  # padding (EOT) → V - 1

        def logits(self, h):
            nxt = torch.roll(torch.eye(V), 1, dims=1)
            nxt[5] = torch.eye(V)[0]
            return (h @ nxt) * 10

    out = greedy(Chain(), [[1, 1, 1, 1, 1, 1, 5], [1]], 6, stop_id=0)
    assert [ids for ids, _ in out] == [[], [2, 3, 4, 5]]
