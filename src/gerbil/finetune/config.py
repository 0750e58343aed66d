"""`FinetuneConfig`: every option of a fine-tuning run, one source for the CLI, YAML and Python.

The machinery of every verb's options (`gerbil.options`): each field carries its help, flag, parser,
check, `--help` section and whether a resume may change it; `gerbil finetune`'s flags are generated from
the fields, and an unknown key, a wrongly typed value or a value out of range is a one-line `OptionError`
naming the field, wherever the value came from. The optimizer and runtime sections are the groups
`gerbil train` shares (`Optimization`, `Runtime`), with fine-tuning's own optimizer defaults. Pure
Python, no torch.

The defaults are for what tiny models are fine-tuned on: a few hundred to a few thousand examples. The
budget is in **epochs** over the training examples; the loop itself counts tokens (the LR schedule,
checkpoints and metrics.jsonl are in tokens trained, padding not counted), and an epoch is a whole number
of steps, so every epoch ends on a step boundary where the run validates and checkpoints. The learning
rate is 1e-3 (a pretraining-sized LR, not the 5e-5 of large-model fine-tuning: a 3-15m-parameter model
moves little at 5e-5 in a few hundred steps), AdamW with β2 0.999, a 6% warmup and a cosine decay to 0.
"""
from __future__ import annotations

from dataclasses import dataclass

from gerbil.options import FALLBACK, RUNTIME, Optimization, OptionError, Options, Runtime, opt, section

TASKS = ("classify", "sft", "seq2seq")
#: Validation metrics a run can select its best checkpoint by, per task, and which way is better.
SELECT_METRICS: dict[str, dict[str, str]] = {
    "classify": {"macro_f1": "max", "accuracy": "max", "val_loss": "min"},
    "sft": {"val_loss": "min", "exact_match": "max"},
    "seq2seq": {"val_loss": "min", "exact_match": "max"},
}
DEFAULT_SELECT = {"classify": "macro_f1", "sft": "val_loss", "seq2seq": "val_loss"}


def _parse_names(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


@section("what is fine-tuned, on what")
class _Task(Options):
    # the base model is read once; a resumed run needs only its recorded shape (its checkpoint holds the
    # weights), so a base that moved may be given anew
    base: str | None = opt(None, "the pretrained model: a run directory, a checkpoint or an export folder",
                           flag="RUN_OR_EXPORT", runtime=FALLBACK)
    task: str | None = opt(None, "classify (text → label), sft (prompt → completion) or seq2seq (source → target, "
                                       "for an encoder-decoder: a gerbil warmstart run or a T5Blender)",
                          choices=TASKS)
    train: str | None = opt(None, "training examples: .jsonl, .csv or .parquet", metavar="FILE")
    val: str | None = opt(None, "validation examples (default: a deterministic, stratified --val-fraction of "
                                "--train)", metavar="FILE")
    out: str | None = opt(None, "the run directory to write", metavar="RUN", runtime=RUNTIME)
    val_fraction: float = opt(0.1, "share of --train held out for validation when --val is not given",
                              check="unit")
    split_seed: int = opt(0, "seed of that split (gerbil.finetune.data.split_validation)", check="non_negative")
    text_field: str = opt("text", "classify: the field holding the text")
    label_field: str = opt("label", "classify: the field holding the label (strings or integer ids)")
    prompt_field: str = opt("prompt", "sft: the field holding the prompt; seq2seq: the source")
    completion_field: str = opt("completion", "sft: the field holding the completion; seq2seq: the "
                                                      "target")
    label_names: list[str] | None = opt(None, "classify: the labels in id order, e.g. ham,spam (default: the "
                                              "sorted label strings, or 0..K-1 for integer labels)",
                                        parse=_parse_names, items=str, metavar="A,B,...")


@section("how examples become tokens")
class _Encoding(Options):
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
                                      "prompt); seq2seq: what the encoder reads")
    pack: bool = opt(True, "sft: several examples per row, each attending only to itself (block-diagonal "
                           "attention, positions restarting per example): the same loss as one per row, "
                           "less padding")
    class_weights: str = opt("none", "classify: none, balanced (n / (K · n_class)), or one weight per label "
                                     "in id order, e.g. 1,3", metavar="W")


