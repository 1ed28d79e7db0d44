"""``--format sot``: one evaluator-ready single-object-tracking sequence per track.

``<out_dir>/<seq_id>/frames/f00.png ..`` (source frames at the chosen frame ids), ``f00_ann.png``
(the first frame with the target's box), ``crop.png`` (the target in the first frame) and
``sequence_meta.json``, written last. Ground truth never goes under ``<out_dir>``: each sequence's
boxes go to ``<gt_out>.parts/<seq_id>.json`` (one writer per sequence, atomic), merged into
``<gt_out>`` (JSON lines sorted by sequence id) and ``<out_dir>/gt_requests.json`` (every
sequence and frame id, no boxes) at the end of every rank: the merge reads every part present,
so it is deterministic, and the last rank to end (or any re-run) writes the complete files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils.core.errors import ItemError
from utils.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from utils.core.video import VideoError, probe_video, read_frames_at
from utils.export.inputs import ExportSequence
from utils.records.tracks import TrackRecord

MAX_AUTO_STRIDE = 15
META_NAME = "sequence_meta.json"
GT_REQUESTS_NAME = "gt_requests.json"


def frame_name(k: int) -> str:
    """``f00``, ``f01`` .. ``f99``, ``f100`` ..: prepare_sot_dataset's names (two digits at least,
    never widened for long sequences, so ``f00.png`` is always the first frame)."""
    return f"f{k:02d}"


def parts_dir(gt_out: Path) -> Path:
    return gt_out.with_name(gt_out.name + ".parts")


def part_path(gt_out: Path, seq_id: str) -> Path:
    return parts_dir(gt_out) / f"{seq_id}.json"


@dataclass(frozen=True)
class FrameChoice:
    frame_ids: list[int]
    stride: int | None  # None: explicit ids that are not evenly spaced
    source: str  # explicit / stride / auto


def choose_frames(seq: ExportSequence, nframes: int, stride: int | None, fps: float, num_frames: int) -> FrameChoice:
    """Explicit frame ids when the input has at least ``nframes``; else every ``stride``-th source
    frame from the start; else (auto) min(15, span / (nframes - 1)). ItemError (too_short) when
    the track (or the video, for a benchmark line) has too few frames for that."""
    explicit = sorted(set(seq.frame_ids or ()))
    if seq.record is None and seq.init_frame_id is not None and explicit:  # a benchmark starts at its init frame
        explicit = sorted({seq.init_frame_id} | {f for f in explicit if f >= seq.init_frame_id})
    if len(explicit) >= nframes:
        ids = explicit[:nframes]
        if len(ids) >= nframes:
            steps = {b - a for a, b in zip(ids, ids[1:], strict=False)}
            return FrameChoice(ids, steps.pop() if len(steps) == 1 else None, "explicit")
    if seq.record is not None:
        first = round(seq.record.track_ts[0] * fps)
        last = round(seq.record.track_ts[-1] * fps)
    else:
        first = seq.init_frame_id if seq.init_frame_id is not None else 0
        last = num_frames - 1
    span = last - first
    source = "stride" if stride is not None else "auto"
    if stride is None:
        stride = max(1, min(MAX_AUTO_STRIDE, span // max(nframes - 1, 1)))
    ids = [first + k * stride for k in range(nframes)]
    if ids[-1] > last:
        raise ItemError(f"{nframes} frames every {stride} source frames need {ids[-1] - first + 1} frames, "
                        f"the track spans {span + 1} (frames {first}..{last})", category="too_short")
    return FrameChoice(ids, stride, source)


def box_at(record: TrackRecord, t: float, width: int, height: int) -> np.ndarray:
    """The record's box (pixels of a ``width x height`` frame, ``[x1, y1, x2, y2]``) at ``t``
    seconds, linearly interpolated, held at the ends; scaled when ``video_size`` differs."""
    ts = np.asarray(record.track_ts, dtype=np.float64)
    xyxy = record.bboxes_xyxy()
    box = np.array([np.interp(t, ts, xyxy[:, j]) for j in range(4)])
    if record.video_size is not None:
        h0, w0 = record.video_size
        box *= np.array([width / w0, height / h0, width / w0, height / h0])
    return box


def thousandths(box: np.ndarray | list[float], width: int, height: int) -> list[int]:
    scale = np.array([1000.0 / width, 1000.0 / height, 1000.0 / width, 1000.0 / height])
    return [int(round(v)) for v in np.asarray(box, dtype=np.float64) * scale]


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ItemError("PNG encoding failed", category="encode_failed")
    return buf.tobytes()


def sequence_complete(seq_dir: Path, gt_part: Path, nframes: int) -> bool:
    """Done: the metadata (written last) says ``nframes`` or more and every frame and the
    ground-truth part exist. Anything less is redone, never trusted."""
    try:
        meta = json.loads((seq_dir / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    n = int(meta.get("nframes", 0)) if isinstance(meta, dict) else 0
    if n < nframes or not gt_part.exists():
        return False
    frames = seq_dir / "frames"
    return all((frames / f"{frame_name(k)}.png").exists() for k in range(n)) and \
        all((frames / name).exists() for name in (f"{frame_name(0)}_ann.png", "crop.png"))


def export_sequence(seq: ExportSequence, video: Path, seq_dir: Path, gt_part: Path, nframes: int,
                    stride: int | None) -> dict[str, Any]:
    """Write one sequence (frames, annotated first frame, crop, ground-truth part, metadata last)."""
    try:
        info = probe_video(video)
        choice = choose_frames(seq, nframes, stride, info.fps, info.num_frames)
        frames = read_frames_at(video, [fid / info.fps for fid in choice.frame_ids])
    except VideoError as exc:
        raise ItemError(f"{video}: {exc}", category=exc.category) from None
    width, height = info.width, info.height
    for fid, frame in zip(choice.frame_ids, frames, strict=True):
        if round(frame.time * info.fps) != fid:
            raise ItemError(f"source frame {fid} is past the video's end ({info.num_frames} frames)",
                            category="out_of_range")
    if seq.record is not None:
        boxes = [thousandths(box_at(seq.record, fid / info.fps, width, height), width, height)
                 for fid in choice.frame_ids]
        gt = {"frame_ids": choice.frame_ids, "boxes": boxes}
        init = boxes[0]
    else:
        init = [int(round(v)) for v in seq.init_bbox or []]
        gt = {"frame_ids": [seq.init_frame_id], "boxes": [init]}
    x1, y1, x2, y2 = (int(round(v / 1000 * s)) for v, s in zip(init, (width, height, width, height), strict=True))
    x1, x2 = max(0, min(x1, width)), max(0, min(x2, width))
    y1, y2 = max(0, min(y1, height)), max(0, min(y2, height))
    if x2 <= x1 or y2 <= y1:
        raise ItemError(f"the target's box {init} (thousandths) is empty in the first frame", category="zero_size")

    frames_dir = seq_dir / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    meta_path = seq_dir / META_NAME
    if meta_path.exists():  # a sequence being redone is not complete until its metadata is rewritten
        os.unlink(meta_path)
    for k, frame in enumerate(frames):
        atomic_write_bytes(frames_dir / f"{frame_name(k)}.png", png_bytes(frame.image))
    first = frames[0].image
    annotated = np.ascontiguousarray(first.copy())
    cv2.rectangle(annotated, (x1, y1), (x2 - 1, y2 - 1), (0, 255, 0), 2)
    atomic_write_bytes(frames_dir / f"{frame_name(0)}_ann.png", png_bytes(annotated))
    atomic_write_bytes(frames_dir / "crop.png", png_bytes(np.ascontiguousarray(first[y1:y2, x1:x2])))

    record = seq.record
    gt_available = record is not None
    atomic_write_json(gt_part, {"seq_id": seq.seq_id, "yid": seq.yid, "tid": record.tid if record else None,
                                "gt_available": gt_available, **gt, "units": "thousandths [x1, y1, x2, y2]"})
    # the SOURCE video's frame rate (prepare_sot_dataset's field): frame ids count source frames
    clip_fps = seq.clip_fps if seq.clip_fps is not None else info.fps
    atomic_write_json(meta_path, {
        "seq_id": seq.seq_id, "frame_ids": choice.frame_ids, "init_bbox": init, "label": seq.label,
        "yid": seq.yid, "tid": record.tid if record else None, "stride": choice.stride,
        "frame_choice": choice.source, "nframes": nframes, "clip_fps": round(clip_fps, 6),
        "gt_available": gt_available, "image_size": [width, height],
    })
    return {"frames": float(nframes)}


def merge_ground_truth(out_dir: Path, gt_out: Path) -> int:
    """``<gt_out>`` (JSON lines, one sequence each, sorted by id) and ``<out_dir>/gt_requests.json``
    from every ground-truth part present; returns how many sequences. Deterministic: the same
    parts give the same bytes, whichever rank merges."""
    folder = parts_dir(gt_out)
    if not folder.is_dir():
        return 0
    parts = []
    for path in sorted(folder.glob("*.json")):
        try:
            parts.append(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as exc:  # parts are written atomically: this one was damaged afterwards
            raise ValueError(f"{path}: damaged ground-truth part ({exc}); delete it and re-run to export "
                             f"that sequence again") from None
    parts.sort(key=lambda p: p["seq_id"])
    atomic_write_text(gt_out, "".join(json.dumps(p, sort_keys=True) + "\n" for p in parts))
    requests = [{"seq_id": p["seq_id"], "frame_id": fid} for p in parts
                for fid in (json.loads((out_dir / p["seq_id"] / META_NAME).read_text())["frame_ids"]
                            if (out_dir / p["seq_id"] / META_NAME).exists() else p["frame_ids"])]
    atomic_write_json(out_dir / GT_REQUESTS_NAME, {"sequences": len(parts), "requests": requests})
    return len(parts)


def is_inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


