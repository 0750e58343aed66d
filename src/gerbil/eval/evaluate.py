"""hellaswag / lambada_openai / winogrande, scored exactly as lm-evaluation-harness 0.4.13 scores them.

What "exactly" means (REFERENCE.md §5; checked against the harness's own source, see the test
`tests/test_harness_parity.py`, which runs the harness itself on gerbil's export):

* Requests. Each task turns an item into (context, continuation) string pairs:
  - hellaswag: context = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()),
    one continuation " " + preprocess(ending) per ending (``lm_eval/tasks/hellaswag/utils.py``);
  - lambada_openai: context = the text without its last space-separated word, continuation =
    " " + that word (``lambada_openai.yaml``);
  - winogrande: "partial scoring": one context per option, sentence[:blank] + option, and the
    shared continuation " " + sentence[blank+1:].strip() (``preprocess_winogrande.py``).
* Encoding (``TemplateLM._encode_pair``): trailing spaces of the context move to the continuation;
  context + continuation are encoded together and split at the context's length; an empty context
  becomes the end-of-text token. Both sides are truncated from the left to the model's
  ``max_length + 1`` tokens as ``HFLM`` does. Only the continuation's tokens are scored;
  ``is_greedy`` = each continuation token is the argmax of its position's logits.
* Metrics (``ConfigurableTask.process_results`` and ``lm_eval/api/metrics.py``): ``acc`` = argmax of
  the summed log-likelihoods; hellaswag ``acc_norm`` = argmax of log-likelihood / len(ending in
  characters); lambada ``acc`` = the continuation is greedy and ``perplexity`` = exp(−mean item
  log-likelihood). Standard errors: sample standard deviation / sqrt(n) for means, and for perplexity
  the harness's bootstrap (100,000 resamples in chunks of 1,000, chunk i drawn by
  ``random.Random(i).choices``) — reproduced draw for draw with numpy's identical Mersenne Twister.

Why it is faster than the harness (same numbers): requests are scored *per item* — the token prefix
that all of an item's requests share (hellaswag's context, winogrande's sentence start) is put once in
a row, followed by each request's own suffix, with an attention mask so every suffix sees only the
shared prefix and itself and rotary positions that continue from the prefix. That is exactly the
computation of separate rows (a causal model's state at a position depends only on the tokens before
it). Rows are sorted by length and batched to a token budget, so padding is a few tokens per batch;
and the 50k-vocabulary head — most of a tiny model's FLOPs — is applied only at the positions whose
next token is scored, never at context or padding positions.

Blender models are evaluated in causal mode: their contexts start with ``<causal>`` (UL2-style mode
switching, REFERENCE.md §2), detected from the run's objective or the export's ``gerbil.objective``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbil.errors import GerbilError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EOT_ID = 50256
CAUSAL_ID = 50260  # "<causal>" (REFERENCE.md §2)

#: Full-set item counts (ASSETS.md); a data file with another count is refused.
FULL_SIZES: dict[str, int] = {"hellaswag": 10042, "lambada_openai": 5153, "winogrande": 1267}
TASKS: tuple[str, ...] = tuple(FULL_SIZES)
#: The fields each task reads, and the sha256 of their content in the official sets (one compact JSON
#: list of those fields per item, newline-terminated; independent of how the JSONL is serialized).
#: A data file whose content differs is refused: numbers on another copy are not the seed's numbers.
CONTENT_FIELDS: dict[str, tuple[str, ...]] = {
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "lambada_openai": ("text",),
    "winogrande": ("sentence", "option1", "option2", "answer"),
}
CONTENT_SHA256: dict[str, str] = {
    "hellaswag": "404b1702f388b52faedcb365c1bc7941598ab67ced3fb95633c7ab7e4aed269d",
    "lambada_openai": "94c2e062d71fd44576f10ecf8b9b6dcffa63e34dfb6f6a8c211b0bae75c37e9f",
    "winogrande": "a5d688f9f07dc313f6a9dd616e787e7cec260b267d92940a4cb6d5f539e2cb50",
}
#: Short names accepted on the command line.
ALIASES: dict[str, str] = {"lambada": "lambada_openai", "winogrande_xl": "winogrande"}
#: lm-evaluation-harness semantics reproduced here (tests/test_harness_parity.py runs this version).
HARNESS_VERSION = "0.4.13"
BOOTSTRAP_ITERS = 100_000  # the harness's default `bootstrap_iters`


# ============================================================================================ tasks
def _hellaswag_preprocess(text: str) -> str:
    """The harness's hellaswag `preprocess`: strip, " [title]" → ". ", drop "[...]", "  " → " "."""
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


