"""Evaluate a run, checkpoint or export on the tasks, exactly as lm-evaluation-harness 0.4.13 scores them.

What "exactly" means (docs/reference.md §5; checked against the harness's own source by
`tests/test_harness_parity.py`, which runs the harness itself on gerbil's export):

* Requests: each task (`gerbil.eval.tasks`) turns an item into (context, continuation) string pairs.
* Encoding (`gerbil.eval.encoding`, `TemplateLM._encode_pair`): trailing context spaces move to the
  continuation; context + continuation are encoded together and split; an empty context becomes the
  end-of-text token. Both sides are truncated from the left to the model's ``max_length + 1`` tokens as
  ``HFLM`` does. Only the continuation's tokens are scored; ``is_greedy`` = each continuation token is
  the argmax of its position's logits.
* Scoring (`gerbil.eval.scoring`): shared contexts computed once per item, the head only at scored
  positions — the same numbers, several times faster.
* Metrics (each task's `score`, `gerbil.eval.metrics`): the harness's definitions and standard errors.

Blender models are evaluated in causal mode: their contexts start with ``<causal>`` (UL2-style mode
switching, docs/reference.md §2), from the run's objective or the export's ``gerbil.objective``. An
encoder-decoder (T5Blender, a warm start) is scored as the harness's ``hf`` model with
``backend="seq2seq"``: context → encoder with no mode token, continuation → decoder (`gerbil.eval.seq2seq`).
Results go to the run's `eval/` folder (`RunDir.eval_path`): full sets to ``TASK.json``, `--limit` runs
to ``TASK.partial.json`` so they can never pass for full-set numbers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gerbil.data.tokenizer import EOT_ID, SPECIAL_TOKENS
from gerbil.errors import GerbilError
from gerbil.eval.encoding import RequestEncoder
from gerbil.eval.metrics import BOOTSTRAP_ITERS, gold_losses
from gerbil.eval.scoring import Scorer
from gerbil.eval.seq2seq import Seq2SeqEncoder, Seq2SeqScorer
from gerbil.eval.tasks import METRIC_KINDS, TASKS, Task, get_task, resolve_tasks
from gerbil.fsutil import atomic_write_json, sha256_file
from gerbil.model.factory import is_encoder_decoder
from gerbil.runs.rundir import RunDir, eval_file_name, resolve_source
from gerbil.train.distributed import Dist, rank_slice

log = logging.getLogger(__name__)

#: lm-evaluation-harness semantics reproduced here (tests/test_harness_parity.py runs this version).
HARNESS_VERSION = "0.4.13"


# ============================================================================================ data
def load_docs(task: str | Task, path: str | Path | None = None, verify: bool = True) -> tuple[list[dict], Path, str]:
    """All of a task's documents in dataset order, from the verified asset (or an explicit JSONL path,
    checked for count and fields by `gerbil.assets.eval_set`), with the file and its content hash.
    Content that differs from the official set → GerbilError (numbers on another copy are not the
    seed's numbers)."""
    from gerbil import assets

    t = task if isinstance(task, Task) else get_task(task)
    try:
        p = Path(assets.eval_set(t.data_set, None if path is None else str(path)))
    except GerbilError:
        raise
    except (FileNotFoundError, ValueError, OSError) as e:
        raise GerbilError(f"{t.name}: evaluation data unavailable: {e}") from e
    docs = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise GerbilError(f"{p}:{n}: not JSON ({e.msg})") from e
    missing = [k for k in t.fields if docs and k not in docs[0]]
    if missing:
        raise GerbilError(f"{p}: {t.name} items lack fields {missing}")
    try:
        sha = t.digest(docs)
    except KeyError as e:
        raise GerbilError(f"{p}: a {t.name} item lacks field {e}") from None
    if verify and sha != t.content_sha256:
        raise GerbilError(f"{p}: {t.name} content sha256 {sha[:12]}… differs from the official set's "
                          f"{t.content_sha256[:12]}… (delete the file to refetch it)")
    return docs, p, sha


# ==================================================================================== the model side
@dataclass
class EvalModel:
    """A model ready for evaluation: the GPT, its tokenizer as an Encoder, and where it came from."""

    model: Any
    encoder: RequestEncoder
    info: dict
    run_dir: Any = None  # the RunDir the model belongs to, if any
    checkpoint: Path | None = None


def _objective_name(obj: Any) -> str | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        obj = obj.get("name") or obj.get("objective")
    return str(obj).lower() if obj is not None else None


def _prefix_for(objective: str | None, prefix: str | Sequence[int] | None) -> list[int]:
    """Context prefix: Blender (and `causal`-objective) models are evaluated in causal mode, i.e.
    with `<causal>` first (`gerbil.data.objectives.mode_prefix`); "none"/"causal"/ids override."""
    if prefix is None or prefix == "auto":
        from gerbil.data.objectives import mode_prefix

        return list(mode_prefix(objective))
    if prefix in ("none", ""):
        return []
    if prefix == "causal":
        return [SPECIAL_TOKENS["<causal>"]]
    return [int(t) for t in prefix]  # type: ignore[union-attr]


def model_sha256(model) -> str:
    """sha256 over the parameters' names, dtypes, shapes and bytes (state-dict order)."""
    import torch

    h = hashlib.sha256()
    m = getattr(model, "_orig_mod", model)
    for name, t in m.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_for_eval(path: str | Path, prefix: str | Sequence[int] | None = None) -> EvalModel:
    """Load a run directory, a checkpoint directory or a transformers GPT-J export for evaluation.

    What the path is comes from `gerbil.runs.rundir.resolve_source`; bad input → one-line GerbilError
    (a missing path, a run with no checkpoint, an export without tokenizer files).
    """
    from gerbil.export import load_model

    src = resolve_source(path)
    if src.kind == "export":
        return _load_export(src, prefix)
    model, meta = load_model(src.checkpoint)
    objective = _objective_name(meta.get("objective"))
    if objective is None and src.run is not None:
        objective = _objective_name(src.run.read_config().get("objective"))
    from gerbil.data.tokenizer import Tokenizer

    tok = Tokenizer.load()
    encoder = _request_encoder(model, lambda texts: tok.encode_batch(texts, allow_special=True), EOT_ID, objective,
                               prefix)
    info = {"path": str(Path(path).resolve()), "kind": "checkpoint", "checkpoint": str(src.checkpoint.resolve()),
            "step": meta.get("step"), "tokens": meta.get("tokens"), "objective": objective,
            "size": meta.get("size"), "class": meta.get("class"), "tokenizer_sha256": tok.sha256,
            "prefix": encoder.prefix, "backend": _backend(model)}
    return EvalModel(model, encoder, info, src.run, src.checkpoint)


def _request_encoder(model: Any, encode_batch, eot: int, objective: str | None, prefix) -> Any:
    """How requests become ids: lm-eval's causal rules with the objective's mode prefix, or — for an
    encoder-decoder — its seq2seq rules with no mode token (`gerbil.eval.seq2seq`; an explicit prefix
    still applies)."""
    if is_encoder_decoder(model):
        return Seq2SeqEncoder(encode_batch, eot, [] if prefix is None else _prefix_for(objective, prefix))
    return RequestEncoder(encode_batch, eot, _prefix_for(objective, prefix))


def _load_export(src, prefix: str | Sequence[int] | None) -> EvalModel:
    p = src.export
    tj = p / "tokenizer.json"
    if not tj.is_file():
        raise GerbilError(f"{p}: export has no tokenizer files (tokenizer.json); re-export it with gerbil export")
    from tokenizers import Tokenizer as HFTokenizer

    from gerbil.export import load_model

    model, meta = load_model(p)
    objective = _objective_name(meta.get("objective"))
    backend = HFTokenizer.from_file(str(tj))
    eot = backend.token_to_id("<|endoftext|>")
    eot = EOT_ID if eot is None else eot
    if prefix is None and meta.get("eval_prefix"):  # the export says how it must be prompted
        prefix = backend.encode(str(meta["eval_prefix"]), add_special_tokens=False).ids

    def encode_batch(texts: list[str]) -> list[list[int]]:
        # add_special_tokens=True is what transformers' encode() does (no BOS for GPT-2 tokenizers)
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]

    encoder = _request_encoder(model, encode_batch, eot, objective, prefix)
    info = {"path": str(p.resolve()), "kind": "export", "step": meta.get("step"), "tokens": meta.get("tokens"),
            "objective": objective, "size": meta.get("size"), "class": meta.get("class"),
            "name": meta.get("name"), "tokenizer_sha256": sha256_file(tj), "prefix": encoder.prefix,
            "backend": _backend(model)}
    return EvalModel(model, encoder, info, src.run, None)


