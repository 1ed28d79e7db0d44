"""``--format frames``: frame folders with AVA-style annotations.

Per video, every source frame inside any of its tracks' spans (every ``--stride``-th source
frame when a number is given) goes to ``<out_dir>/frames/<yid>/<yid>_<frame:06d>.<jpg|png>``,
decoded in one pass and written once even when several tracks share it, encoded on
``--num_workers`` threads; then the video's annotation rows go to
``<out_dir>/annotations.parts/<yid>.csv`` (written last: the video's done mark). At the end of
every rank ``<out_dir>/annotations.csv`` (``video_id,timestamp,x1,y1,x2,y2,label_id,track_id``,
coordinates normalised to [0, 1], sorted) and ``<out_dir>/label_map.csv`` (``id,name``) are
merged from the parts present (re-run any rank to re-merge).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils.core.errors import ItemError
from utils.core.io import atomic_write_bytes, atomic_write_text
from utils.core.video import VideoError, decode_span, probe_video
from utils.export.inputs import ExportSequence
from utils.export.sot import box_at

CSV_HEADER = ("video_id", "timestamp", "x1", "y1", "x2", "y2", "label_id", "track_id")
PARTS = "annotations.parts"
ANNOTATIONS = "annotations.csv"
LABEL_MAP = "label_map.csv"
JPEG_QUALITY = 95


def frame_path(out_dir: Path, yid: str, fid: int, ext: str) -> Path:
    return out_dir / "frames" / yid / f"{yid}_{fid:06d}.{ext}"


def part_path(out_dir: Path, yid: str) -> Path:
    return out_dir / PARTS / f"{yid}.csv"


def label_map(sequences: Sequence[ExportSequence]) -> dict[str, int]:
    """Label name -> id: the records' top-1 class index where they have one; names without an
    index get ids after the largest, in name order."""
    ids: dict[str, int] = {}
    unnumbered = set()
    for s in sequences:
        r = s.record
        if r is None or s.error is not None:
            continue
        name = s.label or ""
        if r.top10_lbl:
            ids.setdefault(name, r.top10_lbl[0])
        else:
            unnumbered.add(name)
    nxt = max(ids.values(), default=-1) + 1
    for name in sorted(unnumbered - set(ids)):
        ids[name] = nxt
        nxt += 1
    return ids


def group_by_video(sequences: Sequence[ExportSequence]) -> dict[str, list[ExportSequence]]:
    out: dict[str, list[ExportSequence]] = {}
    for s in sequences:
        if s.error is None and s.record is not None:
            out.setdefault(s.yid, []).append(s)
    return out


def encode(rgb: np.ndarray, ext: str) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]) if ext == "jpg" else \
        cv2.imencode(".png", bgr)
    if not ok:
        raise ItemError(f"{ext} encoding failed", category="encode_failed")
    return buf.tobytes()


def _write_frame(path: Path, rgb: np.ndarray, ext: str) -> None:
    atomic_write_bytes(path, encode(rgb, ext))


def export_video(video: Path, yid: str, tracks: list[ExportSequence], labels: dict[str, int], out_dir: Path,
                 ext: str, stride: int, workers: int) -> dict[str, Any]:
    try:
        info = probe_video(video)
    except VideoError as exc:
        raise ItemError(f"{video}: {exc}", category=exc.category) from None
    fps, width, height = info.fps, info.width, info.height
    spans = {}
    for s in tracks:
        r = s.record
        assert r is not None
        spans[s.seq_id] = (round(r.track_ts[0] * fps), round(r.track_ts[-1] * fps))
    wanted = sorted({f for a, b in spans.values() for f in range(a, b + 1) if f % stride == 0})
    if not wanted:
        raise ItemError(f"no source frame of stride {stride} inside the tracks' spans", category="too_short")
    todo = {f for f in wanted if not frame_path(out_dir, yid, f, ext).exists()}
    written = 0
    seen: set[int] = set()
    if todo:
        frame_path(out_dir, yid, 0, ext).parent.mkdir(parents=True, exist_ok=True)
        start, end = min(todo) / fps, (max(todo) + 0.5) / fps
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = []
                for frame, t in decode_span(video, start, end):
                    fid = round(t * fps)
                    if fid in todo and fid not in seen:
                        seen.add(fid)
                        rgb = frame.to_ndarray(format="rgb24")
                        futures.append(pool.submit(_write_frame, frame_path(out_dir, yid, fid, ext), rgb, ext))
                for future in futures:
                    future.result()
                    written += 1
        except VideoError as exc:
            raise ItemError(f"{video}: {exc}", category=exc.category) from None
        if seen != todo:
            raise ItemError(f"{len(todo - seen)} source frame(s) inside the tracks' spans do not decode "
                            f"(e.g. frame {min(todo - seen)})", category="out_of_range")
    rows = []
    for s in tracks:
        r = s.record
        assert r is not None
        a, b = spans[s.seq_id]
        for fid in range(a, b + 1):
            if fid % stride:
                continue
            x1, y1, x2, y2 = np.clip(box_at(r, fid / fps, width, height) / [width, height, width, height], 0, 1)
            rows.append((yid, f"{fid / fps:.4f}", f"{x1:.6f}", f"{y1:.6f}", f"{x2:.6f}", f"{y2:.6f}",
                         labels.get(s.label or "", -1), r.tid, fid))
    rows.sort(key=lambda row: (row[-1], row[-2]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(row[:-1] for row in rows)
    atomic_write_text(part_path(out_dir, yid), buf.getvalue())
    return {"frames": float(written), "boxes": float(len(rows))}


def merge_annotations(out_dir: Path, labels: dict[str, int]) -> int:
    """``annotations.csv`` from every video's part (sorted by video, then the part's order) and
    ``label_map.csv``; returns the number of rows."""
    rows: list[str] = []
    for part in sorted((out_dir / PARTS).glob("*.csv")):
        rows.extend(line for line in part.read_text(encoding="utf-8").splitlines() if line)
    atomic_write_text(out_dir / ANNOTATIONS, ",".join(CSV_HEADER) + "\n" + "".join(f"{r}\n" for r in rows))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("id", "name"))
    writer.writerows(sorted((i, name) for name, i in labels.items()))
    atomic_write_text(out_dir / LABEL_MAP, buf.getvalue())
    return len(rows)
