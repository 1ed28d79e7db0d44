"""What produced a metadata file, kept in the file itself.

A metadata file written by parse_tracks.py says what produced it as a whole, even when it holds no
record: its :class:`Provenance` (detector, weights id, vocabulary hash, class count) is JSON in the
gzip header's extra field (RFC 1952 ``FEXTRA``, subfield ``TV``), which every gzip reader skips, so
the lines stay plain records. :func:`utils.records.track_files.records_to_jsonl_gz_bytes` writes it,
:func:`read_provenance` reads it without decompressing anything (and falls back to the first
record's ``detector`` / ``weights`` / ``vocab_hash`` for files written before).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from utils.core.io import GZIP_MAGIC, GZIP_STREAM_ERRORS, iter_json_lines, open_maybe_gzip
from utils.records.tracks import RecordsFileError, TrackRecord

# ---------------------------------------------------------------------------- provenance

#: the gzip ``FEXTRA`` subfield id (RFC 1952) under which a metadata file's provenance is kept
PROVENANCE_SUBFIELD = b"TV"
_GZIP_FEXTRA = 0x04
_PROVENANCE_VERSION = 1


@dataclass(frozen=True)
class Provenance:
    """What produced a metadata file (every record of it, or its empty result).

    ``detector`` is the detector's name (what records' ``detector`` holds), ``weights`` its
    weights id (the ``--model`` given, else the backend's default; ``None`` for weight-free
    detectors), ``vocab_hash`` the sha256 of the prompt lines and ``classes`` their number.
    ``detector_spec`` is the ``--detector`` flag that built it. ``source`` says where it was
    read: ``"header"`` (the file's gzip header) or ``"records"`` (the first record of a file
    written before headers: no ``classes`` nor ``detector_spec`` then).
    """

    detector: str | None = None
    weights: str | None = None
    vocab_hash: str | None = None
    classes: int | None = None
    detector_spec: str | None = None
    source: str = "header"

    @property
    def known(self) -> bool:
        """Whether it says which detector and vocabulary (files of the original pipeline, or
        written by other tools, may not)."""
        return self.detector is not None and self.vocab_hash is not None

    def key(self) -> tuple[str | None, str | None, str | None]:
        """(detector, weights, vocab_hash): what makes two files' tracks comparable."""
        return (self.detector, self.weights, self.vocab_hash)

    def describe(self) -> str:
        """``detector X, weights Y, vocabulary 0123456789ab (N classes)`` for messages."""
        vocab = self.vocab_hash[:12] if self.vocab_hash else "unknown"
        classes = "" if self.classes is None else f" ({self.classes} class{'es' if self.classes != 1 else ''})"
        return f"detector {self.detector_spec or self.detector or 'unknown'}, weights {self.weights or 'none'}, " \
               f"vocabulary {vocab}{classes}"

    def to_header_bytes(self) -> bytes:
        payload = {k: v for k, v in asdict(self).items() if k != "source" and v is not None}
        return json.dumps({"v": _PROVENANCE_VERSION, **payload}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False).encode("ascii")

    @classmethod
    def from_header_bytes(cls, data: bytes) -> Provenance:
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"provenance header is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("provenance header is not a JSON object")

        def text(key: str) -> str | None:
            v = value.get(key)
            return None if v is None else str(v)

        classes = value.get("classes")
        return cls(detector=text("detector"), weights=text("weights"), vocab_hash=text("vocab_hash"),
                   classes=classes if isinstance(classes, int) and not isinstance(classes, bool) else None,
                   detector_spec=text("detector_spec"), source="header")

    @classmethod
    def from_record(cls, record: dict[str, Any] | TrackRecord) -> Provenance:
        """What a record says about its producer (files written before the header)."""
        data = record.to_dict() if isinstance(record, TrackRecord) else record
        weights = data.get("weights")
        return cls(detector=None if data.get("detector") is None else str(data["detector"]),
                   weights=None if weights is None else str(weights),
                   vocab_hash=None if data.get("vocab_hash") is None else str(data["vocab_hash"]),
                   source="records")


def gzip_with_provenance(data: bytes, provenance: Provenance, compresslevel: int = 6) -> bytes:
    """One gzip member of ``data`` whose header carries ``provenance`` in its extra field
    (mtime 0, so the bytes depend on the content only)."""
    payload = provenance.to_header_bytes()
    extra = PROVENANCE_SUBFIELD + struct.pack("<H", len(payload)) + payload
    if len(extra) > 0xFFFF:
        raise ValueError(f"provenance too long for a gzip header ({len(payload)} bytes)")
    header = struct.pack("<BBBBLBB", 0x1F, 0x8B, 8, _GZIP_FEXTRA, 0, 0, 255) + struct.pack("<H", len(extra)) + extra
    trailer = struct.pack("<LL", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + zlib.compress(data, level=compresslevel, wbits=-15) + trailer


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    return data if len(data) == n else b""


def _header_provenance(f: BinaryIO) -> tuple[bool, Provenance | None]:
    """(is gzip, the provenance in its header or None), reading only the header's first bytes."""
    head = _read_exact(f, 10)
    if len(head) < 10 or head[:2] != GZIP_MAGIC:
        return False, None
    if not head[3] & _GZIP_FEXTRA:
        return True, None
    size = _read_exact(f, 2)
    if not size:
        raise ValueError("gzip header cut in its extra field")
    extra = _read_exact(f, struct.unpack("<H", size)[0])
    if not extra:
        raise ValueError("gzip header cut in its extra field")
    pos = 0
    while pos + 4 <= len(extra):
        sub, length = extra[pos:pos + 2], struct.unpack("<H", extra[pos + 2:pos + 4])[0]
        if sub == PROVENANCE_SUBFIELD:
            return True, Provenance.from_header_bytes(extra[pos + 4:pos + 4 + length])
        pos += 4 + length
    return True, None


def read_provenance(path: str | os.PathLike, from_records: bool = True) -> Provenance | None:
    """The provenance of a metadata file: from its gzip header (a few hundred bytes read,
    nothing decompressed), else, with ``from_records``, from its first record (``source
    == "records"``; fields it lacks are ``None``). ``None``: no header and no record (an empty
    file written before headers). Raises :class:`RecordsFileError` for a file whose header or
    first line cannot be read, ``OSError`` when it cannot be opened."""
    try:
        with open(path, "rb") as f:
            _, found = _header_provenance(f)
    except ValueError as exc:
        raise RecordsFileError(f"{path}: {exc}") from None
    if found is not None or not from_records:
        return found
    try:
        with open_maybe_gzip(path) as f:
            for line in iter_json_lines(f):
                if line.error is not None or not isinstance(line.value, dict):
                    raise RecordsFileError(f"{path}:{line.lineno}: not a JSON record")
                return Provenance.from_record(line.value)
    except GZIP_STREAM_ERRORS as exc:
        raise RecordsFileError(f"{path}: damaged or truncated before its first record: {exc}") from exc
    return None