def _backend(model: Any) -> str:
    """The lm-eval backend whose rules scored the model: "causal" or "seq2seq"."""
    return "seq2seq" if is_encoder_decoder(model) else "causal"


# ========================================================================================= evaluation
def _dtype(name: str | None):
    import torch

    table = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16}
    if name not in table:
        raise GerbilError(f"unknown dtype {name!r} (fp32, bf16, fp16)")
    return table[name]


def default_device() -> str:
    """The device ``auto`` means here (`gerbil.train.device.pick_device`'s rule)."""
    from gerbil.train.device import pick_device

    return str(pick_device("auto"))


def run_task(em: EvalModel, task: str, *, limit: int | None = None, batch_size: int | None = None,
             device: str = "cpu", data_path: str | Path | None = None, progress: bool = True,
             share_prefix: bool = True, bootstrap_iters: int = BOOTSTRAP_ITERS, dist: Dist = Dist()) -> dict:
    """Evaluate one task; returns the result record (metrics, per-item scores, hashes, counts).

    dist: data-parallel (`gerbil eval --nproc N`): each rank scores a contiguous share of the items and
    rank 0 gathers them in order — the per-item results are those of one process; the other ranks
    return an empty record."""
    from tqdm.auto import tqdm

    t = get_task(task)
    docs, data_file, data_sha = load_docs(t, data_path)
    if limit is not None:
        if limit <= 0:
            raise GerbilError(f"--limit must be positive, got {limit}")
        docs = docs[:limit]  # the first N in dataset order, as the harness's --limit
    items = [t.build_item(d) for d in docs]
    t0 = time.perf_counter()
    flat = [r for it in items for r in it.requests]
    enc = em.encoder.encode_pairs(flat)
    groups, k = [], 0
    for it in items:
        groups.append(enc[k: k + len(it.requests)])
        k += len(it.requests)
    if is_encoder_decoder(em.model):  # lm-eval's hf model with backend=seq2seq
        scorer: Any = Seq2SeqScorer(em.model, device=device, batch_size=batch_size)
    else:
        scorer = Scorer(em.model, device=device, batch_size=batch_size, share_prefix=share_prefix)
    lo, hi = rank_slice(len(groups), dist) if dist.enabled else (0, len(groups))
    bar = tqdm(total=hi - lo, desc=task, unit="item", disable=not progress or not dist.is_main, dynamic_ncols=True)
    try:
        scores = scorer.score(groups[lo:hi], progress=bar)
    finally:
        bar.close()
    if dist.enabled:
        parts = dist.gather_objects(scores)
        if not dist.is_main:
            return {}
        scores = [s for part in parts for s in part]
    elapsed = time.perf_counter() - t0
    metrics, per_item = t.score(items, scores, bootstrap_iters)
    # the task losses: the gold continuation's tokens as encoded (len of its continuation ids)
    losses, loss_items = gold_losses(items, scores, [len(g[it.gold][1]) for g, it in zip(groups, items)])
    metrics.update(losses)
    for rec, extra in zip(per_item, loss_items):
        rec.update(extra)
    partial = len(items) < t.n_items
    return {
        "task": task,
        "metrics": metrics,
        "n_items": len(items),
        "n_items_full": t.n_items,
        "limit": limit,
        "partial": partial,
        "split": t.split,
        "harness_split": t.harness_split or t.split,
        "note": t.note,
        "n_requests": len(flat),
        "model": dict(em.info),
        "data": {"path": str(data_file), "sha256": sha256_file(data_file), "content_sha256": data_sha},
        "harness_semantics": f"lm-evaluation-harness {HARNESS_VERSION}",
        "elapsed_s": round(elapsed, 3),
        "items_per_s": round(len(items) / elapsed, 2) if elapsed > 0 else None,
        "items": per_item,
    }


