"""Loader: plain windows, the objective path, and exact resume of the cursor (torchtitan's test:
run 40 batches, save, rebuild, load, the next 8 must be identical)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from gerbil.data.loader import EOT_ID, IGNORE_INDEX, Loader
from gerbil.data.validation import eval_batches, eval_windows


@dataclass
class FakeSplit:
    """The `gerbil.data.store.Split` surface the loader uses: flat tokens (EOT after each doc) + offsets."""

    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1] - 1]


EOT = 999


def fake_split(n_docs: int = 50, seed: int = 0) -> FakeSplit:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 900, size=rng.integers(1, 60)) for _ in range(n_docs)]
    flat = np.concatenate([np.append(d, EOT) for d in docs]).astype(np.uint16)
    offsets = np.cumsum([0] + [len(d) + 1 for d in docs]).astype(np.int64)
    return FakeSplit(flat, offsets)


def masked_reverse(chunk: np.ndarray, rng: np.random.Generator):
    """A toy objective: reversed chunk plus a marker drawn from rng; loss only on the second half."""
    out = np.concatenate([[int(rng.integers(900, 950))], chunk[::-1]])
    mask = np.zeros(len(out), dtype=bool)
    mask[len(out) // 2 :] = True
    return out, mask


def test_plain_windows_are_contiguous_and_shifted():
    split = fake_split()
    T = 16
    ld = Loader(split, T, 4, shuffle=False)
    x, y = next(ld)
    assert x.shape == y.shape == (4, T) and x.dtype == torch.int64
    flat = torch.from_numpy(split.tokens.astype(np.int64))
    for i in range(4):
        assert torch.equal(x[i], flat[i * T : i * T + T])
        assert torch.equal(y[i], flat[i * T + 1 : i * T + T + 1])


def test_plain_epoch_visits_every_window_once():
    split = fake_split()
    T = 8
    ld = Loader(split, T, 1, seed=3)
    firsts = [int(ld.next_sequences(1)[0][0, 0]) for _ in range(ld.n_windows)]
    starts = sorted(int(split.tokens[w * T]) for w in range(ld.n_windows))
    assert sorted(firsts) == starts
    assert ld.epoch == 0 and ld.cursor == ld.n_windows
    ld.next_sequences(1)
    assert ld.epoch == 1  # wrapped into a new, differently shuffled epoch


@pytest.mark.parametrize("objective", ["plain", masked_reverse])
def test_resume_gives_the_exact_next_batches(objective):
    split = fake_split()
    a = Loader(split, 16, 3, objective=objective, seed=7)
    for _ in range(40):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(8)]
    b = Loader(split, 16, 3, objective=objective, seed=7)
    b.load_state_dict(state)
    for (x0, y0), (x1, y1) in zip(expected, (next(b) for _ in range(8))):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    # the cursor counts sequences, not batches: another micro-batch continues the same stream
    c = Loader(split, 16, 6, objective=objective, seed=7)
    c.load_state_dict(state)
    x, _ = next(c)
    assert torch.equal(x, torch.cat([expected[0][0], expected[1][0]]))


def test_state_is_plain_python_and_refuses_other_layouts():
    split = fake_split()
    a = Loader(split, 16, 2, objective=masked_reverse, seed=1)
    next(a)
    import json

    json.dumps(a.state_dict())  # JSON-able (and so loadable with torch.load(weights_only=True))
    with pytest.raises(ValueError, match="seq_len"):
        Loader(split, 32, 2, objective=masked_reverse, seed=1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="seed"):
        Loader(split, 16, 2, objective=masked_reverse, seed=2).load_state_dict(a.state_dict())


def test_objective_path_packs_with_eot_and_masks_targets():
    split = fake_split()
    T = 16
    ld = Loader(split, T, 4, objective=masked_reverse, seed=0, shuffle=False, chunk_tokens=8, eot_id=EOT)
    x, y = next(ld)
    # rebuild the packed stream by hand: docs in file order, chunks of 8, rng from (seed, chunk index)
    toks, mask, k = [], [], 0
    for i in range(split.n_docs):
        doc = split.document(i)
        for s in range(0, len(doc), 8):
            t, m = masked_reverse(doc[s : s + 8], np.random.default_rng([0, k, 2]))
            k += 1
            toks += list(t) + [EOT]
            mask += list(m) + [True]
        if len(toks) > 4 * T + 1:
            break
    toks, mask = np.array(toks), np.array(mask)
    for i in range(4):
        w, m = toks[i * T : i * T + T + 1], mask[i * T : i * T + T + 1]
        assert x[i].tolist() == w[:-1].tolist()
        assert y[i].tolist() == np.where(m[1:], w[1:], IGNORE_INDEX).tolist()


def test_objective_rng_depends_only_on_seed_and_chunk_index():
    split = fake_split()
    seen = {}

    def record(chunk, rng):
        seen.setdefault(len(seen), rng.integers(1 << 30))
        return chunk, np.ones(len(chunk), dtype=bool)

    Loader(split, 16, 4, objective=record, seed=5).next_sequences(4)
    first = dict(seen)
    seen.clear()
    Loader(split, 16, 4, objective=record, seed=5, shuffle=False).next_sequences(4)  # other doc order
    n = min(len(first), len(seen))
    assert [first[i] for i in range(n)] == [seen[i] for i in range(n)]
    assert first[0] == np.random.default_rng([5, 0, 2]).integers(1 << 30)


def test_real_objectives_run_through_the_loader():
    objectives = pytest.importorskip("gerbil.data.objectives")
    split = fake_split()
    for name in ("causal", "blender"):
        ld = Loader(split, 32, 2, objective=name, seed=0)
        x, y = next(ld)
        assert x.shape == (2, 32)
        assert ld.chunk_tokens == objectives.get_objective(name).chunk_len(32)


def test_eval_windows_are_the_leading_windows():
    split = fake_split()
    w = eval_windows(split, 10, 35)
    assert w.shape == (3, 11)
    assert w[1].tolist() == split.tokens[10:21].astype(np.int64).tolist()


def _tiny_val_split(tmp_path, n_docs=120):
    """The val split of a tiny real token store (GPT-2 ids, EOT 50256) of short random documents."""
    from gerbil.data.store import TokenStore

    rng = np.random.default_rng(4)
    docs = [rng.integers(0, 50000, size=int(rng.integers(1, 40))) for _ in range(n_docs)]
    TokenStore.write(tmp_path / "store", docs, tokenizer_sha256="t", vocab_size=50264, eot_id=EOT_ID,
                     val_fraction=0.5, overwrite=True)
    return TokenStore.open(tmp_path / "store").split("val")


def test_eval_batches_plain_are_the_raw_windows(tmp_path):
    split = _tiny_val_split(tmp_path)
    w = eval_windows(split, 16, 200)
    for objective in ("plain", "fim", "mlm", None):  # no causal mode token: raw windows, all scored
        x, y = eval_batches(split, 16, 200, objective=objective)
        assert torch.equal(x, w[:, :-1]) and torch.equal(y, w[:, 1:])


@pytest.mark.parametrize("objective", ["blender", "causal"])
def test_eval_batches_causal_mode_for_blender(tmp_path, objective):
    from gerbil.data.objectives import CAUSAL

    split = _tiny_val_split(tmp_path)
    T, budget = 16, 200
    raw = eval_windows(split, T, budget)
    n = len(raw)
    x, y = eval_batches(split, T, budget, objective=objective)
    assert x.shape == y.shape and x.shape[1] == T and x.dtype == y.dtype == torch.int64
    # the stream the windows cover (inputs + the last target of each window), minus the end padding
    stream = torch.cat([x.reshape(-1), x.new_tensor([EOT_ID])]).tolist()
    assert stream[0] == CAUSAL  # the first window starts with <causal>
    flat = split.tokens[: n * T + 1].astype(np.int64).tolist()
    n_eot = sum(t == EOT_ID for t in flat[:-1])
    n_inserted = 1 + n_eot
    real = stream[: n * T + 1 + n_inserted]
    # <causal> right after every EOT that is followed by more text, and nowhere else
    assert [a for a in real if a != CAUSAL] == flat
    for i, t in enumerate(real[:-1]):
        if t == EOT_ID:
            assert real[i + 1] == CAUSAL
    assert real.count(CAUSAL) == n_inserted
    # scored: exactly the plain windows' N·T targets, in order; <causal> is never a target
    yy = y[y != IGNORE_INDEX]
    assert len(yy) == n * T and yy.tolist() == raw[:, 1:].reshape(-1).tolist()
    assert not (y == CAUSAL).any()
    # targets are the inputs shifted by one, across window boundaries too (one packed stream)
    nxt = torch.cat([x.reshape(-1)[1:], x.new_tensor([EOT_ID])])
    scored = y.reshape(-1) != IGNORE_INDEX
    assert torch.equal(y.reshape(-1)[scored], nxt[scored])


def test_evaluate_loss_counts_only_scored_targets(tmp_path):
    from gerbil.model.config import ModelConfig
    from gerbil.model.model import GPT
    from gerbil.train.step import evaluate_loss

    split = _tiny_val_split(tmp_path)
    torch.manual_seed(0)
    model = GPT(ModelConfig(d_model=32, n_layer=1, n_head=2, rotary_dim=8, vocab_size=50264, seq_len=16))
    kw = dict(micro_batch=3, device=torch.device("cpu"), autocast_dtype=None, vocab_size=50264)
    w = eval_windows(split, 16, 200)
    plain = evaluate_loss(model, model.lm_head, w, **kw)
    assert evaluate_loss(model, model.lm_head, eval_batches(split, 16, 200), **kw) == pytest.approx(plain, rel=1e-6)
    # by hand: the mean per-token loss over the scored targets only (-100 ignored, not diluting)
    x, y = eval_batches(split, 16, 200, objective="blender")
    with torch.no_grad():
        logits = model.lm_head(model(x)).float()[..., :50264]
        per = torch.nn.functional.cross_entropy(logits.reshape(-1, 50264), y.reshape(-1), reduction="none",
                                                ignore_index=IGNORE_INDEX)
    expect = float(per.sum() / (y != IGNORE_INDEX).sum())
    assert evaluate_loss(model, model.lm_head, (x, y), **kw) == pytest.approx(expect, rel=1e-5)


def test_bad_arguments():
    split = fake_split(n_docs=1)
    with pytest.raises(ValueError):
        Loader(split, 0, 1)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        Loader(split, 10_000, 1)
    with pytest.raises(ValueError, match="unknown objective"):
        Loader(fake_split(), 8, 1, objective="nonsense")


# ------------------------------------------------------------------------------------ bit-identical output
def _reference_store(tmp_path):
    """The seeded store of tests/fixtures/make_loader_reference.py (gerbil 0.1.0's recipe, today's paths)."""
    from gerbil.data.store import TokenStore

    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 50257, size=int(rng.integers(1, 400))) for _ in range(400)]
    return TokenStore.write(tmp_path / "store", docs, tokenizer_sha256="x", vocab_size=50264, val_fraction=0.0,
                            overwrite=True)


@pytest.fixture(scope="module")
def reference_split(tmp_path_factory):
    return _reference_store(tmp_path_factory.mktemp("ref")).split("train")


@pytest.mark.parametrize("objective", ["plain", "causal", "fim", "mlm", "blender"])
def test_batches_match_the_recorded_reference_hashes(reference_split, objective):
    """The first 40 × next_sequences(4) batches (seq_len 64, seed 3) hash to what gerbil 0.1.0 yielded:
    resumed runs and old checkpoints depend on the loader's sequences never changing."""
    import hashlib
    import json
    from pathlib import Path

    ref = json.loads((Path(__file__).parent / "fixtures" / "loader_reference.json").read_text())["sha256"]
    ld = Loader(reference_split, 64, 4, objective=objective, seed=3)
    h = hashlib.sha256()
    for _ in range(40):
        x, y = ld.next_sequences(4)
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    assert h.hexdigest() == ref[objective]


