"""Batch inference with a fine-tuned model (``gerbil predict``): labels with probabilities, or greedy
completions with their mean token log-probability.

The model is any fine-tuned source `gerbil.export.load_model` reads — a fine-tuning run (its best
checkpoint), one of its checkpoints, or its export folder — and its fine-tuning record (checkpoint
meta.json / config.json's ``gerbil.finetune``) says how inputs were written in training: the prompt
prefix, the sft template, ``max_len`` and the truncation rule. Inputs are encoded exactly that way
(`gerbil.finetune.batches`), so a prediction sees what validation saw.

Output rows (JSONL, or CSV by the output file's suffix), one per usable input row, in input order:

* classify: ``row`` (the input's row number), ``label``, ``probability`` (of that label), and
  ``probs`` (every label's probability; a ``p_<label>`` column each in CSV);
* sft: ``row``, ``completion``, ``logprob`` (mean log-probability per generated token, the end-of-text
  included: the confidence a fuzzy wrapper thresholds);
* seq2seq (an encoder-decoder): the same columns; the source goes to the encoder (``prefix +
  template(source)``), the decoder starts from the recorded decoder start id (`decode.greedy_seq2seq`).

The output never replaces the input file, nor a file that is not an earlier output of this verb (a
JSONL file whose first line, or a CSV file whose header, has the columns above) unless ``overwrite``
(``--overwrite``); both are checked before the model is loaded. A completion has at most
``seq_len - 1`` new tokens, so the prompt keeps a place in the model's context; a prompt longer than
the room ``max_new_tokens`` leaves it loses its first tokens, with a warning that counts them.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gerbil.data.tokenizer import Tokenizer
from gerbil.errors import GerbilError
from gerbil.export import load_model
from gerbil.finetune.batches import encode_classify, prompt_ids
from gerbil.finetune.decode import check_room, decoder_start_id, greedy, greedy_seq2seq
from gerbil.finetune.rows import read_texts
from gerbil.fsutil import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A loaded fine-tuned model and how its inputs are written; `__call__(texts)` → output rows."""

    model: Any
    meta: dict
    tokenizer: Any
    device: torch.device
    batch_size: int = 64

    @classmethod
    def load(cls, source: str | Path, device: str = "cpu", batch_size: int = 64) -> "Predictor":
        model, meta = load_model(source, device=device)
        if not (meta.get("finetune") or {}).get("task"):
            raise GerbilError(f"{source} is not a fine-tuned model (no fine-tuning record): use gerbil sample "
                              f"for a pretrained one")
        return cls(model.float().eval(), meta, Tokenizer.load(), torch.device(device), batch_size)

    @property
    def record(self) -> dict:
        return self.meta["finetune"]

    @property
    def task(self) -> str:
        return self.record["task"]

    @property
    def input_field(self) -> str:
        return self.record.get("text_field" if self.task == "classify" else "prompt_field") or (
            "text" if self.task == "classify" else "prompt")

    def __call__(self, texts: list[str], max_new_tokens: int | None = None) -> list[dict]:
        return self.classify(texts) if self.task == "classify" else self.complete(texts, max_new_tokens)

    def classify(self, texts: list[str]) -> list[dict]:
        """Label and probabilities per text."""
        from gerbil.finetune.workloads import classify_scores  # lazy: torch

        rec = self.record
        names = list(rec["label_names"])
        data = encode_classify(texts, [0] * len(texts), self.tokenizer, list(rec.get("prefix") or []),
                               int(rec["max_len"]), rec.get("truncate") or "end")
        probs = classify_scores(self.model, data, self.batch_size, self.device)
        top = probs.argmax(axis=1)
        return [{"label": names[k], "probability": float(p[k]), "probs": dict(zip(names, map(float, p)))}
                for k, p in zip(top, probs)]

    def complete(self, prompts: list[str], max_new_tokens: int | None = None) -> list[dict]:
        """Greedy completion and its mean token log-probability per prompt."""
        rec = self.record
        fim = rec.get("prompt_format") == "fim"
        ids = [prompt_ids(p, self.tokenizer, list(rec.get("prefix") or []), rec.get("template") or "{prompt}",
                          fim) for p in prompts]
        max_new = int(max_new_tokens or rec.get("max_new_tokens") or 64)
        seq_len = int(self.model.config.seq_len)
        check_room(max_new, seq_len, "--max-new-tokens")
        cut = sum(len(x) > (seq_len if self.task == "seq2seq" else seq_len - max_new) for x in ids)
        if cut:
            log.warning("%d of %d prompts are longer than the %d tokens the model's context (%d) leaves beside "
                        "--max-new-tokens %d: their first tokens are cut", cut, len(ids), seq_len - max_new,
                        seq_len, max_new)
        if self.task == "seq2seq":  # the source to the encoder, decoded from the model's start token
            start = int(rec.get("decoder_start_id", decoder_start_id(self.model)))
            outs = greedy_seq2seq(self.model, ids, max_new, start, batch_size=max(self.batch_size, 1))
        else:
            outs = greedy(self.model, ids, max_new, batch_size=max(self.batch_size, 1))
        return [{"completion": self.tokenizer.decode(new), "logprob": lp} for new, lp in outs]


