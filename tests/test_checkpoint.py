"""Checkpoints: atomic layout, `latest` pointer, damaged checkpoints skipped, plain names, RNG states."""
from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

from gerbil.train import checkpoint as ckpt
from gerbil.model.config import ModelConfig
from gerbil.model.model import GPT
from train_fixtures import TINY_MODEL


pytestmark = pytest.mark.usefixtures("one_thread")


def _save(run_dir, step, model=None, keep=0):
    model = model or GPT(ModelConfig.from_dict(TINY_MODEL))
    meta = {"tokens": step * 100, "model": dict(TINY_MODEL), "size": "tiny", "class": "A",
            "objective": "plain", "parent": None}
    return ckpt.save_checkpoint(run_dir, step, model, {"step": step, "x": torch.arange(3)}, meta, keep=keep)


def test_layout_pointer_and_roundtrip(tmp_path):
    model = GPT(ModelConfig.from_dict(TINY_MODEL))
    path = _save(tmp_path, 12, model)
    assert path == tmp_path / "checkpoints" / "step-00000012"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000012"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
    meta = json.loads((path / "meta.json").read_text())  # plain JSON, readable without torch
    assert meta["step"] == 12 and meta["tokens"] == 1200 and meta["model"]["d_model"] == 32
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    loaded, meta2 = ckpt.load_model(tmp_path)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert ckpt.load_train_state(path)["step"] == 12
    assert ckpt.read_meta(tmp_path)["step"] == 12


def test_compiled_module_saves_plain_names(tmp_path):
    from safetensors.torch import load_file

    model = GPT(ModelConfig.from_dict(TINY_MODEL))

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
    with caplog.at_level(logging.WARNING, logger="gerbil.train.checkpoint"):
        assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000002"
    if damage != "no_meta":
        assert "damaged" in caplog.text
    # saving the same step again replaces the damaged directory
    _save(tmp_path, 4)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000004"


def test_leftover_temp_dir_is_ignored(tmp_path):
    _save(tmp_path, 3)
    (tmp_path / "checkpoints" / ".tmp-step-00000006-999").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-00000006-999" / "model.safetensors").write_bytes(b"half")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"
    assert ckpt.latest_checkpoint(tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError):
        ckpt.load_model(tmp_path / "empty")


def test_keep_prunes_old_checkpoints(tmp_path):
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]


def test_rng_state_roundtrip():
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
