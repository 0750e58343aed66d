"""Batches for encoder-decoders: token store split + Blender → packed rows of fixed shape, resumable.

A row is ``seq_len`` = T positions split into ``encoder_len`` Te encoder and Td = T − Te decoder positions
(`encdec.default_encoder_len`: T × the objective's expected encoder share, so both sides fill alike). A
batch of B rows is B·T tokens, encoder and decoder together — what ``--seq-len``, ``--batch-tokens`` and
the token budget count, padding included.

Examples are the decoder-only loader's (`loader.Loader.examples_after`: the documents in its seeded order,
cut into chunks of ``chunk_tokens`` — `encdec.default_chunk_len`, half the longest chunk whose every example
fits an empty row —, chunk k drawn from ``default_rng([seed, k, 2])``, a whole batch of chunks built at
once by `packing.pack_examples`), each split at its result token (`<fitm_result>`, `<mlm_end>`; a causal
example at ``1 + ⌊u·n⌋`` with ``u = encdec.split_uniform(seed, k)``): exactly `encdec.example` of the chunk,
built in bulk (tests/test_encdec_data.py compares the two). They are packed **first fit** into up to ``open_rows`` open rows: an
example goes into the oldest open row with room on both sides; if none has room and all are open, the
oldest row is emitted (padded) and a new one opened. Example j of a row carries segment j + 1 on both
sides (0 = padding), so the model keeps examples apart (model/encdec.py). With Blender at T = 2048 on
lognormal document lengths a row is about 90% real tokens with 16 open rows (simulated; the loader
reports its own figure, `fill`).

The cursor (`state_dict`) is the document walk (epoch, document, offset, chunk index) plus the open rows'
examples (at most ``open_rows`` × T tokens, plain JSON-able lists), so a resumed run continues with
exactly the next row; it counts rows, so the micro-batch may change between checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from gerbil.data.encdec import (Example, check_objective, default_chunk_len, default_encoder_len, max_chunk_len,
                                split_uniform)
from gerbil.data.loader import Loader
from gerbil.data.objectives import CAUSAL, FITM_RESULT, MLM_END, Objective, mode_prefix
from gerbil.data.tokenizer import EOT_ID, IGNORE_INDEX
from gerbil.errors import GerbilError


class EncDecBatch(NamedTuple):
    """One micro-batch of packed rows, int64 CPU tensors. The first two are the training loop's (inputs,
    targets); the model takes ``(encoder_ids, decoder_ids, encoder_segments, decoder_segments)``."""

    encoder_ids: torch.Tensor  # (B, Te), padding = pad id
    targets: torch.Tensor  # (B, Td), -100 = not scored (padding, loss_on="target")
    decoder_ids: torch.Tensor  # (B, Td): each example's decoder tokens shifted right behind the start id
    encoder_segments: torch.Tensor  # (B, Te): example j of the row = j + 1, padding 0
    decoder_segments: torch.Tensor  # (B, Td)


def rows_to_batch(rows: list[list[Example]], encoder_len: int, decoder_len: int, start_id: int = EOT_ID,
                  pad_id: int = EOT_ID) -> EncDecBatch:
    """Rows of examples (each row's examples fit: Σ encoder ≤ encoder_len, Σ decoder ≤ decoder_len) →
    an `EncDecBatch` of shape (len(rows), ·)."""
    n = len(rows)
    enc = np.full((n, encoder_len), pad_id, dtype=np.int64)
    dec_in = np.full((n, decoder_len), pad_id, dtype=np.int64)
    tgt = np.full((n, decoder_len), IGNORE_INDEX, dtype=np.int64)
    eseg = np.zeros((n, encoder_len), dtype=np.int64)
    dseg = np.zeros((n, decoder_len), dtype=np.int64)
    for r, row in enumerate(rows):
        a = b = 0
        for j, (e, d, m) in enumerate(row, start=1):
            enc[r, a: a + len(e)], eseg[r, a: a + len(e)] = e, j
            dec_in[r, b], dec_in[r, b + 1: b + len(d)] = start_id, d[:-1]
            tgt[r, b: b + len(d)] = np.where(m, d, IGNORE_INDEX)
            dseg[r, b: b + len(d)] = j
            a, b = a + len(e), b + len(d)
        if a > encoder_len or b > decoder_len:
            raise ValueError(f"row {r} holds {a} encoder and {b} decoder tokens: more than {encoder_len}, {decoder_len}")
    return EncDecBatch(*(torch.from_numpy(t) for t in (enc, tgt, dec_in, eseg, dseg)))


@dataclass
class _Ahead:
    """Examples built for the chunks after the cursor (not part of the cursor): example i is
    tokens[starts[i]:ends[i]], its encoder part ending at cuts[i]; after[i] the cursor past its chunk."""

    tokens: np.ndarray
    mask: np.ndarray
    starts: list[int]
    cuts: list[int]
    ends: list[int]
    after: list[list[int]]
    used: int = 0


class EncDecLoader:
    """Packed, resumable `EncDecBatch`es of ``micro_batch`` rows (module docstring).

    split: a `gerbil.data.store.Split` (``tokens``, ``offsets``, ``n_docs``); objective: ``causal``, ``fim``,
    ``mlm``, ``blender`` or such an `Objective` with its options (`encdec.check_objective`);
    encoder_len / chunk_tokens: default `encdec.default_encoder_len` / `encdec.default_chunk_len`.
    Not thread-safe (one producer thread, as `loader.Loader`).
    """

    #: Least tokens of examples built at once (the decoder-only loader's batch)
    MIN_BUILD_TOKENS = 1 << 16

    def __init__(self, split: Any, seq_len: int, micro_batch: int, objective: str | Objective = "blender",
                 seed: int = 0, encoder_len: int | None = None, chunk_tokens: int | None = None, shuffle: bool = True,
                 open_rows: int = 16, eot_id: int = EOT_ID, start_id: int = EOT_ID, pad_id: int = EOT_ID):
        if seq_len < 2 or micro_batch <= 0 or open_rows <= 0:
            raise GerbilError(f"need seq_len >= 2 and positive micro_batch and open_rows, got {seq_len}, "
                              f"{micro_batch}, {open_rows}")
        self.objective = check_objective(objective)
        self.split, self.seq_len, self.micro_batch = split, int(seq_len), int(micro_batch)
        self.seed, self.shuffle, self.open_rows = int(seed), bool(shuffle), int(open_rows)
        self.eot_id, self.start_id, self.pad_id = int(eot_id), int(start_id), int(pad_id)
        self.encoder_len = int(encoder_len) if encoder_len else default_encoder_len(self.seq_len, self.objective)
        self.decoder_len = self.seq_len - self.encoder_len
        if not 0 < self.encoder_len < self.seq_len:
            raise GerbilError(f"encoder_len must be in (0, {self.seq_len}), got {self.encoder_len}")
        longest = max_chunk_len(self.objective, self.encoder_len, self.decoder_len)
        self.chunk_tokens = int(chunk_tokens) if chunk_tokens else default_chunk_len(
            self.objective, self.encoder_len, self.decoder_len)
        if not 0 < self.chunk_tokens <= longest:
            raise GerbilError(f"chunk_tokens {self.chunk_tokens}: examples of longer chunks than {longest} tokens "
                              f"do not fit a row of {self.encoder_len} + {self.decoder_len}")
        if int(split.n_docs) < 1 or len(split.tokens) <= int(split.n_docs):
            raise GerbilError("split has no non-empty documents")
        # the decoder-only loader makes the examples (never advanced itself: examples_after)
        self._src = Loader(split, self.seq_len, 1, objective=self.objective, seed=self.seed,
                           chunk_tokens=self.chunk_tokens, shuffle=self.shuffle, eot_id=self.eot_id)
        self.epoch = self.cursor = self.doc_offset = self.chunk_index = 0
        self._rows: list[list[Example]] = []  # open rows, oldest first (part of the cursor)
        self._used: list[tuple[int, int]] = []  # (encoder, decoder) tokens of each open row
        self._ahead: _Ahead | None = None  # examples built past the cursor (not part of it)
        self.rows_made = self.real_tokens = 0  # this process's fill statistics (not part of the cursor)

    # ----------------------------------------------------------------------------- examples and rows
    def _build(self, min_tokens: int) -> _Ahead:
        """The examples after the cursor (≥ `min_tokens` tokens), each with its split point."""
        tokens, mask, ends, after = self._src.examples_after(self.epoch, self.cursor, self.doc_offset,
                                                            self.chunk_index, min_tokens)
        k = len(ends)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        split = np.zeros(k, dtype=np.int64)
        res = np.flatnonzero((tokens == FITM_RESULT) | (tokens == MLM_END))
        owner = np.searchsorted(ends, res, side="right")  # the example each result token ends the context of
        causal = tokens[starts] == CAUSAL
        if len(np.unique(owner)) != len(owner) or len(owner) != int((~causal).sum()):
            raise GerbilError("documents hold Blender special tokens (<fitm_result>, <mlm_end>): a FIM or MLM "
                              "example cannot be split at its result token")
        split[owner] = res - starts[owner]
        n = ends[causal] - starts[causal] - 2  # the chunk: without <causal> and the EOT
        u = split_uniform(self.seed, self.chunk_index + np.flatnonzero(causal))
        split[causal] = 1 + np.minimum(n - 1, (u * n).astype(np.int64))
        return _Ahead(tokens, mask > 0, starts.tolist(), (starts + split).tolist(), ends.tolist(), after.tolist())

    def _place(self, ex: Example) -> list[Example] | None:
        """Put one example in the first open row with room; returns the row it pushed out, if any."""
        e, d = len(ex[0]), len(ex[1])
        for k, (row, (ue, ud)) in enumerate(zip(self._rows, self._used)):
            if ue + e <= self.encoder_len and ud + d <= self.decoder_len:
                row.append(ex)
                self._used[k] = (ue + e, ud + d)
                return None
        done = None
        if len(self._rows) >= self.open_rows:
            done = self._rows.pop(0)
            self._used.pop(0)
        self._rows.append([ex])
        self._used.append((e, d))
        return done

    def next_rows(self, n: int) -> EncDecBatch:
        """The next ``n`` packed rows."""
        out: list[list[Example]] = []
        while len(out) < n:
            a = self._ahead
            if a is None or a.used == len(a.ends):
                a = self._ahead = self._build(max((n - len(out)) * self.seq_len, self.MIN_BUILD_TOKENS))
            i = a.used
            a.used += 1
            s0, cut, e0 = a.starts[i], a.cuts[i], a.ends[i]
            self.epoch, self.cursor, self.doc_offset = a.after[i]
            self.chunk_index += 1
            done = self._place((a.tokens[s0:cut], a.tokens[cut:e0], a.mask[cut:e0]))
            if done is not None:
                out.append(done)
        self.rows_made += len(out)
        self.real_tokens += sum(len(x[0]) + len(x[1]) for row in out for x in row)
        return rows_to_batch(out, self.encoder_len, self.decoder_len, self.start_id, self.pad_id)

    def next_sequences(self, n: int) -> EncDecBatch:
        """`next_rows` under the decoder-only loader's name (the training loop's steps, data/steps.py)."""
        return self.next_rows(n)

    def shorten(self, batch: EncDecBatch, length: int) -> EncDecBatch:
        """The first ``length`` positions of a row, as an exact budget's last step takes them: the encoder
        keeps its share (Te / T of them, at least one), the decoder the rest (at least one). A decoder token
        whose example lost every encoder token is left unscored, in segment 0 (it then attends to the whole
        encoder row: no empty attention row)."""
        te = min(self.encoder_len, max(1, round(length * self.encoder_len / self.seq_len)))
        td = min(self.decoder_len, max(1, length - te))
        enc, tgt, dec, eseg, dseg = (t[:, :w].clone() for t, w in zip(batch, (te, td, td, te, td)))
        orphan = ~(dseg[:, :, None] == eseg[:, None, :]).any(-1) & (dseg > 0)
        tgt[orphan], dseg[orphan] = IGNORE_INDEX, 0
        return EncDecBatch(enc, tgt, dec, eseg, dseg)

    @property
    def fill(self) -> float:
        """Real (non-padding) tokens per row position over the rows this loader made."""
        return self.real_tokens / max(1, self.rows_made * self.seq_len)

    def __iter__(self) -> EncDecLoader:
        return self

    def __next__(self) -> EncDecBatch:
        return self.next_rows(self.micro_batch)

    # ----------------------------------------------------------------------------- cursor
    _LAYOUT = ("objective", "seed", "seq_len", "encoder_len", "chunk_tokens", "shuffle", "open_rows")

    def state_dict(self) -> dict:
        """The cursor: plain ints and lists (JSON-able, loadable with torch weights_only)."""
        return {
            "objective": self.objective.to_dict(), "seed": self.seed, "seq_len": self.seq_len,
            "encoder_len": self.encoder_len, "chunk_tokens": self.chunk_tokens, "shuffle": self.shuffle,
            "open_rows": self.open_rows, "epoch": self.epoch, "cursor": self.cursor, "doc_offset": self.doc_offset,
            "chunk_index": self.chunk_index,
            "rows": [[[e.tolist(), d.tolist(), m.astype(np.int64).tolist()] for e, d, m in row] for row in self._rows],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken; a cursor of another data layout is refused."""
        mine = self.state_dict()
        for key in self._LAYOUT:
            if key in state and state[key] != mine[key]:
                raise GerbilError(f"loader state has {key}={state[key]!r} but this loader has {mine[key]!r}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.doc_offset, self.chunk_index = int(state["doc_offset"]), int(state["chunk_index"])
        self._rows = [[(np.asarray(e, dtype=np.int64), np.asarray(d, dtype=np.int64), np.asarray(m) > 0)
                       for e, d, m in row] for row in state["rows"]]
        self._used = [(sum(len(x[0]) for x in row), sum(len(x[1]) for x in row)) for row in self._rows]
        self._ahead = None  # built for the old cursor


def eval_rows(split: Any, seq_len: int, max_tokens: int, encoder_len: int, objective: str | None = "blender",
              eot_id: int = EOT_ID, start_id: int = EOT_ID) -> EncDecBatch:
    """The fixed validation set of an encoder-decoder: prefix-LM rows over the raw validation tokens.

    Row i reads the next ``encoder_len − p + decoder_len`` raw tokens (p = the objective's causal mode
    prefix, `<causal>` for causal and Blender): the first ones go to the encoder behind the prefix, the
    last ``decoder_len`` are the decoder's targets, every one scored. N = ``max_tokens // seq_len`` rows (at
    least 1, at most what the split holds), so N·Td tokens are scored, the same for every run of one shape.
    """
    prefix = np.asarray(mode_prefix(objective), dtype=np.int64)
    te, td = int(encoder_len) - len(prefix), int(seq_len) - int(encoder_len)
    if te < 0 or td < 1:
        raise GerbilError(f"encoder_len {encoder_len} leaves no room in a {seq_len}-token row")
    span = te + td
    n = min(max(1, int(max_tokens) // int(seq_len)), len(split.tokens) // span)
    if n < 1:
        raise GerbilError(f"validation split has {len(split.tokens)} tokens: fewer than one row of {span}")
    raw = np.asarray(split.tokens[: n * span], dtype=np.int64).reshape(n, span)
    rows = [[(np.concatenate([prefix, r[:te]]), r[te:], np.ones(td, dtype=bool))] for r in raw]
    return rows_to_batch(rows, int(encoder_len), td, start_id, eot_id)


__all__ = ["EncDecBatch", "EncDecLoader", "rows_to_batch", "eval_rows"]
