"""Batched greedy decoding with each completion's mean token log-probability (its confidence).

`gerbil.generate.generate_ids` decodes one prompt at a time; fine-tuned sft models answer thousands
(validation exact-match, `gerbil predict`, the fuzzy-wrapper benchmark), so this runs a batch of prompts
together: rows right-padded, each row's next token read at its own last position. With causal
attention a row's real tokens never see the padding to their right and keep positions 0…n-1, so each
row computes what `generate_ids` computes for it alone (no KV cache either: every step re-runs the
context). The two agree token for token on the tests' prompts (tests/test_finetune.py); in
principle a different matrix shape can round differently and flip an exact tie of two logits.

Confidence: the mean log-probability of the tokens the model chose, the final ``<|endoftext|>``
included (the model's confidence that the answer ends there), for a completion that stopped; one cut
off at ``max_new_tokens`` averages what it produced.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError

#: Rows decoded together (tiny models: the cost is the per-step overhead, not the rows).
DEFAULT_BATCH = 128


def decoder_start_id(model: Any) -> int:
    """The token an encoder-decoder's decoder starts from: a warm start's own (`WarmStartConfig`), else
    T5Blender's (`model.t5_hf.DECODER_START_ID`). ``model``: a module (or its compiled wrapper) or config."""
    cfg = getattr(getattr(model, "_orig_mod", model), "config", model)
    start = getattr(cfg, "decoder_start_id", None)
    if start is not None:
        return int(start)
    from gerbil.model.t5_hf import DECODER_START_ID  # lazy: transformers names beside it

    return int(DECODER_START_ID)


def check_room(max_new_tokens: int, seq_len: int, what: str = "max_new_tokens") -> None:
    """A completion must leave the prompt a place in the context: `max_new_tokens` ≥ `seq_len` would cut
    every prompt to nothing (and decode past the context the model was trained on). One-line GerbilError;
    `what` names the option in it."""
    if int(max_new_tokens) >= int(seq_len):
        raise GerbilError(f"{what} {max_new_tokens} leaves no room for the prompt in the model's context of "
                          f"{seq_len} tokens: use at most {int(seq_len) - 1}")


@torch.no_grad()
def greedy(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
           batch_size: int = DEFAULT_BATCH, stop_id: int = EOT_ID,
           autocast_dtype: torch.dtype | None = None) -> list[tuple[list[int], float]]:
    """``(new token ids without the stop token, mean log-probability)`` per prompt, in order.

    Prompts longer than the model's context minus `max_new_tokens` lose tokens from the left (what
    `generate_ids` would crop), so no row ever outgrows the context; `max_new_tokens` must be below the
    context (`check_room`).
    """
    device = next(model.parameters()).device
    check_room(max_new_tokens, model.config.seq_len)
    room = int(model.config.seq_len) - int(max_new_tokens)
    prompts = [list(p)[-room:] or [EOT_ID] for p in prompts]
    return _by_length(model, prompts, batch_size, lambda rows: _greedy_batch(
        model, rows, int(max_new_tokens), stop_id, device, autocast_dtype))


