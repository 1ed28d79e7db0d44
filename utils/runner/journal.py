"""Per-rank journals: JSON lines, one file per (stage, rank), so no two processes ever write
the same file. Each line is flushed and fsync'd; a torn last line is ignored when read.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from utils.core.io import iter_json_lines

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
        for line in iter_json_lines(f):
            if line.error is None and isinstance(line.value, dict):
                yield line.value


def read_journals(folder: Path | str, pattern: str = "*.jsonl") -> Iterator[dict]:
    """All records of a stage's journal folder, file by file (rank order is not time order)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(pattern)):
        yield from read_journal(path)


ITEM_EVENTS = ("done", "failed", "not_ready")


def latest_item_events(records: Iterable[dict]) -> dict[str, dict]:
    """The most recent record per item: ``done``, ``failed`` or ``not_ready``, or ``skipped``
    (found done: a "skipped" line lists such items, a batch at a time; each gets a record of
    its own here, with the line's time)."""
    latest: dict[str, dict] = {}

    def see(item: object, record: dict) -> None:
        if not isinstance(item, str):
            return
        previous = latest.get(item)
        if previous is None or _time(record) >= _time(previous):
            latest[item] = record

    for record in records:
        event = record.get("event")
        if event in ITEM_EVENTS:
            see(record.get("item"), record)
        elif event == "skipped" and isinstance(record.get("items"), list):
            for item in record["items"]:
                see(item, {"time": record.get("time", 0), "event": "skipped", "item": item})
    return latest


def _time(record: dict) -> float:
    try:
        return float(record.get("time", 0))
    except (TypeError, ValueError):
        return 0.0
