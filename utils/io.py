"""Crash-safe outputs and per-rank journals.

Every final output is written under a temporary name in its own folder and renamed into
place with ``os.replace`` only once complete and fsync'd, so a kill at any instant leaves
either nothing or a whole file. Temporary names carry a fixed marker (``.tmp-``) so the next
run can recognise and remove what a killed run left behind.

Journals are JSON lines, one file per (stage, rank): a single writer appends to each, so no
two processes ever write the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
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


# ---------------------------------------------------------------------------- journals


class Journal:
    """Append-only JSON lines for one (stage, rank). Each line is flushed and fsync'd so
    the journal survives a kill; a torn last line is ignored by ``read_journal``."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._host = socket.gethostname()
        # A torn line from a killed run would glue onto our first record: start fresh.
        if self._file.tell() > 0 and not self._ends_with_newline():
            self._file.write("\n")

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def write(self, event: str, item: str | None = None, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, "host": self._host, "pid": os.getpid()}
        if item is not None:
            record["item"] = item
        record.update(fields)
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: Path | str) -> Iterator[dict]:
    """Records of one journal file; malformed (torn) lines are skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def read_journals(folder: Path | str, pattern: str = "*.jsonl") -> Iterator[dict]:
    """All records of a stage's journal folder, file by file (rank order is not time order)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(pattern)):
        yield from read_journal(path)


def latest_item_events(records: Iterable[dict]) -> dict[str, dict]:
    """The most recent ``done``/``failed`` record per item."""
    latest: dict[str, dict] = {}
    for record in records:
        item = record.get("item")
        if item is None or record.get("event") not in ("done", "failed"):
            continue
        previous = latest.get(item)
        if previous is None or record.get("time", 0) >= previous.get("time", 0):
            latest[item] = record
    return latest
