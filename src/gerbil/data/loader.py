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

Speed. The sequences are those of gerbil 0.1.0 bit for bit (tests/fixtures/loader_reference.json), but
built in bulk: chunk positions for a whole batch of chunks from the document offsets at once, each
chunk's generator seeded without constructing a `SeedSequence` (`_ChunkRngs`), the examples of all the
batch's chunks made together (`gerbil.data.objectives.pack_examples`), and the packing buffer a numpy
array cut into sequences by reshaping. Chunks made beyond what the requested sequences need wait in a
look-ahead that is not part of the cursor, so `state_dict()` is exactly what the one-chunk-at-a-time
loader had. `benchmarks/loader_throughput.py` measures it: at 64 × 2048 on the 2-core dev box, 49-81M
tokens/s for causal/FIM/MLM/Blender against 10-13M before; at 8 × 256 15-56M, where MLM and Blender are
held back by what must stay per chunk (setting the generator, ~2 µs; MLM's ``rng.choice``, ~5 µs).

Off the critical path. `StepPrefetcher` builds the next steps' micro-batches (`step_micro_batches`: the
rule that splits a step into micro-batches, and a step across data-parallel ranks) in a background
thread while the current step trains, and hands each step over with the cursor a checkpoint written
after it must save.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from gerbil.data.objectives import _batched, concat_ranges, get_objective, mode_prefix, pack_examples
from gerbil.data.tokenizer import EOT_ID, IGNORE_INDEX

log = logging.getLogger(__name__)

ObjectiveFn = Callable[[np.ndarray, np.random.Generator], "tuple[np.ndarray, np.ndarray]"]


def resolve_objective(objective: str | ObjectiveFn) -> tuple[str, ObjectiveFn | None]:
    """(name, callable) for an objective name or callable; ``plain`` has no callable (windows path)."""
    if callable(objective):
        return getattr(objective, "name", type(objective).__name__.lower()), objective
    name = str(objective).strip().lower()
    if name == "plain":
        return "plain", None
    return name, get_objective(name)


# ------------------------------------------------------------------------------------------ chunk rngs
# The objective path gives chunk k the generator `np.random.default_rng([seed, k, 2])`. Constructing one
# costs ~9 µs (SeedSequence hashing + PCG64 seeding, measured on the 2-core dev box), as much as building
# a whole 256-token example in bulk. The same generator state can be computed for a batch of chunk
# indices with numpy (SeedSequence's hash is 32-bit integer arithmetic, the PCG64 seeding a few 128-bit
# Python int operations) and set on one reused Generator: ~2-4 µs per chunk, and identical draws,
# because a PCG64 generator's draws depend only on its state. `_fast_seeding_ok` checks the result
# against `default_rng` once per process and falls back to it if numpy ever seeds differently.
_M32, _M128 = 0xFFFFFFFF, (1 << 128) - 1
_SS_INIT_A, _SS_MULT_A, _SS_INIT_B, _SS_MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED  # SeedSequence
_SS_MIX_L, _SS_MIX_R = 0xCA01F9DD, 0x4973F715
_PCG64_MULT = 0x2360ED051FC65DA44385DF649FCCF645  # PCG_DEFAULT_MULTIPLIER_128


