"""Helpers shared by test_train / test_checkpoint: a tiny token store and a tiny training config.

The store is written in the documented format by `TokenStore.write` from seeded random "documents"
over a 1,024-id vocabulary (EOT = 1023), so a d=32, 2-layer model trains a step in milliseconds. Torch
is pinned to one thread: on a busy 2-core machine oversubscribed threads are 20× slower, and bitwise
comparisons need the same reduction order in every process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_MODEL = dict(d_model=32, n_layer=2, n_head=2, rotary_dim=8, vocab_size=1024, seq_len=64, name="tiny")
TEST_SHA = "test-tokenizer-sha"


def make_store(path: Path, n_docs: int = 300, seed: int = 0, sha: str = TEST_SHA) -> Path:
    from gerbil.data.store import TokenStore

    rng = np.random.default_rng(seed)
    # a learnable signal: each document counts upward from a random start (mod 1000)
    docs = [(rng.integers(0, 1000) + np.arange(rng.integers(5, 200))) % 1000 for _ in range(n_docs)]
    TokenStore.write(path, docs, tokenizer_sha256=sha, vocab_size=1024, eot_id=1023, val_fraction=0.1,
                     overwrite=True)
    return path


def tiny_config(store: Path, runs: Path, **kw):
    from gerbil.train.loop import TrainConfig

    base = dict(model=dict(TINY_MODEL), data=str(store), seq_len=32, batch_tokens=128, micro_batch=2,
                tokens=128 * 8, tokenizer_sha256=TEST_SHA, runs=str(runs), name="tiny", lr=3e-3,
                checkpoint_every=128 * 4, eval_every=128 * 4, val_tokens=256, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)
