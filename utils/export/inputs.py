"""What export_tracks.py exports: the lines of ``--records``, as sequences with stable ids.

``--records`` is a track records file (gzip or plain JSON lines, either spelling of the keys,
:mod:`utils.records.tracks`) or a benchmark file (JSON list or JSON lines) of sequences
``{seq_id, scene|yid, init_frame_id, init_bbox (thousandths), canonical_frame_ids, clip_fps}``
(JSON lines, a JSON list, or a JSON object with such a list under ``sequences``).
A line that is neither (bad JSON, a record the schema refuses) becomes an item of its own,
``bad-line-<n>``, that fails with category ``bad_record``: it is journaled, the rest exported.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.core.io import iter_json_lines, open_maybe_gzip
from utils.core.layout import validate_yid
from utils.records.tracks import TrackRecord, TrackRecordError

SEQ_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # no dots: a WebDataset key ends at a dot


@dataclass
class ExportSequence:
    """One exportable line: a track record, or a benchmark sequence (``record`` None)."""

    seq_id: str
    yid: str
    record: TrackRecord | None = None
    init_frame_id: int | None = None
    init_bbox: list[float] | None = None  # thousandths [x1, y1, x2, y2] (benchmark input)
    frame_ids: list[int] | None = None  # explicit source frame ids, when the input has them
    clip_fps: float | None = None
    label: str | None = None
    error: str | None = None  # a bad line: why


@dataclass
class ExportInputs:
    path: str
    sequences: dict[str, ExportSequence] = field(default_factory=dict)
    duplicates: int = 0

    def ids(self) -> list[str]:
        return list(self.sequences)


def _bad(lineno: int, reason: str) -> ExportSequence:
    return ExportSequence(seq_id=f"bad-line-{lineno:06d}", yid="", error=f"line {lineno}: {reason}")


def _benchmark(obj: dict[str, Any], lineno: int) -> ExportSequence:
    try:
        seq_id = str(obj["seq_id"])
        yid = validate_yid(str(obj.get("yid") or obj.get("scene")))
        init_bbox = [float(v) for v in obj["init_bbox"]]
        if len(init_bbox) != 4:
            raise ValueError(f"init_bbox must have 4 values, got {init_bbox}")
        ids = obj.get("canonical_frame_ids")
        frame_ids = [int(v) for v in ids] if ids else None
        if obj.get("init_frame_id") is not None:
            init = int(obj["init_frame_id"])
        elif frame_ids:
            init = frame_ids[0]
        else:
            raise ValueError("no init_frame_id and no canonical_frame_ids")
        fps = obj.get("clip_fps")
        return ExportSequence(seq_id=seq_id, yid=yid, init_frame_id=init, init_bbox=init_bbox, frame_ids=frame_ids,
                         clip_fps=float(fps) if fps is not None else None, label=obj.get("label"))
    except (KeyError, TypeError, ValueError) as exc:
        return _bad(lineno, f"bad benchmark sequence: {type(exc).__name__}: {exc}")


def _track(obj: dict[str, Any], lineno: int) -> ExportSequence:
    try:
        record = TrackRecord.from_dict(obj)
    except TrackRecordError as exc:
        return _bad(lineno, f"bad track record: {exc}")
    explicit = record.extra.get("frame_ids")
    frame_ids = None
    if isinstance(explicit, list) and explicit:
        try:
            frame_ids = [int(v) for v in explicit]
        except (TypeError, ValueError):
            return _bad(lineno, f"bad frame_ids {explicit!r}")
    return ExportSequence(seq_id=f"{record.yid}-{record.tid}", yid=record.yid, record=record, frame_ids=frame_ids,
                     label=record.label)


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _objects(path: Path) -> list[tuple[int, Any, str | None]]:
    """(line number, parsed JSON or None, error) of every line; a JSON list file gives its elements."""
    with open_maybe_gzip(path) as f:
        data = f.read()
    text = data.decode("utf-8", errors="replace").lstrip()
    if text.startswith("{") and isinstance(whole := _whole_json(text), dict) and \
            isinstance(whole.get("sequences"), list):  # {"sequences": [...]}
        return [(i + 1, obj, None) for i, obj in enumerate(whole["sequences"])]
    if text.startswith("["):
        try:
            return [(i + 1, obj, None) for i, obj in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            return [(1, None, f"not JSON: {exc}")]
    out: list[tuple[int, Any, str | None]] = []
    for line in iter_json_lines(data.splitlines(keepends=True)):
        if line.torn:
            out.append((line.lineno, None, "torn last line"))
        elif line.error is not None:
            out.append((line.lineno, None, f"not a JSON line: {line.error}"))
        else:
            out.append((line.lineno, line.value, None))
    return out


def read_inputs(path: str | os.PathLike) -> ExportInputs:
    """Every sequence of ``path`` in file order; a repeated id is kept once (its first line)."""
    out = ExportInputs(str(path))
    for lineno, obj, error in _objects(Path(path)):
        if error is not None:
            seq = _bad(lineno, error)
        elif not isinstance(obj, dict):
            seq = _bad(lineno, f"a JSON object was expected, got {type(obj).__name__}")
        elif "seq_id" in obj and "init_bbox" in obj:
            seq = _benchmark(obj, lineno)
        else:
            seq = _track(obj, lineno)
        if seq.error is None and not SEQ_ID_PATTERN.match(seq.seq_id):
            seq = _bad(lineno, f"sequence id {seq.seq_id!r} is not a valid name (letters, digits, '_', '-')")
        if seq.seq_id in out.sequences:
            out.duplicates += 1
            continue
        out.sequences[seq.seq_id] = seq
    return out
