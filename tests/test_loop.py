"""The step and its schedule: reading each step's numbers one step late changes no bit of what a run
trains or records (against the synchronous step the loop ran before, in the same process); `grad_clip: 0`
means no clipping; the default warmup is no shorter than min(100 steps, 10% of the run's steps), and a
resumed run keeps the warmup it recorded."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import yaml

from gerbil.runs.rundir import RunDir, set_latest
from gerbil.schedules import BatchSchedule, BatchStage, lr_at
from gerbil.train import train
from gerbil.train.distributed import Dist
from gerbil.train.resolve import default_warmup, resolve
from gerbil.train.step import configure_optimizer, train_step
from helpers import make_store, tiny_config, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store")


def _synchronous_step(model, optimizer, scaler, micro_batches, lr, autocast_dtype, grad_clip, loss_fn, counts):
    """`train_step` as it was before the numbers were read late (gerbil 0.2's, one process): the loss read
    with `float` (a host sync) and checked before the update, the GradScaler's scale read to the host."""
    device = micro_batches[0][0].device
    total = max(1.0, float(sum(counts)))
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    for batch, n in zip(micro_batches, counts):
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = loss_fn(model, batch) * (n / total)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += loss.detach().float()
    loss_value = float(loss_sum)
    assert math.isfinite(loss_value)
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    skipped = False
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < scale
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, float(grad_norm), skipped


def _synchronous_run(cfg) -> tuple[list[tuple], dict]:
    """The run `cfg` describes, trained step by step with `_synchronous_step`: (step, tokens, loss, lr,
    grad_norm, skipped) per step, and the final weights."""
    from gerbil.train.pretraining import pretraining_workload

    r = resolve(cfg)
    plan = r.plan
    torch.manual_seed(plan.seed)
    work = pretraining_workload(r, Dist())
    opt = configure_optimizer(work.model, plan.optimizer.weight_decay, plan.optimizer.betas)
    scaler = torch.amp.GradScaler("cpu") if plan.use_scaler else None
    rows, tokens, skipped = [], 0, 0
    work.model.train()
    with work.steps(0) as prefetch:
        for step, prepared in enumerate(prefetch, 1):
            lr = lr_at(tokens, plan.schedule, prepared.plan.tokens)
            loss, grad_norm, skip = _synchronous_step(work.model, opt, scaler, prepared.micro_batches, lr,
                                                      plan.autocast_dtype, plan.optimizer.grad_clip, work.loss,
                                                      prepared.counts)
            tokens += prepared.plan.tokens
            skipped += int(skip)
            rows.append((step, tokens, round(loss, 6), lr, round(grad_norm, 6), skipped))
    return rows, work.model.state_dict()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_reading_step_numbers_late_changes_no_bit(store, tmp_path, precision):
    """metrics.jsonl (every step's loss, LR, gradient norm, skipped count) and the final weights equal
    those of the synchronous step, bit for bit; with validations and checkpoints between steps, a
    ramp and a short last step."""
    kw = dict(precision=precision, tokens=128 * 2 + 256 * 3 + 70, batch_tokens="128-256", checkpoint_every=128 * 3,
              eval_every=128 * 3)
    r = train(tiny_config(store, tmp_path / "run", **kw))
    got = [(m["step"], m["tokens"], m["loss"], m["lr"], m["grad_norm"], m["skipped_steps"])
           for m in RunDir(r.run_dir).read_metrics()]
    rows, weights = _synchronous_run(tiny_config(store, tmp_path / "reference", **kw))
    assert got == rows and len(rows) == r.steps > 4
    from gerbil.export import load_model

    trained = load_model(r.run_dir)[0].state_dict()
    assert all(torch.equal(trained[k], weights[k]) for k in weights)


# ------------------------------------------------------------------------------------ grad_clip 0
def test_grad_clip_0_is_no_clipping_in_the_step():
    """With weight decay 0 only gradients move weights: clipping to 0 (what `grad_clip: 0` passed before)
    froze them; now 0 trains exactly as an unreachable clip does."""
    def step(clip: float) -> dict:
        model = tiny_model(vocab_size=64, seq_len=16).train()
        opt = configure_optimizer(model, 0.0, (0.9, 0.95))
        x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
        from gerbil.model.loss import lm_loss

        def loss_fn(m, b):
            return lm_loss(m(b[0]), m.lm_head.weight, m.lm_head.bias, b[1])

        stats = train_step(model, opt, None, [(x, x)], 1e-2, None, clip, loss_fn)
        assert stats[1] > 0  # the norm is measured either way
        return model.state_dict()

    before, free, unreachable = tiny_model(vocab_size=64, seq_len=16).state_dict(), step(0.0), step(1e9)
    assert any(not torch.equal(before[k], free[k]) for k in before)
    assert all(torch.equal(free[k], unreachable[k]) for k in free)


def test_grad_clip_0_trains_a_run(store, tmp_path):
    r = train(tiny_config(store, tmp_path / "a", grad_clip=0.0, weight_decay=0.0))
    ref = train(tiny_config(store, tmp_path / "b", grad_clip=1e9, weight_decay=0.0))
    losses = [m["loss"] for m in RunDir(r.run_dir).read_metrics()]
    assert losses == [m["loss"] for m in RunDir(ref.run_dir).read_metrics()] and losses[-1] < losses[0]


# ------------------------------------------------------------------------------------ warmup
@pytest.mark.parametrize("stages, start_step, start_tokens, expected", [
    ([(131072, 1020)], 0, 0, 100 * 131072),  # 6.7m-A: 100 steps (1% would be ~10)
    ([(64, 7)], 0, 0, 64),  # 10% of 7 steps rounds up to one: one batch
    ([(128, 40)], 0, 0, 4 * 128),
    ([(128, 2), (256, 30)], 0, 0, 2 * 128 + 2 * 256),  # a ramp: the first 4 steps' tokens
    ([(256, 500)], 1000, 1000 * 128, 50 * 256),  # a star continuation: 10% of its own 500 steps
    ([(128, 20000)], 0, 0, 20000 * 128 // 100),  # long runs keep 1% when it is longer than 100 steps
])
def test_default_warmup(stages, start_step, start_tokens, expected):
    s = BatchSchedule(tuple(BatchStage(*st) for st in stages), 64, start_step, start_tokens)
    assert default_warmup(s, s.total_tokens) == expected


def test_a_fresh_run_gets_the_new_default_and_a_resume_keeps_its_recorded_warmup(store, tmp_path):
    kw = dict(tokens=128 * 40, checkpoint_every=128 * 20, keep_checkpoints=0)
    cfg = tiny_config(store, tmp_path, **kw)
    assert resolve(cfg).plan.schedule.warmup == 4 * 128  # 10% of 40 steps (1% of the budget: 51 tokens)
    r = train(cfg)
    run = RunDir(r.run_dir)
    conf = run.read_config()
    conf["resolved"]["schedule"]["warmup"] = 128  # as a run started before the new default recorded it
    run.config.write_text(yaml.safe_dump(conf, sort_keys=False))
    set_latest(run.checkpoints, "step-00000020")
    with contextlib.suppress(FileNotFoundError):
        run.result.unlink()
    resumed = resolve(tiny_config(store, tmp_path, resume=True, **kw))
    assert resumed.plan.resume_from.name == "step-00000020" and resumed.plan.schedule.warmup == 128
