"""Batched log-likelihood scoring of (context ids, continuation ids) requests on a gerbil GPT.

Why it is faster than the harness with the same numbers: requests are scored *per item* — the token
prefix that all of an item's requests share (hellaswag's context, winogrande's sentence start) is put
once in a row, followed by each request's own suffix, with an attention mask (`tree_mask`) so every
suffix sees only the shared prefix and itself, and rotary positions that continue from the prefix
(`GPT.forward(idx, positions, attn_mask)`). Rows are sorted by length and batched to a token budget,
so padding is a few tokens per batch; and the 50k-vocabulary head — most of a tiny model's FLOPs — is
applied only at the positions whose next token is scored, never at context or padding positions.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gerbil.errors import GerbilError

if TYPE_CHECKING:
    import torch


@dataclass
class _Row:
    tokens: list[int]
    pos: list[int]
    seg: list[int]  # -1 = shared prefix (seen by all), i = request i's own suffix
    group: int
    # per scored request: (request index within group, row positions, target ids)
    scored: list[tuple[int, list[int], list[int]]]
    shared: bool  # needs the tree mask (more than one segment)


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs[1:]):
            return k
    return n


def _build_rows(group: Sequence[tuple[list[int], list[int]]], gi: int, max_length: int,
                share: bool, max_row: int) -> list[_Row]:
    """One row for the group (shared prefix + suffixes), or one row per request."""
    inps, conts = [], []
    for ctx, cont in group:
        if not cont:
            raise GerbilError("a request has an empty continuation (nothing to score)")
        if len(cont) > max_length:
            raise GerbilError(f"a continuation of {len(cont)} tokens exceeds the model's {max_length}")
        full = (ctx + cont)[-(max_length + 1):]  # HFLM: truncate from the left
        inps.append(full[:-1])
        conts.append(cont)
    if share and len(group) > 1:
        P = _common_prefix(inps)
        total = P + sum(len(x) - P for x in inps)
        if P > 0 and total <= max_row:
            tokens, pos, seg = list(inps[0][:P]), list(range(P)), [-1] * P
            scored = []
            for i, (inp, cont) in enumerate(zip(inps, conts)):
                off = len(tokens)
                tokens += inp[P:]
                pos += range(P, len(inp))
                seg += [i] * (len(inp) - P)
                first = len(inp) - len(cont)  # input index whose logits predict cont[0]
                rowpos = [k if k < P else off + (k - P) for k in range(first, len(inp))]
                scored.append((i, rowpos, cont))
            return [_Row(tokens, pos, seg, gi, scored, True)]
    rows = []
    for i, (inp, cont) in enumerate(zip(inps, conts)):
        n = len(inp)
        rows.append(_Row(list(inp), list(range(n)), [-1] * n, gi,
                         [(i, list(range(n - len(cont), n)), cont)], False))
    return rows


def tree_mask(seg: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) attention mask of rows that hold a shared prefix followed by several suffixes.

    seg: (B, T) segment ids, -1 = the shared prefix (seen by all), i = request i's own suffix, -2 =
    padding. Token a attends to token b iff b is not after a and b is in the shared prefix or in a's own
    segment — with rotary positions that continue from the prefix in each suffix, mathematically the
    computation of separate rows (a causal model's state at a position depends only on the tokens
    before it).
    """
    import torch

    T = seg.shape[1]
    ar = torch.arange(T, device=seg.device)
    causal = ar[None, :] <= ar[:, None]  # (T, T): [a, b] = b <= a
    sa, sb = seg[:, :, None], seg[:, None, :]  # (B, T, 1), (B, 1, T)
    return (causal[None] & ((sb == -1) | (sb == sa)))[:, None]  # (B, 1, T, T)


#: Rows of logits per head chunk on CPU (×50k vocabulary × 4 bytes = the buffer): large enough that
#: the matmul runs near full speed (MKL re-packs the 50k×d weight on every call, which dominates
#: below ~256 rows), small enough to stay out of the way; measured on a 2-core EPYC.
HEAD_CHUNK_CPU = 512


