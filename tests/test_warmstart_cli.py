"""`gerbil warmstart` (gerbil/warmstart_command.py): the run it writes loads as an encoder-decoder whose
untrained decoder gives exactly the base's logits; its export loads in AutoModelForSeq2SeqLM with
trust_remote_code and generates, logits equal to gerbil's; bad input is one line and writes nothing.
The base is the tests' tiny model trained for 10 steps with the Blender objective."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import trained_run

from gerbil.data.objectives import CAUSAL
from gerbil.export import export, load_model
from gerbil.model.warmstart import WarmStartEncDec
from gerbil.runs.rundir import RunDir
from gerbil.warmstart_command import warmstart

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer) -> Path:
    return trained_run(tmp_path_factory.mktemp("base"), tokenizer, steps=10, objective="blender")


@pytest.fixture(scope="module")
def ws_run(base, tmp_path_factory) -> Path:
    return warmstart(dict(base=str(base), out=str(tmp_path_factory.mktemp("ws") / "run"))).path


def _ids(*shape, seed=0):
    return torch.randint(0, 50257, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("share", [False, True])
def test_warm_started_run_decodes_exactly_as_the_base(base, share, tmp_path):
    run = warmstart(dict(base=str(base), out=str(tmp_path / "ws"), share=share)).path
    model, meta = load_model(run)
    gpt, _ = load_model(base)
    assert isinstance(model, WarmStartEncDec) and model.config.share is share
    assert meta["warmstart"]["base"]["name"] == "tiny-blender" and model.config.decoder_start_id == CAUSAL
    assert meta["objective"] == "blender" and RunDir(run).read_config()["task"] == "warmstart"
    dec = torch.cat([torch.full((2, 1), CAUSAL), _ids(2, 15)], 1)
    with torch.no_grad():
        want = gpt.logits(gpt(dec))
        for enc in (_ids(2, 7, seed=1), _ids(2, 40, seed=2)):
            assert torch.equal(model.logits(model(enc, dec)), want)  # bitwise, whatever the encoder reads
    if share:  # BASE may also be a checkpoint or an export folder: the same warm start
        ckpt = RunDir(base).latest_checkpoint()
        for src in (ckpt, export(base, tmp_path / "base-export")):
            other, _ = load_model(warmstart(dict(base=str(src), out=str(tmp_path / src.name / "ws"), share=True)).path)
            for (k, x), (_, y) in zip(model.state_dict().items(), other.state_dict().items()):
                assert torch.equal(x, y), k


def test_export_loads_in_transformers_with_remote_code(ws_run, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model, _ = load_model(ws_run)
    with torch.no_grad():  # as after fine-tuning: the cross-attention matters
        for c in model.cross:
            c.out_proj.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(3))
    out = export(model, tmp_path / "export", meta={"name": "ws-test"})
    conf = json.loads((out / "config.json").read_text())
    assert conf["gerbil"]["name"] == "ws-test" and conf["auto_map"]["AutoModelForSeq2SeqLM"]
    assert (out / "modeling_gerbil_encdec.py").is_file() and "trust_remote_code" in (out / "README.md").read_text()
    hf = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["3rd of March, 2021", "July 4 1976"], return_tensors="pt", padding=True)
    dec = torch.cat([torch.full((2, 1), CAUSAL), _ids(2, 5)], 1)
    with torch.no_grad():
        ours = model.logits(model(enc.input_ids, dec, encoder_mask=enc.attention_mask))
        theirs = hf(**enc, decoder_input_ids=dec).logits
        assert (ours - theirs).abs().max().item() <= 1e-5
        generated = hf.generate(**enc, max_new_tokens=4, do_sample=False)
    assert generated.shape[0] == 2 and bool((generated[:, 0] == CAUSAL).all())
    back, meta = load_model(out)  # gerbil reads its own export back
    assert isinstance(back, WarmStartEncDec) and meta["name"] == "ws-test"
    export(ws_run, tmp_path / "export")  # an earlier export is replaced (the modeling file is an export file)


def _classifier_checkpoint(base: Path, root: Path) -> Path:
    from gerbil.model.classifier import Classifier
    from gerbil.train.checkpoint import save_checkpoint

    gpt, meta = load_model(base)
    clf = Classifier.from_gpt(gpt, 2)
    return save_checkpoint(root, 1, clf, {}, {"model": gpt.config.to_dict(), "objective": "blender",
                                              "finetune": {"task": "classify", "label_names": ["a", "b"]}})


def _t5_sources(root: Path) -> tuple[Path, Path]:
    from gerbil.model.config import ModelConfig
    from gerbil.model.t5 import T5
    from gerbil.model.t5_hf import save_t5_folder
    from gerbil.train.checkpoint import save_checkpoint

    cfg = ModelConfig(arch="t5", d_model=32, n_layer=1, n_decoder_layer=1, n_head=2, d_kv=16, d_ff=32, rotary_dim=0)
    t5 = T5(cfg)
    return save_checkpoint(root / "ckpts", 1, t5, {}, {"model": cfg.to_dict()}), save_t5_folder(t5, root / "t5x")


def test_bad_input_is_one_line_and_writes_nothing(base, ws_run, tmp_path, capsys):
    from gerbil.cli import main

    t5_ckpt, t5_export = _t5_sources(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not a model")
    cases = [
        ([str(_classifier_checkpoint(base, tmp_path / "clf"))], "is a classifier"),
        ([str(t5_ckpt)], "is a T5 model"),
        ([str(t5_export)], "is a T5 model"),
        ([str(ws_run)], "already a warm-started encoder-decoder"),
        ([str(tmp_path / "notes")], "not a run, checkpoint or export"),
        ([str(tmp_path / "nowhere")], "no such run, checkpoint or export"),
        ([str(base), "--out", str(tmp_path / "busy")], "exists and is not empty"),
    ]
    for argv, message in cases:
        if "--out" not in argv:
            argv = argv + ["--out", str(tmp_path / "new")]
        assert main(["warmstart", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "new").exists() and (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if "tmp-warmstart" in p.name]
    assert main(["warmstart", str(base), "--out", str(tmp_path / "new"), "--share"]) == 0
    assert RunDir(tmp_path / "new").latest_meta()["model"]["share"] is True
