"""Crash-safe outputs, and the readers of what a killed writer may leave.

Writes go under a temporary name in the target's folder, are fsync'd and renamed: a kill at
any instant leaves either nothing or a whole file. Temporary names carry a fixed marker
(``.tmp-``) so the next run recognises and removes what a killed run left behind. Files
written by appending (journals, JSON lines) may still end in a torn line:
:func:`iter_json_lines` tells it apart from a bad line; gzip or plain files are told apart by
their magic bytes (:func:`is_gzip`), never by their name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TMP_MARKER = ".tmp-"


def temp_path_for(target: Path, suffix: str | None = None) -> Path:
    """A unique temporary path in the target's folder; it keeps the target's extension
    (``suffix``) so tools that guess formats from names (muxers) still work."""
    target = Path(target)
    ext = target.suffix if suffix is None else suffix
    token = f"{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return target.with_name(f".{target.name}{TMP_MARKER}{token}{ext}")


def is_temp_file(path: Path) -> bool:
    return path.name.startswith(".") and TMP_MARKER in path.name


def remove_temps_of(target: Path) -> int:
    """Remove temporaries that a killed run left for ``target``. Only the rank that owns
    ``target`` writes it, so any temporary of it found before writing is stale."""
    target = Path(target)
    folder = target.parent
    if not folder.is_dir():
        return 0
    removed = 0
    prefix = f".{target.name}{TMP_MARKER}"
    for entry in os.scandir(folder):
        if entry.name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_temp(tmp: Path, target: Path) -> None:
    """fsync ``tmp`` and rename it onto ``target`` (atomic on POSIX within one folder)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _fsync_dir(Path(target).parent)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target``, on any
    exception it is removed and ``target`` is left untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_temps_of(target)
    tmp = temp_path_for(target, suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {target}")
        commit_temp(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_signature(path: Path | str, inode: bool = False) -> dict[str, int] | None:
    """Size and modification time of a file (and its inode when asked), None when absent: a
    cheap stand-in for its content. A file replaced atomically gets a new inode and time;
    ``os.replace`` keeps both, so a temporary's signature is the committed file's."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    signature = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if inode:
        signature["inode"] = st.st_ino
    return signature


def atomic_write_bytes(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(target: Path | str, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path | str, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_copy(source: Path | str, target: Path | str) -> None:
    """Copy ``source`` (bytes and times, as ``shutil.copy2``) to ``target`` under a temporary
    name, renamed into place once complete: a kill mid-copy never leaves a partial ``target``."""
    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)


def is_torn_copy_of(copy: Path | str, source: Path | str, block: int = 1 << 20) -> bool:
    """Whether ``copy`` is a strict prefix of ``source`` (shorter, same leading bytes): what a
    copy killed midway leaves, as opposed to a whole copy or a different file."""
    size = os.path.getsize(copy)
    if size >= os.path.getsize(source):
        return False
    with open(copy, "rb") as a, open(source, "rb") as b:
        while chunk := a.read(block):
            if b.read(len(chunk)) != chunk:
                return False
    return True


# ---------------------------------------------------------------------------- reading

GZIP_MAGIC = b"\x1f\x8b"
# What a cut or damaged gzip stream raises while it is read.
GZIP_STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether the file starts with the gzip magic bytes (an empty file is not gzip)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_maybe_gzip(path: str | os.PathLike) -> io.BufferedIOBase:
    """The file's bytes, decompressed when it is gzip (by its magic, whatever its name)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # noqa: SIM115 (the caller closes it)


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line of a JSON-lines stream: its parsed ``value``, or the ``error`` that
    parsing raised. ``torn``: the line is the last one, has no newline and does not parse (a
    writer killed in the middle of it), as opposed to a bad line."""

    lineno: int
    text: bytes | str  # the line without surrounding whitespace
    value: Any = None
    error: ValueError | None = None
    torn: bool = False


def iter_json_lines(lines: Iterable[bytes | str]) -> Iterator[JsonLine]:
    """Parse each non-blank line of ``lines`` (a file opened in binary or text mode),
    numbered from 1. Never raises on content: what to do with a bad or torn line is the
    caller's decision; errors of the stream itself (I/O, gzip) propagate."""
    for lineno, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes
            ended = raw.endswith(b"\n") if isinstance(raw, bytes) else raw.endswith("\n")
            yield JsonLine(lineno, text, error=exc, torn=not ended)
            continue
        yield JsonLine(lineno, text, value)


def cached_rows(path: str | os.PathLike, rows: int, compute: Callable[[], np.ndarray], use_cache: bool = True,
                what: str = "cache") -> tuple[np.ndarray, bool]:
    """``(array, hit)``: the float32 ``(rows, D)`` array saved at ``path`` when it is there and
    sound (finite, ``rows`` rows), else ``compute()``'s, saved atomically for next time. A cache
    that cannot be read or written is only worth a warning: the array is computed either way."""
    path = Path(path)
    if use_cache and path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 2 and arr.shape[0] == rows and np.all(np.isfinite(arr)):
                return arr.astype(np.float32), True
            log.warning("ignoring malformed %s %s (shape %s)", what, path, arr.shape)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s %s: %s", what, path, exc)
    arr = compute()
    if use_cache:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        except OSError as exc:
            log.warning("could not write %s %s: %s", what, path, exc)
    return arr, False
