"""Fine-tuning examples as token ids, steps over epochs, and micro-batches the training loop runs.

Encoding (`encode_classify`, `encode_sft`). Every example becomes one token sequence, cut to the run's
``max_len``; a mode prefix (``<causal>`` for causal/Blender base models, `gerbil.data.objectives.mode_prefix`)
comes first:

* classify: ``prefix + text`` — a longer text keeps its **end** (`truncate="end"`, what transformers'
  ``truncation_side="left"`` keeps, so an exported model in a pipeline sees the same tokens) or its
  head and tail (a quarter of the room from the start, the rest from the end); the label is scored at
  the last token;
* sft: ``prompt part + completion + <|endoftext|>``, where the prompt part is ``prefix + template(prompt)``
  or, in the ``fim`` format, ``<fitm_start> template(prompt) <multiple_tok_mask> <fitm_result>`` (the
  completion is the middle, `FillInMiddle.prompt`). Only the completion and its end-of-text are targets.
  A too-long example loses prompt tokens from the left (the mode tokens stay), then completion tokens
  from the right (and then has no end-of-text to learn).
* seq2seq (an encoder-decoder base): ``encoder part + [decoder start] + target + <|endoftext|>`` in one
  array, ``prompt_len`` = the encoder part (``prefix + template(source)``, at most ``max_len``); the
  decoder reads the start token and the target and predicts the target and its end-of-text
  (`encode_seq2seq`). Its tokens are the encoder's and the decoder's inputs, as an encoder-decoder's
  batch counts them.

Steps (`EpochSteps`). An epoch visits every training example once, in an order drawn from
``(seed, epoch)``; a step takes ``batch_size`` examples of it, the epoch's last step the rest, so epochs
end on step boundaries. The loop counts tokens: a step's `tokens` are its examples' input tokens
(padding not counted), the budget is ``epochs × tokens per epoch``, and validation and checkpoints fall on
multiples of one epoch's tokens — the ends of epochs. The cursor (`state_dict`) is (epoch, position in
its order): the next step follows from it alone, which is what exact resume needs.

Micro-batches (`micro_batches`). A step's examples are sorted by length (less padding) and cut into
micro-batches, each right-padded to its longest row:

* classify: ``(inputs, targets)``, targets -100 except the label id at each row's last real token;
* sft, one example per row: ``(inputs, targets)``, targets -100 on the prompt and the padding;
* sft packed (`pack=True`): rows of up to ``max_len`` tokens holding several examples (first-fit
  decreasing), with a third tensor ``segments`` (B, T): the example's index in its row, -1 on padding.
  `packed_layout` turns it into per-example rotary positions (restarting at 0) and a block-diagonal
  causal attention mask, so each example is computed exactly as alone in its row;
* seq2seq: ``(encoder ids, targets, decoder ids, encoder mask)``, one example per row (`seq2seq_batch`).

``counts`` (what the loop weights micro-batches by) are the scored targets, or for class-weighted
classification the sum of the rows' class weights: a step is then the (weighted) mean over its examples.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gerbil.data.steps import PreparedStep, StepPrefetcher
from gerbil.data.objectives import FillInMiddle
from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.model.loss import IGNORE_INDEX

log = logging.getLogger(__name__)

#: Padding id of inputs: `<|endoftext|>` (never inside an encoded text, which is encoded without special
#: tokens), as transformers' GPT-2 convention and the exported config's ``pad_token_id``.
PAD_ID = EOT_ID


# ------------------------------------------------------------------------------------------ encoding
@dataclass
class Encoded:
    """A task's examples as token ids (see the module docstring)."""

    task: str
    ids: list[np.ndarray]  # classify: the input; sft: prompt part + completion (+ EOT), int64
    prompt_len: np.ndarray  # sft: tokens before the completion (never targets); classify: zeros
    labels: np.ndarray  # classify: label ids; sft: empty
    truncated: int = 0  # examples cut to max_len

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def input_len(self) -> np.ndarray:
        """Input tokens per example: classify all of them; sft all but the last (it is only a target)."""
        n = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))
        return n if self.task == "classify" else n - 1


def _cut(text_ids: list[int], room: int, truncate: str) -> list[int]:
    if len(text_ids) <= room:
        return text_ids
    if truncate == "head_tail":
        head = room // 4
        return text_ids[:head] + text_ids[len(text_ids) - (room - head):]
    return text_ids[len(text_ids) - room:]  # keep the end