class LegacyLoader:
    """gerbil 0.1.0's loader (commit 5a00a8e), verbatim but for the names: one chunk at a time, Python
    lists as the packing buffer. The reference the bulk loader must match, cursor included."""

    def __init__(self, split, seq_len, objective, seed=0, chunk_tokens=None, shuffle=True, eot_id=EOT_ID):
        from gerbil.data.loader import resolve_objective

        self.split, self.seq_len, self.seed, self.shuffle, self.eot_id = split, seq_len, seed, shuffle, eot_id
        self.objective_name, self.objective = resolve_objective(objective)
        if chunk_tokens is None:
            chunk_len = getattr(self.objective, "chunk_len", None)
            chunk_tokens = chunk_len(seq_len) if callable(chunk_len) else seq_len
        self.chunk_tokens = chunk_tokens
        self.n_windows = (len(split.tokens) - 1) // seq_len
        self.epoch = self.cursor = self.doc_offset = self.chunk_index = 0
        self.buf_tokens, self.buf_mask = [], []
        self._order, self._order_epoch = None, -1

    def _epoch_order(self):
        if self._order_epoch != self.epoch:
            n = self.n_windows if self.objective is None else int(self.split.n_docs)
            if self.shuffle:
                stream = 0 if self.objective is None else 1
                self._order = np.random.default_rng([self.seed, self.epoch, stream]).permutation(n)
            else:
                self._order = np.arange(n)
            self._order_epoch = self.epoch
        return self._order

    def _plain_sequences(self, n):
        T, tokens = self.seq_len, self.split.tokens
        out = np.empty((n, T + 1), dtype=np.int64)
        for i in range(n):
            if self.cursor >= self.n_windows:
                self.epoch, self.cursor = self.epoch + 1, 0
            w = int(self._epoch_order()[self.cursor])
            out[i] = tokens[w * T : w * T + T + 1]
            self.cursor += 1
        return out

    def _next_chunk(self):
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

    def _objective_sequences(self, n):
        T = self.seq_len
        toks = np.empty((n, T + 1), dtype=np.int64)
        mask = np.empty((n, T + 1), dtype=np.int64)
        for i in range(n):
            while len(self.buf_tokens) < T + 1:
                chunk = self._next_chunk()
                rng = np.random.default_rng([self.seed, self.chunk_index, 2])
                self.chunk_index += 1
                out_tokens, out_mask = self.objective(chunk, rng)
                out_tokens = np.asarray(out_tokens, dtype=np.int64).reshape(-1)
                out_mask = np.asarray(out_mask, dtype=np.int64).reshape(-1)
                self.buf_tokens.extend(out_tokens.tolist() + [self.eot_id])
                self.buf_mask.extend(out_mask.tolist() + [1])
            toks[i] = self.buf_tokens[: T + 1]
            mask[i] = self.buf_mask[: T + 1]
            del self.buf_tokens[:T], self.buf_mask[:T]
        return toks, mask

    def next_sequences(self, n):
        if self.objective is None:
            win = self._plain_sequences(n)
            x, y = win[:, :-1], win[:, 1:]
        else:
            win, mask = self._objective_sequences(n)
            x, y = win[:, :-1], np.where(mask[:, 1:] > 0, win[:, 1:], IGNORE_INDEX)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def state_dict(self):
        return {
            "objective": self.objective_name, "seed": self.seed, "seq_len": self.seq_len,
            "shuffle": self.shuffle, "chunk_tokens": self.chunk_tokens,
            "epoch": self.epoch, "cursor": self.cursor, "doc_offset": self.doc_offset,
            "chunk_index": self.chunk_index,
            "buf_tokens": list(self.buf_tokens), "buf_mask": list(self.buf_mask),
        }

    def load_state_dict(self, state):
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.doc_offset, self.chunk_index = int(state["doc_offset"]), int(state["chunk_index"])
        self.buf_tokens, self.buf_mask = list(state["buf_tokens"]), list(state["buf_mask"])


