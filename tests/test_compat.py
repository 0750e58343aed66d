"""What gerbil 0.1.0 wrote still works: its token store opens, its interrupted run resumes (also from
another folder, the store re-pointed with --data) to the same losses and weights as 0.1.0's own
uninterrupted run, and its export loads — tests/fixtures/legacy_v0_1, made by
tests/fixtures/make_legacy_fixture.py with 0.1.0 (commit 97eeb1c).

"Behaviour unchanged" across the package's reorganisation is shown here too: the same config and seed,
trained from scratch by today's code, gives 0.1.0's per-step losses and weights.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gerbil.errors import GerbilError
from gerbil.runs.rundir import RunDir
from gerbil.train import train
from gerbil.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

FIX = Path(__file__).parent / "fixtures" / "legacy_v0_1"
SHA = "legacy-tokenizer-sha"
REF = json.loads((FIX / "reference.json").read_text())


@pytest.fixture()
def legacy(tmp_path):
    """A copy of the fixture in another folder than the one it was made in (paths in its config differ)."""
    shutil.copytree(FIX / "store", tmp_path / "store")
    shutil.copytree(FIX / "runs", tmp_path / "runs")
    return tmp_path


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in RunDir(run_dir).read_metrics()]


def _check_weights(run_dir: Path) -> str:
    from gerbil.export import load_model

    model, _ = load_model(run_dir)
    sd = model.state_dict()
    for k, head in REF["weights"].items():
        np.testing.assert_allclose(sd[k].flatten()[:8].numpy(), head, rtol=1e-5, atol=1e-7, err_msg=k)
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_legacy_store_opens_and_verifies():
    from gerbil.data.store import TokenStore

    store = TokenStore.open(FIX / "store", SHA)
    store.verify()
    assert store.split("train").n_docs + store.split("val").n_docs == 120 and store.vocab_size == 256


def test_legacy_run_resumes_to_the_reference(legacy):
    cfg = TrainConfig(name="legacy", runs=str(legacy / "runs"), resume=True, data=str(legacy / "store"),
                      tokenizer_sha256=SHA, progress=False)
    r = train(cfg)
    assert (r.steps, r.tokens) == (REF["steps"], REF["tokens"])
    assert _losses(r.run_dir) == pytest.approx(REF["losses"], rel=1e-5)
    assert r.val_loss == pytest.approx(REF["val_loss"], rel=1e-5)
    sha = _check_weights(r.run_dir)
    print("resumed legacy run: weights sha256", sha, "(0.1.0:", REF["weights_sha256"] + ")")


def test_same_config_and_seed_give_0_1_weights_and_losses(legacy):
    saved = RunDir(legacy / "runs" / "legacy").read_config()["train"]
    # (0.1.0 wrote compile: true meaning "on CUDA"; today true forces it, also on a CPU: runtime, left out)
    cfg = TrainConfig.from_dict(dict(saved, runs=str(legacy / "fresh"), data=str(legacy / "store"), compile=None))
    r = train(cfg)
    assert _losses(r.run_dir) == pytest.approx(REF["losses"], rel=1e-5)
    sha = _check_weights(r.run_dir)
    print("fresh run of the 0.1.0 config: weights sha256", sha, "bitwise equal:", sha == REF["weights_sha256"])


def test_resume_refuses_another_store_and_changed_options(legacy):
    from helpers import make_store

    other = make_store(legacy / "other", sha=SHA)
    base = dict(name="legacy", runs=str(legacy / "runs"), resume=True, tokenizer_sha256=SHA, progress=False)
    with pytest.raises(GerbilError, match="not the one this run trained on"):
        train(TrainConfig(**base, data=str(other)))
    with pytest.raises(GerbilError, match=r"--lr 0.5 differs from the run's 0.01"):
        train(TrainConfig(**base, data=str(legacy / "store"), lr=0.5))
    with pytest.raises(GerbilError, match=r"--tokens 999 differs"):
        train(TrainConfig(**base, data=str(legacy / "store"), tokens=999))


def test_legacy_export_loads_and_the_run_exports_again(legacy, tmp_path):
    from gerbil.export import export, load, load_model

    model, meta = load(FIX / "export")
    assert meta["name"] == "Gerbil-A-legacy" and model.config.vocab_size == 256
    ref, _ = load_model(legacy / "runs" / "legacy")  # the interrupted run's step-3 weights
    out = export(legacy / "runs" / "legacy", tmp_path / "again", tokenizer=False)
    back, info = load(out)
    assert info["name"] == "legacy"  # the run's own name
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), back.state_dict().values()))