class Scorer:
    """Batched log-likelihood scoring of (context ids, continuation ids) requests on a gerbil GPT.

    ``score(groups)`` takes a list of groups (an item's requests) and returns, per group, the
    harness's ``(loglikelihood, is_greedy)`` for each request.

    Where the time goes (a 6.7m model on a 2-core CPU, hellaswag): ~85% of the FLOPs are the
    50k-vocabulary head, at ~55 scored positions per item, and what follows it (log-softmax over
    50k logits, argmax) touches every one of those logits again. So the head is applied

    * once per distinct scored position: hellaswag's four endings are all predicted from the
      context's last position (and from any first tokens the endings share), which used to go
      through the head once per ending;
    * chunk by chunk into one preallocated logits buffer, log-softmaxed in place. Allocating a
      fresh ~270 MB logits tensor (and its log-softmax) per chunk made the allocator hand memory
      back to the kernel and fault it in again each time: 5.6 M page faults and 19 s of system time
      for 1,000 hellaswag items (20 s of 32 s on an idle 2-core box).

    The numbers are unchanged: the same fp32 matmul, log-softmax and argmax per position as before,
    summed per request in the same order.
    """

    def __init__(self, model, device: str | torch.device = "cpu", batch_size: int | None = None,
                 batch_tokens: int | None = None, max_length: int | None = None,
                 share_prefix: bool = True, head_chunk: int | None = None):
        import torch

        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens or (8192 if self.device.type == "cpu" else 65536)
        cfg = getattr(model, "_orig_mod", model).config
        self.max_length = max_length or cfg.seq_len
        self.vocab_size = cfg.vocab_size
        self.share_prefix = share_prefix
        # Rows of logits per head chunk. CPU: HEAD_CHUNK_CPU (see there); GPU: ~256 MB of fp32 logits.
        self.head_chunk = head_chunk or (HEAD_CHUNK_CPU if self.device.type == "cpu"
                                         else max(64, (1 << 26) // self.vocab_size))
        self._logits_buf: torch.Tensor | None = None  # reused across chunks and batches

    def _batches(self, rows: list[_Row]) -> list[list[_Row]]:
        """Rows sorted by length and cut into batches of at most `batch_tokens` (padded) tokens."""
        # longest first (the first batch is the largest: memory problems show at once), then by
        # tokens so rows of one item and identical rows sit together
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].tokens), rows[i].tokens))
        batches: list[list[_Row]] = []
        cur: list[_Row] = []
        for i in order:
            r = rows[i]
            T = len(cur[0].tokens) if cur else len(r.tokens)
            if cur and ((len(cur) + 1) * T > self.batch_tokens
                        or (self.batch_size and len(cur) >= self.batch_size)):
                batches.append(cur)
                cur = []
            cur.append(r)
        if cur:
            batches.append(cur)
        return batches

    def _hidden(self, batch: list[_Row]) -> torch.Tensor:
        """Final hidden states (B, T, d) of a batch of rows (right-padded)."""
        import torch

        B, T = len(batch), len(batch[0].tokens)
        idx = torch.zeros(B, T, dtype=torch.long)
        for b, r in enumerate(batch):
            idx[b, : len(r.tokens)] = torch.tensor(r.tokens)
        idx = idx.to(self.device)
        if any(r.shared for r in batch):
            pos = torch.zeros(B, T, dtype=torch.long)
            seg = torch.full((B, T), -2, dtype=torch.long)  # padding: its own segment
            for b, r in enumerate(batch):
                pos[b, : len(r.pos)] = torch.tensor(r.pos)
                seg[b, : len(r.seg)] = torch.tensor(r.seg)
            seg = seg.to(self.device)
            return self.model(idx, positions=pos.to(self.device), attn_mask=tree_mask(seg))
        # plain causal rows: right padding never influences earlier positions
        return self.model(idx)

    def _head(self, h: torch.Tensor, prow, ptgt) -> tuple[Any, Any]:
        """log p(target) and is-argmax for scored (position, target) pairs.

        h: (U, d) hidden states of the distinct scored positions; prow/ptgt: numpy int arrays, pair
        i asks for target ptgt[i] at position prow[i], sorted by prow (so each chunk of positions
        owns a contiguous run of pairs). Returns (float32 log-probs, bools) as numpy arrays.
        """
        import numpy as np
        import torch

        m = getattr(self.model, "_orig_mod", self.model)
        V = self.vocab_size
        # the model's logits() (lm_head, then drop padded vocabulary rows) as one addmm into a buffer
        W, bias = m.lm_head.weight[:V], m.lm_head.bias[:V]
        U, M = h.shape[0], self.head_chunk
        buf = self._logits_buf
        if buf is None or buf.shape[0] < min(M, U) or buf.dtype != W.dtype or buf.device != h.device:
            buf = self._logits_buf = torch.empty(min(M, U), V, dtype=W.dtype, device=h.device)
        prow_t = torch.from_numpy(prow).to(h.device)
        ptgt_t = torch.from_numpy(ptgt).to(h.device)
        bounds = np.searchsorted(prow, np.arange(0, U + M, M))  # pairs of chunk c: bounds[c]:bounds[c+1]
        lp = torch.empty(len(prow), dtype=torch.float32, device=h.device)
        ok = torch.empty(len(prow), dtype=torch.bool, device=h.device)
        for c, s in enumerate(range(0, U, M)):
            e = min(s + M, U)
            logits = torch.addmm(bias, h[s:e], W.t(), out=buf[: e - s])
            if logits.dtype != torch.float32:  # bf16/fp16 weights: the softmax still in fp32
                logits = logits.float()
            # in place: each row is read (max, sum of exp) before it is overwritten
            logp = torch.log_softmax(logits, dim=-1, out=logits)
            a, b = int(bounds[c]), int(bounds[c + 1])
            r, t = prow_t[a:b] - s, ptgt_t[a:b]
            lpt = logp[r, t]
            lp[a:b] = lpt
            # greedy = the target is the argmax of the log-softmax, as the harness computes it
            # (first index of the maximum). A row maximum (amax) is several times cheaper than an
            # argmax over 50k logits, and a target below it is not greedy; only where the target
            # reaches the maximum is the exact argmax taken (it differs on an exact tie with an
            # earlier token), on those rows alone.
            hit = lpt == logp.amax(dim=-1)[r]
            cand = hit.nonzero()[:, 0]
            if len(cand):
                hit[cand] = logp[r[cand]].argmax(dim=-1) == t[cand]
            ok[a:b] = hit
        return lp.cpu().numpy(), ok.cpu().numpy()

    def score(self, groups: Sequence[Sequence[tuple[list[int], list[int]]]],
              progress: Any = None) -> list[list[tuple[float, bool]]]:
        import numpy as np
        import torch

        rows: list[_Row] = []
        for gi, g in enumerate(groups):
            rows += _build_rows(g, gi, self.max_length, self.share_prefix, 2 * self.max_length)
        results: list[list[tuple[float, bool] | None]] = [[None] * len(g) for g in groups]
        rows_left = np.zeros(len(groups), dtype=np.int64)
        for r in rows:
            rows_left[r.group] += 1

        with torch.inference_mode():
            for batch in self._batches(rows):
                hidden = self._hidden(batch)
                B, T, d = hidden.shape
                # every scored (position, target) pair, its position as a flat index into the batch
                keys, tgt, owner, req_keys = [], [], [], []
                for b, r in enumerate(batch):
                    base = b * T
                    for (ri, rowpos, cont) in r.scored:
                        owner += [len(req_keys)] * len(rowpos)
                        req_keys.append((r.group, ri))
                        keys += [base + p for p in rowpos]
                        tgt += cont
                # the head once per distinct position (shared ones: the context's last token, ...)
                uniq, inv = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
                order = np.argsort(inv, kind="stable")
                h = hidden.reshape(B * T, d)[torch.from_numpy(uniq).to(self.device)]
                lp_s, ok_s = self._head(h, inv[order], np.asarray(tgt, dtype=np.int64)[order])
                lp = np.empty(len(keys), dtype=np.float64)
                ok = np.empty(len(keys), dtype=bool)
                lp[order], ok[order] = lp_s, ok_s  # back to pair order: sums in the same order
                owner_a = np.asarray(owner)
                ll = np.zeros(len(req_keys))
                np.add.at(ll, owner_a, lp)
                bad = np.zeros(len(req_keys), dtype=bool)
                np.logical_or.at(bad, owner_a, ~ok)
                for k, (g, ri) in enumerate(req_keys):
                    results[g][ri] = (float(ll[k]), bool(not bad[k]))
                done = 0
                for r in batch:
                    rows_left[r.group] -= 1
                    done += int(rows_left[r.group] == 0)
                if progress is not None and done:
                    progress.update(done)
        return results  # type: ignore[return-value]