@dataclass
class Item:
    """One scored item: its requests (context, continuation), gold index and choice texts."""

    requests: list[tuple[str, str]]
    gold: int = 0
    choices: list[str] = field(default_factory=list)  # for acc_norm (character lengths)


def hellaswag_item(doc: dict) -> Item:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    choices = [_hellaswag_preprocess(e) for e in doc["endings"]]
    return Item([(query, " " + c) for c in choices], int(doc["label"]), choices)


def lambada_item(doc: dict) -> Item:
    words = doc["text"].split(" ")
    return Item([(" ".join(words[:-1]), " " + words[-1])])


def winogrande_item(doc: dict) -> Item:
    s = doc["sentence"]
    i = s.index("_")
    cont = " " + s[i + 1:].strip()
    options = [doc["option1"], doc["option2"]]
    gold = {"1": 0, "2": 1}[str(doc["answer"])]
    return Item([(s[:i] + o, cont) for o in options], gold, [s[:i] + o for o in options])


ITEM_BUILDERS: dict[str, Callable[[dict], Item]] = {
    "hellaswag": hellaswag_item, "lambada_openai": lambada_item, "winogrande": winogrande_item}
METRICS: dict[str, tuple[str, ...]] = {
    "hellaswag": ("acc", "acc_norm"), "lambada_openai": ("perplexity", "acc"), "winogrande": ("acc",)}