def encode_classify(texts: Sequence[str], labels: Sequence[int], tokenizer, prefix: list[int], max_len: int,
                    truncate: str = "end") -> Encoded:
    """``prefix + text`` per example, cut to `max_len` tokens (module docstring)."""
    room = max_len - len(prefix)
    if room < 1:
        raise GerbilError(f"max_len {max_len} leaves no room for text after the prompt prefix")
    ids, truncated = [], 0
    for t in tokenizer.encode_batch(list(texts)):
        truncated += len(t) > room
        ids.append(np.asarray(prefix + _cut(list(t), room, truncate), dtype=np.int64))
    empty = sum(len(x) == len(prefix) for x in ids)
    if empty:  # _check_string keeps only non-blank texts, and BPE gives every character a token
        raise GerbilError(f"{empty} texts encode to no tokens")
    return Encoded("classify", ids, np.zeros(len(ids), dtype=np.int64), np.asarray(labels, dtype=np.int64),
                   truncated)


def prompt_ids(prompt: str, tokenizer, prefix: list[int], template: str, fim: bool) -> list[int]:
    """The tokens before a completion: the mode prefix and the templated prompt, or the FIM prompt."""
    body = list(tokenizer.encode(template.replace("{prompt}", prompt)))
    if fim:
        return FillInMiddle.prompt(body, []).tolist()
    return prefix + body


def encode_sft(prompts: Sequence[str], completions: Sequence[str], tokenizer, prefix: list[int], template: str,
               fim: bool, max_len: int) -> Encoded:
    """``prompt part + completion + EOT`` per example, at most `max_len` + 1 tokens (module docstring)."""
    comps = tokenizer.encode_batch(list(completions))
    ids, plen, truncated = [], [], 0
    keep_front = 1 if fim else len(prefix)  # mode tokens that are never cut away
    for prompt, comp in zip(prompts, comps):
        p = prompt_ids(prompt, tokenizer, prefix, template, fim)
        c = list(comp) + [EOT_ID]
        over = len(p) + len(c) - (max_len + 1)
        if over > 0:
            truncated += 1
            cut = min(over, len(p) - keep_front - (3 if fim else 0))  # FIM keeps its three special tokens
            if cut > 0:
                p = p[:keep_front] + p[keep_front + cut:]
                over -= cut
            if over > 0:
                c = c[: len(c) - over]
        if not c:
            raise GerbilError(f"max_len {max_len} leaves no room for a completion after a {len(p)}-token prompt")
        ids.append(np.asarray(p + c, dtype=np.int64))
        plen.append(len(p))
    return Encoded("sft", ids, np.asarray(plen, dtype=np.int64), np.zeros(0, dtype=np.int64), truncated)


def encode_seq2seq(sources: Sequence[str], targets: Sequence[str], tokenizer, prefix: list[int], template: str,
                   max_len: int, start_id: int) -> Encoded:
    """``encoder ids + [start_id] + target + EOT`` per example (``prompt_len`` = the encoder's length): the
    encoder reads ``prefix + template(source)``, at most `max_len` tokens (a longer one loses tokens from
    the left, the prefix stays); the decoder reads ``start_id + target`` and predicts ``target + EOT``, at
    most `max_len` positions (a longer target is cut at the right, and then has no end-of-text to learn)."""
    tgts = tokenizer.encode_batch(list(targets))
    ids, plen, truncated = [], [], 0
    for source, tgt in zip(sources, tgts):
        enc = prompt_ids(source, tokenizer, prefix, template, False)
        dec = [int(start_id)] + list(tgt) + [EOT_ID]
        if len(enc) > max_len or len(dec) > max_len + 1:
            truncated += 1
            enc = enc[: len(prefix)] + enc[len(enc) - (max_len - len(prefix)):] if len(enc) > max_len else enc
            dec = dec[: max_len + 1]
        ids.append(np.asarray(enc + dec, dtype=np.int64))
        plen.append(len(enc))
    return Encoded("seq2seq", ids, np.asarray(plen, dtype=np.int64), np.zeros(0, dtype=np.int64), truncated)


# ------------------------------------------------------------------------------------------ steps
@dataclass(frozen=True)
class ExampleStep:
    """One optimizer step: the examples at `indices` (into the training set), positions
    [`start`, `start + len(indices)`) of epoch `epoch`'s order; `tokens`: their input tokens."""

    epoch: int
    start: int
    indices: tuple[int, ...]
    tokens: int

    @property
    def end(self) -> int:
        return self.start + len(self.indices)


