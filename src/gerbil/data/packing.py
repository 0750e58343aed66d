"""The examples of a whole batch of chunks at once (`pack_examples`): what `Objective.__call__` makes one chunk
at a time, built with one gather and one scatter per batch (the loader's fast path, `gerbil.data.loader`)."""
from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from gerbil.data.objectives import (CAUSAL, FITM_RESULT, FITM_START, MLM_END, MLM_START, MULTIPLE_TOK_MASK,
                                    SINGLE_TOK_MASK, Blender, Causal, FillInMiddle, MaskedLM, Objective, Plain)
from gerbil.data.tokenizer import EOT_ID


# ---------------------------------------------------------------------------------------- batched
# The loader turns every chunk of the training stream into an example. One `__call__` per chunk costs
# ~20-40 µs of numpy call overhead on small arrays, and the old loader's Python lists cost more: 21-26 ms
# per 64 × 2048 step. `pack_examples` makes the same examples for a whole batch of chunks, in two phases:
#
# 1. draw: per chunk, exactly the generator calls `__call__` makes, in the same order — the numbers drawn
#    define the output, so they are drawn one chunk at a time as before (the only per-chunk Python loop);
# 2. build: every example is a concatenation of *segments* — a special token, or a run of the chunk's
#    tokens (prefix, suffix, middle, the MLM text) — so an objective fills one row of a (chunks ×
#    segments) table of (source index, length, loss mask) per chunk, and the whole batch is gathered
#    with one index built by `concat_ranges` and one take; single tokens (MLM's masks and answers) are
#    then written in place with one scatter. Rows are padded with zero-length segments, so tasks of
#    different shapes (Blender) share one table.
#
# Only the exact built-in classes take the batched route; a subclass (it may override `__call__`,
# `split`, `format` …) and any other callable are called once per chunk, so the output is always what
# `__call__` returns (tests/test_objectives.py compares the two on every objective).

# Index of each special token in the packer's source array ``ext = specials | EOT | chunk tokens | extra``.
_S_FITM_START, _S_MULTIPLE_TOK_MASK, _S_FITM_RESULT, _S_CAUSAL, _S_MLM_START, _S_SINGLE_TOK_MASK, _S_MLM_END, \
    _S_EOT = range(8)
_SPECIAL_IDS = (FITM_START, MULTIPLE_TOK_MASK, FITM_RESULT, CAUSAL, MLM_START, SINGLE_TOK_MASK, MLM_END)
_HEAD = len(_SPECIAL_IDS) + 1  # the specials and the EOT come first in ext
_FROM_EXTRA = -1  # loss-mask value of a segment whose mask is the per-chunk output's own (see _Packer.done)


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop (int64)."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    if len(ends) == 0 or ends[-1] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1], dtype=np.int64)


class _Packer:
    """The segment table of one batch of chunks, and the per-chunk outputs its segments may point to."""

    def __init__(self, chunks: np.ndarray, lengths: np.ndarray):
        self.chunks, self.lengths = chunks, lengths  # (sum(lengths),) int64 tokens; (n,) int64
        self.n: list[int] = lengths.tolist()  # the same as Python ints, for the per-chunk draws
        self.starts = np.cumsum(lengths) - lengths  # chunk c = chunks[starts[c] : starts[c] + lengths[c]]
        self.base = _HEAD + self.starts  # chunk c's first token in ext
        self.groups: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (ids, src, len, mask)
        self.extra: list[tuple[int, np.ndarray, np.ndarray]] = []  # (chunk, tokens, mask) from __call__
        self.over: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (chunk, position in example, src)

    def chunk(self, c: int) -> np.ndarray:
        return self.chunks[self.starts[c]: self.starts[c] + self.lengths[c]]

    def rows(self, ids: np.ndarray, src: np.ndarray, length: np.ndarray, mask: Any) -> None:
        """The segments of chunks ``ids``: ``src``/``length`` (len(ids), W), ``mask`` (W,) or (len(ids), W)."""
        if len(ids):
            self.groups.append((ids, src, length, np.broadcast_to(np.asarray(mask, dtype=np.int8), src.shape)))

    def overwrite(self, chunk: np.ndarray, pos: np.ndarray, src: np.ndarray) -> None:
        """After the segments: token ``pos`` of chunk ``chunk[i]``'s example becomes ``ext[src[i]]`` (the
        loss mask stays the segment's) — single tokens (MLM's masks and answers) without a segment each."""
        self.over.append((chunk, pos, src))

    def done(self, c: int, out: tuple[np.ndarray, np.ndarray]) -> None:
        """Chunk ``c``'s example as made by a per-chunk call: one segment with its own loss mask."""
        tokens = np.asarray(out[0], dtype=np.int64).reshape(-1)
        mask = np.asarray(out[1]).reshape(-1)
        if tokens.shape != mask.shape:
            raise ValueError(f"objective returned tokens {tokens.shape} and loss_mask {mask.shape} "
                             f"of different shapes")
        self.extra.append((c, tokens, mask > 0))

    def pack(self, eot_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.lengths)
        extra_at = _HEAD + len(self.chunks)
        if self.extra:
            ids = np.array([c for c, _, _ in self.extra], dtype=np.int64)
            lens = np.array([len(t) for _, t, _ in self.extra], dtype=np.int64)
            self.rows(ids, (extra_at + np.cumsum(lens) - lens)[:, None], lens[:, None], [_FROM_EXTRA])
        width = max((src.shape[1] for _, src, _, _ in self.groups), default=0) + 1  # + the EOT column
        src = np.zeros((n, width), dtype=np.int64)
        length = np.zeros((n, width), dtype=np.int64)  # a row no group fills (an empty chunk): EOT only
        mask = np.ones((n, width), dtype=np.int8)
        for ids, s, ln, m in self.groups:
            src[ids, : s.shape[1]], length[ids, : s.shape[1]], mask[ids, : s.shape[1]] = s, ln, m
        src[:, -1], length[:, -1] = _S_EOT, 1  # the EOT after every example is a target (mask 1)
        ends = np.cumsum(length.sum(axis=1))
        example_start = ends - length.sum(axis=1)
        keep = length.ravel() > 0
        src, length, mask = src.ravel()[keep], length.ravel()[keep], mask.ravel()[keep]
        idx = concat_ranges(src, length)
        ext = np.concatenate([np.array(_SPECIAL_IDS + (eot_id,), dtype=np.int64), self.chunks]
                             + [t for _, t, _ in self.extra])
        tokens = ext[idx]
        for chunk, pos, at in self.over:
            tokens[example_start[chunk] + pos] = ext[at]
        loss_mask = np.repeat(mask, length)
        if self.extra:
            own = np.concatenate([np.zeros(extra_at, dtype=bool)] + [m for _, _, m in self.extra])
            pick = loss_mask == _FROM_EXTRA
            loss_mask[pick] = own[idx[pick]]
        return tokens, loss_mask > 0, ends