def _pcg64_states(seed: int, indices: np.ndarray) -> list[tuple[int, int]]:
    """(state, inc) of ``default_rng([seed, k, 2]).bit_generator`` for each k (0 ≤ seed, k < 2**32).

    numpy's SeedSequence (pool of 4 uint32 words, entropy [seed, k, 2]) run on all k at once: mix the
    entropy into the pool, generate 8 words (4 uint64), then PCG64's seeding: state = s, inc = 2·i + 1,
    stepped as pcg_setseq_128_srandom_r does.
    """
    n = len(indices)
    hc = _SS_INIT_A
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as in C

        def hashmix(v: np.ndarray) -> np.ndarray:
            nonlocal hc
            v = v ^ np.uint32(hc)
            hc = (hc * _SS_MULT_A) & _M32
            v = v * np.uint32(hc)
            return v ^ (v >> np.uint32(16))

        def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            r = np.uint32(_SS_MIX_L) * x - np.uint32(_SS_MIX_R) * y
            return r ^ (r >> np.uint32(16))

        entropy = [np.full(n, seed, np.uint32), np.asarray(indices, dtype=np.uint32), np.full(n, 2, np.uint32),
                   np.zeros(n, np.uint32)]  # the 4th pool word hashes a 0 (entropy shorter than the pool)
        pool = [hashmix(e) for e in entropy]
        for src in range(4):
            for dst in range(4):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        hc = _SS_INIT_B
        words = []
        for i in range(8):  # generate_state(4, uint64): 8 uint32 words cycling over the pool
            v = pool[i % 4] ^ np.uint32(hc)
            hc = (hc * _SS_MULT_B) & _M32
            v = v * np.uint32(hc)
            words.append(v ^ (v >> np.uint32(16)))
    w = np.stack(words, axis=1).astype(np.uint64)  # (n, 8)
    u = (w[:, 0::2] | (w[:, 1::2] << np.uint64(32))).tolist()  # (n, 4) little-endian uint64 pairs
    out = []
    for s_hi, s_lo, i_hi, i_lo in u:
        inc = ((((i_hi << 64) | i_lo) << 1) | 1) & _M128
        out.append(((((inc + ((s_hi << 64) | s_lo)) * _PCG64_MULT) + inc) & _M128, inc))
    return out


_FAST_SEEDING: bool | None = None


def _fast_seeding_ok() -> bool:
    """Whether `_pcg64_states` reproduces this numpy's `default_rng` (checked once per process)."""
    global _FAST_SEEDING
    if _FAST_SEEDING is None:
        ks = np.array([0, 1, 2, 12345, 2**31 + 7], dtype=np.int64)
        ok = True
        for seed in (0, 3, 2**32 - 1):
            for k, (state, inc) in zip(ks.tolist(), _pcg64_states(seed, ks)):
                ref = np.random.default_rng([seed, k, 2]).bit_generator.state
                ok &= ref.get("bit_generator") == "PCG64" and ref["state"] == {"state": state, "inc": inc}
        if not ok:
            log.warning("numpy %s seeds default_rng differently than expected; using default_rng per chunk "
                        "(slower, same sequences)", np.__version__)
        _FAST_SEEDING = ok
    return _FAST_SEEDING


class _ChunkRngs:
    """``rngs(c)``: the generator of the c-th chunk of a batch whose first global chunk index is ``first``:
    draws exactly what ``np.random.default_rng([seed, first + c, 2])`` draws.

    ``shared`` given (and fast seeding possible): one Generator re-seated per call, valid until the next
    call — for the built-in objectives, which never keep it. Without it: a fresh `default_rng` each time
    (any callable objective may keep its generator)."""

    def __init__(self, seed: int, first: int, n: int, shared: np.random.Generator | None):
        self.seed, self.first, self.n = seed, first, n
        fast = shared is not None and 0 <= seed < 2**32 and first + n <= 2**32 and _fast_seeding_ok()
        self.shared = shared if fast else None
        self._states: list[tuple[int, int]] | None = None

    def __call__(self, c: int) -> np.random.Generator:
        if self.shared is None:
            return np.random.default_rng([self.seed, self.first + c, 2])
        if self._states is None:  # all at once, on the first chunk that draws (causal never does)
            self._states = _pcg64_states(self.seed, np.arange(self.first, self.first + self.n))
        state, inc = self._states[c]
        self.shared.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc},
                                           "has_uint32": 0, "uinteger": 0}
        return self.shared


# ------------------------------------------------------------------------------------------ loader
def epoch_order(seed: int, epoch: int, n: int, shuffle: bool = True, stream: int = 1) -> np.ndarray:
    """The order of an epoch's n windows (stream 0) or documents (stream 1; also the encoder-decoder
    loader's): a permutation from a fresh generator per (seed, epoch, stream), independent of everything
    else in the run, or file order."""
    return np.random.default_rng([seed, epoch, stream]).permutation(n) if shuffle else np.arange(n)