class EpochSteps:
    """The training examples' steps over `epochs` epochs, and the cursor a checkpoint saves.

    Not thread-safe; the prefetcher's producer thread only reads (`plans` is built from the cursor
    before the thread starts, and `micro_batches` reads the encoded examples).
    """

    def __init__(self, data: Encoded, epochs: int, batch_size: int, micro_batch: int, seed: int, max_len: int,
                 pack: bool = False, class_weights: np.ndarray | None = None):
        if len(data) < 1:
            raise GerbilError("no training examples")
        self.data, self.epochs, self.batch_size = data, int(epochs), int(batch_size)
        self.micro_batch, self.seed, self.max_len = int(micro_batch), int(seed), int(max_len)
        self.pack = bool(pack) and data.task == "sft"
        self.class_weights = class_weights
        self.lengths = data.input_len  # (N,) tokens each example contributes
        self.epoch, self.position = 0, 0

    # ----------------------------------------------------------------------------- schedule
    @property
    def n(self) -> int:
        return len(self.data)

    @property
    def epoch_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    @property
    def budget(self) -> int:
        return self.epochs * self.epoch_tokens

    def order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s permutation of the examples: a fresh generator per (seed, epoch)."""
        return np.random.default_rng([self.seed, epoch, 7]).permutation(self.n)

    def tokens_at(self, epoch: int, position: int) -> int:
        """Tokens trained before position `position` of epoch `epoch`."""
        done = epoch * self.epoch_tokens
        return done + int(self.lengths[self.order(epoch)[:position]].sum()) if position else done

    def plans(self) -> Iterator[ExampleStep]:
        """The remaining steps from the cursor, in order."""
        epoch, pos = self.epoch, self.position
        while epoch < self.epochs:
            order = self.order(epoch)
            for s in range(pos, self.n, self.batch_size):
                idx = order[s: s + self.batch_size]
                yield ExampleStep(epoch, s, tuple(int(i) for i in idx), int(self.lengths[idx].sum()))
            epoch, pos = epoch + 1, 0

    # ----------------------------------------------------------------------------- cursor
    def cursor_after(self, step: ExampleStep) -> dict:
        epoch, pos = (step.epoch + 1, 0) if step.end >= self.n else (step.epoch, step.end)
        return {"epoch": epoch, "position": pos, "examples": self.n, "epoch_tokens": self.epoch_tokens}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "examples": self.n,
                "epoch_tokens": self.epoch_tokens}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a cursor; one made for other examples (count or token total) is refused."""
        for key, mine in (("examples", self.n), ("epoch_tokens", self.epoch_tokens)):
            if int(state.get(key, mine)) != mine:
                raise GerbilError(f"the checkpoint's data cursor was made for {state[key]} {key.replace('_', ' ')}, "
                                  f"these training examples have {mine}: not the same training data")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ----------------------------------------------------------------------------- micro-batches
    def micro_batches(self, step: ExampleStep) -> tuple[list[tuple[torch.Tensor, ...]], list[float]]:
        """A step's micro-batches (CPU tensors) and each one's loss weight (module docstring)."""
        idx = sorted(step.indices, key=lambda i: (-len(self.data.ids[i]), i))  # longest first, deterministic
        if self.pack:
            rows = pack_rows([len(self.data.ids[i]) - 1 for i in idx], self.max_len)
            groups = [[[idx[j] for j in row] for row in rows[a: a + self.micro_batch]]
                      for a in range(0, len(rows), self.micro_batch)]
            batches = [sft_packed_batch(self.data, g) for g in groups]
        else:
            groups = [idx[a: a + self.micro_batch] for a in range(0, len(idx), self.micro_batch)]
            make = {"classify": classify_batch, "sft": sft_batch, "seq2seq": seq2seq_batch}[self.data.task]
            batches = [make(self.data, g) for g in groups]
        return batches, [self._weight(b) for b in batches]

    def _weight(self, batch: tuple[torch.Tensor, ...]) -> float:
        y = batch[1]
        scored = y[y != IGNORE_INDEX]
        if self.class_weights is None:
            return float(scored.numel())
        return float(self.class_weights[scored.numpy()].sum())


def classify_batch(data: Encoded, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (b, L), targets (b, L)): right-padded; the label at each row's last real token."""
    L = max(len(data.ids[i]) for i in indices)
    x = np.full((len(indices), L), PAD_ID, dtype=np.int64)
    y = np.full((len(indices), L), IGNORE_INDEX, dtype=np.int64)
    for r, i in enumerate(indices):
        n = len(data.ids[i])
        x[r, :n] = data.ids[i]
        y[r, n - 1] = data.labels[i]
    return torch.from_numpy(x), torch.from_numpy(y)


