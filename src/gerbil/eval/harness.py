"""lm-evaluation-harness integration: an in-process `LM` for gerbil models, and offline task YAMLs.

Two ways to run the real harness (PyPI `lm-eval`, the `eval` extra) on gerbil models:

1. In process, during or after training, no export needed::

       import lm_eval
       from gerbil.eval.harness import GerbilLM, task_manager
       lm = GerbilLM(model=gpt)                       # or GerbilLM(pretrained="runs/NAME")
       out = lm_eval.simple_evaluate(model=lm, tasks=["gerbil_hellaswag"], task_manager=task_manager())

   `GerbilLM` is registered with the harness as ``gerbil`` too (``lm_eval --model gerbil
   --model_args pretrained=runs/NAME`` after ``import gerbil.eval.harness``). It uses the harness's own
   request encoding (`TemplateLM`) and gerbil's batched scorer (`gerbil.eval.evaluate.Scorer`).

2. On an export with the harness's own HF model, offline::

       python -m gerbil.eval.harness            # writes the task YAMLs, prints their folder
       lm_eval --model hf --model_args pretrained=EXPORT,dtype=float32 \\
               --include_path DIR --tasks gerbil_hellaswag,gerbil_lambada_openai,gerbil_winogrande

The task YAMLs (`gerbil_<task>` for every task of `gerbil.eval.tasks`: gerbil_hellaswag,
gerbil_lambada_openai, gerbil_winogrande, gerbil_piqa, gerbil_arc_easy, ...; tag `gerbil`) `include` the
installed harness's own task definitions and only replace where the data comes from: ``dataset_path:
json`` with ``data_files`` = the verified JSONL in the gerbil cache (and the split, where the offline one
differs: sciq).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError

log = logging.getLogger(__name__)



# ============================================================================================ tasks
def lm_eval_tasks_dir() -> Path:
    """The installed harness's `lm_eval/tasks` folder (its own task definitions)."""
    try:
        import lm_eval.tasks as t
    except ImportError as e:
        raise GerbilError("lm-evaluation-harness is not installed (pip install 'gerbil-lab[eval]')") from e
    return Path(t.__file__).parent


def task_dir(tasks: Iterable[str] | None = None, out: str | Path | None = None,
             data: dict[str, str | Path] | None = None) -> Path:
    """Write the offline task YAMLs (templates filled with real paths) and return their folder.

    tasks: gerbil task or group names (default: every task). out: folder (default
    `$GERBIL_HOME/harness_tasks`). data: explicit JSONL paths per task (default: the verified
    cached assets, fetched if missing).
    """
    from gerbil import assets
    from gerbil.eval.tasks import get_task, resolve_tasks

    names = resolve_tasks(list(tasks) if tasks is not None else "all")
    dest = Path(out) if out is not None else assets.gerbil_home() / "harness_tasks"
    dest.mkdir(parents=True, exist_ok=True)
    lm_dir = lm_eval_tasks_dir()
    for name in names:
        template = get_task(name).harness_yaml.read_text()
        data_file = Path((data or {}).get(name) or assets.eval_set(get_task(name).data_set)).resolve()
        text = template.replace("@LM_EVAL_TASKS@", str(lm_dir)).replace("@DATA_FILE@", str(data_file))
        (dest / f"{name}.yaml").write_text(text)
    return dest