def _objective_cases():
    from gerbil.data.objectives import Blender, FillInMiddle, MaskedLM

    return {
        "plain": dict(objective="plain"),
        "callable": dict(objective=masked_reverse, chunk_tokens=8),
        "causal": dict(objective="causal"),
        "fim-spm-target": dict(objective=FillInMiddle(spm_rate=0.5, loss_on="target"), chunk_tokens=7),
        "mlm": dict(objective=MaskedLM(mask_rate=0.3)),
        "blender": dict(objective="blender", shuffle=False),
        "blender-target": dict(objective=Blender(weights=(1, 2, 3), spm_rate=0.3, loss_on="target"), chunk_tokens=5,
                               eot_id=EOT),
    }


@pytest.mark.parametrize("case", list(_objective_cases()))
def test_same_sequences_and_cursor_as_the_one_chunk_at_a_time_loader(case):
    """Every call, whatever its size (several epochs of this small split), gives 0.1.0's tensors and
    leaves 0.1.0's cursor — the state_dict a checkpoint saves is unchanged too."""
    kw = _objective_cases()[case]
    split = fake_split()
    new = Loader(split, 16, 4, seed=7, **kw)
    old = LegacyLoader(split, 16, seed=7, **kw)
    assert new.chunk_tokens == old.chunk_tokens
    for n in [1, 3, 40, 1, 2, 120, 7, 1, 64, 5]:
        (x0, y0), (x1, y1) = old.next_sequences(n), new.next_sequences(n)
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
        assert new.state_dict() == old.state_dict()
    assert new.epoch >= 1  # the calls crossed epochs