def sft_batch(data: Encoded, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (b, L), targets (b, L)), one example per row: targets only on completion + EOT."""
    L = max(len(data.ids[i]) - 1 for i in indices)
    x = np.full((len(indices), L), PAD_ID, dtype=np.int64)
    y = np.full((len(indices), L), IGNORE_INDEX, dtype=np.int64)
    for r, i in enumerate(indices):
        seq, p = data.ids[i], int(data.prompt_len[i])
        n = len(seq) - 1
        x[r, :n] = seq[:-1]
        y[r, p - 1: n] = seq[p:]  # position j predicts seq[j + 1]: the completion starts at p
    return torch.from_numpy(x), torch.from_numpy(y)


def seq2seq_batch(data: Encoded, indices: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(encoder ids (b, Le), targets (b, Ld), decoder ids (b, Ld), encoder mask (b, Le)), one example per row,
    right-padded: the decoder reads ``start + target`` and predicts ``target + EOT``; the mask is 1 on real
    encoder tokens (model/encdec.py). Targets come second, as the loop's micro-batches have them."""
    Le = max(int(data.prompt_len[i]) for i in indices)
    Ld = max(len(data.ids[i]) - int(data.prompt_len[i]) - 1 for i in indices)
    enc = np.full((len(indices), Le), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(indices), Le), dtype=np.int64)
    dec = np.full((len(indices), Ld), PAD_ID, dtype=np.int64)
    y = np.full((len(indices), Ld), IGNORE_INDEX, dtype=np.int64)
    for r, i in enumerate(indices):
        seq, p = data.ids[i], int(data.prompt_len[i])
        n = len(seq) - p - 1
        enc[r, :p], mask[r, :p] = seq[:p], 1
        dec[r, :n], y[r, :n] = seq[p:-1], seq[p + 1:]
    return torch.from_numpy(enc), torch.from_numpy(y), torch.from_numpy(dec), torch.from_numpy(mask)


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: positions into `lengths` (already longest first) grouped into rows of at most
    `capacity` tokens, in a deterministic order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for j, n in enumerate(lengths):
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(j)
                room[r] -= n
                break
        else:
            rows.append([j])
            room.append(capacity - n)
    return rows


def sft_packed_batch(data: Encoded, rows: Sequence[Sequence[int]]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, segments), each (b, L): several examples per row (module docstring)."""
    L = max(sum(len(data.ids[i]) - 1 for i in row) for row in rows)
    x = np.full((len(rows), L), PAD_ID, dtype=np.int64)
    y = np.full((len(rows), L), IGNORE_INDEX, dtype=np.int64)
    seg = np.full((len(rows), L), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for k, i in enumerate(row):
            seq, p = data.ids[i], int(data.prompt_len[i])
            n = len(seq) - 1
            x[r, at: at + n] = seq[:-1]
            y[r, at + p - 1: at + n] = seq[p:]
            seg[r, at: at + n] = k
            at += n
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(seg)


def packed_layout(seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """segments (B, T) → (positions (B, T), attention mask (B, 1, T, T) bool).

    Positions restart at 0 with every example; a query attends to keys of its own segment at or before
    it. Padding (-1) is one more segment that attends to itself, so no query row is empty (SDPA would
    return NaN for it) and no real token ever sees padding.
    """
    B, T = seg.shape
    t = torch.arange(T, device=seg.device)
    starts = torch.ones_like(seg, dtype=torch.bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    first = torch.cummax(torch.where(starts, t, torch.zeros_like(t)), dim=1).values  # (B, T) segment start
    positions = t - first
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    return positions, (same & causal).unsqueeze(1)


def pad_micro_batch(batch: tuple[torch.Tensor, ...], B: int, T: int) -> tuple[torch.Tensor, ...]:
    """A micro-batch padded to (B, T) (a compiled model's one shape): inputs with PAD_ID, targets with
    -100, segments with -1 (padding); the real rows and columns are unchanged."""
    fills = (PAD_ID, IGNORE_INDEX, -1)
    b, t = batch[0].shape
    if (b, t) == (B, T):
        return batch
    out = []
    for tensor, fill in zip(batch, fills):
        p = torch.full((B, T), fill, dtype=tensor.dtype)
        p[:b, :t] = tensor
        out.append(p)
    return tuple(out)


# ------------------------------------------------------------------------------------------ prefetch
class ExamplePrefetcher(StepPrefetcher):
    """`StepPrefetcher`'s background building and pacing, for fine-tuning steps: each `ExampleStep`
    becomes its micro-batches (`EpochSteps.micro_batches`) with the cursor a checkpoint after it saves."""

    def __init__(self, steps: EpochSteps, pin_memory: bool = False):
        super().__init__(steps, steps.plans(), steps.micro_batch, pin_memory=pin_memory)

    def _prepare(self, plan: ExampleStep) -> PreparedStep:
        batches, counts = self.loader.micro_batches(plan)
        if self.pin_memory:
            batches = [tuple(t.pin_memory() for t in b) for b in batches]
        return PreparedStep(plan, batches, counts, self.loader.cursor_after(plan))