def _rows_plain(obj: Plain, pk: _Packer, ids: np.ndarray, params: list) -> None:
    pk.rows(ids, pk.base[ids][:, None], pk.lengths[ids][:, None], [1])


def _rows_causal(obj: Causal, pk: _Packer, ids: np.ndarray, params: list) -> None:
    # [<causal>] chunk; with loss_on="target" the mode token is no target
    src = np.stack([np.full(len(ids), _S_CAUSAL), pk.base[ids]], axis=1)
    length = np.stack([np.ones(len(ids), dtype=np.int64), pk.lengths[ids]], axis=1)
    pk.rows(ids, src, length, [obj.loss_on == "all", 1])


def _draw_fim(obj: FillInMiddle, pk: _Packer, c: int, rng: np.random.Generator) -> tuple | None:
    if obj.char_level:  # re-tokenized pieces are not runs of the chunk: __call__ makes the example
        pk.done(c, FillInMiddle.__call__(obj, pk.chunk(c), rng))
        return None
    # split()'s ``rng.integers(0, n + 1, size=2)`` as two scalar draws: the same two bounded draws from the
    # same stream (both fill one int at a time from next_uint32; checked in tests/test_objectives.py),
    # without the size=2 path's np.prod (2 µs instead of 5 µs per chunk)
    high = pk.n[c] + 1
    a, b = int(rng.integers(0, high)), int(rng.integers(0, high))
    spm = obj.spm_rate > 0 and rng.random() < obj.spm_rate  # as __call__
    return (a, b, spm) if a <= b else (b, a, spm)


def _rows_fim(obj: FillInMiddle, pk: _Packer, ids: np.ndarray, params: list) -> None:
    i, j, spm = (np.array(v, dtype=np.int64) for v in zip(*params))
    b, L, one = pk.base[ids], pk.lengths[ids], np.ones(len(ids), dtype=np.int64)
    # PSM: <fitm_start> prefix <multiple_tok_mask> suffix <fitm_result> middle
    # SPM: <fitm_start> <multiple_tok_mask> suffix <fitm_result> prefix middle   (6 segments each, shape (m, 6))
    psm_src = np.stack([one * _S_FITM_START, b, one * _S_MULTIPLE_TOK_MASK, b + j, one * _S_FITM_RESULT, b + i], 1)
    psm_len = np.stack([one, i, one, L - j, one, j - i], 1)
    spm_src = np.stack([one * _S_FITM_START, one * _S_MULTIPLE_TOK_MASK, b + j, one * _S_FITM_RESULT, b, b + i], 1)
    spm_len = np.stack([one, one, L - j, one, i, j - i], 1)
    s = spm.astype(bool)[:, None]
    a = int(obj.loss_on == "all")  # "target": only the middle, the last segment in both orders
    pk.rows(ids, np.where(s, spm_src, psm_src), np.where(s, spm_len, psm_len), [a, a, a, a, a, 1])


