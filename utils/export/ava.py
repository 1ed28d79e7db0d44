"""``--format ava``: a folder that AVA-style action-detection loaders read as it is.

Written for mmaction2's ``AVADataset``, SlowFast's ``Ava`` (``slowfast/datasets/ava_helper.py``)
and pytorchvideo's ``Ava``, following the conventions their readers hard-code:

- ``frames/<yid>/img_00001.jpg ..``: every video resampled to ``--frame_rate`` (30, as the loaders
  assume) from its first frame, named from 1 (mmaction2's default ``filename_tmpl``
  ``img_{:05}.jpg`` and ``start_index`` 1); output frame ``k`` shows the source frame nearest
  to ``(k - 1) / frame_rate`` seconds. Frames run to ``KEYFRAME_MARGIN_S`` past the last
  keyframe; past the video's end they repeat its last frame (the loaders clamp the same way).
- ``frame_lists/{train,val}.csv``: space separated ``original_vido_id video_id frame_id path
  labels`` with that header line (SlowFast and pytorchvideo skip the first line), paths relative
  to ``frames/``.
- ``annotations/{train,val}.csv``: no header, ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id``;
  one row per track and keyframe. Keyframes are the whole seconds ``s`` of each track's span,
  written as ``s + --time_offset`` (default 900: AVA's clips start 900 s into their movies;
  pytorchvideo and SlowFast only take timestamps 902..1798, so with the default offset seconds
  2..898 of a video are kept and the rest are counted as ``keyframes_out_of_range``; a video
  left with none is counted in ``videos_without_keyframes`` and stays out of the lists). Boxes are
  the track's boxes linearly interpolated at ``s``, normalised to [0, 1]. ``action_id`` is
  1-based (``annotations/label_map.pbtxt``), ``person_id`` a per-video integer
  (``annotations/person_ids.csv`` maps it back to our ``tid``).
- ``annotations/val_predicted_boxes.csv`` (SlowFast's ``TEST_PREDICT_BOX_LISTS``: the val boxes
  with score 1.0), ``annotations/{train,val}_excluded_timestamps.csv`` (empty),
  ``annotations/dense_proposals_{train,val}.pkl`` (mmaction2's ``proposal_file``:
  ``{"<yid>,<timestamp:04d>": float32 array of [x1, y1, x2, y2, score]}``),
  ``annotations/video_info.csv`` (per video: split, source fps, size, frames written).

Each video is one item: its frames, then ``ava.parts/<yid>.json`` (its rows, written last: the
done mark). Every rank's end merges all parts present into the files above. A video goes to
``val`` when the first 8 hex digits of sha1(yid) / 16^8 < ``--val_fraction``: every rank agrees
without talking to the others.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pickle
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from utils.core.errors import ItemError
from utils.core.io import atomic_write_bytes, atomic_write_text, is_temp_file
from utils.core.video import VideoError, decode_span, probe_video
from utils.export.frames import encode
from utils.export.inputs import ExportSequence
from utils.export.sot import box_at

PARTS = "ava.parts"
SPLITS = ("train", "val")
FRAME_TEMPLATE = "img_{:05d}.{ext}"
FRAME_LIST_HEADER = "original_vido_id video_id frame_id path labels"
LABEL_MAP = "label_map.pbtxt"
PERSON_IDS = "person_ids.csv"
VIDEO_INFO = "video_info.csv"
#: the whole seconds AVA annotates (its clips are 900..1800 s of a movie); SlowFast and
#: pytorchvideo drop (or fail on) timestamps outside this range
AVA_FIRST_TIMESTAMP, AVA_LAST_TIMESTAMP = 902, 1798
#: frames written past the last keyframe, so a loader's clip window around it finds real files
KEYFRAME_MARGIN_S = 3.0
BOX_DECIMALS = 4


def frame_dir(out_dir: Path, yid: str) -> Path:
    return out_dir / "frames" / yid


def frame_name(k: int, ext: str) -> str:
    """File name of output frame ``k`` (1-based)."""
    return FRAME_TEMPLATE.format(k, ext=ext)


def part_path(out_dir: Path, yid: str) -> Path:
    return out_dir / PARTS / f"{yid}.json"


def split_of(yid: str, val_fraction: float) -> str:
    """``val`` for a stable ``val_fraction`` of the videos (by sha1 of the id), else ``train``."""
    h = int(hashlib.sha1(yid.encode("utf-8")).hexdigest()[:8], 16) / 16 ** 8
    return "val" if h < val_fraction else "train"


def action_ids(sequences: Sequence[ExportSequence]) -> dict[str, int]:
    """Class name -> AVA action id, 1-based and dense, ordered by the records' class index
    (top-1 of ``top10_lbl``), then by name for classes without one."""
    keys: dict[str, tuple[int, str]] = {}
    for s in sequences:
        r = s.record
        if r is None or s.error is not None:
            continue
        name = s.label or ""
        index = r.top10_lbl[0] if r.top10_lbl else math.inf
        if name not in keys or (index, name) < keys[name]:
            keys[name] = (index, name)
    return {name: i + 1 for i, name in enumerate(sorted(keys, key=lambda n: keys[n]))}


def keyframe_seconds(track_ts: Sequence[float], time_offset: int) -> tuple[list[int], int]:
    """The whole seconds inside the track's span that AVA loaders accept with ``time_offset``,
    and how many whole seconds of the span they would not."""
    first, last = math.ceil(track_ts[0] - 1e-9), math.floor(track_ts[-1] + 1e-9)
    seconds = list(range(max(first, 0), last + 1))
    lo, hi = AVA_FIRST_TIMESTAMP - time_offset, AVA_LAST_TIMESTAMP - time_offset
    kept = [s for s in seconds if lo <= s <= hi]
    return kept, len(seconds) - len(kept)


def source_index(k: int, frame_rate: int, fps: float) -> int:
    """The source frame shown by output frame ``k`` (1-based): nearest to ``(k - 1) / frame_rate``."""
    return int(round((k - 1) / frame_rate * fps))


def _box_row(box: np.ndarray) -> list[float]:
    return [round(float(v), BOX_DECIMALS) for v in box]


def export_video(video: Path, yid: str, tracks: list[ExportSequence], actions: dict[str, int], out_dir: Path,
                 ext: str, frame_rate: int, time_offset: int, val_fraction: float, workers: int) -> dict[str, Any]:
    """Write one video's frames, then its part (rows, people, proposals, info)."""
    try:
        info = probe_video(video)
    except VideoError as exc:
        raise ItemError(f"{video}: {exc}", category=exc.category) from None
    fps, width, height = info.fps, info.width, info.height
    people = sorted(tracks, key=lambda s: (s.record.track_ts[0], s.record.tid))  # type: ignore[union-attr]
    rows: list[list[Any]] = []
    persons: list[list[Any]] = []
    dropped = 0
    last_second = -1
    for person_id, s in enumerate(people):
        r = s.record
        assert r is not None
        seconds, out_of_range = keyframe_seconds(r.track_ts, time_offset)
        dropped += out_of_range
        action = actions[s.label or ""]
        persons.append([yid, person_id, r.tid, action, s.label or ""])
        for sec in seconds:
            box = np.clip(box_at(r, float(sec), width, height) / [width, height, width, height], 0.0, 1.0)
            rows.append([yid, sec + time_offset, *_box_row(box), action, person_id])
            last_second = max(last_second, sec)
    # a video none of whose seconds the loaders accept gets no frames and stays out of the lists
    # (SlowFast wants every listed video annotated); its part still marks it done
    count = int(math.floor((last_second + KEYFRAME_MARGIN_S) * frame_rate)) + 1 if rows else 0
    written = _write_frames(video, frame_dir(out_dir, yid), count, frame_rate, fps, ext, workers) if rows else 0
    rows.sort(key=lambda row: (row[1], row[7]))
    part = {"yid": yid, "split": split_of(yid, val_fraction), "source_fps": fps, "width": width,
            "height": height, "frames": count, "frame_rate": frame_rate, "time_offset": time_offset,
            "rows": rows, "persons": persons}
    atomic_write_text(part_path(out_dir, yid), json.dumps(part, sort_keys=True))
    return {"frames": float(written), "keyframe_boxes": float(len(rows)), "keyframes_out_of_range": float(dropped),
            "videos_without_keyframes": float(not rows)}


