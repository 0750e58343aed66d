"""The tests' one tiny model, one tiny token store and one tiny training config — and a tiny model
*trained by the library's own `train`* on real English text, for the evaluation tests.

- `TINY`: the tiny model (d=32, 2 layers); tests vary only what they are about (`tiny_model_config(
  vocab_size=1024)` for fast training, the full 50,264 ids wherever the real tokenizer is used).
- `make_store`: a token store in the documented format from seeded random "documents" over a 1,024-id
  vocabulary (EOT = 1023) with a learnable signal, so a step takes milliseconds.
- `tiny_config`: a `TrainConfig` for that store (8 steps of 128 tokens, checkpoints every 4).
- `trained_run`: a run directory (checkpoint + export) of the tiny model trained with `gerbil.train.train`
  on the docstrings of the Python standard library (real prose, always on the machine). A few dozen steps
  only teach unigram and short-range statistics, but its log-likelihoods are no longer a random
  network's — which is what the harness-parity tests need (ties and flat distributions would hide
  mistakes in the slicing).
- `images_ok`: the named PNGs exist and are real images (the fit tests' plots).
"""
from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import numpy as np

TINY = dict(d_model=32, n_layer=2, n_head=4, rotary_dim=8, seq_len=256, name="tiny")
TEST_SHA = "test-tokenizer-sha"


def tiny_model_config(**overrides):
    """The tiny ModelConfig (full vocabulary unless overridden)."""
    from gerbil.model.config import ModelConfig

    return ModelConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides):
    """A freshly initialized tiny GPT (seeded locally), in eval mode."""
    import torch

    from gerbil.model.model import GPT

    model = GPT(tiny_model_config(**overrides))
    model.reset_parameters(generator=torch.Generator().manual_seed(seed))
    return model.eval()


def make_store(path: Path, n_docs: int = 300, seed: int = 0, sha: str = TEST_SHA) -> Path:
    from gerbil.data.store import TokenStore

    rng = np.random.default_rng(seed)
    # a learnable signal: each document counts upward from a random start (mod 1000)
    docs = [(rng.integers(0, 1000) + np.arange(rng.integers(5, 200))) % 1000 for _ in range(n_docs)]
    TokenStore.write(path, docs, tokenizer_sha256=sha, vocab_size=1024, eot_id=1023, val_fraction=0.1,
                     overwrite=True)
    return path


def tiny_config(store: Path, runs: Path, **kw):
    from gerbil.train.config import TrainConfig

    base = dict(model={**TINY, "n_head": 2, "vocab_size": 1024, "seq_len": 64}, data=str(store), seq_len=32,
                batch_tokens=128, micro_batch=2, tokens=128 * 8, cls="A", tokenizer_sha256=TEST_SHA,
                runs=str(runs), name="tiny", lr=3e-3, checkpoint_every=128 * 4, eval_every=128 * 4,
                val_tokens=256, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def stdlib_prose(max_chars: int = 400_000) -> str:
    """Docstrings of stdlib modules (English prose), concatenated in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, n = [], 0
    for name in ("argparse", "textwrap", "inspect", "pathlib", "logging/__init__", "email/message",
                 "http/client", "json/__init__", "collections/__init__", "datetime", "difflib",
                 "functools", "subprocess", "tarfile", "zipfile", "typing"):
        p = root / f"{name}.py"
        if not p.is_file():
            continue
        tree = ast.parse(p.read_text(encoding="utf-8", errors="replace"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    out.append(" ".join(doc.split()))
                    n += len(out[-1])
        if n > max_chars:
            break
    return "\n".join(out)[:max_chars]


def prose_store(root: Path, tokenizer) -> Path:
    """A real-text token store (stdlib docstrings, one document per paragraph) made by `prepare`."""
    from gerbil.data.prepare import prepare

    text_dir = root / "prose"
    text_dir.mkdir(parents=True, exist_ok=True)
    (text_dir / "prose.txt").write_text(stdlib_prose().replace("\n", "\n\n"))
    store = root / "prose-store"
    prepare([text_dir], store, tokenizer, val_fraction=0.05, txt_mode="paragraph", progress=False,
            overwrite=True)
    return store


def trained_run(root: Path, tokenizer, steps: int = 30, objective: str = "plain", seed: int = 0) -> Path:
    """The tiny model (full vocabulary, context 256) trained by `gerbil.train.train` for `steps` steps of
    8 × 32 tokens on real prose; returns its run directory (root/runs/NAME)."""
    from gerbil.train import train
    from gerbil.train.config import TrainConfig

    store = prose_store(root, tokenizer)
    r = train(TrainConfig(model=dict(TINY), data=str(store), objective=objective, seq_len=32, batch_tokens=256,
                          micro_batch=8, tokens=256 * steps, lr=1e-2, warmup_tokens=256, weight_decay=0.0,
                          runs=str(root / "runs"), name=f"tiny-{objective}", val_tokens=1024, progress=False,
                          seed=seed, checkpoint_every=256 * steps, eval_every=256 * steps))
    return r.run_dir


def images_ok(folder: Path, names: list[str]) -> None:
    """Each of `names` in `folder` is a non-empty RGB(A) image larger than 100×100 pixels."""
    import matplotlib.image as mpimg

    for name in names:
        p = folder / name
        assert p.is_file() and p.stat().st_size > 0, name
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, name


def full_disk_open(room: int, suffix: str = ""):
    """An `open` whose files (those whose path ends with `suffix`) raise ENOSPC once more than `room`
    bytes were written to them: a disk filling up mid-write, for code that opens its files with `open`
    (`monkeypatch.setattr(module, "open", full_disk_open(4096), raising=False)`)."""
    import builtins
    import errno

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > room:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def opener(path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        return Full(f) if str(path).endswith(suffix) and "w" in mode else f

    return opener
