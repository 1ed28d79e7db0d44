"""Files of track records: gzip JSON lines in canonical spelling (a video's metadata, a subset, an
index's lines), written whole and read leniently or strictly."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator
from typing import IO, Any

from utils.core.io import GZIP_STREAM_ERRORS, JsonLine, iter_json_lines, open_maybe_gzip
from utils.records.provenance import Provenance, gzip_with_provenance
from utils.records.tracks import RecordsFileError, TrackRecord, TrackRecordError

# ---------------------------------------------------------------------------- files


def records_to_jsonl_bytes(records: Iterable[TrackRecord | dict[str, Any]]) -> bytes:
    """The canonical JSON lines of ``records``, uncompressed (what a metadata file holds)."""
    lines = []
    for r in records:
        rec = r if isinstance(r, TrackRecord) else TrackRecord.from_dict(r)
        lines.append(rec.to_json().encode("utf-8") + b"\n")
    return b"".join(lines)


def records_to_jsonl_gz_bytes(records: Iterable[TrackRecord | dict[str, Any]],
                              provenance: Provenance | None = None) -> bytes:
    """Gzip-compressed JSON lines of ``records`` (deterministic: no timestamp in the header),
    with ``provenance`` in the gzip header when given (see :func:`read_provenance`).
    Write them atomically, e.g. with ``utils.core.io.atomic_write_bytes``."""
    return jsonl_to_gz_bytes(records_to_jsonl_bytes(records), provenance)


def jsonl_to_gz_bytes(data: bytes, provenance: Provenance | None = None) -> bytes:
    """:func:`records_to_jsonl_gz_bytes` for lines already made by :func:`records_to_jsonl_bytes`."""
    if provenance is not None:
        return gzip_with_provenance(data, provenance)
    return gzip.compress(data, compresslevel=6, mtime=0)


def write_records(fileobj: IO[bytes], records: Iterable[TrackRecord | dict[str, Any]]) -> int:
    """Write ``records`` as one gzip member to a binary file object; returns how many."""
    data = records_to_jsonl_bytes(records)
    with gzip.GzipFile(fileobj=fileobj, mode="wb", mtime=0) as gz:
        gz.write(data)
    return data.count(b"\n")


class RecordsRead(list):
    """The records read from one file (a ``list``), plus what stopped the reading:
    ``truncated`` is true when a damaged or cut gzip stream ended it early (``error``
    says how, ``lines`` how many lines were read)."""

    def __init__(self, path: str, records: Iterable[TrackRecord] = ()) -> None:
        super().__init__(records)
        self.path = path
        self.truncated = False
        self.error: str | None = None
        self.lines = 0


def iter_records(path: str | os.PathLike, validate: bool = True) -> Iterator[TrackRecord]:
    """Records of a gzip (or plain) JSONL file, one by one; raises :class:`RecordsFileError`
    on a truncated stream or a bad line (naming the file and line)."""
    lineno = 0
    try:
        with open_maybe_gzip(path) as f:
            for line in iter_json_lines(f):
                lineno = line.lineno
                yield _record_of(path, line, validate)
    except GZIP_STREAM_ERRORS as exc:
        raise RecordsFileError(f"{path}: damaged or truncated after line {lineno}: {exc}") from exc


def read_records(path: str | os.PathLike, tolerant: bool = False, validate: bool = True) -> RecordsRead:
    """All records of a gzip (or plain) JSONL file.

    With ``tolerant=True`` a truncated or damaged gzip stream (a killed writer, a cut copy)
    or a torn last line ends the reading instead of raising: the complete lines before it are
    returned and the result's ``truncated``/``error`` say what happened. Invalid records
    always raise :class:`RecordsFileError`.
    """
    out = RecordsRead(str(path))
    try:
        with open_maybe_gzip(path) as f:
            for line in iter_json_lines(f):
                out.lines = line.lineno
                if line.torn and tolerant:
                    out.truncated, out.error = True, f"torn last line {line.lineno}"
                    break
                out.append(_record_of(path, line, validate))
    except GZIP_STREAM_ERRORS as exc:
        message = f"damaged or truncated after line {out.lines}: {type(exc).__name__}: {exc}"
        if not tolerant:
            raise RecordsFileError(f"{path}: {message}") from exc
        out.truncated, out.error = True, message
    return out


def _record_of(path: str | os.PathLike, line: JsonLine, validate: bool) -> TrackRecord:
    if line.torn:
        raise RecordsFileError(f"{path}:{line.lineno}: torn last line")
    if line.error is not None:
        raise RecordsFileError(f"{path}:{line.lineno}: not a JSON line: {line.error}")
    try:
        return TrackRecord.from_dict(line.value, validate)
    except TrackRecordError as exc:
        raise RecordsFileError(f"{path}:{line.lineno}: {exc}") from None