def resolve_tasks(tasks: str | Iterable[str] | None) -> list[str]:
    """Canonical task names from a comma-separated string or a list; unknown names → GerbilError."""
    if tasks is None:
        return list(TASKS)
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    out = []
    for t in tasks:
        t = t.strip()
        if not t:
            continue
        name = ALIASES.get(t.lower(), t.lower())
        if name not in FULL_SIZES:
            raise GerbilError(f"unknown task {t!r} (known: {', '.join(TASKS)})")
        if name not in out:
            out.append(name)
    if not out:
        raise GerbilError("no tasks given")
    return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(task: str, docs: Sequence[dict]) -> str:
    """sha256 of the task's fields in `docs` (see CONTENT_SHA256)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d[k] for k in CONTENT_FIELDS[task]], ensure_ascii=False,
                            separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def load_docs(task: str, path: str | Path | None = None, verify: bool = True) -> tuple[list[dict], Path, str]:
    """All of a task's documents in dataset order, from the verified asset (or an explicit JSONL
    path), with the file and its content hash. A wrong item count, missing fields or content that
    differs from the official set → GerbilError."""
    from gerbil import assets

    try:
        p = Path(assets.eval_set(task, None if path is None else str(path)))
    except GerbilError:
        raise
    except (FileNotFoundError, ValueError, OSError) as e:
        raise GerbilError(f"{task}: evaluation data unavailable: {e}") from e
    docs = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise GerbilError(f"{p}:{n}: not JSON ({e.msg})") from e
    if len(docs) != FULL_SIZES[task]:
        raise GerbilError(f"{p}: {len(docs)} {task} items, expected {FULL_SIZES[task]}")
    missing = [k for k in CONTENT_FIELDS[task] if k not in docs[0]]
    if missing:
        raise GerbilError(f"{p}: {task} items lack fields {missing}")
    try:
        sha = content_sha256(task, docs)
    except KeyError as e:
        raise GerbilError(f"{p}: a {task} item lacks field {e}") from None
    if verify and sha != CONTENT_SHA256[task]:
        raise GerbilError(f"{p}: {task} content sha256 {sha[:12]}… differs from the official set's "
                          f"{CONTENT_SHA256[task][:12]}… (delete the file to refetch it)")
    return docs, p, sha


# ======================================================================================== encoding
class Encoder:
    """Tokenizes request strings the way the harness's HFLM does with the model's own tokenizer.

    ``encode_fn(list[str]) -> list[list[int]]`` must behave like transformers' fast tokenizer
    ``encode(text)`` (special-token strings in the text become their ids, no BOS for GPT-2).
    ``prefix`` (e.g. ``[<causal>]`` for Blender models) is put before every context.
    """

    def __init__(self, encode_batch: Callable[[list[str]], list[list[int]]], eot_id: int = EOT_ID,
                 prefix: Sequence[int] = ()):
        self.encode_batch = encode_batch
        self.eot_id = eot_id
        self.prefix = list(prefix)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """`TemplateLM.loglikelihood` + `_encode_pair`, batched: (context ids, continuation ids)."""
        texts: list[str] = []
        plan = []
        for ctx, cont in pairs:
            if ctx == "":
                plan.append(("empty", len(texts)))
                texts.append(cont)
            else:
                n = len(ctx) - len(ctx.rstrip())
                if n:
                    ctx, cont = ctx[:-n], ctx[-n:] + cont
                plan.append(("pair", len(texts)))
                texts += [ctx + cont, ctx]
        # encode each distinct string once: hellaswag's context is the same for its four endings,
        # so its 8 strings per item become 5 (tokenization is deterministic: no id changes)
        uniq = list(dict.fromkeys(texts))
        if len(uniq) < len(texts):
            at = {t: i for i, t in enumerate(uniq)}
            enc_u = self.encode_batch(uniq)
            enc = [enc_u[at[t]] for t in texts]
        else:
            enc = self.encode_batch(texts)
        out = []
        for kind, i in plan:
            if kind == "empty":
                c = enc[i]
                ctx_ids, cont_ids = ([self.eot_id], c) if c[0] != self.eot_id else (c[:1], c[1:])
            else:
                whole, ctx_ids = enc[i], enc[i + 1]
                cont_ids = whole[len(ctx_ids):]
            out.append((self.prefix + list(ctx_ids), list(cont_ids)))
        return out


# ========================================================================================= scoring
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


def _tree_forward(model, idx: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor | None) -> torch.Tensor:
    """GPT forward with explicit rotary positions and a shared-prefix ("tree") attention mask.

    Token a attends to token b iff b is not after a in the row and b is in the shared prefix or in
    a's own segment. Mathematically identical to running each (prefix + suffix) as its own row.
    ``seg=None``: plain causal rows (no mask tensor), the same as ``model(idx)``.
    Uses the model's own modules (parameter names per docs/architecture.md).
    idx/pos/seg: (B, T).

    Rotary is applied to q and k together, in place in the qkv projection's output, with exactly
    ``model.apply_rotary``'s products and sums (bit-identical results), in half the ops of two
    apply_rotary calls. On a CPU each op is a parallel region whose thread hand-off costs more than
    the arithmetic at d_model 64, and far more when another process competes for the cores.
    (A complex multiplication would be 2 ops, and measured ~35% faster on lambada on a loaded
    2-core box, but it rounds differently in the last bit: log-likelihoods move by ~3e-6.)
    """
    import torch
    import torch.nn.functional as F

    from gerbil.model.model import rotary_tables

    m = getattr(model, "_orig_mod", model)
    B, T = idx.shape
    cfg = m.config
    nh, hs, rot = cfg.n_head, cfg.head_dim, cfg.rotary_dim
    cos_t, sin_t = rotary_tables(int(pos.max()) + 1, rot, device=idx.device)
    cos, sin = cos_t[pos].unsqueeze(2), sin_t[pos].unsqueeze(2)  # (B, T, 1, rot/2)
    if seg is None:
        mask = None
    else:
        ar = torch.arange(T, device=idx.device)
        causal = ar[None, :] <= ar[:, None]  # (T, T): [a, b] = b <= a
        sa, sb = seg[:, :, None], seg[:, None, :]  # (B, T, 1), (B, 1, T)
        mask = (causal[None] & ((sb == -1) | (sb == sa)))[:, None]  # (B, 1, T, T)
    x = m.wte(idx)  # (B, T, d)
    for blk in m.h:
        h = blk.ln_1(x)
        a = blk.attn
        C = h.shape[-1]
        qkv = a.qkv_proj(h).view(B, T, 3 * nh, hs)
        if rot:
            xr = qkv[:, :, : 2 * nh, :rot]  # q and k heads, their rotary dims: (B, T, 2nh, rot)
            xp = xr.unflatten(-1, (rot // 2, 2))
            x0, x1 = xp[..., 0], xp[..., 1]  # GPT-J's interleaved pairs
            # (bf16/fp16 weights: the fp32 tables promote the products to fp32 and copy_ rounds
            # back, the same round trip as apply_rotary's)
            xr.copy_(torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2))
        q, k, v = (t.transpose(1, 2) for t in qkv.split(nh, dim=2))  # (B, nh, T, hs)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # with a mask the kernel's summation order follows q/k's layout: keep the one that
            # two apply_rotary calls produced (contiguous), so results stay bit-identical
            y = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = x + a.out_proj(y) + blk.mlp(h)
    return m.ln_f(x)


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
            return _tree_forward(self.model, idx, pos.to(self.device), seg.to(self.device))
        # plain causal rows: right padding never influences earlier positions
        pos = torch.arange(T, device=self.device).expand(B, T)
        return _tree_forward(self.model, idx, pos, None)

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


# ==================================================================================== the model side
@dataclass
class EvalModel:
    """A model ready for evaluation: the GPT, its tokenizer as an Encoder, and where it came from."""

    model: Any
    encoder: Encoder
    info: dict
    run_dir: Path | None = None
    checkpoint: Path | None = None


def _objective_name(obj: Any) -> str | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        obj = obj.get("name") or obj.get("objective")
    return str(obj).lower() if obj is not None else None


def _prefix_for(objective: str | None, prefix: str | Sequence[int] | None) -> list[int]:
    """Context prefix: Blender (and `causal`-objective) models are evaluated in causal mode, i.e.
    with `<causal>` first (`gerbil.data.objectives.mode_prefix`); "none"/"causal"/ids override."""
    if prefix is None or prefix == "auto":
        from gerbil.data.objectives import mode_prefix

        return list(mode_prefix(objective))
    if prefix in ("none", ""):
        return []
    if prefix == "causal":
        return [CAUSAL_ID]
    return [int(t) for t in prefix]  # type: ignore[union-attr]


def model_sha256(model) -> str:
    """sha256 over the parameters' names, dtypes, shapes and bytes (state-dict order)."""
    import torch

    h = hashlib.sha256()
    m = getattr(model, "_orig_mod", model)
    for name, t in m.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _run_dir_of(path: Path) -> tuple[Path | None, Path | None]:
    """(run dir, checkpoint dir) for a run dir, a checkpoint dir or a run's export folder."""
    if (path / "checkpoints").is_dir() or (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        return path, None
    if path.parent.name == "checkpoints":
        return path.parent.parent, path
    if path.name == "export" and ((path.parent / "checkpoints").is_dir() or (path.parent / "config.yaml").is_file()):
        return path.parent, None
    return None, None


def load_for_eval(path: str | Path, prefix: str | Sequence[int] | None = None) -> EvalModel:
    """Load a run directory, a checkpoint directory or a transformers GPT-J export for evaluation.

    Bad input → GerbilError: a missing path, a run with no checkpoint, an export without tokenizer
    files.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise GerbilError(f"{p}: no such run, checkpoint or export")
    if (p / "config.json").is_file():  # a transformers export
        return _load_export(p, prefix)
    from gerbil.train import checkpoint as ckpt

    run_dir, ck = _run_dir_of(p)
    if ck is None:
        ck = ckpt.latest_checkpoint(p)
        if ck is None:
            raise GerbilError(f"{p}: no checkpoint (train it first, or pass an export folder)")
    model, meta = ckpt.load_model(ck)
    meta = dict(meta or {})
    objective = _objective_name(meta.get("objective"))
    if objective is None and run_dir is not None and (run_dir / "config.yaml").is_file():
        try:
            import yaml
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            objective = _objective_name(cfg.get("objective"))
        except Exception:  # noqa: BLE001 - the config is only a fallback source of the objective
            objective = None
    from gerbil.data.tokenizer import Tokenizer

    tok = Tokenizer.load()
    encoder = Encoder(lambda texts: tok.encode_batch(texts, allow_special=True), EOT_ID,
                      _prefix_for(objective, prefix))
    info = {"path": str(p.resolve()), "kind": "checkpoint", "checkpoint": str(Path(ck).resolve()),
            "step": meta.get("step"), "tokens": meta.get("tokens"), "objective": objective,
            "size": meta.get("size"), "class": meta.get("class"), "tokenizer_sha256": tok.sha256,
            "prefix": encoder.prefix}
    return EvalModel(model, encoder, info, run_dir, Path(ck))


def _load_export(p: Path, prefix: str | Sequence[int] | None) -> EvalModel:
    tj = p / "tokenizer.json"
    if not tj.is_file():
        raise GerbilError(f"{p}: export has no tokenizer files (tokenizer.json); re-export it with gerbil export")
    from tokenizers import Tokenizer as HFTokenizer

    from gerbil import export as gexport

    model, meta = gexport.load(p)
    objective = _objective_name(meta.get("objective"))
    backend = HFTokenizer.from_file(str(tj))
    eot = backend.token_to_id("<|endoftext|>")
    eot = EOT_ID if eot is None else eot
    if prefix is None and meta.get("eval_prefix"):  # the export says how it must be prompted
        ids = backend.encode(str(meta["eval_prefix"]), add_special_tokens=False).ids
        prefix = ids
    encoder_prefix = _prefix_for(objective, prefix)

    def encode_batch(texts: list[str]) -> list[list[int]]:
        # add_special_tokens=True is what transformers' encode() does (no BOS for GPT-2 tokenizers)
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]

    encoder = Encoder(encode_batch, eot, encoder_prefix)
    run_dir, _ = _run_dir_of(p)
    info = {"path": str(p.resolve()), "kind": "export", "step": meta.get("step"), "tokens": meta.get("tokens"),
            "objective": objective, "size": meta.get("size"), "class": meta.get("class"),
            "name": meta.get("name"), "tokenizer_sha256": sha256_file(tj), "prefix": encoder.prefix}
    return EvalModel(model, encoder, info, run_dir, None)


# ========================================================================================= metrics
def mean_stderr(xs: Sequence[float]) -> float:
    """The harness's `mean_stderr`: sample standard deviation (n−1) / sqrt(n)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def perplexity_stderr(lls: Sequence[float], iters: int = BOOTSTRAP_ITERS) -> float:
    """The harness's bootstrap standard error of exp(−mean(ll)), draw for draw.

    The harness draws `iters // 1000` chunks of min(1000, iters) resamples, chunk i with
    ``random.Random(i).choices(xs, k=n)`` (= floor(random() · n)); numpy's RandomState seeded with
    the array [i] is the same Mersenne Twister stream, so the resamples are identical.
    """
    import numpy as np

    xs = np.asarray(lls, dtype=np.float64)
    n = len(xs)
    if n < 2 or iters <= 0:
        return float("nan")
    chunk = min(1000, iters)
    reps = []
    for i in range(iters // chunk):
        u = np.random.RandomState([i]).random_sample(chunk * n)
        idx = np.floor(u * n).astype(np.int64).reshape(chunk, n)
        reps.append(np.exp(-xs[idx].mean(axis=1)))
    r = np.concatenate(reps)
    return float(math.sqrt(((r - r.mean()) ** 2).sum() / (len(r) - 1)))


def task_metrics(task: str, items: Sequence[Item], scores: Sequence[Sequence[tuple[float, bool]]],
                 bootstrap_iters: int = BOOTSTRAP_ITERS) -> tuple[dict, list[dict]]:
    """(metrics with `<name>_stderr`, per-item records) from the request scores of each item."""
    import numpy as np

    per_item: list[dict] = []
    if task == "lambada_openai":
        lls = [s[0][0] for s in scores]
        accs = [int(s[0][1]) for s in scores]
        per_item = [{"ll": ll, "greedy": bool(a), "acc": a} for ll, a in zip(lls, accs)]
        metrics = {"perplexity": math.exp(-sum(lls) / len(lls)),
                   "perplexity_stderr": perplexity_stderr(lls, bootstrap_iters),
                   "acc": sum(accs) / len(accs), "acc_stderr": mean_stderr(accs)}
        return metrics, per_item
    accs, norms = [], []
    for it, s in zip(items, scores):
        lls = np.array([x[0] for x in s])
        pred = int(np.argmax(lls))
        rec = {"lls": [float(x) for x in lls], "greedy": [bool(x[1]) for x in s], "gold": it.gold,
               "pred": pred, "acc": float(pred == it.gold)}
        accs.append(rec["acc"])
        if task == "hellaswag":
            lens = np.array([float(len(c)) for c in it.choices])
            pn = int(np.argmax(lls / lens))
            rec["pred_norm"], rec["acc_norm"] = pn, float(pn == it.gold)
            norms.append(rec["acc_norm"])
        per_item.append(rec)
    metrics = {"acc": sum(accs) / len(accs), "acc_stderr": mean_stderr(accs)}
    if task == "hellaswag":
        metrics.update(acc_norm=sum(norms) / len(norms), acc_norm_stderr=mean_stderr(norms))
    return metrics, per_item


# ====================================================================================== evaluation
def _dtype(name: str | None):
    import torch

    table = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16}
    if name not in table:
        raise GerbilError(f"unknown dtype {name!r} (fp32, bf16, fp16)")
    return table[name]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_task(em: EvalModel, task: str, *, limit: int | None = None, batch_size: int | None = None,
             device: str = "cpu", data_path: str | Path | None = None, progress: bool = True,
             share_prefix: bool = True, bootstrap_iters: int = BOOTSTRAP_ITERS) -> dict:
    """Evaluate one task; returns the result record (metrics, per-item scores, hashes, counts)."""
    from tqdm.auto import tqdm

    docs, data_file, data_sha = load_docs(task, data_path)
    if limit is not None:
        if limit <= 0:
            raise GerbilError(f"--limit must be positive, got {limit}")
        docs = docs[:limit]  # the first N in dataset order, as the harness's --limit
    items = [ITEM_BUILDERS[task](d) for d in docs]
    t0 = time.perf_counter()
    flat = [r for it in items for r in it.requests]
    enc = em.encoder.encode_pairs(flat)
    groups, k = [], 0
    for it in items:
        groups.append(enc[k: k + len(it.requests)])
        k += len(it.requests)
    scorer = Scorer(em.model, device=device, batch_size=batch_size, share_prefix=share_prefix)
    bar = tqdm(total=len(items), desc=task, unit="item", disable=not progress, dynamic_ncols=True)
    try:
        scores = scorer.score(groups, progress=bar)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    metrics, per_item = task_metrics(task, items, scores, bootstrap_iters)
    partial = len(items) < FULL_SIZES[task]
    return {
        "task": task,
        "metrics": metrics,
        "n_items": len(items),
        "n_items_full": FULL_SIZES[task],
        "limit": limit,
        "partial": partial,
        "n_requests": len(flat),
        "model": dict(em.info),
        "data": {"path": str(data_file), "sha256": sha256_file(data_file), "content_sha256": data_sha},
        "harness_semantics": f"lm-evaluation-harness {HARNESS_VERSION}",
        "elapsed_s": round(elapsed, 3),
        "items_per_s": round(len(items) / elapsed, 2) if elapsed > 0 else None,
        "items": per_item,
    }


def result_path(em: EvalModel, task: str, partial: bool, out_dir: str | Path | None = None) -> Path | None:
    """Where a task's result is written: the run's `eval/TASK.json` (a `--limit` result goes to
    `eval/TASK.partial.json`, so it never replaces a full-set one); an older checkpoint than the
    latest writes under `eval/step-XXXXXXXX/`; an export outside a run writes into `EXPORT/eval/`."""
    name = f"{task}.partial.json" if partial else f"{task}.json"
    if out_dir is not None:
        return Path(out_dir) / name
    if em.run_dir is not None:
        base = em.run_dir / "eval"
        if em.checkpoint is not None:
            from gerbil.train import checkpoint as ckpt

            latest = ckpt.latest_checkpoint(em.run_dir)
            if latest is not None and Path(latest).resolve() != Path(em.checkpoint).resolve():
                base = base / Path(em.checkpoint).name
        return base / name
    return Path(em.info["path"]) / "eval" / name


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


def evaluate(path: str | Path, tasks: str | Iterable[str] | None = None, *, limit: int | None = None,
             batch_size: int | None = None, device: str | None = None, dtype: str | None = "fp32",
             output: str | Path | None = None, write: bool = True, progress: bool = True,
             prefix: str | Sequence[int] | None = None, share_prefix: bool = True,
             bootstrap_iters: int = BOOTSTRAP_ITERS, eval_dir: str | Path | None = None,
             data: dict[str, str | Path] | None = None) -> dict[str, dict]:
    """Evaluate a run, checkpoint or export on the tasks; returns {task: result record}.

    Writes each record to the run's `eval/` folder (see :func:`result_path`) unless `write` is
    false, and `{"results": {task: {metric: value}}}` to `output` if given. fp32 by default (the
    harness's advice for small models); `dtype="bf16"` casts the weights. `data` gives explicit
    JSONL files per task (checked for count and content); `eval_dir` overrides where records go.
    """
    task_list = resolve_tasks(tasks)
    device = device or default_device()
    em = load_for_eval(path, prefix)
    model_hash = model_sha256(em.model)  # of the stored (fp32) weights, before any cast
    em.info["sha256"] = model_hash
    em.model = em.model.to(device=device, dtype=_dtype(dtype)).eval()
    em.info["dtype"] = str(_dtype(dtype)).replace("torch.", "")
    em.info["device"] = str(device)
    out: dict[str, dict] = {}
    for task in task_list:
        rec = run_task(em, task, limit=limit, batch_size=batch_size, device=device, progress=progress,
                       data_path=(data or {}).get(task),
                       share_prefix=share_prefix, bootstrap_iters=bootstrap_iters)
        if write:
            dest = result_path(em, task, rec["partial"], eval_dir)
            if dest is not None:
                _write_json(dest, rec)
                rec["written_to"] = str(dest)
                log.info("%s: %s", task, dest)
        out[task] = rec
    if output is not None:
        _write_json(Path(output), results_summary(out))
    return out


def results_summary(records: dict[str, dict]) -> dict:
    """`{"results": {task: {metric: value, ...}}}` (plus n_items/partial per task)."""
    res = {}
    for task, rec in records.items():
        d = dict(rec["metrics"])
        d["n_items"] = rec["n_items"]
        d["partial"] = rec["partial"]
        res[task] = d
    return {"results": res}


def format_results(records: dict[str, dict]) -> str:
    """A short human-readable summary, one line per metric (harness-style percentages for acc)."""
    lines = []
    for task, rec in records.items():
        tag = f" (partial: first {rec['n_items']} of {rec['n_items_full']})" if rec["partial"] else ""
        m = rec["metrics"]
        for k in METRICS[task]:
            v, se = m[k], m.get(f"{k}_stderr")
            if k == "perplexity":
                lines.append(f"{task:15s} {k:10s} {v:14.4f} ± {se:.4f}{tag}")
            else:
                lines.append(f"{task:15s} {k:10s} {100 * v:14.2f} ± {100 * se:.2f}{tag}")
        lines.append(f"{task:15s} {'items/s':10s} {rec['items_per_s']:14.1f}")
    return "\n".join(lines)