def result_path(em: EvalModel, task: str, partial: bool, out_dir: str | Path | None = None) -> Path:
    """Where a task's result is written: the run's `RunDir.eval_path` (a `--limit` result goes to
    `TASK.partial.json`, an older checkpoint's under `eval/step-XXXXXXXX/`); an export outside a run
    writes into `EXPORT/eval/`; `out_dir` overrides."""
    if out_dir is not None:
        return Path(out_dir) / eval_file_name(task, partial)
    if em.run_dir is not None:
        return em.run_dir.eval_path(task, partial, em.checkpoint)
    return RunDir(em.info["path"]).eval_path(task, partial)  # an export keeps a run's eval/ layout


def evaluate(path: str | Path, tasks: str | Iterable[str] | None = None, *, limit: int | None = None,
             batch_size: int | None = None, device: str | None = None, dtype: str | None = "fp32",
             output: str | Path | None = None, write: bool = True, progress: bool = True,
             prefix: str | Sequence[int] | None = None, share_prefix: bool = True,
             bootstrap_iters: int = BOOTSTRAP_ITERS, eval_dir: str | Path | None = None,
             data: dict[str, str | Path] | None = None) -> dict[str, dict]:
    """Evaluate a run, checkpoint or export on the tasks; returns {task: result record}.

    Writes each record to the run's `eval/` folder (see :func:`result_path`) unless `write` is
    false, and `{"results": {task: {metric: value}}}` to `output` if given. fp32 by default (the
    harness's advice for small models); `dtype="bf16"` casts the weights. `data` gives explicit
    JSONL files per task (checked for count and content); `eval_dir` overrides where records go.
    """
    from gerbil.train import distributed
    from gerbil.train.device import pick_device

    task_list = resolve_tasks(tasks)
    owns_group = not (torch_distributed_initialized())
    dist, device = distributed.init(str(pick_device(device)))  # a device this machine lacks: one line
    try:
        return _evaluate(path, task_list, dist, device, limit=limit, batch_size=batch_size, dtype=dtype,
                         output=output, write=write, progress=progress, prefix=prefix, share_prefix=share_prefix,
                         bootstrap_iters=bootstrap_iters, eval_dir=eval_dir, data=data)
    finally:
        if dist.enabled and owns_group:
            distributed.shutdown()


