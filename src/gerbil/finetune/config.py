"""`FinetuneConfig`: every option of a fine-tuning run, one source for the CLI, YAML and Python.

The same machinery as `gerbil.train.config.TrainConfig` (`Options`, `opt`, `add_arguments`,
`config_from_args`): each field carries its help, flag, parser and check, `gerbil finetune`'s flags are
generated from the fields, and an unknown key, a wrongly typed value or a value out of range is a one-line
`ValueError` naming the field, wherever the value came from. Pure Python, no torch.

The defaults are for what tiny models are fine-tuned on: a few hundred to a few thousand examples. The
budget is in **epochs** over the training examples; the loop itself counts tokens (the LR schedule,
checkpoints and metrics.jsonl are in tokens trained, padding not counted), and an epoch is a whole number
of steps, so every epoch ends on a step boundary where the run validates and checkpoints. The learning
rate is 1e-3 (a pretraining-sized LR, not the 5e-5 of large-model fine-tuning: a 3-15m-parameter model
moves little at 5e-5 in a few hundred steps), AdamW with β2 0.999, a 6% warmup and a cosine decay to 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gerbil.train.config import Options, opt

TASKS = ("classify", "sft")
#: Validation metrics a run can select its best checkpoint by, per task, and which way is better.
SELECT_METRICS: dict[str, dict[str, str]] = {
    "classify": {"macro_f1": "max", "accuracy": "max", "val_loss": "min"},
    "sft": {"val_loss": "min", "exact_match": "max"},
}
DEFAULT_SELECT = {"classify": "macro_f1", "sft": "val_loss"}
#: Options that only say how to run, never what is trained: `--resume auto` may change them.
RUNTIME_FIELDS = ("device", "compile", "progress", "deterministic", "log", "resume", "out", "base")


def _parse_names(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


@dataclass
class FinetuneConfig(Options):
    """Everything `gerbil finetune` takes; YAML keys are these names."""

    _what = "fine-tuning option"

    # --- what is fine-tuned, on what
    base: str | None = opt(None, "the pretrained model: a run directory, a checkpoint or an export folder",
                           flag="RUN_OR_EXPORT")
    task: str | None = opt(None, "classify (text → label) or sft (prompt → completion)", choices=TASKS)
    train: str | None = opt(None, "training examples: .jsonl, .csv or .parquet", metavar="FILE")
    val: str | None = opt(None, "validation examples (default: a deterministic, stratified --val-fraction of "
                                "--train)", metavar="FILE")
    out: str | None = opt(None, "the run directory to write", metavar="RUN")
    val_fraction: float = opt(0.1, "share of --train held out for validation when --val is not given",
                              check="unit")
    split_seed: int = opt(0, "seed of that split (gerbil.finetune.data.split_validation)", check="non_negative")
    text_field: str = opt("text", "classify: the field holding the text")
    label_field: str = opt("label", "classify: the field holding the label (strings or integer ids)")
    prompt_field: str = opt("prompt", "sft: the field holding the prompt")
    completion_field: str = opt("completion", "sft: the field holding the completion")
    label_names: list[str] | None = opt(None, "classify: the labels in id order, e.g. ham,spam (default: the "
                                              "sorted label strings, or 0..K-1 for integer labels)",
                                        parse=_parse_names, items=str, metavar="A,B,...")
    # --- how examples become tokens
    max_len: int | None = opt(None, "tokens per example at most (default: the base model's pretraining "
                                    "sequence length)", check="positive", metavar="T")
    truncate: str = opt("end", "classify: a longer text keeps its end, or its head and tail (a quarter from "
                               "the start, the rest from the end)", choices=("end", "head_tail"))
    prompt_format: str = opt("auto", "auto: <causal> first for a causal or Blender base model, nothing for a "
                                     "plain one; plain; causal: <causal> first; fim (sft): the prompt as a "
                                     "fill-in-the-middle prefix, <fitm_start> PROMPT <multiple_tok_mask> "
                                     "<fitm_result>, the completion as the middle",
                             choices=("auto", "plain", "causal", "fim"))
    template: str = opt("{prompt}\n", "sft: how a prompt is written before its completion ({prompt} is the "
                                      "prompt)")
    pack: bool = opt(True, "sft: several examples per row, each attending only to itself (block-diagonal "
                           "attention, positions restarting per example): the same loss as one per row, "
                           "less padding")
    class_weights: str = opt("none", "classify: none, balanced (n / (K · n_class)), or one weight per label "
                                     "in id order, e.g. 1,3", metavar="W")
    # --- budget, batch, optimizer, schedule
    epochs: int = opt(4, "passes over the training examples", check="positive", metavar="N")
    batch_size: int = opt(16, "examples per optimizer step", check="positive", metavar="N")
    micro_batch: int | None = opt(None, "examples (classify) or rows (sft) per forward pass (default: about "
                                        "8k tokens' worth)", check="positive", metavar="N")
    lr: float = opt(1e-3, "peak learning rate", check="positive")
    schedule: str = opt("cosine", "cosine (warmup, cosine to min_lr_ratio), wsd or constant",
                        choices=("cosine", "wsd", "constant"))
    warmup_fraction: float = opt(0.06, "share of the run spent warming up", check="fraction")
    min_lr_ratio: float = opt(0.0, "cosine floor as a fraction of the peak", check="fraction")
    cooldown_fraction: float = opt(0.2, "wsd: share of the run spent cooling down", check="fraction")
    weight_decay: float = opt(0.01, "AdamW weight decay on matrices", check="non_negative")
    beta1: float = opt(0.9, "AdamW beta1", check="unit")
    beta2: float = opt(0.999, "AdamW beta2", check="unit")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: no clipping)", check="non_negative")
    seed: int = opt(0, "seed of the classification head and the example order", check="non_negative")
    # --- validation, best checkpoint, early stopping
    select: str | None = opt(None, "the validation metric that picks the best checkpoint: classify macro_f1 "
                                   "(default), accuracy or val_loss; sft val_loss (default) or exact_match")
    patience: int = opt(2, "stop after this many validations (epochs) without a better --select (0: never)",
                        check="non_negative", metavar="N")
    exact_match_examples: int = opt(200, "sft: validation examples whose greedy completion is checked for an "
                                         "exact match at every validation (0: none)", check="non_negative",
                                    metavar="N")
    max_new_tokens: int | None = opt(None, "sft: longest completion generated (default: the longest training "
                                           "completion + 8)", check="positive", metavar="N")
    # --- bookkeeping and runtime (may change on resume)
    log_every: int = opt(1, "steps between metrics.jsonl lines", check="positive", metavar="N")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    precision: str = opt("auto", "auto (bf16 on CUDA that has it, fp16 + loss scaling on older CUDA, fp32 on "
                                 "CPU), fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool | None = opt(None, "torch.compile the model (default: on CUDA only)")
    deterministic: bool = opt(False, "deterministic algorithms (bitwise-exact resume on a GPU; slower)")
    resume: bool = opt(False, "continue this run from its latest intact checkpoint (--resume auto)",
                       flag="--resume")
    progress: bool | None = opt(None, "progress bar (default: when stderr is a terminal)")
    log: str | None = opt(None, "also mirror metrics to: tensorboard, wandb (comma-separated)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if "{prompt}" not in self.template:
            raise ValueError(f"template: must contain {{prompt}}, got {self.template!r}")
        self.class_weight_values()  # checked here, used by the classify workload
        if self.select is not None:
            known = sorted({m for task in SELECT_METRICS.values() for m in task})
            if self.select not in known:
                raise ValueError(f"select: {self.select!r} is not one of {', '.join(known)}")
            if self.task is not None and self.select not in SELECT_METRICS[self.task]:
                raise ValueError(f"select: {self.select!r} is not a {self.task} metric "
                                 f"({', '.join(SELECT_METRICS[self.task])})")
        if self.task == "classify" and self.prompt_format == "fim":
            raise ValueError("prompt_format: fim is an sft format (the prompt as a fill-in-the-middle prefix)")

    def class_weight_values(self) -> str | list[float]:
        """"none", "balanced" or the weights as numbers (one per label, positive); else a one-line error."""
        text = str(self.class_weights).strip().lower()
        if text in ("none", "balanced"):
            return text
        try:
            weights = [float(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise ValueError(f"class_weights: expected none, balanced or numbers such as 1,3, got "
                             f"{self.class_weights!r}") from None
        if not weights or not all(w > 0 and w < float("inf") for w in weights):
            raise ValueError(f"class_weights: weights must be positive numbers, got {self.class_weights!r}")
        return weights

    @property
    def select_metric(self) -> tuple[str, str]:
        """(metric, "max" | "min") that picks the best checkpoint."""
        name = self.select or DEFAULT_SELECT[self.task or "classify"]
        return name, SELECT_METRICS[self.task or "classify"][name]

    def require(self) -> None:
        """A fresh run needs a base model, a task, training examples and a run directory."""
        missing = [f"--{n.replace('_', '-')}" if n != "base" else "RUN_OR_EXPORT"
                   for n in ("base", "task", "train", "out") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"fine-tuning needs {', '.join(missing)}")


def refuse_changes(given: FinetuneConfig, saved: FinetuneConfig, run_dir: Any) -> None:
    """A resumed run continues exactly as configured: a given option that is not a runtime one and
    differs from the run's own value is refused with the field named (never silently ignored)."""
    fresh = FinetuneConfig()
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in RUNTIME_FIELDS:
            continue
        mine, theirs = getattr(given, f.name), getattr(saved, f.name)
        if mine != getattr(fresh, f.name) and mine != theirs:
            flag = (f.metadata.get("flag") or "--" + f.name).replace("_", "-")
            was = f"the run's {theirs!r}" if theirs is not None else "the run's, which was left to its default"
            raise ValueError(f"--resume continues {run_dir} as it was configured, but {flag} {mine!r} differs "
                             f"from {was}; leave it out (or fine-tune into a new --out)")