@dataclass
class _Ahead:
    """Examples built for the chunks after the cursor, not yet in the buffer (not part of the cursor)."""

    tokens: np.ndarray  # packed examples with their EOTs, int64
    mask: np.ndarray  # bool, same length
    ends: np.ndarray  # (k,) end of chunk i's example (with EOT) in tokens
    after: np.ndarray  # (k, 3) the cursor (epoch, cursor, doc_offset) right after chunk i
    used: int = 0  # chunks already moved into the buffer


class Loader:
    """Packed, resumable `(inputs, targets)` batches of LongTensors, shape (micro_batch, seq_len).

    split: an object with ``tokens`` (1-D uint16 array), ``offsets`` (int64, n_docs + 1),
        ``n_docs`` and ``document(i)`` — `gerbil.data.store.Split`; document i is
        ``tokens[offsets[i] : offsets[i + 1] - 1]`` (its EOT excluded).
    objective: ``"plain"``, another name for `gerbil.data.objectives.get_objective`, or a callable
        ``(doc_tokens, rng) -> (tokens, loss_mask)``.
    chunk_tokens: document chunk length for the objective path (default: seq_len).
    shuffle: visit windows/documents in a seeded permutation per epoch (True) or in file order.

    Not thread-safe: one thread draws from a loader (with a `StepPrefetcher`, its producer thread).
    """

    #: Least tokens of examples built per batch of chunks (at most 256 sequences' worth): small
    #: sequences (8 × 256) would otherwise build ~9 chunks per call and pay the fixed per-batch cost
    #: (~0.3 ms of numpy calls) on each.
    MIN_BUILD_TOKENS = 1 << 16

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
        if self.chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be positive, got {self.chunk_tokens}")
        n_tokens = len(split.tokens)
        self._tokens = np.asarray(split.tokens)  # a plain ndarray view: fancy-indexing the memmap costs more
        if self.objective is None:
            self.n_windows = (n_tokens - 1) // self.seq_len
            if self.n_windows < 1:
                raise ValueError(f"split has {n_tokens} tokens: fewer than one sequence of {self.seq_len} + 1")
        elif int(split.n_docs) < 1 or n_tokens <= int(split.n_docs):
            raise ValueError("split has no non-empty documents")
        else:
            self._pack = pack_examples
            self._offsets = np.asarray(split.offsets, dtype=np.int64)
            # one Generator re-seated per chunk for the built-in objectives, which never keep it (_ChunkRngs)
            self._shared_rng = np.random.default_rng(0) if _batched(self.objective) else None
            self._min_build = min(self.MIN_BUILD_TOKENS, 256 * self.seq_len)
        # cursor (see state_dict)
        self.epoch = 0
        self.cursor = 0  # plain: next position in this epoch's window order; else: next document
        self.doc_offset = 0  # objective path: tokens of the current document already cut into chunks
        self.chunk_index = 0  # objective path: global chunk counter (seeds the objective's rng)
        self._buf_tokens = np.zeros(0, dtype=np.int64)  # objective path: packed tokens not yet emitted
        self._buf_mask = np.zeros(0, dtype=bool)
        self._ahead: _Ahead | None = None
        self._orders: dict[int, np.ndarray] = {}

    # ----------------------------------------------------------------------------- ordering
    def _order(self, epoch: int) -> np.ndarray:
        """Window (plain) or document (objective path) order of an epoch (the last two cached)."""
        order = self._orders.get(epoch)
        if order is None:
            n = self.n_windows if self.objective is None else int(self.split.n_docs)
            order = epoch_order(self.seed, epoch, n, self.shuffle, stream=0 if self.objective is None else 1)
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = order
        return order

    def _epoch_order(self) -> np.ndarray:
        """The current epoch's order."""
        return self._order(self.epoch)

    # ----------------------------------------------------------------------------- plain path
    def _plain_sequences(self, n: int) -> np.ndarray:
        """(n, T+1) windows; the epoch turns only when a window past its end is asked for."""
        T, picks = self.seq_len, []
        while n > 0:
            if self.cursor >= self.n_windows:
                self.epoch, self.cursor = self.epoch + 1, 0
            take = min(n, self.n_windows - self.cursor)
            picks.append(self._epoch_order()[self.cursor: self.cursor + take])
            self.cursor += take
            n -= take
        w = np.concatenate(picks)
        return self._tokens[w[:, None] * T + np.arange(T + 1)].astype(np.int64)  # (n, T+1)

    # ----------------------------------------------------------------------------- objective path
    def _plan_chunks(self, min_tokens: int, start: tuple[int, int, int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next chunks from the cursor, at least `min_tokens` of them counting one EOT each:
        (flat start, length, cursor after each chunk (k, 3)) — what `_next_chunk` returned one by one in
        0.1.0: each non-empty document of the epoch's order cut into `chunk_tokens` pieces, the cursor
        stepping past a document with its last piece and into the next epoch only when a chunk is asked
        for beyond the end."""
        ct, offsets = self.chunk_tokens, self._offsets
        epoch, cursor, off = start if start is not None else (self.epoch, self.cursor, self.doc_offset)
        mean_doc = max(1.0, len(self._tokens) / max(1, int(self.split.n_docs)))
        starts, lengths, after, have = [], [], [], 0
        while have < min_tokens:
            order = self._order(epoch)
            if cursor >= len(order):
                epoch, cursor, off = epoch + 1, 0, 0
                continue
            g = int((min_tokens - have) / min(mean_doc, ct)) + 2  # documents to cut now (a guess; loops)
            docs = order[cursor: cursor + g]
            first = offsets[docs].copy()  # (g,) where each document's remaining tokens start
            rest = offsets[docs + 1] - 1 - first
            first[0] += off
            rest[0] -= off
            n_chunks = (np.maximum(rest, 0) + ct - 1) // ct  # (g,) an empty document gives none
            d = np.repeat(np.arange(len(docs)), n_chunks)  # (k,) document of each chunk
            j = np.arange(len(d)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)  # chunk in document
            start = first[d] + j * ct
            length = np.minimum(ct, rest[d] - j * ct)
            last = j == n_chunks[d] - 1
            done_before = np.where(d == 0, off, 0) + (j + 1) * ct  # doc_offset after a non-final chunk
            aft = np.stack([np.full(len(d), epoch), cursor + d + last, np.where(last, 0, done_before)], axis=1)
            need = np.cumsum(length + 1)  # a lower bound of the examples' lengths with their EOTs
            k = int(np.searchsorted(need, min_tokens - have, side="left")) + 1  # chunks that reach min_tokens
            if k <= len(d):
                starts.append(start[:k]), lengths.append(length[:k]), after.append(aft[:k])
                break
            starts.append(start), lengths.append(length), after.append(aft)
            have += int(need[-1]) if len(need) else 0
            cursor, off = cursor + len(docs), 0
        return np.concatenate(starts), np.concatenate(lengths), np.concatenate(after)

    def _build(self, min_tokens: int, start: tuple[int, int, int] | None = None,
               chunk_index: int | None = None) -> _Ahead:
        """Examples of the next chunks after the cursor (or after `start` = (epoch, cursor, doc_offset) with
        `chunk_index`): at least `min_tokens` tokens if every example is at least its chunk plus the EOT (so
        for every built-in objective: one build per call)."""
        starts, lengths, after = self._plan_chunks(min_tokens, start)
        chunks = self._tokens[concat_ranges(starts, lengths)].astype(np.int64)
        first = self.chunk_index if chunk_index is None else chunk_index
        rngs = _ChunkRngs(self.seed, first, len(lengths), self._shared_rng)
        try:
            tokens, mask, ends = self._pack(self.objective, chunks, lengths, rngs, self.eot_id)
        except ValueError as e:  # a callable objective's bad output: name it
            raise ValueError(f"objective {self.objective_name!r}: {e}") from e
        return _Ahead(tokens, mask, ends, after)

    def _fill(self, need: int) -> None:
        """Move examples into the buffer until it holds `need` tokens: the fewest chunks that do, the
        cursor following the last one — as the one-chunk-at-a-time loop of 0.1.0 did."""
        while len(self._buf_tokens) < need:
            a = self._ahead
            if a is None or a.used == len(a.ends):
                a = self._ahead = self._build(max(need - len(self._buf_tokens), self._min_build))
            start = int(a.ends[a.used - 1]) if a.used else 0
            missing = need - len(self._buf_tokens)
            last = min(int(np.searchsorted(a.ends, start + missing, side="left")), len(a.ends) - 1)
            end = int(a.ends[last])
            self._buf_tokens = np.concatenate([self._buf_tokens, a.tokens[start:end]])
            self._buf_mask = np.concatenate([self._buf_mask, a.mask[start:end]])
            self.epoch, self.cursor, self.doc_offset = (int(v) for v in a.after[last])
            self.chunk_index += last + 1 - a.used
            a.used = last + 1

    def _objective_sequences(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, T) inputs and targets: sequence i is stream[i·T : i·T + T + 1] of the buffer."""
        T = self.seq_len
        self._fill(n * T + 1)
        tok, mask = self._buf_tokens, self._buf_mask
        x = tok[: n * T].reshape(n, T).copy()  # a copy: the tensor must not share the buffer
        y = np.where(mask[1: n * T + 1], tok[1: n * T + 1], IGNORE_INDEX).reshape(n, T)
        # the last token of a window is the first input of the next (as in the plain path)
        self._buf_tokens, self._buf_mask = tok[n * T:], mask[n * T:]
        return x, y

    # ----------------------------------------------------------------------------- public
    def examples_after(self, epoch: int, cursor: int, doc_offset: int, chunk_index: int,
                       min_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, loss mask, ends, cursor after each chunk (k, 3)) of the examples, each with its EOT, of
        the chunks after the given cursor — at least `min_tokens` tokens — without moving this loader:
        the example source of the encoder-decoder loader (data/encdec_loader.py)."""
        a = self._build(min_tokens, (epoch, cursor, doc_offset), chunk_index)
        return a.tokens, a.mask, a.ends, a.after

    def next_sequences(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `n` sequences as (inputs, targets) int64 CPU tensors of shape (n, seq_len)."""
        if n <= 0:  # draws nothing, moves nothing (as 0.1.0)
            empty = torch.zeros((0, self.seq_len), dtype=torch.int64)
            return empty, empty.clone()
        if self.objective is None:
            win = self._plain_sequences(n)
            x, y = win[:, :-1], win[:, 1:]
        else:
            x, y = self._objective_sequences(n)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_sequences(self.micro_batch)

    def state_dict(self) -> dict:
        """The cursor: plain Python ints and lists (JSON-able, loadable with torch weights_only).

        The same keys and values as gerbil 0.1.0's loader after the same sequences."""
        return {
            "objective": self.objective_name, "seed": self.seed, "seq_len": self.seq_len,
            "shuffle": self.shuffle, "chunk_tokens": self.chunk_tokens,
            "epoch": self.epoch, "cursor": self.cursor, "doc_offset": self.doc_offset,
            "chunk_index": self.chunk_index,
            "buf_tokens": self._buf_tokens.tolist(), "buf_mask": self._buf_mask.astype(np.int64).tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken; refuses a cursor from a different data layout."""
        for key in ("objective", "seed", "seq_len", "shuffle", "chunk_tokens"):
            mine = getattr(self, "objective_name" if key == "objective" else key)
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has {mine!r}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.doc_offset, self.chunk_index = int(state["doc_offset"]), int(state["chunk_index"])
        self._buf_tokens = np.asarray(state["buf_tokens"], dtype=np.int64).reshape(-1)
        self._buf_mask = np.asarray(state["buf_mask"], dtype=np.int64).reshape(-1) > 0
        self._ahead = None  # built for the old cursor


# ------------------------------------------------------------------------------------------ steps
class StepPlanLike(Protocol):
    """One optimizer step (`gerbil.train.resolve.StepPlan`): `full_sequences` of seq_len tokens plus, on
    the final step only, one shortened sequence of `last_len` tokens (0: none); `tokens` in all."""

    full_sequences: int
    last_len: int
    tokens: int


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")


def step_micro_batches(loader: Loader, plan: StepPlanLike, micro_batch: int, rank: int = 0,
                       world_size: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One step's sequences for one rank, as micro-batches of at most `micro_batch` sequences.

    Every rank draws the whole step — the `plan.full_sequences` full sequences, then the shortened one
    (the first `plan.last_len` positions of the next sequence) if any — so the cursor is global and the
    same on every rank. Of the n full sequences rank r keeps [r·n//W, (r+1)·n//W), in order, cut into
    micro-batches of `micro_batch`; the shortened sequence goes to the last rank, alone in its own final
    micro-batch. A rank may get no micro-batch (n < W). With one rank this is the rule of
    `_micro_batches` in train/loop.py (the same tensors; the cursor counts sequences, not calls).
    """
    _check_rank(rank, world_size)
    if micro_batch <= 0:
        raise ValueError(f"micro_batch must be positive, got {micro_batch}")
    n, out = int(plan.full_sequences), []
    if n > 0:
        x, y = loader.next_sequences(n)  # (n, T) for all ranks
        lo, hi = rank * n // world_size, (rank + 1) * n // world_size
        out = [(x[a: min(a + micro_batch, hi)], y[a: min(a + micro_batch, hi)]) for a in range(lo, hi, micro_batch)]
    if plan.last_len:  # exact budget: a last sequence of fewer than seq_len tokens
        x, y = loader.next_sequences(1)
        if rank == world_size - 1:
            out.append((x[:, : plan.last_len], y[:, : plan.last_len]))
    return out


@dataclass
class PreparedStep:
    """One step ready to train on this rank."""

    plan: Any  # the StepPlanLike it was built for
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]]  # (inputs, targets) CPU int64, pinned if asked
    counts: list[int]  # scored targets (≠ -100) per micro-batch, counted on the CPU
    loader_state: dict = field(repr=False)  # the loader's state_dict() after this step's sequences


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class StepPrefetcher:
    """Builds the next steps' micro-batches in a background thread (pinned memory on CUDA).

    ``for step in prefetcher`` (or ``next(prefetcher)``) yields a `PreparedStep` per plan, in order,
    built with `step_micro_batches(loader, plan, micro_batch, rank, world_size)` — the same tensors as
    the synchronous path — while the consumer trains on the previous ones; at most `depth` finished
    steps wait. ``step.loader_state`` is what a checkpoint written after training that step must save:
    the cursor right after *its* sequences, not the loader's live position, which the producer has
    already moved on. The loader belongs to the producer thread until `close()`; after it, the loader's
    position is wherever the producer stopped (load a `loader_state` to continue from a step).

    `plans` is the trainer's finite, deterministic step schedule. An exception in the producer is
    raised again by the `__next__` that reaches it (after the steps built before it). `close()` (also
    on leaving a ``with`` block, exception or not) stops the producer within one step's build time.
    ``pin_memory=True`` pins the batches (needs CUDA: used when training on a GPU, never on the CPU),
    so ``.to(device, non_blocking=True)`` copies asynchronously.

    Pacing. The producer shares the GIL with the training loop: numpy releases it in the bulk work, but
    a step's build still holds it for a millisecond or two of Python (the per-chunk draws, numpy call
    overhead). Built right when a step is taken, that lands on the loop's kernel launches, the moment
    the GPU waits for them (measured on the 2-core dev box with a 60 ms step holding the GIL for 10 ms:
    next() itself then took up to 12-17 ms at p95, `benchmarks/loader_throughput.py`). So while at least
    one step is ready, the producer starts the next build half a consumer step after the last
    ``next()`` — typically while the loop waits on the GPU with the GIL released; with none ready it
    builds at once. The steps and their order do not depend on the timing.
    """

    #: Where in the consumer's step (a fraction of the time between two next() calls) builds start
    #: while a step is ready.
    PACE = 0.5

    def __init__(self, loader: Loader, plans: Iterable[StepPlanLike], micro_batch: int,
                 pin_memory: bool = False, depth: int = 2, rank: int = 0, world_size: int = 1):
        _check_rank(rank, world_size)
        if depth < 1 or micro_batch < 1:
            raise ValueError(f"depth and micro_batch must be positive, got {depth}, {micro_batch}")
        self.loader, self.micro_batch, self.pin_memory = loader, int(micro_batch), bool(pin_memory)
        self.rank, self.world_size, self.depth = int(rank), int(world_size), int(depth)
        self._ready: deque[Any] = deque()  # PreparedStep, then _END or a _Failed
        self._cv = threading.Condition()
        self._stop = False
        self._finished = False
        self._last_get: float | None = None  # perf_counter of the last next()
        self._period: float | None = None  # the consumer's step time (moving average)
        self._thread = threading.Thread(target=self._produce, args=(iter(plans),), name="gerbil-step-prefetch",
                                        daemon=True)
        self._thread.start()

    def _prepare(self, plan: StepPlanLike) -> PreparedStep:
        batches = step_micro_batches(self.loader, plan, self.micro_batch, self.rank, self.world_size)
        counts = [int(np.count_nonzero(y.numpy() != IGNORE_INDEX)) for _, y in batches]
        if self.pin_memory:
            batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
        return PreparedStep(plan, batches, counts, self.loader.state_dict())

    def _wait_turn(self) -> bool:
        """Wait (under the lock) for room and, while a step is ready, for the paced start; False: stop."""
        while not self._stop:
            if len(self._ready) >= self.depth:
                self._cv.wait(0.5)
                continue
            if self._ready and self._last_get is not None and self._period is not None:
                delay = self._last_get + self.PACE * self._period - time.perf_counter()
                if delay > 0:
                    self._cv.wait(min(delay, 0.5))  # woken early by next() or close()
                    continue
            return True
        return False

    def _produce(self, plans: Iterator[StepPlanLike]) -> None:
        try:
            for plan in plans:
                with self._cv:
                    if not self._wait_turn():
                        return
                step = self._prepare(plan)
                with self._cv:
                    self._ready.append(step)
                    self._cv.notify_all()
            item: Any = _END
        except BaseException as e:  # noqa: BLE001 — handed to the consumer, raised there
            item = _Failed(e)
        with self._cv:
            self._ready.append(item)
            self._cv.notify_all()

    def __iter__(self) -> StepPrefetcher:
        return self

    def __next__(self) -> PreparedStep:
        with self._cv:
            while not self._finished and not self._ready:
                if not self._thread.is_alive():  # stopped by close()
                    self._finished = True
                    break
                self._cv.wait(0.5)  # returns as soon as a step is ready
            if self._finished:
                raise StopIteration
            item = self._ready.popleft()
            now = time.perf_counter()
            if self._last_get is not None:
                gap = now - self._last_get
                # a moving average that a long step (validation, a checkpoint) does not raise: pacing
                # errs towards building early
                self._period = gap if self._period is None else min(gap, 0.8 * self._period + 0.2 * gap)
            self._last_get = now
            self._cv.notify_all()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failed):
            self.close()
            raise item.error
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Stop the producer and wait for it (at most `timeout` s); idempotent."""
        with self._cv:
            self._stop = self._finished = True
            self._ready.clear()  # drop prepared steps (pinned memory) now
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("step prefetcher thread still running %.0f s after close()", timeout)

    def __enter__(self) -> StepPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


__all__ = ["Loader", "epoch_order", "StepPrefetcher", "PreparedStep", "StepPlanLike", "step_micro_batches", "eval_windows",
           "eval_batches", "resolve_objective", "EOT_ID", "IGNORE_INDEX"]
