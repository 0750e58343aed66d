"""The fixed validation set: the same scored tokens of a token store's validation split for every
objective, presented in the objective's mode (`eval_batches`), so validation losses compare across runs."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gerbil.data.objectives import mode_prefix
from gerbil.data.tokenizer import EOT_ID, IGNORE_INDEX
from gerbil.errors import OptionError


def eval_windows(split: Any, seq_len: int, max_tokens: int) -> torch.Tensor:
    """The first ``max_tokens // seq_len`` contiguous windows of a split, shape (N, seq_len + 1).

    The raw validation windows (plain causal LM on the documents as stored): window ``w`` is
    ``tokens[w·T : w·T + T + 1]``, so N·T targets, raw positions 1 … N·T. `eval_batches` builds on it.
    """
    n = _n_eval_windows(split, seq_len, max_tokens)
    flat = np.asarray(split.tokens[: n * seq_len + 1], dtype=np.int64)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # (N, T+1)
    return torch.from_numpy(flat[idx])


def _n_eval_windows(split: Any, seq_len: int, max_tokens: int) -> int:
    n = min(max(1, int(max_tokens) // seq_len), (len(split.tokens) - 1) // seq_len)
    if n < 1:
        raise OptionError(f"validation split has {len(split.tokens)} tokens: fewer than one sequence of {seq_len} + 1")
    return n


def eval_batches(split: Any, seq_len: int, max_tokens: int, objective: str | None = "plain",
                 eot_id: int = EOT_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation set as ``(inputs, targets)``, int64 (N', seq_len); targets -100 = not scored.

    What is scored is the same for every objective, so validation losses compare across runs and
    objectives: the **N·T raw tokens at positions 1 … N·T of the validation split** (N =
    ``min(max_tokens // seq_len, (len - 1) // seq_len)``, at least 1), i.e. exactly the targets of the
    raw windows of `eval_windows`. The loss is their mean, each token counted once.

    How they are presented depends on the objective's mode (`gerbil.data.objectives.mode_prefix`):

    * ``plain`` (and ``fim``/``mlm``, which have no causal mode token): the raw windows, N' = N.
    * ``causal`` / ``blender``: the model is evaluated in causal mode, as UL2-style mode switching (and
      `gerbil.eval.evaluate` for Blender models) expects — ``<causal>`` is inserted at the start of every
      document of that stretch (before raw position 0, and after every ``<|endoftext|>`` that is followed
      by a scored token). The stretch, now N·T + 1 + k tokens long (k insertions), is cut into T+1
      windows the loader's way (window ``w`` = stream ``[w·T, w·T + T]``), the last one padded with
      EOT inputs whose targets are -100; N' = ceil((N·T + k) / T). The inserted ``<causal>`` positions
      are never targets (a mode token is not predictable text), and raw position 0 is not scored either,
      though it now follows ``<causal>``, so the scored set stays exactly the plain one. Window
      boundaries shift by the insertions, so a token's in-window context can differ slightly from the
      plain windows'; the tokens and their count do not.
    """
    T = int(seq_len)
    windows = eval_windows(split, T, max_tokens)
    n = len(windows)
    name = objective if isinstance(objective, str) or objective is None else getattr(objective, "name", "")
    prefix: list[int] = []
    if str(name or "plain").strip().lower() != "plain":
        prefix = [int(t) for t in mode_prefix(name)]
    if not prefix:
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    raw = np.asarray(split.tokens[: n * T + 1], dtype=np.int64)
    p = len(prefix)
    # raw positions that begin a document: 0, and each position right after an EOT (an EOT at the very
    # last raw position N·T is followed by nothing scored, so it gets no insertion)
    starts = np.concatenate([[0], np.flatnonzero(raw[:-1] == eot_id) + 1])
    stream = np.insert(raw, np.repeat(starts, p), np.tile(np.asarray(prefix, dtype=np.int64), len(starts)))
    scored = np.ones(len(stream), dtype=bool)
    # the j-th document start moves to stream position starts[j] + j·p; its p mode tokens sit there
    ins = (starts + np.arange(len(starts)) * p)[:, None] + np.arange(p)[None, :]
    scored[ins.reshape(-1)] = False
    scored[p] = False  # raw position 0: an input only in the plain windows, so not scored here either
    n_win = -(-(len(stream) - 1) // T)  # ceil
    pad = n_win * T + 1 - len(stream)
    stream = np.concatenate([stream, np.full(pad, eot_id, dtype=np.int64)])
    scored = np.concatenate([scored, np.zeros(pad, dtype=bool)])
    idx = np.arange(n_win)[:, None] * T + np.arange(T + 1)[None, :]
    win, keep = stream[idx], scored[idx]
    targets = np.where(keep[:, 1:], win[:, 1:], IGNORE_INDEX)
    n_scored = int((targets != IGNORE_INDEX).sum())
    assert n_scored == n * T, (n_scored, n * T)  # the invariant the docstring promises
    return torch.from_numpy(np.ascontiguousarray(win[:, :-1])), torch.from_numpy(np.ascontiguousarray(targets))


__all__ = ["eval_batches", "eval_windows"]
