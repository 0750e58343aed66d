"""Batches for training: token store split + objective → `(inputs, targets)` of shape (B, T), resumable.

Two paths, both deterministic functions of (split, seed, seq_len) and of nothing else:

- ``plain``: the split's flat token array already has every document followed by `<|endoftext|>`, so
  causal LM training reads contiguous windows of T+1 tokens (inputs = window[:-1], targets =
  window[1:]). Window ``w`` starts at token ``w·T`` (neighbouring windows share one token, as in
  nanoGPT). Each epoch visits every window once in a seeded permutation: `rng(seed, epoch)`.
- any other objective (``causal``, ``fim``, ``mlm``, ``blender`` …, from `gerbil.data.objectives`): walk the
  documents in a seeded order, cut each into chunks of `chunk_tokens` (default: the objective's
  `chunk_len(seq_len)`, so no example is longer than a sequence), call ``objective(chunk, rng)``
  with an rng derived only from ``(seed, global chunk index)``, append EOT and pack the results into one
  stream that is cut into T+1 windows the same way. ``targets`` is -100 where the loss mask is 0.

The cursor (`state_dict()`) is a handful of ints plus the <2·T tokens waiting in the packing buffer, all
plain JSON-able Python, so a resumed run continues with exactly the next sequence — no replay, no skip
(the nanoGPT resume pitfall, docs/reference.md §8). The cursor counts sequences, not batches, so a run may
change its micro-batch or batch size between checkpoints (star continuations with a batch ramp).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from gerbil.data.objectives import get_objective, mode_prefix

from gerbil.data.tokenizer import EOT_ID
from gerbil.model.loss import IGNORE_INDEX

ObjectiveFn = Callable[[np.ndarray, np.random.Generator], "tuple[np.ndarray, np.ndarray]"]


def resolve_objective(objective: str | ObjectiveFn) -> tuple[str, ObjectiveFn | None]:
    """(name, callable) for an objective name or callable; ``plain`` has no callable (windows path)."""
    if callable(objective):
        return getattr(objective, "name", type(objective).__name__.lower()), objective
    name = str(objective).strip().lower()
    if name == "plain":
        return "plain", None
    return name, get_objective(name)


class Loader:
    """Packed, resumable `(inputs, targets)` batches of LongTensors, shape (micro_batch, seq_len).

    split: an object with ``tokens`` (1-D uint16 array), ``offsets`` (int64, n_docs + 1),
        ``n_docs`` and ``document(i)`` — `gerbil.data.store.Split`.
    objective: ``"plain"``, another name for `gerbil.data.objectives.get_objective`, or a callable
        ``(doc_tokens, rng) -> (tokens, loss_mask)``.
    chunk_tokens: document chunk length for the objective path (default: seq_len).
    shuffle: visit windows/documents in a seeded permutation per epoch (True) or in file order.
    """

    def __init__(
        self,
        split: Any,
        seq_len: int,
        micro_batch: int,
        objective: str | ObjectiveFn = "plain",
        seed: int = 0,
        chunk_tokens: int | None = None,
        shuffle: bool = True,
        eot_id: int = EOT_ID,
    ):
        if seq_len <= 0 or micro_batch <= 0:
            raise ValueError(f"seq_len and micro_batch must be positive, got {seq_len}, {micro_batch}")
        self.split, self.seq_len, self.micro_batch = split, int(seq_len), int(micro_batch)
        self.seed, self.shuffle, self.eot_id = int(seed), bool(shuffle), int(eot_id)
        self.objective_name, self.objective = resolve_objective(objective)
        # chunk length: the objective's own bound where it offers one (Objective.chunk_len: output + EOT
        # is at most seq_len, so FIM/MLM examples, longer than their chunk, are never longer than a
        # sequence), else seq_len. An explicit chunk_tokens wins. Part of the cursor's layout check.
        if chunk_tokens is None:
            chunk_len = getattr(self.objective, "chunk_len", None)
            chunk_tokens = chunk_len(self.seq_len) if callable(chunk_len) else self.seq_len
        self.chunk_tokens = int(chunk_tokens)
        n_tokens = len(split.tokens)
        if self.objective is None:
            self.n_windows = (n_tokens - 1) // self.seq_len
            if self.n_windows < 1:
                raise ValueError(f"split has {n_tokens} tokens: fewer than one sequence of {self.seq_len} + 1")
        elif int(split.n_docs) < 1 or n_tokens <= int(split.n_docs):
            raise ValueError("split has no non-empty documents")
        # cursor (see state_dict)
        self.epoch = 0
        self.cursor = 0  # plain: next position in this epoch's window order; else: next document
        self.doc_offset = 0  # objective path: tokens of the current document already cut into chunks
        self.chunk_index = 0  # objective path: global chunk counter (seeds the objective's rng)
        self.buf_tokens: list[int] = []  # objective path: packed tokens not yet emitted
        self.buf_mask: list[int] = []
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    # ----------------------------------------------------------------------------- ordering
    def _epoch_order(self) -> np.ndarray:
        """Window (plain) or document (objective path) order of the current epoch, cached."""
        if self._order_epoch != self.epoch:
            n = self.n_windows if self.objective is None else int(self.split.n_docs)
            if self.shuffle:
                # a fresh generator per (seed, epoch, path): independent of everything else in the run
                stream = 0 if self.objective is None else 1
                self._order = np.random.default_rng([self.seed, self.epoch, stream]).permutation(n)
            else:
                self._order = np.arange(n)
            self._order_epoch = self.epoch
        return self._order

    # ----------------------------------------------------------------------------- plain path
    def _plain_sequences(self, n: int) -> np.ndarray:
        T, tokens = self.seq_len, self.split.tokens
        out = np.empty((n, T + 1), dtype=np.int64)
        for i in range(n):
            if self.cursor >= self.n_windows:
                self.epoch, self.cursor = self.epoch + 1, 0
            w = int(self._epoch_order()[self.cursor])
            out[i] = tokens[w * T : w * T + T + 1]
            self.cursor += 1
        return out

    # ----------------------------------------------------------------------------- objective path
    def _next_chunk(self) -> np.ndarray:
        """Next context-sized piece of the next non-empty document (advancing epochs as needed)."""
        while True:
            order = self._epoch_order()
            if self.cursor >= len(order):
                self.epoch, self.cursor, self.doc_offset = self.epoch + 1, 0, 0
                continue
            doc = self.split.document(int(order[self.cursor]))
            if self.doc_offset >= len(doc):
                self.cursor, self.doc_offset = self.cursor + 1, 0
                continue
            chunk = np.asarray(doc[self.doc_offset : self.doc_offset + self.chunk_tokens], dtype=np.int64)
            self.doc_offset += self.chunk_tokens
            if self.doc_offset >= len(doc):
                self.cursor, self.doc_offset = self.cursor + 1, 0
            return chunk

    def _objective_sequences(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        T = self.seq_len
        toks = np.empty((n, T + 1), dtype=np.int64)
        mask = np.empty((n, T + 1), dtype=np.int64)
        for i in range(n):
            while len(self.buf_tokens) < T + 1:
                chunk = self._next_chunk()
                # rng depends on (seed, chunk index) only: the same chunk gets the same FIM split /
                # MLM mask on every run and after every resume, whatever came before it.
                rng = np.random.default_rng([self.seed, self.chunk_index, 2])
                self.chunk_index += 1
                out_tokens, out_mask = self.objective(chunk, rng)
                out_tokens = np.asarray(out_tokens, dtype=np.int64).reshape(-1)
                out_mask = np.asarray(out_mask, dtype=np.int64).reshape(-1)
                if out_tokens.shape != out_mask.shape:
                    raise ValueError(f"objective {self.objective_name!r} returned tokens {out_tokens.shape} "
                                     f"and loss_mask {out_mask.shape} of different shapes")
                self.buf_tokens.extend(out_tokens.tolist() + [self.eot_id])
                self.buf_mask.extend(out_mask.tolist() + [1])  # the EOT closing a document is predicted
            toks[i] = self.buf_tokens[: T + 1]
            mask[i] = self.buf_mask[: T + 1]
            # the last token of this window is the first input of the next (as in the plain path)
            del self.buf_tokens[:T], self.buf_mask[:T]
        return toks, mask

    # ----------------------------------------------------------------------------- public
    def next_sequences(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `n` sequences as (inputs, targets) int64 CPU tensors of shape (n, seq_len)."""
        if self.objective is None:
            win = self._plain_sequences(n)
            x, y = win[:, :-1], win[:, 1:]
        else:
            win, mask = self._objective_sequences(n)
            x, y = win[:, :-1], np.where(mask[:, 1:] > 0, win[:, 1:], IGNORE_INDEX)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def __iter__(self) -> "Loader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_sequences(self.micro_batch)

    def state_dict(self) -> dict:
        """The cursor: plain Python ints and lists (JSON-able, loadable with torch weights_only)."""
        return {
            "objective": self.objective_name, "seed": self.seed, "seq_len": self.seq_len,
            "shuffle": self.shuffle, "chunk_tokens": self.chunk_tokens,
            "epoch": self.epoch, "cursor": self.cursor, "doc_offset": self.doc_offset,
            "chunk_index": self.chunk_index,
            "buf_tokens": list(self.buf_tokens), "buf_mask": list(self.buf_mask),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken; refuses a cursor from a different data layout."""
        for key in ("objective", "seed", "seq_len", "shuffle", "chunk_tokens"):
            mine = getattr(self, "objective_name" if key == "objective" else key)
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has {mine!r}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.doc_offset, self.chunk_index = int(state["doc_offset"]), int(state["chunk_index"])
        self.buf_tokens, self.buf_mask = list(state["buf_tokens"]), list(state["buf_mask"])


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
        raise ValueError(f"validation split has {len(split.tokens)} tokens: fewer than one sequence of {seq_len} + 1")
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


__all__ = ["Loader", "eval_windows", "eval_batches", "resolve_objective", "EOT_ID", "IGNORE_INDEX"]