def _write_frames(video: Path, folder: Path, count: int, frame_rate: int, fps: float, ext: str,
                  workers: int) -> int:
    """Frames 1..``count`` of ``folder`` (each source frame encoded once, written for every
    output frame that shows it); frames past the video's end repeat its last decoded frame."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(folder):  # a killed run's temporaries: loaders list the folder
        if is_temp_file(Path(entry.path)):
            os.unlink(entry.path)
    wanted: dict[int, list[int]] = {}
    for k in range(1, count + 1):
        wanted.setdefault(source_index(k, frame_rate, fps), []).append(k)
    pending = deque(sorted(wanted))  # source indices still to write, ascending
    written = 0
    previous: bytes | None = None

    def write(data: bytes, ks: list[int]) -> int:
        for k in ks:
            atomic_write_bytes(folder / frame_name(k, ext), data)
        return len(ks)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = []
            for frame, t in decode_span(video, 0.0, (pending[-1] + 0.5) / fps):
                index = int(round(t * fps))
                if not pending or pending[0] > index:
                    continue
                data = encode(frame.to_ndarray(format="rgb24"), ext)
                while pending and pending[0] <= index:
                    # an index the stream skipped (variable frame rate) shows the frame before it
                    key = pending.popleft()
                    futures.append(pool.submit(write, data if key == index or previous is None else previous,
                                               wanted[key]))
                previous = data
            if previous is None:
                raise ItemError(f"{video}: no frame decodes", category="out_of_range")
            if pending:  # past the video's end: its last frame, as the loaders' clamping would show
                futures.append(pool.submit(write, previous, [k for key in pending for k in wanted[key]]))
            for future in futures:
                written += future.result()
    except VideoError as exc:
        raise ItemError(f"{video}: {exc}", category=exc.category) from None
    return written


def _csv_text(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _annotation_rows(rows: list[list[Any]], score: bool = False) -> list[list[Any]]:
    out = []
    for yid, timestamp, x1, y1, x2, y2, action, person in rows:
        last = 1.0 if score else person
        out.append([yid, f"{timestamp:04d}", f"{x1:.{BOX_DECIMALS}f}", f"{y1:.{BOX_DECIMALS}f}",
                    f"{x2:.{BOX_DECIMALS}f}", f"{y2:.{BOX_DECIMALS}f}", action, last])
    return out


def label_map_text(actions: dict[str, int]) -> str:
    """The label map in AVA's ``.pbtxt`` form (the exact layout the loaders' line parsers expect)."""
    lines = []
    for name, i in sorted(actions.items(), key=lambda item: item[1]):
        safe = (name or "object").replace('"', "'")
        lines.append(f'item {{\n  name: "{safe}"\n  id: {i}\n}}\n')
    return "".join(lines)


def read_parts(out_dir: Path) -> list[dict[str, Any]]:
    parts = []
    for path in sorted((out_dir / PARTS).glob("*.json")):
        try:
            parts.append(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as exc:  # parts are written atomically: this one was damaged afterwards
            raise ValueError(f"{path}: damaged part ({exc}); delete it and re-run to export that video again") from None
    return parts


def merge(out_dir: Path, actions: dict[str, int], ext: str) -> int:
    """Every file listed in the module docstring from the parts present; returns the rows."""
    parts = read_parts(out_dir)
    ann = out_dir / "annotations"
    lists = out_dir / "frame_lists"
    total = 0
    for split in SPLITS:
        chosen = [p for p in parts if p["split"] == split and p["rows"]]
        frame_rows = []
        for video_index, p in enumerate(chosen):
            frame_rows.extend(f'{p["yid"]} {video_index} {k - 1} {p["yid"]}/{frame_name(k, ext)} ""'
                              for k in range(1, p["frames"] + 1))
        atomic_write_text(lists / f"{split}.csv", FRAME_LIST_HEADER + "\n" + "".join(f"{r}\n" for r in frame_rows))
        rows = [row for p in chosen for row in p["rows"]]
        total += len(rows)
        atomic_write_text(ann / f"{split}.csv", _csv_text(_annotation_rows(rows)))
        atomic_write_text(ann / f"{split}_excluded_timestamps.csv", "")
        if split == "val":
            atomic_write_text(ann / "val_predicted_boxes.csv", _csv_text(_annotation_rows(rows, score=True)))
        proposals: dict[str, list[list[float]]] = {}
        for yid, timestamp, x1, y1, x2, y2, _action, _person in rows:
            proposals.setdefault(f"{yid},{timestamp:04d}", []).append([x1, y1, x2, y2, 1.0])
        atomic_write_bytes(ann / f"dense_proposals_{split}.pkl", pickle.dumps(
            {key: np.asarray(boxes, dtype=np.float32) for key, boxes in proposals.items()}, protocol=4))
    atomic_write_text(ann / LABEL_MAP, label_map_text(actions))
    atomic_write_text(ann / PERSON_IDS, _csv_text(
        [row for p in parts for row in p["persons"]], ("video_id", "person_id", "tid", "action_id", "label")))
    atomic_write_text(ann / VIDEO_INFO, _csv_text(
        [[p["yid"], p["split"], p["source_fps"], p["width"], p["height"], p["frames"], p["frame_rate"],
          p["time_offset"]] for p in parts],
        ("video_id", "split", "source_fps", "width", "height", "frames", "frame_rate", "time_offset")))
    return total
