"""`gerbil prepare`: corpus files → documents → GPT-2 ids → a token store (`gerbil.data.store`).

The pipeline streams: `Corpus` reads pieces of documents (bad input counted and skipped), pieces are
grouped into jobs of about `JOB_CHARS` characters, jobs are encoded on `workers` threads while the main
thread reads and parses the next ones, and the results are written strictly in order by a
`StoreWriter`. Nothing is held in memory but the jobs in flight.

Tokenizing fast
---------------
With gerbil's tokenizer the BPE runs in tiktoken's Rust core built from the same files (identical ids,
checked by the tokenizer's parity test). Many documents are joined with ``<|endoftext|>`` into one
~1 MB string and encoded in a single call that *allows only that special*: tiktoken splits on the
special first, so each document is encoded exactly as alone, and the separators come back as the EOT
ids the store wants anyway. One call per megabyte instead of one per document removes the per-call
Python overhead; the result arrives as one numpy buffer (``encode_to_numpy``), is narrowed to uint16
and partitioned into train/val with vectorized numpy. Documents that *contain* the text
``<|endoftext|>`` are encoded on their own as ordinary text (never as the control id). The Rust core
releases the GIL, so ``workers`` threads encode chunks in parallel while the main thread reads and
parses the next ones — no process pool, no pickling of text or tokens (``benchmarks/prepare_throughput.py``
measures it). Any other tokenizer object with ``encode_batch`` works through the generic path.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from gerbil.data.corpus import MAX_PIECE_CHARS, Corpus
from gerbil.data.store import TokenStore
from gerbil.data.store_writer import StoreWriter
from gerbil.data.tokenizer import EOT_ID, documents_array
from gerbil.errors import GerbilError

log = logging.getLogger(__name__)

#: Characters of text per tokenization job (≈ 60k GPT-2 tokens of English): large enough that the
#: per-call overhead vanishes, small enough that 2 jobs per worker in flight balance across cores.
#: On 2 shared cores 256 KiB measured no worse than 64 KiB or 1 MiB (noisy; see the benchmark).
JOB_CHARS = 1 << 18


class _Encode:
    """Turns a job's texts into ``(ids, piece_lens)`` in the store's layout: gerbil's
    `Tokenizer.encode_documents` (the fast path above), or any other tokenizer's ``encode_batch``."""

    def __init__(self, tokenizer: Any):
        self.eot_id = int(getattr(tokenizer, "eot_id", EOT_ID))
        self.tokenizer = tokenizer
        self.fast = getattr(tokenizer, "encode_documents", None)
        self.backend = (str(getattr(tokenizer, "engine", "encode_documents")) if self.fast is not None
                        else type(tokenizer).__name__ + ".encode_batch")

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.fast is not None:
            return self.fast(texts)
        return documents_array(self.tokenizer.encode_batch(texts), self.eot_id)