@pytest.mark.parametrize("case", ["callable", "causal", "fim-spm-target", "blender-target", "plain"])
def test_state_saved_by_the_old_loader_continues_identically(case):
    """A cursor saved mid-stream by 0.1.0 (through JSON, as in a checkpoint) loads into today's loader
    and continues with the very sequences 0.1.0 would have given; and the other way round."""
    import json

    kw = _objective_cases()[case]
    split = fake_split()
    old = LegacyLoader(split, 16, seed=3, **kw)
    for n in (5, 2, 9):
        old.next_sequences(n)
    assert case == "plain" or old.buf_tokens  # mid-stream: tokens wait in the packing buffer
    new = Loader(split, 16, 4, seed=3, **kw)
    new.load_state_dict(json.loads(json.dumps(old.state_dict())))
    for n in (3, 17, 1, 30):
        (x0, y0), (x1, y1) = old.next_sequences(n), new.next_sequences(n)
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    back = LegacyLoader(split, 16, seed=3, **kw)  # today's cursor read by 0.1.0 (a rollback)
    back.load_state_dict(json.loads(json.dumps(new.state_dict())))
    (x0, y0), (x1, y1) = back.next_sequences(6), new.next_sequences(6)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_chunk_rngs_draw_what_default_rng_draws():
    """The re-seated shared generator is default_rng([seed, k, 2]), for the draws every objective makes."""
    from gerbil.data.loader import _ChunkRngs, _fast_seeding_ok

    assert _fast_seeding_ok()
    for seed, first in ((0, 0), (3, 1000), (2**32 - 1, 2**32 - 70), (2**40, 5)):  # the last: default_rng path
        rngs = _ChunkRngs(seed, first, 64, np.random.default_rng(99))
        assert (rngs.shared is None) == (seed >= 2**32)
        for c in (0, 1, 17, 63):
            ref, got = np.random.default_rng([seed, first + c, 2]), rngs(c)
            assert got.random() == ref.random()
            assert got.integers(0, 2046, size=2).tolist() == ref.integers(0, 2046, size=2).tolist()
            assert got.choice(1777, size=267, replace=False).tolist() == ref.choice(1777, size=267, replace=False).tolist()


