"""One optimizer step, one validation pass, and what wraps the model for them — pure helpers of the loop.

`train_step` accumulates a step's micro-batches, clips and steps, and returns its numbers as a device
tensor: nothing in it reads a value back to the host, so on a GPU the next step is queued before this
one finishes (`gerbil.train.stepstats` reads the numbers one step late). `evaluate_loss` is the fixed
validation set's mean loss. `wrap_model` puts a model in DDP and torch.compile as the run asks (the
loop falls back to the eager model when compiling fails: `gerbil.train.device.is_compile_failure`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from gerbil.model.loss import lm_loss
from gerbil.train.distributed import Dist, rank_slice

#: `train_step`'s result: a (3,) fp32 tensor on the model's device, these entries in this order
STEP_STATS = ("loss", "grad_norm", "skipped")


def configure_optimizer(model: torch.nn.Module, weight_decay: float, betas: tuple[float, float],
                        fused: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: every 2-D weight (projections, MLP, the embedding and
    the head) decays; biases and LayerNorm gains do not (nanoGPT / litgpt convention; decaying a gain
    pulls it toward 0, not toward its init of 1). The LR is set per step by the schedule."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=0.0, betas=betas, eps=1e-8, **kw)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
               micro_batches: list[tuple[torch.Tensor, ...]], lr: float, autocast_dtype: torch.dtype | None,
               grad_clip: float, loss_fn: Callable[[torch.nn.Module, tuple], torch.Tensor],
               counts: list[float] | None = None, dist: Dist = Dist(),
               idle_batch: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """One optimizer step over `micro_batches` (already on the model's device).

    A micro-batch is a tuple of tensors whose first two are ``(inputs, targets)`` (targets -100 where
    nothing is scored); `loss_fn(model, micro_batch)` is its mean loss over its scored targets (the
    workload's `Workload.loss`, e.g. next-token cross-entropy).

    Each micro-batch's mean loss is weighted by its share of the step's counted targets — over all ranks
    when data-parallel (`dist`: the counts are all-reduced on the device, and the weight is multiplied by
    the world size since DDP averages gradients) — so the step minimises the exact mean over every scored
    target of the global batch whatever the number of processes. With DDP (`model` wrapped in it),
    gradients are all-reduced only on the last micro-batch (`no_sync` before); a rank with no sequence
    this step runs `idle_batch` (nothing scored) so it still joins that all-reduce.

    grad_clip: clip the gradient norm to this; 0 means no clipping (the norm is still measured).
    counts: targets counted per micro-batch (pass them from the CPU copies to avoid device syncs).

    Returns a (3,) fp32 tensor on the device (`STEP_STATS`): the global mean loss, the gradient norm
    before clipping, and 1.0 when the GradScaler skipped the update (inf/NaN gradients in fp16). Nothing
    is read back to the host here: a non-finite loss still steps the optimizer, and the loop, reading the
    numbers one step later, stops the run before anything of that step is validated or saved.
    """
    if not micro_batches:
        if idle_batch is None:
            raise ValueError("a rank without micro-batches needs an idle_batch to join the all-reduce")
        micro_batches, counts = [idle_batch], [0]
    device = micro_batches[0][0].device
    if counts is None:
        counts = [int((b[1] != -100).sum()) for b in micro_batches]
    shares = _loss_shares(counts, dist, device)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    last = len(micro_batches) - 1
    for i, (batch, share) in enumerate(zip(micro_batches, shares)):
        sync = contextlib.nullcontext() if (i == last or not hasattr(model, "no_sync")) else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = loss_fn(model, batch) * share
            grad_loss = loss * dist.world_size if dist.enabled else loss  # DDP averages over ranks
            (scaler.scale(grad_loss) if scaler is not None else grad_loss).backward()
        loss_sum += loss.detach().float()
    if dist.enabled:
        dist.all_reduce_sum(loss_sum)
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:  # no clipping (clip_grad_norm_ with 0 would zero every gradient)
        grads = [p.grad.detach() for p in params if p.grad is not None]
        grad_norm = (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                     if grads else torch.zeros((), device=device))
    skipped = torch.zeros((), device=device)
    if scaler is not None:
        scale = scaler._get_scale_async().clone()  # the scale tensor: get_scale() would read it to the host
        scaler.step(optimizer)  # skips the update when any gradient is inf/NaN (the same on every rank)
        scaler.update()
        skipped = (scaler._get_scale_async() < scale).float()  # the scale only drops after an overflow
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack([loss_sum, grad_norm.float(), skipped.float()])


def _loss_shares(counts: list[float], dist: Dist, device: torch.device) -> list:
    """Each micro-batch's weight n / Σn (the step's scored targets, over all ranks). In one process Python
    floats; data-parallel, fp32 device tensors from the all-reduced count, so no rank waits for a host
    read of it."""
    if not dist.enabled:
        total = max(1.0, float(sum(counts)))
        return [n / total for n in counts]
    total_t = torch.tensor([float(sum(counts))], dtype=torch.float64).to(device, non_blocking=True)
    total_t = dist.all_reduce_sum(total_t).clamp_min(1.0)
    return [(n / total_t)[0].float() for n in counts]


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, head: torch.nn.Linear, windows, micro_batch: int,
                  device: torch.device, autocast_dtype: torch.dtype | None, vocab_size: int,
                  chunk_tokens: int = 4096, pad_fill: int | None = None, dist: Dist = Dist(),
                  pad: Callable[[tuple], tuple] | None = None) -> float:
    """Mean next-token loss over the scored targets, every one counted once, in fp32 accumulation.

    windows: raw windows (N, T+1) (every target scored), or ``(inputs, targets)`` of shape (N, T) with
    -100 where a target is not scored (`validation.eval_batches`, e.g. the ``<causal>`` mode tokens), or
    an encoder-decoder's rows ``(encoder_ids, targets, decoder_ids, encoder_segments, decoder_segments)``
    (`data.encdec_loader.eval_rows`: the model is called with every tensor but the targets).
    pad: make a short last micro-batch full-size (a compiled model's one graph), for any layout;
    pad_fill: pad a short last micro-batch to (micro_batch, T) with this input id and unscored targets
    (a compiled model then keeps its one evaluation graph; `pad_batch`).
    dist: data-parallel — each rank scores its contiguous share of the windows and the sums are
    all-reduced, so every rank returns the same mean over the whole set.
    """
    if isinstance(windows, torch.Tensor):
        windows = (windows[:, :-1], windows[:, 1:])
    if dist.enabled:
        lo, hi = rank_slice(len(windows[0]), dist)
        windows = tuple(t[lo:hi] for t in windows)
    inputs, targets, extra = windows[0], windows[1], windows[2:]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(inputs), micro_batch):
        y_cpu = targets[s : s + micro_batch]
        n = int((y_cpu != -100).sum())  # counted on the CPU copy: no device sync
        if n == 0:  # nothing scored here (lm_loss would return 0 for it; skip the forward pass)
            continue
        batch = (inputs[s : s + micro_batch], y_cpu, *(t[s : s + micro_batch] for t in extra))
        if pad is not None:
            batch = pad(batch)
        elif pad_fill is not None:
            batch = pad_batch(batch[0], batch[1], micro_batch, inputs.shape[1], pad_fill)
        x, y, *rest = (t.to(device, non_blocking=True) for t in batch)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = lm_loss(model(x, *rest), head.weight, head.bias, y, vocab_size=vocab_size, chunk_tokens=chunk_tokens)
        total += float(loss) * n  # lm_loss is the mean over this micro-batch's scored targets
        count += n
    model.train(was_training)
    if dist.enabled:
        total, count = dist.sum_floats(total, float(count), device=device)
    return total / max(1, count)


def pad_batch(x: torch.Tensor, y: torch.Tensor, B: int, T: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x, y)` of shape (b ≤ B, t ≤ T) padded to (B, T): inputs with `fill`, targets with -100 (never
    scored). What a compiled model needs to keep one graph: a smaller micro-batch (the end of a step or
    of the validation set) or the shortened last sequence of an exact budget would each compile a new
    graph. The real rows are unchanged (rows are independent; padding columns come after them, and
    attention is causal), so losses and gradients are exactly those of the unpadded batch."""
    b, t = x.shape
    if (b, t) == (B, T):
        return x, y
    xp = torch.full((B, T), fill, dtype=x.dtype)
    yp = torch.full((B, T), -100, dtype=y.dtype)
    xp[:b, :t], yp[:b, :t] = x, y
    return xp, yp


# ------------------------------------------------------------------------------------ compiling
def wrap_model(model: torch.nn.Module, device: torch.device, dist: Dist, compile: bool) -> torch.nn.Module:
    """The module the steps run: DDP-wrapped when data-parallel, compiled when asked (`dynamic=False`:
    every compiled shape is static — training pads its micro-batches to one shape, so it builds one
    training graph and one evaluation graph, never a dynamic one). Checkpoints still save `model` itself
    (no `module.` / `_orig_mod.` names)."""
    run_model = model
    if dist.enabled:  # gradients all-reduced in buckets during backward; no buffer broadcasts (rotary
        # tables are rebuilt on every rank), so evaluation forwards need no collective
        run_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            gradient_as_bucket_view=True)
    if compile:
        run_model = torch.compile(run_model, dynamic=False)
    return run_model


def one_line(e: BaseException) -> str:
    """An exception as one short line (what a record keeps of a fallback's cause)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"