def task_manager(tasks: Iterable[str] | None = None, out: str | Path | None = None):
    """A harness `TaskManager` that knows gerbil's offline tasks (see :func:`task_dir`)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir(tasks, out)))


# ======================================================================================== the model
def _register(cls):
    try:
        # import the built-in models' (lazy) registrations first: the harness fills its registry
        # only when it finds it empty, so registering "gerbil" first would hide "hf" and the rest
        import lm_eval.models  # noqa: F401
        from lm_eval.api.registry import register_model
    except ImportError:  # pragma: no cover - the harness is an optional dependency
        return cls
    try:
        return register_model("gerbil")(cls)
    except (AssertionError, ValueError):  # already registered (module reloaded)
        return cls


try:
    from lm_eval.api.model import TemplateLM as _TemplateLM
except ImportError as _e:  # pragma: no cover
    _TemplateLM = object  # type: ignore[misc,assignment]


@_register
class GerbilLM(_TemplateLM):  # type: ignore[misc,valid-type]
    """lm-evaluation-harness `LM` backed by a gerbil GPT (or an encoder-decoder, scored as the harness's
    ``hf`` model with ``backend="seq2seq"``: `gerbil.eval.seq2seq`).

    model: a `gerbil.model.model.GPT` (or its compiled wrapper) — or give `pretrained`, a run directory,
        checkpoint or transformers export folder. tokenizer: a `gerbil.data.tokenizer.Tokenizer` (default:
        the standard GPT-2 + Blender one; an export uses its own tokenizer.json).
    objective: the model's training objective, which picks the `<causal>` prefix for Blender models
        (read from the run/export when loading from a path). prefix: "auto", "none", "causal" or ids.
    batch_size: max rows per forward (default: by token budget). dtype: fp32 (default), bf16.

    Context/continuation encoding is the harness's own (`TemplateLM._encode_pair`), so requests match
    `HFLM`'s token for token; scoring is `gerbil.eval.evaluate.Scorer` (shared contexts computed once,
    head only on scored positions).
    """

    def __init__(self, model: Any = None, pretrained: str | None = None, tokenizer: Any = None,
                 objective: str | None = None, prefix: str | Sequence[int] | None = None,
                 batch_size: int | str | None = None, device: str | None = None,
                 dtype: str | None = "fp32", max_length: int | None = None, **kwargs: Any):
        if _TemplateLM is object:
            raise GerbilError("lm-evaluation-harness is not installed (pip install 'gerbil-lab[eval]')")
        super().__init__()
        from gerbil.data.tokenizer import EOT_ID
        from gerbil.eval import evaluate as ev
        from gerbil.eval.scoring import Scorer
        from gerbil.eval.seq2seq import Seq2SeqScorer
        from gerbil.model.factory import is_encoder_decoder

        if model is None and pretrained is None:
            raise GerbilError("GerbilLM needs model= (a GPT) or pretrained= (a run, checkpoint or export)")
        from gerbil.train.device import pick_device

        self._device = str(pick_device(device))  # a device this machine lacks: one line
        if model is None:
            em = ev.load_for_eval(pretrained, prefix)  # type: ignore[arg-type]
            model, encoder = em.model, em.encoder
        else:
            if tokenizer is None:
                from gerbil.data.tokenizer import Tokenizer

                tokenizer = Tokenizer.load()
            tok = tokenizer
            encoder = ev._request_encoder(model, lambda texts: tok.encode_batch(list(texts), allow_special=True),
                                          EOT_ID, ev._objective_name(objective), prefix)
        self.encoder = encoder
        self.model = model.to(device=self._device, dtype=ev._dtype(dtype)).eval()
        bs = None if batch_size in (None, "auto", "") else int(batch_size)
        self.batch_size = bs
        cfg = getattr(model, "_orig_mod", model).config
        self._max_length = int(max_length or cfg.seq_len)
        if is_encoder_decoder(model):  # the harness's seq2seq rules: `_encode_pair` encodes the two sides apart
            self.backend = "seq2seq"
            self.scorer: Any = Seq2SeqScorer(self.model, device=self._device, batch_size=bs, max_length=self._max_length)
        else:
            self.scorer = Scorer(self.model, device=self._device, batch_size=bs, max_length=self._max_length)

    # --------------------------------------------------------------------------- TemplateLM hooks
    @property
    def eot_token_id(self) -> int:
        return self.encoder.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def tokenizer_name(self) -> str:
        return "gerbil-gpt2-blender"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of `string` (GPT-2 adds no BOS; special-token strings become their ids, as in
        transformers)."""
        return self.encoder.encode_batch([string])[0]

    def tok_decode(self, tokens: Sequence[int]) -> str:
        from gerbil.data.tokenizer import Tokenizer

        if not hasattr(self, "_decoder"):
            self._decoder = Tokenizer.load()
        return self._decoder.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any):
        """Score `((context, continuation), context_ids, continuation_ids)` requests.

        Requests with identical context ids are scored in one row (their shared prefix once); the
        model's `<causal>` prefix, if any, goes before every context.
        """
        from tqdm.auto import tqdm

        pre = self.encoder.prefix
        groups: dict[tuple[int, ...], list[int]] = {}
        encoded = []
        for i, (_, ctx, cont) in enumerate(requests):
            ctx = pre + list(ctx)
            encoded.append((ctx, list(cont)))
            key = tuple(ctx)
            g = groups.setdefault(key, [])
            if len(g) >= 16:  # keep one row bounded: start another group for the same context
                groups[key + (-len(groups),)] = g
                g = groups[key] = []
            g.append(i)
        idx_groups = list(groups.values())
        bar = tqdm(total=len(idx_groups), desc="gerbil loglikelihood", disable=disable_tqdm or self.rank != 0)
        try:
            scores = self.scorer.score([[encoded[i] for i in g] for g in idx_groups], progress=bar)
        finally:
            bar.close()
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for g, sc in zip(idx_groups, scores):
            for i, s in zip(g, sc):
                out[i] = s
        for (req_str, _, _), r in zip(requests, out):
            if req_str is not None:
                self.cache_hook.add_partial("loglikelihood", req_str, r)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood with the harness's rolling windows (`HFLM`'s scheme)."""
        from lm_eval import utils

        all_windows, counts = [], []
        for (string,) in [req.args for req in requests]:
            windows = list(map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length - len(self.encoder.prefix), context_len=1)))
            all_windows += [(None, ctx, cont) for ctx, cont in windows]
            counts.append(len(windows))
        scores = self._loglikelihood_tokens(all_windows, disable_tqdm=disable_tqdm)
        out, k = [], 0
        for n, (req_str,) in zip(counts, [req.args for req in requests]):
            ll = sum(s[0] for s in scores[k: k + n])
            k += n
            out.append(ll)
            self.cache_hook.add_partial("loglikelihood_rolling", (req_str,), ll)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation as `HFLM.generate_until` does it: the context (after the model's mode
        prefix) cut from the left to ``max_length - max_gen_toks`` tokens, at most `max_gen_toks`
        (default 256) new tokens, stopping at end-of-text or as soon as the text contains a stop string,
        and the text cut at the first stop string. The loop is `gerbil.generate.generate_ids`."""
        from tqdm.auto import tqdm

        from gerbil.generate import generate_ids

        out = []
        for req in tqdm(requests, desc="gerbil generate", disable=disable_tqdm or self.rank != 0):
            context, kw = req.args
            kw = dict(kw or {})
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_gen_toks", 256))
            ids = self.encoder.prefix + self.tok_encode(context)
            ids = ids[-max(1, self.max_length - max_new):]

            def stop(gen: list[int]) -> bool:
                text = self.tok_decode(gen)
                return any(s in text for s in until)

            gen = generate_ids(getattr(self.model, "_orig_mod", self.model), ids, max_new, temperature=0.0,
                               stop_ids=(self.eot_token_id,), stop=stop if until else None)
            text = self.tok_decode(gen)
            for s in until:
                text = text.split(s)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
        return out


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a convenience entry point
    """`python -m gerbil.eval.harness [OUT_DIR]`: write the offline task YAMLs and print their folder."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    print(task_dir(out=argv[0] if argv else None))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
