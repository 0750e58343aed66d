"""Checkpoints: atomic layout, `latest` pointer, damaged checkpoints skipped, plain names, RNG states."""
from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

from gerbil.errors import GerbilError
from gerbil.export import load_model
from gerbil.runs.rundir import RunDir, read_meta
from gerbil.train import checkpoint as ckpt
from helpers import tiny_model, tiny_model_config


pytestmark = pytest.mark.usefixtures("one_thread")


MODEL = dict(vocab_size=1024)


def _save(run_dir, step, model=None, policy=None, keep=False):
    model = model or tiny_model(**MODEL)
    meta = {"tokens": step * 100, "model": tiny_model_config(**MODEL).to_dict(), "size": "tiny", "class": "A",
            "objective": "plain", "parent": None, "keep": keep}
    policy = policy or ckpt.CheckpointPolicy(every=100)
    return policy.save(RunDir(run_dir).checkpoints, step, model, {"step": step, "x": torch.arange(3)}, meta)


def _latest(run_dir):
    return RunDir(run_dir).latest_checkpoint()


def test_layout_pointer_and_roundtrip(tmp_path):
    model = tiny_model(**MODEL)
    path = _save(tmp_path, 12, model)
    assert path == tmp_path / "checkpoints" / "step-00000012"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000012"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
    meta = json.loads((path / "meta.json").read_text())  # plain JSON, readable without torch
    assert meta["step"] == 12 and meta["tokens"] == 1200 and meta["model"]["d_model"] == 32
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    for source in (tmp_path, path):  # a run directory and a checkpoint directory load the same weights
        loaded, meta2 = load_model(source)
        for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    assert ckpt.load_train_state(path)["step"] == 12
    assert RunDir(tmp_path).latest_meta()["step"] == 12 and read_meta(path)["step"] == 12


def test_compiled_module_saves_plain_names(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model(**MODEL)

    class Wrapper(torch.nn.Module):  # what torch.compile returns: the module under `_orig_mod`
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    path = _save(tmp_path, 1, Wrapper(model))
    keys = load_file(str(path / "model.safetensors")).keys()
    assert not [k for k in keys if "_orig_mod" in k]
    assert set(keys) == set(model.state_dict())


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_meta"])
def test_damaged_latest_falls_back_with_a_warning(tmp_path, caplog, damage):
    _save(tmp_path, 2)
    bad = _save(tmp_path, 4)
    f = bad / "model.safetensors"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        (bad / "meta.json").unlink()
    with caplog.at_level(logging.WARNING, logger="gerbil.runs.rundir"):
        assert _latest(tmp_path) == tmp_path / "checkpoints" / "step-00000002"
    if damage != "no_meta":
        assert "damaged" in caplog.text
    # saving the same step again replaces the damaged directory
    _save(tmp_path, 4)
    assert _latest(tmp_path).name == "step-00000004"


def test_leftover_temp_dir_is_ignored(tmp_path):
    _save(tmp_path, 3)
    (tmp_path / "checkpoints" / ".tmp-step-00000006-999").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-00000006-999" / "model.safetensors").write_bytes(b"half")
    assert _latest(tmp_path).name == "step-00000003"
    assert _latest(tmp_path / "empty") is None
    with pytest.raises(GerbilError, match="no such run"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(GerbilError, match="no complete checkpoint"):
        load_model(tmp_path / "empty")


def test_keep_prunes_old_checkpoints(tmp_path):
    policy = ckpt.CheckpointPolicy(every=100, keep_newest=2)
    _save(tmp_path, 1, policy=policy, keep=True)  # a kept (marked or log-spaced) one: never pruned, not counted
    for s in (2, 3, 4, 5):
        _save(tmp_path, s, policy=policy)
    assert [p.name for p in RunDir(tmp_path).list_checkpoints()] == ["step-00000001", "step-00000004", "step-00000005"]


def test_a_best_run_keeps_the_newest_and_the_best(tmp_path):
    policy = ckpt.CheckpointPolicy(every=100, best=True)
    for s in (1, 2, 3):
        _save(tmp_path, s, policy=policy)
    assert len(RunDir(tmp_path).list_checkpoints()) == 1
    root = RunDir(tmp_path).checkpoints
    policy.save(root, 4, tiny_model(**MODEL), {}, {"model": tiny_model_config(**MODEL).to_dict()}, best="step-00000003")
    assert [p.name for p in RunDir(tmp_path).list_checkpoints()] == ["step-00000003", "step-00000004"]
    policy.save(root, 5, tiny_model(**MODEL), {}, {"model": tiny_model_config(**MODEL).to_dict()}, best="step-00000004")
    assert [p.name for p in RunDir(tmp_path).list_checkpoints()] == ["step-00000004", "step-00000005"]


@pytest.mark.parametrize("policy, steps, want", [
    # (every, keep_newest, log_spaced, marks, best), [(step, tokens, done, validated, improved)], [(write, keep)]
    (dict(every=100), [(1, 60, False, False, False), (2, 120, False, False, False), (3, 180, False, False, False),
                       (4, 240, True, False, False)], [(False, False), (True, False), (False, False), (True, False)]),
    (dict(every=100, log_spaced=True), [(1, 10, False, False, False), (2, 20, False, False, False),
                                        (3, 30, False, False, False), (4, 40, False, False, False)],
     [(True, True), (True, True), (False, True), (True, True)]),
    (dict(every=1000, marks=(25, 26, 70)), [(1, 20, False, False, False), (2, 40, False, False, False),
                                            (3, 60, False, False, False), (4, 80, False, False, False)],
     [(False, False), (True, True), (False, False), (True, True)]),
    (dict(every=1000, best=True), [(1, 20, False, True, False), (2, 40, False, False, False),
                                   (3, 60, False, False, True)], [(True, False), (False, False), (True, False)]),
])
def test_policy_says_when_to_write_and_what_to_keep(policy, steps, want):
    clock = ckpt.CheckpointPolicy(**policy).start(0)
    got = [clock.due(s, t, done=d, validated=v, improved=i) for s, t, d, v, i in steps]
    assert got == want


def test_rng_state_roundtrip():
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
