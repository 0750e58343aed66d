"""A fine-tuning run decided (`Finetuning`: its `RunPlan` and what the workloads read) and the two
fine-tuning workloads the training loop runs (`gerbil.train.loop.Workload`).

* **classify** — `Classifier` (the base model's body + a fresh ``score`` head), cross-entropy at each
  example's last token (optionally class-weighted), validation loss, accuracy and macro-F1;
* **sft** — the base GPT itself, next-token cross-entropy on the completion tokens only (examples packed
  with block-diagonal attention, or one per row), validation loss over the completion tokens and the
  exact-match rate of greedy completions;
* **seq2seq** — an encoder-decoder (a warm start or T5Blender, `gerbil.model.factory`): the source to the
  encoder, cross-entropy on the target tokens the decoder predicts, the same validation as sft (greedy
  decoding from the model's decoder start id).

Both validate every epoch (and once before training, for the untrained model's scores), keep the
best checkpoint by the run's `select` metric and stop after `patience` validations without improvement.
Validation runs the plain (uncompiled) module in eval mode under the run's autocast; its metrics are
computed in fp32 / float64.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gerbil.data.tokenizer import SPECIAL_TOKENS
from gerbil.errors import GerbilError
from gerbil.finetune.batches import (Encoded, EpochSteps, ExamplePrefetcher, ExampleStep, classify_batch,
                                     pad_micro_batch, packed_layout, seq2seq_batch, sft_batch)
from gerbil.finetune.config import FinetuneConfig
from gerbil.finetune.decode import decoder_start_id, greedy, greedy_seq2seq
from gerbil.model import factory
from gerbil.model.classifier import Classifier, classify_loss
from gerbil.model.loss import IGNORE_INDEX, lm_loss
from gerbil.model.model import GPT
from gerbil.train.state import Workload
from gerbil.train.runplan import RunPlan

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ the run
@dataclass
class Finetuning:
    """A fine-tuning run decided: its plan (the loop's contract) and what the workloads read besides."""

    plan: RunPlan
    cfg: FinetuneConfig  # the effective options (a resumed run's own, runtime ones as given)
    base_model: Any  # the base GPT (a fresh run), None when resuming (the checkpoint has the weights)
    base_info: dict
    tokenizer: Any
    train_set: Encoded
    val_set: Encoded
    val_completions: list[str]
    epoch_steps: EpochSteps
    label_names: list[str]
    prompt_format: str
    prefix: list[int]
    max_len: int
    max_new_tokens: int
    data_record: dict
    decoder_start_id: int | None = None  # seq2seq: the encoder-decoder's decoder start token

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def inference_record(self) -> dict:
        """What a fine-tuned model needs to be used the way it was trained (checkpoint meta.json and the
        export's config.json carry it): task, labels, prompt format and tokens, template, truncation."""
        cfg = self.cfg
        rec = {"task": cfg.task, "prompt_format": self.prompt_format, "prefix": list(self.prefix),
               "max_len": self.max_len, "pad_token_id": int(SPECIAL_TOKENS["<|endoftext|>"])}
        if cfg.task == "classify":
            rec.update(label_names=list(self.label_names), truncate=cfg.truncate, text_field=cfg.text_field,
                       label_field=cfg.label_field)
        else:
            rec.update(template=cfg.template, max_new_tokens=self.max_new_tokens, prompt_field=cfg.prompt_field,
                       completion_field=cfg.completion_field)
        if cfg.task == "seq2seq":  # the encoder reads prefix + template(source); the decoder starts here
            rec["decoder_start_id"] = self.decoder_start_id
        rec["base"] = {k: self.base_info.get(k) for k in ("path", "name", "objective", "size", "tokens", "step")}
        return rec

    def checkpoint_meta(self) -> dict:
        """Facts every checkpoint's meta.json holds (the loop adds step, tokens, losses, best)."""
        plan = self.plan
        return {"model": plan.model_config.to_dict(), "size": plan.size, "class": None,
                "objective": self.base_info.get("objective") or "plain",
                "objective_options": self.base_info.get("objective_options"), "parent": None, "run": plan.name,
                "seq_len": self.max_len, "seed": self.cfg.seed, "finetune": self.inference_record()}


# ------------------------------------------------------------------------------------------ metrics
def accuracy_and_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Accuracy, and the mean F1 over the classes that occur in `y_true` or `y_pred` (scikit-learn's
    ``f1_score(average="macro")`` with its default labels, which the TF-IDF baseline reports)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    acc = float((y_true == y_pred).mean()) if len(y_true) else float("nan")
    f1s = []
    for c in np.union1d(y_true, y_pred):
        tp = int(((y_pred == c) & (y_true == c)).sum())
        fp = int(((y_pred == c) & (y_true != c)).sum())
        fn = int(((y_pred != c) & (y_true == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return acc, float(np.mean(f1s)) if f1s else float("nan")


def _eval_order(lengths: np.ndarray, micro_batch: int) -> list[list[int]]:
    """Validation examples in length order (less padding), in groups of `micro_batch`."""
    order = sorted(range(len(lengths)), key=lambda i: (int(lengths[i]), i))
    return [order[a: a + micro_batch] for a in range(0, len(order), micro_batch)]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def classify_scores(model: Classifier, data, micro_batch: int, device: torch.device,
                    autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Class probabilities (N, K), float64, of encoded examples (`batches.Encoded`), in their order."""
    was_training = model.training
    model.eval()
    probs = np.zeros((len(data), model.num_labels))
    try:
        for group in _eval_order(np.fromiter((len(x) for x in data.ids), dtype=np.int64), micro_batch):
            x, y = classify_batch(data, group)
            last = torch.tensor([len(data.ids[i]) - 1 for i in group])
            with _autocast(device, autocast_dtype):
                logits = model.classify(x.to(device), last.to(device))
            probs[group] = torch.softmax(logits.float(), dim=-1).double().cpu().numpy()
    finally:
        model.train(was_training)
    return probs


# ------------------------------------------------------------------------------------------ classify
def classify_workload(r: Finetuning) -> Workload:
    """The classification workload of a resolved fine-tuning run (`gerbil.finetune.finetune`)."""
    device, steps = r.plan.device, r.epoch_steps
    if r.base_model is not None:  # fresh: the base model's body and a score head drawn from the seed
        model = Classifier.from_gpt(r.base_model, r.num_labels, seed=r.cfg.seed)
    else:  # resume: the shape only; the loop loads the checkpoint's weights
        model = Classifier(r.plan.model_config, r.num_labels)
    model.to(device)
    weights = (torch.tensor(steps.class_weights, dtype=torch.float32, device=device)
               if steps.class_weights is not None else None)
    score = model.score

    def loss(run_model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        return classify_loss(run_model, score, batch[0], batch[1], weights)

    val = r.val_set

    def validate(run_model: torch.nn.Module) -> dict[str, float]:
        probs = classify_scores(model, val, r.plan.eval_micro_batch, device, r.plan.autocast_dtype)
        y = val.labels
        nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None))  # unweighted, per example
        acc, f1 = accuracy_and_macro_f1(y, probs.argmax(axis=1))
        return {"val_loss": float(nll.mean()), "val_accuracy": acc, "val_macro_f1": f1}

    return _workload(r, model, steps, loss, validate)


# ------------------------------------------------------------------------------------------ sft
def sft_loss(run_model: torch.nn.Module, head: torch.nn.Linear, vocab_size: int, batch: tuple,
             chunk_tokens: int = 1024) -> torch.Tensor:
    """Mean next-token cross-entropy over one micro-batch's completion tokens; a packed micro-batch
    (inputs, targets, segments) runs with per-example positions and block-diagonal attention."""
    return _completion_loss(_hidden(run_model, batch), head, vocab_size, batch[1], chunk_tokens)


def _hidden(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    """The hidden states of a micro-batch of any generative task: one example per row (inputs, targets),
    packed (+ segments), or seq2seq (encoder ids, targets, decoder ids, encoder mask)."""
    if len(batch) == 4:
        return model(batch[0], batch[2], encoder_mask=batch[3])
    if len(batch) == 3:
        positions, mask = packed_layout(batch[2])
        return model(batch[0], positions=positions, attn_mask=mask)
    return model(batch[0])


def _completion_loss(hidden: torch.Tensor, head: torch.nn.Linear, vocab_size: int, targets: torch.Tensor,
                     chunk_tokens: int) -> torch.Tensor:
    """`lm_loss` on the scored positions only: the 50k-row head is most of a tiny model's FLOPs, and the
    prompt and padding positions (often half the tokens) need none of it. hidden (B, T, d), targets (B, T)."""
    scored = targets != IGNORE_INDEX  # (B, T)
    return lm_loss(hidden[scored], head.weight, head.bias, targets[scored], vocab_size=vocab_size,
                   chunk_tokens=chunk_tokens)


@torch.no_grad()
def sft_val_loss(model: torch.nn.Module, data, micro_batch: int, device: torch.device,
                 autocast_dtype: torch.dtype | None = None) -> float:
    """Mean cross-entropy over every completion (or seq2seq target) token and its end-of-text of the
    encoded examples, each counted once, one example per row."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    lengths = np.fromiter((len(x) for x in data.ids), dtype=np.int64)
    try:
        for group in _eval_order(lengths, micro_batch):
            make = seq2seq_batch if data.task == "seq2seq" else sft_batch
            batch = tuple(t.to(device) for t in make(data, group))
            n = int((batch[1] != IGNORE_INDEX).sum())
            with _autocast(device, autocast_dtype):
                loss = _completion_loss(_hidden(model, batch), model.lm_head, model.config.vocab_size, batch[1],
                                        1024)
            total += float(loss) * n
            count += n
    finally:
        model.train(was_training)
    return total / max(1, count)


def sft_workload(r: Finetuning) -> Workload:
    """The prompt → completion workload (and, with an encoder-decoder, source → target: seq2seq) of a
    resolved fine-tuning run (`gerbil.finetune.finetune`)."""
    device, steps = r.plan.device, r.epoch_steps
    encdec = r.cfg.task == "seq2seq"
    if r.base_model is not None:
        model = r.base_model
    else:  # resume: the shape only; the loop loads the checkpoint's weights
        model = factory.build(r.plan.model_config) if encdec else GPT(r.plan.model_config)
    model.to(device)
    head, vocab = model.lm_head, r.plan.model_config.vocab_size
    chunk = 4096 if device.type == "cuda" else 1024
    val, texts = r.val_set, r.val_completions
    n_em = min(r.cfg.exact_match_examples, len(val))

    def loss(run_model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        return sft_loss(run_model, head, vocab, batch, chunk)

    def validate(run_model: torch.nn.Module) -> dict[str, float]:
        metrics = {"val_loss": sft_val_loss(model, val, r.plan.eval_micro_batch, device, r.plan.autocast_dtype)}
        if n_em:
            prompts = [val.ids[i][: int(val.prompt_len[i])].tolist() for i in range(n_em)]
            if encdec:
                outs = greedy_seq2seq(model, prompts, r.max_new_tokens, decoder_start_id(model),
                                      autocast_dtype=r.plan.autocast_dtype)
            else:
                outs = greedy(model, prompts, r.max_new_tokens, autocast_dtype=r.plan.autocast_dtype)
            hits = sum(r.tokenizer.decode(ids) == texts[i] for i, (ids, _) in enumerate(outs))
            metrics["val_exact_match"] = hits / n_em
        return metrics

    return _workload(r, model, steps, loss, validate)


# ------------------------------------------------------------------------------------------ shared
def _workload(r: Finetuning, model: torch.nn.Module, steps: EpochSteps, loss, validate) -> Workload:
    n = steps.n

    def step_record(plan: ExampleStep) -> dict:
        # fractional epochs and examples trained so far, beside the loop's tokens
        return {"epoch": round(plan.epoch + plan.end / n, 4), "examples": plan.epoch * n + plan.end}

    def step_source(tokens: int) -> ExamplePrefetcher:
        # the steps follow from the cursor (restored from a checkpoint, or the start); it must be where the
        # loop's token count says the run is
        at = steps.tokens_at(steps.epoch, steps.position)
        if at != tokens:
            raise GerbilError(f"the data cursor (epoch {steps.epoch}, example {steps.position}) is at {at} tokens, "
                              f"the checkpoint at {tokens}: not the same training data")
        return ExamplePrefetcher(steps, pin_memory=r.plan.device.type == "cuda")

    def logged(run_model: torch.nn.Module) -> dict[str, float]:
        metrics = validate(run_model)
        log.info("%s validation: %s", r.plan.name,
                 ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in metrics.items()))
        return metrics

    select, mode = r.cfg.select_metric
    return Workload(
        model=model, data=steps, steps=step_source, loss=loss, validate=logged, meta=r.checkpoint_meta(),
        # one shape for a compiled graph; seq2seq rows keep theirs (torch.compile re-traces per shape)
        pad=(lambda b: pad_micro_batch(b, r.plan.micro_batch, r.max_len)) if r.plan.compile and r.cfg.task != "seq2seq"
        else None,
        select=(select if select == "val_loss" else f"val_{select}", mode), patience=r.cfg.patience,
        validate_first=True, step_record=step_record,
        info={"task": r.cfg.task, "epochs": r.cfg.epochs, "examples": {"train": n, "val": len(r.val_set)},
              "labels": r.label_names or None},
    )


WORKLOADS = {"classify": classify_workload, "sft": sft_workload, "seq2seq": sft_workload}
