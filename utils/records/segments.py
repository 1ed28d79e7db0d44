"""The segment file ``videos_segm/<yid[:2]>/<yid>.txt``: one ``start,end`` (seconds) per kept
segment. download_videos.py writes it last, so its existence means "segmented", even when it is
empty because no segment was kept; parse_tracks.py reads it."""

from __future__ import annotations

import os
from pathlib import Path

from utils.core.io import atomic_write_text

TIME_DECIMALS = 3


def round_time(t: float) -> float:
    return round(float(t), TIME_DECIMALS)


def format_segments(segments: list[tuple[float, float]]) -> str:
    """The segment file's text: ``start,end`` per line (seconds, millisecond precision)."""
    return "".join(f"{s:.{TIME_DECIMALS}f},{e:.{TIME_DECIMALS}f}\n" for s, e in segments)


def parse_segments(text: str) -> list[tuple[float, float]]:
    """Segments of a segment file's text (also the original's files without a final
    newline); blank lines are ignored, anything else malformed raises ValueError."""
    segments = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(",")
        if len(parts) != 2:
            raise ValueError(f"line {number}: expected 'start,end', got {line!r}")
        start, end = float(parts[0]), float(parts[1])
        if not end > start >= 0:
            raise ValueError(f"line {number}: segment {line!r} is empty or negative")
        segments.append((start, end))
    return segments


def write_segments(path: str | os.PathLike, segments: list[tuple[float, float]]) -> None:
    """Write the segment file atomically (an empty list writes an empty file)."""
    atomic_write_text(Path(path), format_segments(segments))


def read_segments(path: str | os.PathLike) -> list[tuple[float, float]]:
    """Kept segments of a segment file; FileNotFoundError if the video is not segmented."""
    return parse_segments(Path(path).read_text(encoding="utf-8"))