def _by_length(model: torch.nn.Module, rows: list[list[int]], batch_size: int,
               run_batch: Callable[[list[list[int]]], list[tuple[list[int], float]]]
               ) -> list[tuple[list[int], float]]:
    """`run_batch` over batches of rows of similar length (less padding), in eval mode; results in the
    rows' order, and the model's train/eval mode restored even when a batch raises."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))  # similar lengths together
    out: list[tuple[list[int], float]] = [([], 0.0)] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for a in range(0, len(order), batch_size):
            chunk = order[a: a + batch_size]
            for i, res in zip(chunk, run_batch([rows[i] for i in chunk])):
                out[i] = res
    finally:
        model.train(was_training)
    return out


def _greedy_batch(model, prompts: list[list[int]], max_new: int, stop_id: int, device: torch.device,
                  autocast_dtype: torch.dtype | None) -> list[tuple[list[int], float]]:
    B = len(prompts)
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    buf = torch.full((B, int(lens.max()) + max_new), EOT_ID, dtype=torch.long)  # (B, T) right-padded
    for r, p in enumerate(prompts):
        buf[r, : len(p)] = torch.tensor(p, dtype=torch.long)
    buf = buf.to(device)
    cur = lens.to(device)  # where each row writes its next token
    alive = torch.ones(B, dtype=torch.bool, device=device)
    logp = torch.zeros(B, dtype=torch.float64, device=device)
    count = torch.zeros(B, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)
    for _ in range(max_new):
        width = int(cur[alive].max())
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            hidden = model(buf[:, :width])  # (B, width, d)
        # (B, d): each row's last real token; a finished row may be longer than the live ones (its
        # prompt was): it reads any in-range position, its result is masked out below
        h = hidden[rows, (cur - 1).clamp(max=width - 1)]
        lp = torch.log_softmax(model.logits(h).float(), dim=-1)  # (B, V)
        nxt = lp.argmax(dim=-1)
        logp += torch.where(alive, lp[rows, nxt].double(), 0.0)
        count += alive.long()
        keep = alive & (nxt != stop_id)
        buf[rows[keep], cur[keep]] = nxt[keep]
        cur = cur + keep.long()
        alive = keep
        if not bool(alive.any()):
            break
    out = []
    for r in range(B):
        new = buf[r, int(lens[r]): int(cur[r])].tolist()
        out.append((new, float(logp[r] / max(1, int(count[r])))))
    return out


@torch.no_grad()
def greedy_seq2seq(model: torch.nn.Module, sources: Sequence[Sequence[int]], max_new_tokens: int, start_id: int,
                   batch_size: int = DEFAULT_BATCH, stop_id: int = EOT_ID,
                   autocast_dtype: torch.dtype | None = None) -> list[tuple[list[int], float]]:
    """An encoder-decoder's `greedy`: ``(new token ids without the stop token, mean log-probability)`` per
    encoder input, in order. Each batch's encoder rows are right-padded with a mask and encoded once; the
    decoder starts from ``start_id`` in every row (all rows have the same length, so no decoder padding)
    and re-runs its whole prefix every step (no cache). Encoder inputs longer than the model's context
    keep their last tokens."""
    device = next(model.parameters()).device
    seq_len = int(model.config.seq_len)
    check_room(max_new_tokens, seq_len)
    sources = [list(s)[-seq_len:] or [EOT_ID] for s in sources]
    return _by_length(model, sources, batch_size, lambda rows: _greedy_encdec_batch(
        model, rows, int(max_new_tokens), int(start_id), stop_id, device, autocast_dtype))


def _greedy_encdec_batch(model, sources: list[list[int]], max_new: int, start_id: int, stop_id: int,
                         device: torch.device, autocast_dtype: torch.dtype | None) -> list[tuple[list[int], float]]:
    B, Te = len(sources), max(len(s) for s in sources)
    enc = torch.full((B, Te), EOT_ID, dtype=torch.long)
    mask = torch.zeros((B, Te), dtype=torch.long)
    for r, s in enumerate(sources):
        enc[r, : len(s)], mask[r, : len(s)] = torch.tensor(s, dtype=torch.long), 1
    enc, mask = enc.to(device), mask.to(device)
    ids = torch.full((B, 1), start_id, dtype=torch.long, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    logp = torch.zeros(B, dtype=torch.float64, device=device)
    count = torch.zeros(B, dtype=torch.long, device=device)  # tokens chosen (the stop token included)
    made = torch.zeros(B, dtype=torch.long, device=device)  # tokens kept (without it)
    rows = torch.arange(B, device=device)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        encoded = model.encode(enc, encoder_mask=mask)
        for _ in range(max_new):
            hidden = model.decode(ids, encoded, encoder_mask=mask)[:, -1]  # (B, d)
            lp = torch.log_softmax(model.logits(hidden).float(), dim=-1)
            nxt = lp.argmax(dim=-1)
            logp += torch.where(alive, lp[rows, nxt].double(), 0.0)
            count += alive.long()
            keep = alive & (nxt != stop_id)
            made += keep.long()
            ids = torch.cat([ids, torch.where(keep, nxt, stop_id)[:, None]], 1)
            alive = keep
            if not bool(alive.any()):
                break
    return [(ids[r, 1: 1 + int(made[r])].tolist(), float(logp[r] / max(1, int(count[r])))) for r in range(B)]