def torch_distributed_initialized() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _evaluate(path, task_list, dist, device, *, limit, batch_size, dtype, output, write, progress, prefix,
              share_prefix, bootstrap_iters, eval_dir, data) -> dict[str, dict]:
    em = load_for_eval(path, prefix)
    model_hash = model_sha256(em.model)  # of the stored (fp32) weights, before any cast
    em.info["sha256"] = model_hash
    em.model = em.model.to(device=device, dtype=_dtype(dtype)).eval()
    em.info["dtype"] = str(_dtype(dtype)).replace("torch.", "")
    em.info["device"] = str(device)
    out: dict[str, dict] = {}
    for task in task_list:
        rec = run_task(em, task, limit=limit, batch_size=batch_size, device=device, progress=progress,
                       data_path=(data or {}).get(task),
                       share_prefix=share_prefix, bootstrap_iters=bootstrap_iters, dist=dist)
        if not dist.is_main:
            continue  # rank 0 gathered the scores and writes the record
        if write:
            dest = result_path(em, task, rec["partial"], eval_dir)
            atomic_write_json(dest, rec)
            rec["written_to"] = str(dest)
            log.info("%s: %s", task, dest)
        out[task] = rec
    if output is not None and dist.is_main:
        atomic_write_json(Path(output), results_summary(out))
    return out


def results_summary(records: dict[str, dict]) -> dict:
    """`{"results": {task: {metric: value, ...}}}` (plus n_items, partial, split and, where the task has
    one, its note per task)."""
    res = {}
    for task, rec in records.items():
        d = dict(rec["metrics"])
        d["n_items"] = rec["n_items"]
        d["partial"] = rec["partial"]
        d["split"] = rec.get("split")
        if rec.get("note"):
            d["note"] = rec["note"]
        res[task] = d
    return {"results": res}


def format_results(records: dict[str, dict]) -> str:
    """A short human-readable summary, one line per metric and task loss (harness-style percentages for
    accuracies, 4 decimals for perplexities and losses)."""
    lines = []
    for task, rec in records.items():
        tag = f" (partial: first {rec['n_items']} of {rec['n_items_full']})" if rec["partial"] else ""
        m = rec["metrics"]
        for k in TASKS[task].metric_keys:
            if k not in m:  # a record written before the task losses existed
                continue
            v, se = m[k], m.get(f"{k}_stderr")
            if METRIC_KINDS.get(k) == "pct":
                lines.append(f"{task:15s} {k:13s} {100 * v:14.2f} ± {100 * se:.2f}{tag}")
            else:
                lines.append(f"{task:15s} {k:13s} {v:14.4f} ± {se:.4f}{tag}")
        lines.append(f"{task:15s} {'items/s':13s} {rec['items_per_s']:14.1f}")
    return "\n".join(lines)