# ------------------------------------------------------------------------------------ steps and prefetching
@dataclass
class Plan:
    full_sequences: int
    last_len: int = 0

    @property
    def tokens(self) -> int:
        return self.full_sequences * 16 + self.last_len


PLANS = [Plan(5), Plan(7), Plan(1), Plan(12), Plan(3, last_len=9)]  # micro-batch 4: 4+1, 4+3, 1, 4+4+4, 3 + short


def _loop_micro_batches(loader, plan, micro_batch):
    """train/loop.py's `_micro_batches` (the rule step_micro_batches must keep), as of this branch."""
    left = plan.full_sequences
    while left > 0:
        n = min(micro_batch, left)
        yield loader.next_sequences(n)
        left -= n
    if plan.last_len:
        x, y = loader.next_sequences(1)
        yield x[:, : plan.last_len], y[:, : plan.last_len]


def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x0, x1) and torch.equal(y0, y1) for (x0, y0), (x1, y1) in zip(a, b))


@pytest.mark.parametrize("objective", ["plain", "blender"])
def test_step_micro_batches_is_the_training_loop_rule(objective):
    from gerbil.data.steps import step_micro_batches

    split = fake_split()
    a, b = Loader(split, 16, 4, objective=objective, seed=1), Loader(split, 16, 4, objective=objective, seed=1)
    for plan in PLANS:
        got, want = step_micro_batches(a, plan, 4), list(_loop_micro_batches(b, plan, 4))
        assert _same_batches(got, want) and a.state_dict() == b.state_dict()
        assert [len(x) for x, _ in got][-1] == (1 if plan.last_len else min(4, plan.full_sequences - 4 * (len(got) - 1)))
    assert got[-1][0].shape == (1, 9)