def _draw_mlm(obj: MaskedLM, pk: _Packer, c: int, rng: np.random.Generator) -> np.ndarray:
    n = pk.n[c]
    return rng.choice(n, size=obj.n_masked(n), replace=False)  # as __call__


def _rows_mlm(obj: MaskedLM, pk: _Packer, ids: np.ndarray, params: list) -> None:
    # <mlm_start> chunk <mlm_end> answers: 4 segments (the answers' is a placeholder of k tokens), then
    # each masked position's text token becomes <single_tok_mask> and the t-th answer its chunk token
    m, L, b = len(ids), pk.lengths[ids], pk.base[ids]
    k = np.array([len(p) for p in params], dtype=np.int64)  # masks per chunk, n_masked(L)
    chunk = np.repeat(ids, k)  # (sum k,) the chunk of each masked position
    row = np.repeat(np.arange(m), k)
    # each chunk's positions sorted (format's np.unique; they are distinct) by one sort of row-offset keys
    stride = int(L.max()) + 1
    pos = np.sort(np.concatenate(params).astype(np.int64) + row * stride) - row * stride
    rank = np.arange(len(pos)) - np.repeat(np.cumsum(k) - k, k)  # t: the t-th mask of its chunk
    one = np.ones(m, dtype=np.int64)
    src = np.stack([one * _S_MLM_START, b, one * _S_MLM_END, b], axis=1)
    length = np.stack([one, L, one, k], axis=1)
    a = int(obj.loss_on == "all")  # "target": only the answers
    pk.rows(ids, src, length, [a, a, a, 1])
    pk.overwrite(chunk, 1 + pos, np.full(len(pos), _S_SINGLE_TOK_MASK))
    pk.overwrite(chunk, np.repeat(L + 2, k) + rank, np.repeat(b, k) + pos)


# type → (draw one chunk's numbers or None if it draws none, add the rows of chunks given their draws)
_BATCHED: dict[type, tuple[Any, Any]] = {
    Plain: (None, _rows_plain), Causal: (None, _rows_causal),
    FillInMiddle: (_draw_fim, _rows_fim), MaskedLM: (_draw_mlm, _rows_mlm),
}


def is_batched(objective: Any) -> bool:
    if type(objective) is Blender:
        return all(type(t) in _BATCHED for t in objective.tasks)
    return type(objective) in _BATCHED


def _add_rows(task: Objective, pk: _Packer, ids: list[int], params: list) -> None:
    made = [t for t, p in enumerate(params) if p is not None]  # None: made by __call__ (pk.done)
    if made:
        _BATCHED[type(task)][1](task, pk, np.asarray(ids, dtype=np.int64)[made], [params[t] for t in made])


def pack_examples(objective: Any, chunks: np.ndarray, lengths: np.ndarray, rngs: Any,
                  eot_id: int = EOT_ID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of chunks' examples packed into one stream, each followed by ``eot_id`` with loss mask 1.

    chunks: the chunks' tokens concatenated (int64); lengths: (n,) their lengths; rngs: ``rngs(c)`` is
    chunk ``c``'s generator (the loader's, from (seed, chunk index)), asked for only by chunks whose
    objective draws; objective: an `Objective` or any callable ``(chunk, rng) -> (tokens, loss_mask)``.
    Returns ``(tokens int64, loss_mask bool, ends)``: example ``c`` and its EOT are
    ``tokens[ends[c - 1] : ends[c]]`` — exactly ``objective(chunk_c, rngs(c))`` plus the EOT, for every
    objective; the built-in ones are built for all chunks at once (see the comment above).
    """
    chunks = np.asarray(chunks, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    pk = _Packer(chunks, lengths)
    if not is_batched(objective):
        for c in range(len(lengths)):
            pk.done(c, objective(pk.chunk(c), rngs(c)))
        return pk.pack(eot_id)
    ids = np.flatnonzero(lengths > 0).tolist()  # an empty chunk's example is empty (no draws)
    if type(objective) is Blender:
        by_task: list[tuple[list[int], list]] = [([], []) for _ in objective.tasks]
        cum, weights = objective._cum.tolist(), objective.weights
        for c in ids:
            rng = rngs(c)
            # Blender.choose without its np.searchsorted call (4 µs): the same float comparisons
            k = min(bisect.bisect_right(cum, rng.random()), 2)
            while weights[k] == 0:
                k -= 1
            task = objective.tasks[k]  # then the task's own draws, as Blender.__call__
            draw = _BATCHED[type(task)][0]
            by_task[k][0].append(c)
            by_task[k][1].append(draw(task, pk, c, rng) if draw is not None else ())
        for task, (t_ids, t_params) in zip(objective.tasks, by_task):
            _add_rows(task, pk, t_ids, t_params)
    else:
        draw = _BATCHED[type(objective)][0]
        params = [draw(objective, pk, c, rngs(c)) for c in ids] if draw is not None else [()] * len(ids)
        _add_rows(objective, pk, ids, params)
    return pk.pack(eot_id)


__all__ = ["concat_ranges", "is_batched", "pack_examples"]