@dataclass
class PrepareResult:
    """What :func:`prepare` did: the opened store plus counts and throughput."""

    store: TokenStore
    bad_input: Any  # corpus.BadInputCounts
    n_tokens: int
    n_docs: int
    seconds: float
    backend: str
    workers: int

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / max(self.seconds, 1e-9)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def prepare(inputs: Iterable[str | os.PathLike], out: str | os.PathLike, tokenizer: Any, *,
            val_fraction: float = 0.01, seed: int = 0, text_field: str = "text", txt_mode: str = "file",
            include: Sequence[str] | None = None, workers: int | None = None, progress: bool = True,
            overwrite: bool = False, max_piece_chars: int | None = None) -> PrepareResult:
    """Tokenize corpus files into a token store at ``out`` and open it.

    Args:
        inputs: files and directories (see :class:`gerbil.data.corpus.Corpus` for the formats).
        out: the store directory (created; an existing store is replaced only with ``overwrite``).
        tokenizer: a :class:`gerbil.data.tokenizer.Tokenizer` (or any object with ``encode_batch``,
            ``sha256``, ``vocab_size`` and ``eot_id``).
        val_fraction, seed: the validation split rule (module docstring).
        text_field, txt_mode, include: reader settings (:class:`~gerbil.data.corpus.Corpus`).
        workers: encoding threads (default: the cores this process may use).
        progress: show a tqdm bar with tokens/s on stderr.

    Bad input is counted, logged and stored in meta.json under ``bad_input``; it never stops the run.
    """
    corpus = Corpus(inputs, text_field=text_field, txt_mode=txt_mode, include=include,
                    max_piece_chars=max_piece_chars or MAX_PIECE_CHARS)
    workers = _default_workers() if workers is None else workers
    if workers < 1:
        raise GerbilError(f"workers must be at least 1, got {workers}")
    encoder = _Encode(tokenizer)
    sha = str(tokenizer.sha256)
    vocab_size = int(getattr(tokenizer, "vocab_size", None) or len(tokenizer))
    bar = None
    if progress:
        from tqdm import tqdm  # lazy: progress bars only

        bar = tqdm(unit="tok", unit_scale=True, desc="prepare", smoothing=0.1, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        meta = _run_prepare(corpus, encoder, out, sha, vocab_size, val_fraction, seed, overwrite, workers,
                            bar, t0, text_field, txt_mode)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    log.info("%s: %d tokens, %d documents in %.1f s; %s", out, meta["n_tokens"], meta["n_docs"], seconds,
             corpus.counts.summary())
    store = TokenStore.open(out, sha)
    return PrepareResult(store=store, bad_input=corpus.counts, n_tokens=meta["n_tokens"],
                         n_docs=meta["n_docs"], seconds=seconds, backend=encoder.backend, workers=workers)


def _run_prepare(corpus: Any, encoder: _Encode, out: str | os.PathLike, sha: str, vocab_size: int,
                 val_fraction: float, seed: int, overwrite: bool, workers: int, bar: Any, t0: float,
                 text_field: str, txt_mode: str) -> dict[str, Any]:
    """The pipeline of :func:`prepare`: read → encode on ``workers`` threads → write, in order."""
    with StoreWriter(out, tokenizer_sha256=sha, vocab_size=vocab_size, eot_id=encoder.eot_id,
                     val_fraction=val_fraction, seed=seed, overwrite=overwrite) as writer, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gerbil-encode") as pool:
        # Bounded pipeline: at most 2 jobs per worker in flight, written strictly in order.
        inflight: deque[tuple[Future, np.ndarray]] = deque()

        def drain(limit: int) -> None:
            while len(inflight) > limit:
                fut, last = inflight.popleft()
                ids, lens = fut.result()
                writer.add_encoded(ids, lens, last)
                if bar is not None:
                    bar.update(len(ids))
                    bar.set_postfix(docs=sum(writer.n_docs.values()), refresh=False)

        for texts, last in _jobs(corpus.pieces(), JOB_CHARS):
            inflight.append((pool.submit(encoder, texts), last))
            drain(2 * workers)
        drain(0)
        if not sum(writer.n_docs.values()):
            raise GerbilError(
                f"no documents in {', '.join(str(p) for p in corpus.inputs)} ({corpus.n_files} files matched "
                f"--include {' '.join(corpus.include)}; {corpus.counts.summary()})")
        return writer.finish({
            "sources": corpus.sources,
            "n_files": corpus.n_files,
            "bad_input": corpus.counts.as_dict(),
            "reader": {"text_field": text_field, "txt_mode": txt_mode, "include": list(corpus.include),
                       "max_piece_chars": corpus.max_piece_chars},
            "tokenize": {"backend": encoder.backend, "workers": workers,
                         "seconds": round(time.perf_counter() - t0, 3)},
        })


def _jobs(pieces: Iterator[tuple[str, bool]], job_chars: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Group the piece stream into jobs of about ``job_chars`` characters: (texts, last flags)."""
    texts: list[str] = []
    lasts: list[bool] = []
    n = 0
    for text, last in pieces:
        texts.append(text)
        lasts.append(last)
        n += len(text)
        if n >= job_chars:
            yield texts, np.array(lasts, dtype=bool)
            texts, lasts, n = [], [], 0
    if texts:
        yield texts, np.array(lasts, dtype=bool)