def predict(source: str | Path, input_path: str | Path, output: str | Path | None = None,
            field: str | None = None, device: str = "cpu", batch_size: int = 64,
            max_new_tokens: int | None = None, overwrite: bool = False) -> list[dict]:
    """Predict every usable row of `input_path` (JSONL / CSV / parquet; bad rows counted and skipped, as
    in training) with the fine-tuned `source`; write them to `output` (.jsonl or .csv) when given and
    return them. `field`: the input column (default: the one the model was fine-tuned on).
    `overwrite`: replace an `output` that is not an earlier prediction file (never the input)."""
    if output is not None:
        check_output(input_path, output, overwrite)
    predictor = Predictor.load(source, device=device, batch_size=batch_size)
    texts, rows, bad = read_texts(input_path, field or predictor.input_field)
    out = [dict(row=r, **p) for r, p in zip(rows, predictor(texts, max_new_tokens))]
    if output is not None:
        write_rows(out, output)
    log.info("%d predictions (%s)", len(out), bad.summary())
    return out


_COLUMNS = ({"row", "label", "probability"}, {"row", "completion", "logprob"})


def _output_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    raise GerbilError(f"{path}: unknown output format (expected .jsonl or .csv)")


def _is_predictions(path: Path, fmt: str) -> bool:
    """An earlier output of `predict`: its first line (JSONL) or header (CSV) has a task's columns."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            first = f.readline()
        keys = set(next(csv.reader([first]), [])) if fmt == "csv" else set(json.loads(first))
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error):
        return False
    return any(cols <= keys for cols in _COLUMNS)


def check_output(input_path: str | Path, output: str | Path, overwrite: bool = False) -> None:
    """Refuse (one line) an `output` that is the input file (also through a link), a folder, an unknown
    format, or an existing file that is not an earlier prediction file (unless `overwrite`)."""
    out, src = Path(output).expanduser(), Path(input_path).expanduser()
    fmt = _output_format(out)
    if not out.exists():
        return
    if out.is_dir():
        raise GerbilError(f"--output {out} is a folder; name a .jsonl or .csv file")
    if src.exists() and out.samefile(src):
        raise GerbilError(f"--output {out} is the --input file; predictions never replace their input: "
                          f"choose another --output")
    if not overwrite and out.stat().st_size and not _is_predictions(out, fmt):  # an empty file holds nothing
        raise GerbilError(f"--output {out} exists and is not an earlier prediction file; choose another "
                          f"--output, or pass --overwrite to replace it")


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """JSONL (one object per row) or CSV (``probs`` spread into ``p_<label>`` columns) by the suffix."""
    p = Path(path)
    if _output_format(p) == "csv":
        flat = [{**{k: v for k, v in r.items() if k != "probs"},
                 **{f"p_{k}": v for k, v in (r.get("probs") or {}).items()}} for r in rows]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else ["row"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        text = buf.getvalue()
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(p, text)
    return p


def format_rows(rows: list[dict]) -> str:
    """JSONL text of the rows (what `gerbil predict` prints without --output)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


__all__ = ["Predictor", "predict", "check_output", "write_rows", "format_rows"]
