"""The model: its configuration and the size ladder (config, no torch), the GPT-J module (model), the
head + cross-entropy (loss) and the sequence classifier fine-tuning trains (classifier).

`gerbil.model.GPT` is the documented entry point; it is resolved lazily so that `gerbil.model.config`
(read by `gerbil plan` and the registry) never imports torch.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # PEP 562: `from gerbil.model import GPT` without importing torch early
    if name in ("GPT", "Attention", "MLP", "Block", "rotary_tables", "apply_rotary"):
        from gerbil.model import model

        return getattr(model, name)
    raise AttributeError(f"module 'gerbil.model' has no attribute {name!r}")