@pytest.mark.parametrize("objective", ["plain", "mlm", masked_reverse])
def test_prefetcher_gives_the_synchronous_steps_and_their_cursors(objective):
    """Same tensors, counts and per-step cursor as the synchronous path, though the producer runs ahead;
    a loader restored from a step's loader_state continues with the next step."""
    from gerbil.data.steps import StepPrefetcher, step_micro_batches

    split = fake_split()
    sync = Loader(split, 16, 4, objective=objective, seed=2)
    with StepPrefetcher(Loader(split, 16, 4, objective=objective, seed=2), iter(PLANS), micro_batch=4, depth=2) as pf:
        steps = list(pf)
    assert len(steps) == len(PLANS)
    for plan, step in zip(PLANS, steps):
        want = step_micro_batches(sync, plan, 4)
        assert step.plan is plan and _same_batches(step.micro_batches, want)
        assert step.counts == [int((y != IGNORE_INDEX).sum()) for _, y in want]
        assert step.loader_state == sync.state_dict()
        assert not step.micro_batches[0][0].is_pinned()  # no pinning unless asked
    resumed = Loader(split, 16, 4, objective=objective, seed=2)
    resumed.load_state_dict(steps[2].loader_state)
    assert _same_batches(step_micro_batches(resumed, PLANS[3], 4), steps[3].micro_batches)


