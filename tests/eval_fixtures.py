"""A tiny *trained* gerbil model on real text, as a run directory with an export, for the eval tests.

d=32, 2 layers, the full 50,264-token vocabulary (so the harness sees the real tokenizer and head),
trained for a few dozen AdamW steps on real English prose: the docstrings and comments of the Python
standard library (always on the machine, no download). A few dozen steps only teach it unigram and
short-range statistics, but its log-likelihoods are no longer those of a random network — which is what
the parity test needs (ties and flat distributions of a random init would hide mistakes in the slicing).
"""
from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

TINY = dict(d_model=32, n_layer=2, n_head=4, rotary_dim=8, seq_len=256, name="tiny-eval")


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


def train_tiny(run_dir: Path, tokenizer, steps: int = 30, seed: int = 0, objective: str = "plain"):
    """Train the tiny model and save it as a gerbil run (checkpoint + export). Returns the GPT."""
    import numpy as np
    import torch

    from gerbil.train.checkpoint import save_checkpoint
    from gerbil.model.config import ModelConfig
    from gerbil.model.loss import lm_loss
    from gerbil.model.model import GPT

    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(**TINY)
    model = GPT(cfg)
    model.reset_parameters(generator=g)
    ids = np.asarray(tokenizer.encode(stdlib_prose()), dtype=np.int64)
    T, B = 32, 8
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, len(ids) - T - 1, size=B)
        x = torch.from_numpy(np.stack([ids[s: s + T] for s in starts]))
        y = torch.from_numpy(np.stack([ids[s + 1: s + T + 1] for s in starts]))
        loss = lm_loss(model(x), model.lm_head.weight, model.lm_head.bias, y, vocab_size=cfg.vocab_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    meta = {"model": cfg.to_dict(), "tokens": steps * B * T, "objective": objective, "size": "tiny",
            "class": "A", "train_loss": float(loss.detach())}
    save_checkpoint(run_dir, steps, model, {"step": steps}, meta)
    return model
