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
batch's chunks made together (`gerbil.data.packing.pack_examples`), and the packing buffer a numpy
array cut into sequences by reshaping. Chunks made beyond what the requested sequences need wait in a
look-ahead that is not part of the cursor, so `state_dict()` is exactly what the one-chunk-at-a-time
loader had. `benchmarks/loader_throughput.py` measures it: at 64 × 2048 on the 2-core dev box, 49-81M
tokens/s for causal/FIM/MLM/Blender against 10-13M before; at 8 × 256 15-56M, where MLM and Blender are
held back by what must stay per chunk (setting the generator, ~2 µs; MLM's ``rng.choice``, ~5 µs).

Steps and validation live beside it: `gerbil.data.steps` splits steps into micro-batches and prefetches
them (`StepPrefetcher`), `gerbil.data.validation` is the fixed validation set (`eval_batches`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gerbil.data.objectives import get_objective
from gerbil.data.packing import concat_ranges, is_batched, pack_examples
from gerbil.data.tokenizer import EOT_ID, IGNORE_INDEX
from gerbil.errors import OptionError

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
            raise OptionError(f"seq_len and micro_batch must be positive, got {seq_len}, {micro_batch}")
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
            raise OptionError(f"chunk_tokens must be positive, got {self.chunk_tokens}")
        n_tokens = len(split.tokens)
        self._tokens = np.asarray(split.tokens)  # a plain ndarray view: fancy-indexing the memmap costs more
        if self.objective is None:
            self.n_windows = (n_tokens - 1) // self.seq_len
            if self.n_windows < 1:
                raise OptionError(f"split has {n_tokens} tokens: fewer than one sequence of {self.seq_len} + 1")
        elif int(split.n_docs) < 1 or n_tokens <= int(split.n_docs):
            raise OptionError("split has no non-empty documents")
        else:
            self._pack = pack_examples
            self._offsets = np.asarray(split.offsets, dtype=np.int64)
            # one Generator re-seated per chunk for the built-in objectives, which never keep it (_ChunkRngs)
            self._shared_rng = np.random.default_rng(0) if is_batched(self.objective) else None
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


__all__ = ["Loader", "epoch_order", "resolve_objective", "EOT_ID", "IGNORE_INDEX"]
