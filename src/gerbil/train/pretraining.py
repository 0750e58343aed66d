"""Pretraining's workload (`gerbil.train.state.Workload`): a seeded model (`model.factory.build`), the
token store's packed sequences, next-token cross-entropy through the run's loss implementation, and the
fixed validation set's loss. A GPT reads `Loader` sequences; a T5Blender (``arch="t5"``) reads
`EncDecLoader` rows — the Blender formats split for encoder-decoders (data/encdec.py) — and validates on
`encdec_loader.eval_rows` (prefix-LM rows of the raw validation tokens)."""
from __future__ import annotations

import torch

from gerbil.data.encdec_loader import EncDecBatch, EncDecLoader, eval_rows
from gerbil.data.loader import Loader
from gerbil.data.steps import StepPrefetcher
from gerbil.data.validation import eval_batches
from gerbil.data.objectives import get_objective, mode_prefix
from gerbil.model.loss import default_chunk_tokens, lm_loss
from gerbil.model import factory
from gerbil.model.t5_hf import DECODER_START_ID
from gerbil.train.distributed import Dist
from gerbil.train.resolve import Pretraining, encoder_len
from gerbil.train.state import Workload
from gerbil.train.step import evaluate_loss, pad_batch


def pretraining_workload(r: Pretraining, dist: Dist) -> Workload:
    """The workload of `gerbil train` (module docstring)."""
    cfg, plan = r.cfg, r.plan
    device, model_cfg = plan.device, plan.model_config
    if model_cfg.is_encoder_decoder:
        return encdec_workload(r, dist)
    model = factory.build(model_cfg, seed=cfg.seed, device=device)
    objective = get_objective(cfg.objective, **cfg.objective_options()) if cfg.objective != "plain" else "plain"
    loader = Loader(r.train_split, cfg.seq_len, plan.micro_batch, objective=objective, seed=cfg.seed,
                    eot_id=r.store.eot_id)
    # the fixed validation set: the same N·T val tokens for every objective, presented in causal mode
    # (`<causal>` at each document start, never scored) for causal/blender models — validation.eval_batches
    val = (eval_batches(r.val_split, cfg.seq_len, cfg.val_tokens, objective=cfg.objective, eot_id=r.store.eot_id)
           if r.val_split is not None else None)
    chunk = default_chunk_tokens(device)
    head, vocab, fill = model.lm_head, model_cfg.vocab_size, r.store.eot_id
    impl = plan.loss_impl or "chunked"

    def loss(run_model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        x, y = batch  # (B, T) inputs and next-token targets
        return lm_loss(run_model(x), head.weight, head.bias, y, vocab_size=vocab, chunk_tokens=chunk, impl=impl)

    def validate(run_model: torch.nn.Module) -> dict[str, float]:
        return {"val_loss": evaluate_loss(run_model, head, val, plan.eval_micro_batch, device, plan.autocast_dtype,
                                          vocab, chunk, pad_fill=fill if plan.compile else None, dist=dist)}

    def steps(tokens: int) -> StepPrefetcher:
        # the next steps' micro-batches are built in a background thread while this one trains (pinned on
        # CUDA); each arrives with the loader cursor a checkpoint written after it must hold
        return StepPrefetcher(loader, r.steps.plans(tokens), plan.micro_batch, pin_memory=device.type == "cuda",
                              rank=dist.rank, world_size=dist.world_size)

    return Workload(
        model=model, data=loader, steps=steps, loss=loss, validate=validate if val is not None else None,
        meta={"model": model_cfg.to_dict(), "size": plan.size, "class": plan.cls, "objective": cfg.objective,
              "objective_options": cfg.objective_options(), "parent": plan.parent.record if plan.parent else None,
              "run": plan.name, "seq_len": cfg.seq_len, "seed": cfg.seed},
        # one shape for the compiled graph: pad short micro-batches with unscored rows
        pad=(lambda b: pad_batch(*b, plan.micro_batch, cfg.seq_len, fill)) if plan.compile else None,
        idle_batch=(torch.full((1, cfg.seq_len), fill, device=device),
                    torch.full((1, cfg.seq_len), -100, device=device)),
        # how validation presented the (objective-independent) scored tokens: validation.eval_batches
        info={"val_mode": "causal" if mode_prefix(cfg.objective) else "plain"},
    )


def encdec_workload(r: Pretraining, dist: Dist) -> Workload:
    """`gerbil train --arch t5`: a T5Blender on packed encoder-decoder rows (module docstring). A row is
    ``seq_len`` positions, encoder and decoder together, so the plan's steps and budget count both."""
    cfg, plan = r.cfg, r.plan
    device, model_cfg = plan.device, plan.model_config
    model = factory.build(model_cfg, seed=cfg.seed, device=device)
    objective = get_objective(cfg.objective, **cfg.objective_options())
    te = encoder_len(cfg, model_cfg)
    loader = EncDecLoader(r.train_split, cfg.seq_len, plan.micro_batch, objective=objective, seed=cfg.seed,
                          encoder_len=te, eot_id=r.store.eot_id, start_id=DECODER_START_ID, pad_id=r.store.eot_id)
    val = (eval_rows(r.val_split, cfg.seq_len, cfg.val_tokens, te, objective=cfg.objective, eot_id=r.store.eot_id,
                     start_id=DECODER_START_ID) if r.val_split is not None else None)
    chunk = default_chunk_tokens(device)
    head, vocab = model.lm_head, model_cfg.vocab_size
    impl = plan.loss_impl or "chunked"
    pad = (lambda b: pad_rows(b, plan.micro_batch, te, cfg.seq_len - te, r.store.eot_id)) if plan.compile else None

    def loss(run_model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        enc, y, dec, eseg, dseg = batch
        return lm_loss(run_model(enc, dec, eseg, dseg), head.weight, head.bias, y, vocab_size=vocab, chunk_tokens=chunk,
                       impl=impl)

    def validate(run_model: torch.nn.Module) -> dict[str, float]:
        return {"val_loss": evaluate_loss(run_model, head, val, plan.eval_micro_batch, device, plan.autocast_dtype,
                                          vocab, chunk, dist=dist, pad=pad)}

    def steps(tokens: int) -> StepPrefetcher:
        return StepPrefetcher(loader, r.steps.plans(tokens), plan.micro_batch, pin_memory=device.type == "cuda",
                              rank=dist.rank, world_size=dist.world_size)

    idle = pad_rows(EncDecBatch(*(torch.zeros((0, 1), dtype=torch.long) for _ in range(5))), 1, te, cfg.seq_len - te,
                    r.store.eot_id)
    return Workload(
        model=model, data=loader, steps=steps, loss=loss, validate=validate if val is not None else None,
        meta={"model": model_cfg.to_dict(), "size": plan.size, "class": plan.cls, "objective": cfg.objective,
              "objective_options": cfg.objective_options(), "parent": plan.parent.record if plan.parent else None,
              "run": plan.name, "seq_len": cfg.seq_len, "seed": cfg.seed, "encoder_len": te},
        pad=pad, idle_batch=tuple(t.to(device) for t in idle),
        info={"val_mode": "prefix-lm", "encoder_len": te},
    )


def pad_rows(batch: tuple, B: int, encoder_len: int, decoder_len: int, fill: int) -> EncDecBatch:
    """An encoder-decoder micro-batch padded to (B, encoder_len) / (B, decoder_len): ids `fill`, targets
    -100, segments 0 (padding never attends across examples and is never scored); real rows unchanged."""
    widths, fills = (encoder_len, decoder_len, decoder_len, encoder_len, decoder_len), (fill, -100, fill, 0, 0)
    out = []
    for t, w, f in zip(batch, widths, fills):
        p = torch.full((B, w), f, dtype=t.dtype)
        p[: t.shape[0], : t.shape[1]] = t
        out.append(p)
    return EncDecBatch(*out)
