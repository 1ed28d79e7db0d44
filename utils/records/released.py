"""Track records written in the released TrackVerse schema (``--key_style released``).

The released subsets (MMPLab/TrackVerse README, "metadata keys") name a track's fields
``track_id, track_ts, frame_ts, frame_bboxes, yid, track_mp4_filename, top10_label_ids,
top10_label_names``; its ``download_tracks.py`` reads ``yid``, ``track_mp4_filename``,
``track_ts`` and ``frame_bboxes``. Our records use the compact spelling (``tid, fn, track_ts,
track_bbox, top10_lbl, top10_desc``, :mod:`utils.records.tracks`); every reader of ours takes
both. This module writes the released one, for files a user hands to people who use the
released tools.

``track_ts``: the README calls it "start and end timestamps of the track", but the released
``download_tracks.py`` passes ``track_ts`` with ``frame_bboxes`` to its clip cutter, which
pairs the i-th timestamp with the i-th box. A two-value span there would cut a wrong clip, so
we write ``track_ts`` as the per-frame timestamps (the same list as ``frame_ts``): the file
then rebuilds correctly with the released downloader, and the first and last values are still
the track's start and end. Our readers take ``frame_ts`` first and keep a ``track_ts`` that
says something else as ``track_span``.

Keys the released schema lacks (``video_size``, the logit statistics, ``segment``,
``detector``, ``vocab_hash``, ``scores`` and any extra key) follow, in our spelling.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from typing import Any

from utils.records.tracks import TrackRecord

KEY_STYLES = ("compact", "released")
KEY_STYLE_HELP = ("keys of the written track records: compact (ours: tid, fn, track_bbox, top10_lbl, ...) or "
                  "released (the released TrackVerse subsets': track_id, frame_ts, frame_bboxes, "
                  "track_mp4_filename, top10_label_ids, ...; readable by the released download_tracks.py); "
                  "this project reads both")

#: released key -> our field, in the released README's order (track_ts and frame_ts: both per frame)
RELEASED_KEYS = (
    ("track_id", "tid"),
    ("track_ts", "track_ts"),
    ("frame_ts", "track_ts"),
    ("frame_bboxes", "track_bbox"),
    ("yid", "yid"),
    ("track_mp4_filename", "fn"),
    ("top10_label_ids", "top10_lbl"),
    ("top10_label_names", "top10_desc"),
)
_RENAMED = {ours for _, ours in RELEASED_KEYS}


def released_dict(record: TrackRecord) -> dict[str, Any]:
    """The record in the released spelling (see the module docstring)."""
    ours = record.to_dict()
    out: dict[str, Any] = {}
    for released, field in RELEASED_KEYS:
        if ours.get(field) is not None:
            out[released] = ours[field]
    for key, value in ours.items():
        if key not in _RENAMED and key not in out:
            out[key] = value
    return out


def record_dict(record: TrackRecord, key_style: str) -> dict[str, Any]:
    """The record as a JSON object in ``key_style`` (``compact`` or ``released``)."""
    if key_style == "compact":
        return record.to_dict()
    if key_style == "released":
        return released_dict(record)
    raise ValueError(f"unknown key style {key_style!r} (choose from {', '.join(KEY_STYLES)})")


def record_line(record: TrackRecord, key_style: str) -> bytes:
    """One JSON line (with its newline) in ``key_style``."""
    data = record_dict(record, key_style)
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8") + b"\n"


def restyle_line(line: bytes, key_style: str) -> bytes:
    """A JSON line of either spelling rewritten in ``key_style`` (trusted input: not re-validated)."""
    return record_line(TrackRecord.from_json(line, validate=False), key_style)


def restyle_member(member: bytes, key_style: str) -> bytes:
    """A gzip member holding one record line, rewritten in ``key_style`` as a gzip member."""
    return gzip.compress(restyle_line(gzip.decompress(member), key_style), compresslevel=6, mtime=0)


def records_gz_bytes(records: Iterable[TrackRecord], key_style: str) -> bytes:
    """Gzip JSON lines of ``records`` in ``key_style`` (deterministic bytes)."""
    return gzip.compress(b"".join(record_line(r, key_style) for r in records), compresslevel=6, mtime=0)
