"""The built-in corpora's token stores: one recipe each and one locked builder, `builtin_store`, for the demo,
suites (``corpus:``) and `gerbil prepare --corpus NAME`, so all three train on the very same store.

    shakespeare   the 42 Gutenberg plays and poems (`gerbil.assets.corpus_dir`), one document per paragraph
                  (speech): a few thousand documents, so the 2% validation split is a real sample of
                  held-out text rather than one or two whole plays
    python        the running interpreter's own source trees (*.py, one document per file), 1% validation

A store is built once into ``$GERBIL_HOME/stores/NAME`` (or the folder given) under a lock beside it:
several suite workers starting together wait for the one that prepares it, and a store already there made
by the same recipe and tokenizer is reused.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from gerbil.assets import corpus_dir, gerbil_home
from gerbil.data.prepare import prepare
from gerbil.data.store import TokenStore
from gerbil.data.tokenizer import Tokenizer
from gerbil.errors import GerbilError
from gerbil.lock import Lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How a built-in corpus is prepared (`gerbil.data.prepare.prepare`'s reader and split settings)."""

    include: tuple[str, ...]
    txt_mode: str
    val_fraction: float
    seed: int = 0


BUILTIN: dict[str, Recipe] = {
    "shakespeare": Recipe(include=("*.txt",), txt_mode="paragraph", val_fraction=0.02),
    "python": Recipe(include=("*.py",), txt_mode="file", val_fraction=0.01),
}
#: the names a suite's ``corpus:`` and `gerbil prepare --corpus` take
CORPORA = tuple(BUILTIN)


def builtin_dir(name: str) -> Path:
    """Where the built-in store `name` lives when no folder is given: ``$GERBIL_HOME/stores/NAME``."""
    return gerbil_home() / "stores" / _recipe_name(name)


def builtin_store(name: str, out: str | Path | None = None, *, progress: bool = False, overwrite: bool = False,
                  workers: int | None = None, wait_s: float = 3600.0) -> Path:
    """The token store of the built-in corpus `name`, prepared once by its recipe (`BUILTIN`) into `out`
    (default `builtin_dir(name)`) and returned; a store of the same recipe and tokenizer already there is
    reused (`overwrite`: rebuilt). Another process preparing it is waited for (up to `wait_s` seconds).
    Into a folder of the user's (`out`) an existing store of another recipe is refused without `overwrite`;
    the shared location is gerbil's own, where such a store is rebuilt."""
    recipe = BUILTIN[_recipe_name(name)]
    dest = Path(out).expanduser() if out is not None else builtin_dir(name)
    tokenizer = Tokenizer.load()  # fetches + verifies the GPT-2 files on first use
    if not overwrite and _holds(dest, recipe, tokenizer):
        return dest
    lock = Lock(dest.with_name(f".{dest.name}.prepare.lock"), f"preparing the {name} store")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock.acquire()
            break
        except GerbilError:  # another process prepares it: wait for it
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)
        if not overwrite and _holds(dest, recipe, tokenizer):
            return dest  # it finished meanwhile
    try:
        if not overwrite and _holds(dest, recipe, tokenizer):
            return dest  # another process finished it before we took the lock
        log.info("preparing the built-in %s corpus into %s (once)", name, dest)
        roots = corpus_dir(name)
        prepare(list(roots) if isinstance(roots, (list, tuple)) else [roots], dest, tokenizer,
                val_fraction=recipe.val_fraction, seed=recipe.seed, txt_mode=recipe.txt_mode,
                include=list(recipe.include), workers=workers, progress=progress,
                overwrite=overwrite or out is None)
        return dest
    finally:
        lock.release()


def _recipe_name(name: str) -> str:
    if name not in BUILTIN:
        raise GerbilError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})")
    return name


def _holds(dest: Path, recipe: Recipe, tokenizer: Tokenizer) -> bool:
    """Whether `dest` is a complete store made from a built-in corpus by `recipe` with this tokenizer."""
    try:
        meta = TokenStore.open(dest, tokenizer_sha256=tokenizer.sha256).meta
    except GerbilError:
        return False
    reader = meta.get("reader") or {}
    return (meta.get("val_fraction") == recipe.val_fraction and meta.get("seed", 0) == recipe.seed
            and reader.get("txt_mode") == recipe.txt_mode and list(reader.get("include") or []) == list(recipe.include))
