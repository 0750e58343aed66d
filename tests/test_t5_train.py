"""`gerbil train --arch t5` (issue 21 item 1): a tiny T5Blender trained by the one loop on packed
encoder-decoder Blender rows, exact resume (killed with SIGKILL and resumed = uninterrupted, bit for bit),
a star continuation, the run's name, and the refusals (an objective without an encoder-decoder format,
resuming or continuing a T5 run as GPT-J)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from gerbil.errors import GerbilError
from gerbil.runs.rundir import RunDir
from gerbil.train import TrainConfig, train
from gerbil.train.resolve import run_name
from tests.helpers import make_store, tiny_config
from tests.test_train import KILL_SCRIPT

pytestmark = pytest.mark.usefixtures("one_thread")

T5 = dict(arch="t5", d_model=32, n_layer=2, n_decoder_layer=2, n_head=4, d_kv=8, d_ff=48, rotary_dim=0, rel_buckets=8,
          rel_max_distance=20, seq_len=64, layer_norm_eps=1e-6, init_std=1.0, name="tiny-t5")
BUDGET = 128 * 8 - 16  # the last step ends on a shortened row (EncDecLoader.shorten)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("t5store") / "store")


@pytest.fixture(scope="module")
def straight(store, tmp_path_factory):
    runs = tmp_path_factory.mktemp("t5runs")
    return train(tiny_config(store, runs, model=T5, arch="t5", objective="blender", tokens=BUDGET, keep_checkpoints=0))


def _weights(ckpt):
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def test_t5_trains_on_encoder_decoder_rows(straight):
    assert straight.steps == 8 and straight.tokens == BUDGET
    assert straight.val_loss is not None and straight.train_loss < 11.5  # below ln(50264) = 10.8 + noise at init
    meta = json.loads((straight.checkpoint / "meta.json").read_text())
    assert meta["model"]["arch"] == "t5" and meta["encoder_len"] == straight.info["encoder_len"]
    conf = RunDir(straight.run_dir).read_config()
    assert conf["train"]["arch"] == "t5" and conf["model"]["arch"] == "t5"


def test_t5_sigkill_then_resume_equals_the_uninterrupted_run(straight, store, tmp_path):
    """Killed with SIGKILL at step 7 (steps 5-6 lost with it), resumed: the weights equal the uninterrupted
    run's bit for bit — the loader's open rows and cursor come back from the step-4 checkpoint."""
    cfg = tiny_config(store, tmp_path, model=T5, arch="t5", objective="blender", tokens=BUDGET, keep_checkpoints=0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg.to_dict()), "7"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert RunDir(tmp_path / "tiny").latest_checkpoint().name == "step-00000004"
    resumed = train(dataclasses.replace(cfg, resume=True))
    assert resumed.steps == 8 and resumed.train_loss == straight.train_loss
    a, b = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_t5_star_continuation_and_refusals(straight, store, tmp_path):
    parent = str(straight.run_dir)
    with pytest.raises(GerbilError, match="differs from the parent run's arch t5"):
        train(tiny_config(store, tmp_path, model=None, from_run=parent, arch="gptj", objective="blender", cls=None,
                          tokens=128 * 10, name="star"))
    star = train(tiny_config(store, tmp_path, model=None, from_run=parent, objective="blender", cls=None,
                             tokens=128 * 10, name="star"))
    assert star.tokens == 128 * 10 and star.steps == 11  # the parent's 8 steps, then 272 tokens: 3 steps
    with pytest.raises(GerbilError, match="--arch 'gptj' differs from the run's 't5'"):  # resumed as GPT-J
        train(tiny_config(store, tmp_path, model=None, arch="gptj", objective="blender", cls=None,
                          tokens=128 * 10, name="star", resume=True))
    with pytest.raises(GerbilError, match="no encoder-decoder format"):
        train(tiny_config(store, tmp_path, model=T5, arch="t5", objective="plain", name="plain-t5"))
    assert not (tmp_path / "plain-t5").exists()


def test_t5_run_names_and_presets():
    assert run_name(TrainConfig(arch="t5", size="24m", cls="A", objective="blender")) == "T5Blender-A-24m"
    assert run_name(TrainConfig(arch="t5", objective="fim")) == "T5FIM-A-24m"  # a T5's default size: 24m
    with pytest.raises(GerbilError, match="no T5 preset"):
        run_name(TrainConfig(arch="t5", size="6.7m", objective="blender"))


def test_t5_export_is_a_native_seq2seq_folder(straight, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from gerbil.export import export, load_model

    out = export(straight.run_dir, tmp_path / "export")
    conf = json.loads((out / "config.json").read_text())
    assert conf["architectures"] == ["T5ForConditionalGeneration"] and "auto_map" not in conf
    assert conf["pad_token_id"] == conf["decoder_start_token_id"] == conf["eos_token_id"] == 50256
    assert conf["gerbil"]["name"] == "tiny" and conf["gerbil"]["eval_prefix"] is None
    assert "AutoModelForSeq2SeqLM" in (out / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 50264 and tok.convert_tokens_to_ids("<fitm_result>") == 50259
    hf = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    mine, meta = load_model(straight.run_dir)
    back, _ = load_model(out)  # the folder back into gerbil, through the factory
    enc = torch.tensor([tok("<causal>def count(n): return n + 1").input_ids])
    dec = torch.tensor([[50256, 50, 51, 52]])
    with torch.no_grad():
        ref = hf(input_ids=enc, decoder_input_ids=dec).logits
        ours = mine.logits(mine(enc, dec))
        again = back.logits(back(enc, dec))
    print("max |Δ logit| gerbil vs transformers T5 (export):", float((ref - ours).abs().max()))
    assert (ref - ours).abs().max() <= 1e-5 and torch.equal(ours, again)


def test_t5_generation_modes(straight):
    """sample / infill / unmask on a T5Blender: the decoder-only prompt split at its result token; greedy
    sampling equals transformers' generate() on the export."""
    from transformers import T5ForConditionalGeneration

    from gerbil.data.objectives import CAUSAL, FITM_RESULT, MLM_END
    from gerbil.data.tokenizer import Tokenizer
    from gerbil.export import load_model
    from gerbil.generate import encdec_prompt, generate_ids, infill, sample, unmask
    from gerbil.model.t5_hf import to_hf

    model, meta = load_model(straight.run_dir)
    assert encdec_prompt([CAUSAL, 5, 6], 50256) == ([CAUSAL, 5, 6], [50256])
    assert encdec_prompt([1, 2, FITM_RESULT, 7], 50256) == ([1, 2], [50256, FITM_RESULT, 7])
    hf: T5ForConditionalGeneration = to_hf(model)
    ids = [CAUSAL, 100, 101, 102]
    ours = generate_ids(model, ids, 6, temperature=0)
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0].tolist()
    ref = ref[1:]  # the decoder start id
    assert len(ours) == 6 and ours == ref  # (this model never ends a text: its store's EOT is 1023)
    tok = Tokenizer.load()
    assert isinstance(sample(model, tok, "count", max_new_tokens=3, objective="blender"), str)
    assert isinstance(infill(model, tok, "one two", "five", max_new_tokens=3), str)
    filled, answers = unmask(model, tok, "one <single_tok_mask> three")
    assert len(answers) == 1 and MLM_END not in tok.encode(filled)


def test_t5_table_row(straight):
    from gerbil.eval.table import SEED_ROWS, row_for_run
    from gerbil.model.config import size_label

    row = row_for_run(straight.run_dir)
    assert row["Model Name"] == "tiny" and row["Tokens"] and row["Training Loss ↓"] != "—"
    assert size_label("24m") == "24m"  # a T5Blender preset is named as the seed names it
    assert [r[0] for r in SEED_ROWS[-3:]] == [f"GerbilLab/T5Blender-{c}-24m" for c in ("A", "B-star", "C-star")]


def test_plan_arch_t5():
    from gerbil.plan import encdec_flops_per_token, format_plan, make_plan

    p = make_plan("24m", "A", arch="t5")
    assert p.params_total == 22_903_040 and p.budget_tokens == 458_060_800 and p.batch == "131k"
    f_enc, f_dec = encdec_flops_per_token(p.model, 1408, 640)
    assert p.flops_per_token == (1408 * f_enc + 640 * f_dec) // 2048
    text = format_plan(p)
    assert text.startswith("T5Blender-A-24m plan") and f"per decoder token {f_dec:,}" in text
    with pytest.raises(GerbilError, match="no T5 preset"):
        make_plan("6.7m", "A", arch="t5")
