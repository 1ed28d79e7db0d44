"""Crash-safe outputs: write under a temporary name in the target's folder, fsync, rename.

A kill at any instant leaves either nothing or a whole file. Temporary names carry a fixed
marker (``.tmp-``) so the next run recognises and removes what a killed run left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def remove_stale_temps(folder: Path, older_than_s: float = 24 * 3600) -> int:
    """Sweep a folder tree for temporaries older than ``older_than_s`` (any writer)."""
    removed = 0
    now = time.time()
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and TMP_MARKER in name:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    if now - os.stat(path).st_mtime > older_than_s:
                        os.unlink(path)
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
def atomic_path(target: Path | str, suffix: str | None = None) -> Iterator[Path]:
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


def atomic_write_bytes(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(target: Path | str, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path | str, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=1, sort_keys=True) + "\n")
