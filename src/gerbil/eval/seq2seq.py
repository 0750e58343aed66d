"""Scoring an encoder-decoder (T5Blender, a warm start) as lm-evaluation-harness 0.4.13's ``hf`` model with
``backend="seq2seq"`` does (docs/reference.md §5 and §9).

The harness's rules for that backend (`TemplateLM.loglikelihood`, `_encode_pair`,
`HFLM._loglikelihood_tokens`), reproduced here:

* Encoding: a non-empty context's trailing whitespace moves to the continuation, then context and
  continuation are encoded **separately** (the context with the tokenizer's default special tokens, the
  continuation without; GPT-2's BPE adds none either way). An empty context is the tokenizer's prefix
  token (``<|endoftext|>``, its BOS), unless the continuation already starts with it.
* No mode token: the harness adds none, so T5Blender's rows in the seed's table were scored without one
  (an explicit ``prefix`` still goes before the context).
* The encoder reads the context's last ``max_length`` tokens (a padded batch masks its padding); the
  decoder reads the decoder start id followed by the continuation but its last token (transformers'
  ``labels`` shifted right), and the continuation's tokens are scored at every decoder position:
  log-likelihood = the sum of their log-probabilities, ``is_greedy`` = each is its position's argmax.

`Seq2SeqScorer` computes each distinct context's encoder output once per item (hellaswag's four endings
share it) and scores the item's continuations in one decoder batch — the same numbers as the harness's
padded batches to float rounding (tests/test_t5_eval.py runs the harness on the export: ≤ 1e-4).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.eval.encoding import move_trailing_space

if TYPE_CHECKING:
    import torch


class Seq2SeqEncoder:
    """(context ids, continuation ids) of request strings, the harness's seq2seq way (module docstring).

    ``encode_batch(texts) -> list[list[int]]`` is the tokenizer's ``encode`` (special-token strings become
    their ids; GPT-2 adds no BOS/EOS); ``prefix_id`` the empty context's token; ``prefix`` ids put before
    every non-empty context (none by default: no mode token)."""

    def __init__(self, encode_batch: Callable[[list[str]], list[list[int]]], prefix_id: int = EOT_ID,
                 prefix: Sequence[int] = ()):
        self.encode_batch, self.prefix_id, self.prefix = encode_batch, int(prefix_id), list(prefix)

    @property
    def eot_id(self) -> int:  # `RequestEncoder`'s name for it (gerbil.eval.harness reads it)
        return self.prefix_id

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        texts = []
        for ctx, cont in pairs:
            texts += list(move_trailing_space(ctx, cont)) if ctx else ["", cont]
        uniq = list(dict.fromkeys(texts))  # hellaswag's context once for its four endings
        enc = dict(zip(uniq, self.encode_batch(uniq)))
        out = []
        for i, (ctx, _) in enumerate(pairs):
            c, cont_ids = texts[2 * i], list(enc[texts[2 * i + 1]])
            if ctx:
                out.append((self.prefix + list(enc[c]), cont_ids))
            elif cont_ids and cont_ids[0] == self.prefix_id:
                out.append((cont_ids[:1], cont_ids[1:]))
            else:
                out.append(([self.prefix_id], cont_ids))
        return out


class Seq2SeqScorer:
    """``score(groups)`` → per group (an item's requests) the harness's ``(loglikelihood, is_greedy)`` per
    request, on an encoder-decoder with ``encode`` / ``decode`` / ``logits`` (model/t5.py, model/warmstart.py).

    ``batch_size``: items per forward pass (default: as many as fit ``batch_tokens`` decoder + encoder
    positions); ``max_length``: the harness's (the model's context)."""

    def __init__(self, model: Any, device: str | torch.device = "cpu", batch_size: int | None = None,
                 batch_tokens: int | None = None, max_length: int | None = None):
        import torch  # lazy: torch only when scoring

        self.model = getattr(model, "_orig_mod", model)
        cfg = self.model.config
        self.device = torch.device(device)
        self.max_length = int(max_length or cfg.seq_len)
        self.start_id = int(getattr(cfg, "decoder_start_id", EOT_ID))  # T5Blender: <|endoftext|> (t5_hf)
        self.batch_size = batch_size
        self.batch_tokens = int(batch_tokens or (8192 if self.device.type == "cpu" else 65536))

    def _batches(self, groups: Sequence[Sequence[tuple[list[int], list[int]]]]) -> list[list[int]]:
        """Indices of groups, longest first, in batches of `batch_size` items or `batch_tokens` positions."""
        size = [sum(len(c) + len(t) for c, t in g) for g in groups]
        order = sorted(range(len(groups)), key=lambda i: -size[i])
        out, cur, used = [], [], 0
        for i in order:
            if cur and ((self.batch_size and len(cur) >= self.batch_size)
                        or (not self.batch_size and used + size[i] > self.batch_tokens)):
                out.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += size[i]
        return out + ([cur] if cur else [])

    def score(self, groups: Sequence[Sequence[tuple[list[int], list[int]]]], progress: Any = None
              ) -> list[list[tuple[float, bool]]]:
        import torch  # lazy: torch only when scoring

        for g in groups:
            for _, cont in g:
                if not cont:
                    raise GerbilError("a request has an empty continuation (nothing to score)")
                if len(cont) > self.max_length:
                    raise GerbilError(f"a continuation of {len(cont)} tokens exceeds the model's {self.max_length}")
        out: list[list[tuple[float, bool]]] = [[] for _ in groups]
        with torch.no_grad():
            for batch in self._batches(groups):
                for gi, res in zip(batch, self._score_batch([groups[i] for i in batch])):
                    out[gi] = res
                if progress is not None:
                    progress.update(len(batch))
        return out

    def _score_batch(self, groups: list[Sequence[tuple[list[int], list[int]]]]) -> list[list[tuple[float, bool]]]:
        import torch  # lazy: torch only when scoring
        import torch.nn.functional as F

        contexts: dict[tuple[int, ...], int] = {}
        reqs = []  # (encoder row, continuation)
        for g in groups:
            for ctx, cont in g:
                key = tuple(ctx[-self.max_length:])
                reqs.append((contexts.setdefault(key, len(contexts)), cont[-self.max_length:]))
        enc_rows = list(contexts)
        te = max(len(r) for r in enc_rows)
        enc = torch.full((len(enc_rows), te), EOT_ID, dtype=torch.long)
        mask = torch.zeros((len(enc_rows), te), dtype=torch.long)
        for i, r in enumerate(enc_rows):
            enc[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        enc, mask = enc.to(self.device), mask.to(self.device)
        encoded = self.model.encode(enc, encoder_mask=mask)
        td = max(len(c) for _, c in reqs)
        dec = torch.full((len(reqs), td), EOT_ID, dtype=torch.long)
        for j, (_, c) in enumerate(reqs):
            dec[j, 0], dec[j, 1: len(c)] = self.start_id, torch.tensor(c[:-1], dtype=torch.long)
        rows = torch.tensor([r for r, _ in reqs], device=self.device)
        hidden = self.model.decode(dec.to(self.device), encoded[rows], encoder_mask=mask[rows])
        logp = F.log_softmax(self.model.logits(hidden).float(), dim=-1)  # (R, td, V)
        res, greedy = [], logp.argmax(-1).cpu()
        for j, (_, c) in enumerate(reqs):
            tgt = torch.tensor(c, device=self.device)
            ll = float(logp[j, : len(c)].gather(-1, tgt[:, None]).sum())
            res.append((ll, bool(torch.equal(greedy[j, : len(c)], tgt.cpu()))))
        out, k = [], 0
        for g in groups:
            out.append(res[k: k + len(g)])
            k += len(g)
        return out


__all__ = ["Seq2SeqEncoder", "Seq2SeqScorer"]