@section("budget and batch")
class _Budget(Options):
    epochs: int = opt(4, "passes over the training examples", check="positive", metavar="N")
    batch_size: int = opt(16, "examples per optimizer step", check="positive", metavar="N")
    micro_batch: int | None = opt(None, "examples (classify) or rows (sft) per forward pass (default: about "
                                        "8k tokens' worth)", check="positive", metavar="N")
    warmup_fraction: float = opt(0.06, "share of the run spent warming up", check="fraction")
    seed: int = opt(0, "seed of the classification head and the example order", check="non_negative")


@section("validation, best checkpoint, early stopping")
class _Selection(Options):
    select: str | None = opt(None, "the validation metric that picks the best checkpoint: classify macro_f1 "
                                   "(default), accuracy or val_loss; sft val_loss (default) or exact_match")
    patience: int = opt(2, "stop after this many validations (epochs) without a better --select (0: never)",
                        check="non_negative", metavar="N")
    exact_match_examples: int = opt(200, "sft, seq2seq: validation examples whose greedy completion is checked for an "
                                         "exact match at every validation (0: none)", check="non_negative",
                                    metavar="N")
    max_new_tokens: int | None = opt(None, "sft, seq2seq: longest completion generated (default: the longest training "
                                           "completion + 8)", check="positive", metavar="N")


# a dataclass takes its fields from the last base first: the sections are listed last to first
@dataclass
class FinetuneConfig(Runtime, _Selection, Optimization, _Budget, _Encoding, _Task):
    """Everything `gerbil finetune` takes; YAML keys are these names."""

    _what = "fine-tuning option"
    _resume_advice = "leave it out (or fine-tune into a new --out)"

    # fine-tuning's own optimizer defaults (module docstring)
    lr: float = Optimization.with_default("lr", 1e-3)
    min_lr_ratio: float = Optimization.with_default("min_lr_ratio", 0.0)
    weight_decay: float = Optimization.with_default("weight_decay", 0.01)
    beta2: float = Optimization.with_default("beta2", 0.999)

    def __post_init__(self) -> None:
        super().__post_init__()
        if "{prompt}" not in self.template:
            raise OptionError(f"template: must contain {{prompt}}, got {self.template!r}")
        self.class_weight_values()  # checked here, used by the classify workload
        if self.select is not None:
            known = sorted({m for task in SELECT_METRICS.values() for m in task})
            if self.select not in known:
                raise OptionError(f"select: {self.select!r} is not one of {', '.join(known)}")
            if self.task is not None and self.select not in SELECT_METRICS[self.task]:
                raise OptionError(f"select: {self.select!r} is not a {self.task} metric "
                                 f"({', '.join(SELECT_METRICS[self.task])})")
        if self.task in ("classify", "seq2seq") and self.prompt_format == "fim":
            raise OptionError("prompt_format: fim is an sft format (the prompt as a fill-in-the-middle prefix)")

    def class_weight_values(self) -> str | list[float]:
        """"none", "balanced" or the weights as numbers (one per label, positive); else a one-line error."""
        text = str(self.class_weights).strip().lower()
        if text in ("none", "balanced"):
            return text
        try:
            weights = [float(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise OptionError(f"class_weights: expected none, balanced or numbers such as 1,3, got "
                              f"{self.class_weights!r}") from None
        if not weights or not all(w > 0 and w < float("inf") for w in weights):
            raise OptionError(f"class_weights: weights must be positive numbers, got {self.class_weights!r}")
        return weights

    @property
    def select_metric(self) -> tuple[str, str]:
        """(metric, "max" | "min") that picks the best checkpoint."""
        name = self.select or DEFAULT_SELECT[self.task or "classify"]
        return name, SELECT_METRICS[self.task or "classify"][name]

    def require(self) -> None:
        """A fresh run needs a base model, a task, training examples and a run directory."""
        missing = [self.flag_of(n) for n in ("base", "task", "train", "out") if getattr(self, n) is None]
        if missing:
            raise OptionError(f"fine-tuning needs {', '.join(missing)}")

