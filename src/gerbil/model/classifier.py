"""The classification model: gerbil's GPT-J body with transformers' sequence-classification head.

`Classifier` is laid out as transformers' ``GPTJForSequenceClassification``: the GPT-J body (gerbil's
`GPT` without its LM head) and ``score = Linear(d_model, num_labels, bias=False)`` applied to the final
hidden state of each sequence's **last non-padding token**. Padding is on the right, so with causal
attention the real tokens never see it and their positions are 0…n-1 — exactly what transformers
computes for a right-padded batch (its default positions are 0…T-1 and it picks the rightmost token
that is not ``pad_token_id``). gerbil's exporter (`gerbil.export`) writes this module as that class.

How the loop sees it. A classification micro-batch is ``(inputs, targets)`` like a language-model one:
inputs (B, T) right-padded, targets (B, T) all -100 except the label id at each row's last real token.
`classify_loss` is then `lm_loss` with the score head as a K-row "vocabulary" at those positions: the
loop's exact loss weighting by scored targets (one per example) makes a step the mean over its examples.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from gerbil.errors import GerbilError
from gerbil.model.config import ModelConfig
from gerbil.model.loss import IGNORE_INDEX, lm_loss
from gerbil.model.model import GPT, rotary_tables


class Classifier(GPT):
    """GPT-J body + ``score`` head; `forward(idx) -> hidden (B, T, d)` as `GPT`, `classify(idx, last)`
    -> logits (B, num_labels). Parameter names: GPT's (without ``lm_head``) and ``score.weight``."""

    def __init__(self, cfg: ModelConfig, num_labels: int):
        if num_labels < 2:
            raise GerbilError(f"classification needs at least 2 labels, got {num_labels}")
        super().__init__(cfg)
        del self.lm_head  # no next-token head: the score head replaces it (as in transformers)
        self.num_labels = int(num_labels)
        self.score = nn.Linear(cfg.d_model, self.num_labels, bias=False)
        self.reset_score()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT's initialization while the LM head still exists (GPT.__init__'s own call); afterwards only
        the score head is reset — a classifier's body always comes from a pretrained model."""
        if "lm_head" in self._modules:
            super().reset_parameters(generator)
        else:
            self.reset_score(generator)

    @torch.no_grad()
    def reset_score(self, generator: torch.Generator | None = None) -> None:
        """N(0, init_std), transformers' initialization of ``score`` (initializer_range)."""
        self.score.weight.normal_(0.0, self.config.init_std, generator=generator)

    @classmethod
    def from_gpt(cls, gpt: GPT, num_labels: int, seed: int = 0) -> "Classifier":
        """A classifier whose body is `gpt`'s weights (copied) and whose score head is freshly drawn
        from `seed` (a local generator: no global RNG is touched)."""
        with torch.device("meta"):
            model = cls(gpt.config, num_labels)
        body = {k: v for k, v in gpt.state_dict().items() if not k.startswith("lm_head.")}
        score = torch.empty(num_labels, gpt.config.d_model)
        score.normal_(0.0, gpt.config.init_std, generator=torch.Generator().manual_seed(int(seed)))
        body["score.weight"] = score
        model.load_state_dict({k: v.detach().clone().float() for k, v in body.items()}, strict=True, assign=True)

        model.rope_cos, model.rope_sin = rotary_tables(gpt.config.seq_len, gpt.config.rotary_dim)
        return model.to(next(gpt.parameters()).device)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise GerbilError("a classifier has no language-model head: use classify(), or fine-tune with task sft "
                          "for generation")

    def classify(self, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """idx (B, T) right-padded token ids, last (B,) index of each row's last real token → logits (B, K)."""
        hidden = self(idx)  # (B, T, d)
        rows = torch.arange(idx.shape[0], device=idx.device)
        return self.score(hidden[rows, last])  # (B, K)


def classify_loss(model: torch.nn.Module, score: nn.Linear, x: torch.Tensor, y: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (class-weighted) cross-entropy of one micro-batch.

    x (B, T) inputs; y (B, T) -100 except the label at each row's last real token; `model` the (wrapped)
    classifier, whose forward gives hidden states; `weights` (K,) per-class weights: the mean is then
    Σ w_y · CE / Σ w_y, PyTorch's weighted cross-entropy (the loop weights the micro-batches by the
    same sums, so a step is the weighted mean over all its examples).
    """
    mask = None
    if weights is not None:
        mask = weights[y.clamp_min(0)] * (y != IGNORE_INDEX)  # (B, T): w_y at scored positions
    return lm_loss(model(x), score.weight, None, y, loss_mask=mask, vocab_size=score.weight.shape[0],
                   impl="full")