def test_data_parallel_ranks_split_each_step():
    """With W ranks every rank draws the whole step (same cursor); rank r keeps sequences
    [r·n//W, (r+1)·n//W), the last rank the shortened one; together, in rank order, the single-process step."""
    from gerbil.data.steps import StepPrefetcher

    split = fake_split()
    plans = [Plan(5), Plan(7), Plan(2), Plan(3, last_len=9), Plan(0, last_len=5)]

    def run(rank, world):
        with StepPrefetcher(Loader(split, 16, 2, objective="causal", seed=4), iter(plans), micro_batch=2,
                            rank=rank, world_size=world) as pf:
            return list(pf)

    def seqs(step, short=False):  # (inputs, targets) of a step's full (or shortened) sequences, stacked
        keep = [b for b in step.micro_batches if (b[0].shape[1] < 16) == short]
        return [torch.cat([b[k] for b in keep]) if keep else torch.zeros(0, 16, dtype=torch.int64) for k in (0, 1)]

    single = run(0, 1)
    for world in (2, 3):
        ranks = [run(r, world) for r in range(world)]
        for i, plan in enumerate(plans):
            n, want = plan.full_sequences, seqs(single[i])
            union = [torch.cat([seqs(ranks[r][i])[k] for r in range(world)]) for k in (0, 1)]
            assert torch.equal(union[0], want[0]) and torch.equal(union[1], want[1])
            for r in range(world):
                step = ranks[r][i]
                assert len(seqs(step)[0]) == (r + 1) * n // world - r * n // world
                assert all(len(x) <= 2 for x, _ in step.micro_batches)
                assert step.loader_state == single[i].loader_state  # the cursor is global
            if plan.last_len:  # the shortened sequence: on the last rank only, alone, last
                short = ranks[-1][i].micro_batches[-1]
                assert short[0].shape == (1, plan.last_len) and _same_batches([short], single[i].micro_batches[-1:])
                assert all(x.shape[1] == 16 for r in range(world - 1) for x, _ in ranks[r][i].micro_batches)


def test_prefetcher_raises_producer_errors_in_the_consumer():
    from gerbil.data.steps import StepPrefetcher

    class Fragile(Loader):
        calls = 0

        def next_sequences(self, n):
            Fragile.calls += 1
            if Fragile.calls > 3:
                raise KeyError("bad chunk")
            return super().next_sequences(n)

    with StepPrefetcher(Fragile(fake_split(), 16, 4, objective="mlm"), iter([Plan(4)] * 50), micro_batch=4) as pf:
        assert [len(next(pf).micro_batches) for _ in range(3)] == [1, 1, 1]  # the steps built before it
        with pytest.raises(KeyError, match="bad chunk"):
            next(pf)
        with pytest.raises(StopIteration):
            next(pf)
        assert not pf._thread.is_alive()


def test_prefetcher_close_stops_the_thread_promptly():
    import itertools
    import time

    from gerbil.data.steps import StepPrefetcher

    endless = (Plan(8) for _ in itertools.count())
    pf = StepPrefetcher(Loader(fake_split(), 16, 4, objective="causal"), endless, micro_batch=4, depth=1)
    next(pf)
    time.sleep(0.05)  # the producer is now blocked on the full queue
    t0 = time.perf_counter()
    pf.close()
    assert not pf._thread.is_alive() and time.perf_counter() - t0 < 1.0
    with pytest.raises(StopIteration):
        next(pf)
    # and on an exception in the training loop, through the context manager
    with pytest.raises(RuntimeError, match="loss is nan"):
        with StepPrefetcher(Loader(fake_split(), 16, 4), (Plan(8) for _ in itertools.count()), micro_batch=4) as pf:
            next(pf)
            raise RuntimeError("loss is nan")
    pf._thread.join(1.0)
    assert not pf._thread.is_alive()


def test_prefetcher_bad_arguments():
    from gerbil.data.steps import StepPrefetcher, step_micro_batches

    ld = Loader(fake_split(), 16, 4)
    for kw in (dict(rank=2, world_size=2), dict(rank=-1, world_size=2), dict(world_size=0), dict(depth=0)):
        with pytest.raises(ValueError):
            StepPrefetcher(ld, iter([]), micro_batch=4, **kw)
    with pytest.raises(ValueError):
        step_micro_batches(ld, Plan(2), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_prefetcher_pins_memory_when_asked():
    from gerbil.data.steps import StepPrefetcher

    with StepPrefetcher(Loader(fake_split(), 16, 4), iter([Plan(5, last_len=3)]), micro_batch=4, pin_memory=True) as pf:
        step = next(pf)
    assert all(x.is_pinned() and y.is_pinned() for x, y in step.micro_batches)
