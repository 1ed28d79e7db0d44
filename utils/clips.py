"""Cut the tracks of one video into small mp4 clips, every track from ONE decoding pass (step 4a).

The source is decoded once, from the first track's start to the last track's end (long
stretches with no track are skipped by seeking). A clip's encoder opens when its track's
first frame arrives and closes after its last one, so memory grows with the number of tracks
open at once, not with the video's length. Each source frame of a track's span
``[t_start, t_end]`` (``utils.clip_geometry.ClipPlan``) is cropped at the track's interpolated
integer box and resized to the clip's size with Pillow's bicubic filter: the released
TrackVerse clips were made by ``PIL.Image.resize`` with its default filter (bicubic since
Pillow 7) on the integer crop. Frames stay in the decoder's planar 4:2:0 form (luma and
half-size chroma cropped and resized plane by plane), which saves a conversion to RGB per
source frame and one back per clip frame. Clips are H.264 at the source frame rate with a
keyframe every half second (``utils.video.VideoWriter``), each written atomically; the open
clips of a frame are cut and encoded on worker threads (``--threads``, default one per CPU),
one x264 thread each, while the next frame decodes.

What is wrong with a track is reported, never raised: :func:`select_tracks`, :func:`plan_tasks` and
:func:`extract_clips` return :class:`TrackProblem` entries (a track that cannot be cut) and
notes (a track that was cut after a repair: boxes outside the frame shifted in, zero-size
boxes skipped, a single timestamp, a clip cut short by the end of the video).

A per-video *done marker* (``DatasetLayout.tracks_done_marker``) is written last, once every
clip of the video exists; stages check it instead of re-reading metadata. A re-run skips the
clips that exist and recuts the rest (a killed run's partial clips are only temporaries).

A video with tracks that cannot be cut (starting after the video's end, boxes all of zero
size, a ``fn`` escaping the output folder, a record breaking the schema) gets all its other
clips, then fails as an item (permanent, category ``bad_tracks``) whose journal reason names
each bad track and why; it gets no done marker, so it keeps counting as failed, and
``--retry_failed`` re-checks it without recutting existing clips. Repairs (see above) go to
the ``notes`` of the video's ``done`` journal record.

The two stages: :class:`ExtractTracksStage` (``extract_tracks.py``: the pipeline's own
metadata, duplicates removed) and :class:`DownloadTracksStage` (``download_tracks.py``: a
released subset, downloaded with ``utils.youtube.DownloadSession``, file names kept).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import json
import math
import re
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.clip_geometry import (
    DEDUP_THRESHOLD,
    DEFAULT_MAX_DURATION,
    ClipPlan,
    deduplicate_tracks,
    plan_clip,
    track_overlap,
)
from utils.io import atomic_write_json
from utils.launch import ItemError, NotReady, Stage, UsageError, read_item_list
from utils.layout import DatasetLayout, InvalidItemError, validate_name, validate_yid
from utils.resources import available_cpus
from utils.tracks import RecordsFileError, TrackRecord, TrackRecordError, read_records
from utils.video import ColorTags, VideoError, VideoInfo, VideoWriter, Yuv420Image, decode_span, probe_video
from utils.youtube import DownloadSession, add_download_arguments, validate_download_args

#: frames up to this far outside ``[t_start, t_end]`` still belong to the clip (metadata
#: stores timestamps rounded to 0.1 ms; mp4 time bases round too)
TIME_TOLERANCE_S = 1e-3
#: a gap without tracks longer than this is skipped by seeking instead of decoding through it
SEEK_GAP_S = 5.0
#: a box may stick out of the frame this much (pixels) before it counts as "outside"
OUTSIDE_TOLERANCE_PX = 1.0
#: how many track names a note or a problem summary lists before "... and N more"
MAX_LISTED = 20
MARKER_VERSION = 1


@dataclass(frozen=True)
class TrackProblem:
    """A track that could not be cut: its file name (or line), why, and a short category."""

    track: str
    reason: str
    category: str

    def __str__(self) -> str:
        return f"{self.track}: {self.reason}"


@dataclass
class ClipTask:
    """One clip to write: the record, where the clip goes and how to cut it."""

    record: TrackRecord
    path: Path
    plan: ClipPlan

    @property
    def name(self) -> str:
        return self.record.fn

    def window(self, fps: float) -> tuple[float, float]:
        """Source frames with ``start <= t <= end`` belong to the clip. A track shorter than
        one frame (a single timestamp) takes the one frame nearest its instant."""
        half = 0.5 / fps
        if self.plan.duration < 2 * half:
            return self.plan.t_start - half, self.plan.t_start + half - 1e-9
        tol = min(TIME_TOLERANCE_S, 0.5 * half)
        return self.plan.t_start - tol, self.plan.t_end + tol


@dataclass
class Selection:
    """The tracks of a video to cut, from :func:`select_tracks` (no video needed)."""

    tracks: list[tuple[TrackRecord, Path]] = field(default_factory=list)
    problems: list[TrackProblem] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)  # removed fn -> the kept fn it repeats


@dataclass
class Planned:
    """The clips to write, from :func:`plan_tasks`."""

    tasks: list[ClipTask] = field(default_factory=list)
    problems: list[TrackProblem] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # what was repaired -> track names

    def note(self, what: str, track: str) -> None:
        self.notes.setdefault(what, []).append(track)


@dataclass
class ExtractionStats:
    """What one pass did."""

    clips_written: list[str] = field(default_factory=list)
    frames_decoded: int = 0
    frames_written: int = 0
    seconds_decoded: float = 0.0
    problems: list[TrackProblem] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------- planning


def scale_factors(record_hw: Sequence[int] | None, video_hw: Sequence[int]) -> tuple[float, float] | None:
    """(sx, sy) that map boxes given for frames of ``record_hw`` (h, w) onto ``video_hw``;
    None when the sizes agree or the record does not say."""
    if not record_hw:
        return None
    (rh, rw), (vh, vw) = record_hw, video_hw
    if (int(rh), int(rw)) == (int(vh), int(vw)):
        return None
    return vw / rw, vh / rh


def scaled_boxes(boxes: Sequence[Sequence[float]], factors: tuple[float, float] | None) -> np.ndarray:
    """[x, y, w, h] boxes scaled by (sx, sy)."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if factors is None:
        return arr
    sx, sy = factors
    return arr * np.array([sx, sy, sx, sy])


def select_tracks(
    records: Iterable[TrackRecord],
    clip_path: Callable[[TrackRecord], Path],
    deduplicate: bool = True,
) -> Selection:
    """Which tracks of one video get a clip, and where (cheap: no video, no decoding).

    ``clip_path`` maps a record to its output path and raises ``InvalidItemError`` (e.g.
    ``DatasetLayout.track_mp4``) for a ``fn`` that would escape the output folder: such tracks,
    and tracks whose boxes all have zero size, become problems. With ``deduplicate``, a track
    overlapping an earlier-listed kept track by more than 0.9 is dropped (the original's rule,
    ``utils.clip_geometry.deduplicate_tracks``; the ratio does not change when boxes are scaled).
    A record whose clip path an earlier record already claimed is dropped as a duplicate.
    """
    out = Selection()
    candidates: list[tuple[TrackRecord, Path]] = []
    for record in records:
        try:
            path = clip_path(record)
        except (InvalidItemError, ValueError) as exc:
            out.problems.append(TrackProblem(record.fn, f"bad file name: {exc}", "bad_fn"))
            continue
        boxes = np.asarray(record.track_bbox, dtype=np.float64).reshape(-1, 4)
        if not ((boxes[:, 2] > 0) & (boxes[:, 3] > 0)).any():
            out.problems.append(TrackProblem(record.fn, "every box has zero width or height", "zero_size"))
            continue
        candidates.append((record, path))
    keep = list(range(len(candidates)))
    if deduplicate and len(candidates) > 1:
        tracks = [(r.track_ts, r.track_bbox) for r, _ in candidates]
        keep = deduplicate_tracks(tracks)
        kept = set(keep)
        for j in range(len(candidates)):
            if j not in kept:
                first = next((i for i in keep if i < j and track_overlap(*tracks[i], *tracks[j]) > DEDUP_THRESHOLD), None)
                out.duplicates[candidates[j][0].fn] = candidates[first][0].fn if first is not None else "?"
    claimed: dict[Path, str] = {}
    for i in keep:
        record, path = candidates[i]
        if path in claimed:
            out.duplicates[record.fn] = claimed[path]
            continue
        claimed[path] = record.fn
        out.tracks.append((record, path))
    return out


def plan_tasks(
    tracks: Iterable[tuple[TrackRecord, Path]],
    video_hw: Sequence[int],
    video_duration: float | None,
    max_track_len: float = DEFAULT_MAX_DURATION,
) -> Planned:
    """Plan the clip of each (record, path) for a video of ``video_hw`` (h, w).

    Boxes are scaled when a record's ``video_size`` differs from ``video_hw``. Tracks that
    start after ``video_duration`` or whose geometry is invalid become problems; repairs
    (boxes outside the frame, zero-size boxes skipped, a single timestamp, a track longer than
    ``max_track_len``) become notes.
    """
    out = Planned()
    frame_h, frame_w = (int(v) for v in video_hw)
    for record, path in tracks:
        name = record.fn
        boxes = scaled_boxes(record.track_bbox, scale_factors(record.video_size, video_hw))
        ts = np.asarray(record.track_ts, dtype=np.float64)
        if video_duration is not None and ts[0] > video_duration + TIME_TOLERANCE_S:
            out.problems.append(TrackProblem(
                name, f"starts at {ts[0]:.3f} s, after the video ends ({video_duration:.3f} s)", "after_end"))
            continue
        try:
            plan = plan_clip(ts, boxes, (frame_h, frame_w), max_duration=max_track_len)
        except ValueError as exc:
            category = "zero_size" if "zero width or height" in str(exc) else "bad_geometry"
            out.problems.append(TrackProblem(name, f"cannot be cut: {exc}", category))
            continue
        if plan.duration == 0:
            out.note("single_timestamp_one_frame", name)
        zero = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
        if zero.any():
            out.note("zero_size_boxes_skipped", name)
        tol = OUTSIDE_TOLERANCE_PX
        outside = (
            (boxes[:, 0] < -tol) | (boxes[:, 1] < -tol)
            | (boxes[:, 0] + boxes[:, 2] > frame_w + tol) | (boxes[:, 1] + boxes[:, 3] > frame_h + tol)
        )
        if (outside & ~zero).any():
            out.note("boxes_outside_frame_shifted_in", name)
        if ts[-1] - ts[0] > max_track_len:
            out.note(f"longer_than_{max_track_len:g}s_cut", name)
        out.tasks.append(ClipTask(record, path, plan))
    return out


# ---------------------------------------------------------------------------- the one pass


def crop_resized(image: Yuv420Image, box: Sequence[int], size: tuple[int, int]) -> Yuv420Image:
    """The integer crop ``(x0, y0, x1, y1)`` of a 4:2:0 ``image`` resized to ``size`` (w, h, even)
    with Pillow's bicubic filter (the original's ``PIL.Image.resize`` default), plane by plane:
    the luma exactly as ``resize`` of the integer crop; the chroma from the same region of the
    half-size planes (half-pixel edges are resampled, not rounded)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = (int(v) for v in size)
    return Yuv420Image(
        _resized_region(image.y, (x0, y0, x1, y1), (w, h)),
        _resized_region(image.u, (x0 / 2, y0 / 2, x1 / 2, y1 / 2), (w // 2, h // 2)),
        _resized_region(image.v, (x0 / 2, y0 / 2, x1 / 2, y1 / 2), (w // 2, h // 2)),
    )


def _resized_region(plane: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """``box`` (x0, y0, x1, y1, may be fractional) of one uint8 plane, resized to ``size`` (w, h)."""
    x0, y0, x1, y1 = box
    ix0, iy0 = math.floor(x0), math.floor(y0)
    ix1, iy1 = math.ceil(x1), math.ceil(y1)
    region = plane[iy0:iy1, ix0:ix1]
    exact = (ix0, iy0, ix1, iy1) == (x0, y0, x1, y1)
    if exact and (ix1 - ix0, iy1 - iy0) == size:
        return np.ascontiguousarray(region)
    # cropping first, then resizing the small image, is much faster than Pillow's resize(box=) on the full plane
    small = Image.fromarray(np.ascontiguousarray(region))
    inner = None if exact else (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    return np.asarray(small.resize(size, Image.Resampling.BICUBIC, box=inner))


def decode_spans(windows: Iterable[tuple[float, float]], gap: float = SEEK_GAP_S) -> list[tuple[float, float]]:
    """Merge clip windows into the spans to decode; gaps shorter than ``gap`` are decoded through."""
    spans: list[list[float]] = []
    for start, end in sorted(windows):
        if spans and start - spans[-1][1] < gap:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(s, e) for s, e in spans]


class _OpenClip:
    """A clip being written: its encoder and how to cut each source frame."""

    def __init__(self, task: ClipTask, fps: float, color: ColorTags, **encoder: Any):
        self.task = task
        w, h = task.plan.out_size
        self.writer = VideoWriter(task.path, w, h, fps, threads=1, color=color, **encoder)

    def add(self, image: Yuv420Image, t: float) -> None:
        plan = self.task.plan
        self.writer.write_yuv(crop_resized(image, plan.box_at(t), plan.out_size))


def extract_clips(
    video_path: str | Path,
    tasks: Sequence[ClipTask],
    fps: float,
    *,
    keyframe_interval: float = 0.5,
    crf: int = 23,
    preset: str = "veryfast",
    threads: int | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> ExtractionStats:
    """Write every task's clip from one decoding pass over ``video_path``.

    Frames stay in the decoder's 4:2:0 form: each open clip crops, resizes and encodes (one
    x264 thread per clip) its part of a frame on one of ``threads`` workers (default: the CPUs
    this process may use), while the next frame is being decoded.

    A task whose window holds no source frame (it starts after the video's last frame, or
    falls between two frames) becomes a problem; a clip cut short by the end of the video
    gets a note. On an exception every open clip is dropped (finished ones stay) and the
    exception propagates. ``on_frames(n)`` is called with the count of frames decoded.
    """
    stats = ExtractionStats()
    if not tasks:
        return stats
    if not fps > 0:
        raise ValueError(f"{video_path}: unknown frame rate")
    workers = threads if threads is not None else available_cpus()
    if workers < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    encoder = {"keyframe_interval": keyframe_interval, "crf": crf, "preset": preset}
    windows = [task.window(fps) for task in tasks]
    pending = deque(sorted(range(len(tasks)), key=lambda i: (windows[i][0], i)))
    active: dict[int, _OpenClip] = {}
    frame_step = 1.0 / fps
    last_time: float | None = None  # of the last frame decoded
    planned_hw = tuple(tasks[0].plan.frame_hw)  # boxes are for frames of this size (the probed one)
    rescaled = False
    pool = ThreadPoolExecutor(workers, thread_name_prefix="clip") if workers > 1 else None
    in_flight: list[Future] = []  # the previous frame's writes: each clip writes its frames in order

    def settle() -> None:
        """Wait for the previous frame's writes; the first error is raised once all are over."""
        futures, in_flight[:] = list(in_flight), []
        wait(futures)
        for future in futures:
            future.result()

    def finish(i: int) -> None:
        clip = active.pop(i)
        clip.writer.close()
        stats.clips_written.append(clip.task.name)
        stats.frames_written += clip.writer.frames_written

    try:
        for span_start, span_end in decode_spans(windows):
            span_first = None
            decoded = 0
            for frame, t in decode_span(video_path, start=max(span_start, 0.0), end=span_end + 1e-6):
                span_first = t if span_first is None else span_first
                last_time = t
                decoded += 1
                settle()
                for i in [i for i in active if t > windows[i][1]]:
                    finish(i)
                while pending and windows[pending[0]][0] <= t:
                    i = pending.popleft()
                    if t > windows[i][1]:
                        stats.problems.append(TrackProblem(
                            tasks[i].name,
                            f"no source frame in [{tasks[i].plan.t_start:.3f}, {tasks[i].plan.t_end:.3f}] s",
                            "no_frames"))
                        continue
                    active[i] = _OpenClip(tasks[i], fps, ColorTags.of(frame), **encoder)
                if active:
                    rescaled |= (frame.height, frame.width) != planned_hw  # the stream changed resolution
                    image = Yuv420Image.from_frame(frame, size=(planned_hw[1], planned_hw[0]))
                    if pool is None:
                        for clip in active.values():
                            clip.add(image, t)
                    else:
                        in_flight.extend(pool.submit(clip.add, image, t) for clip in active.values())
                if on_frames is not None and decoded % 100 == 0:
                    on_frames(100)
            settle()
            stats.frames_decoded += decoded
            # the span is over: either its end was reached or the video ended
            if span_first is not None:
                stats.seconds_decoded += last_time - span_first + frame_step
            for i in list(active):
                if last_time is None or last_time + 1.5 * frame_step < tasks[i].plan.t_end:
                    stats.notes.setdefault("cut_short_by_video_end", []).append(tasks[i].name)
                finish(i)
            while pending and windows[pending[0]][0] <= span_end:
                i = pending.popleft()
                where = "after the video's last frame" if last_time is None or windows[i][0] > last_time else "between frames"
                stats.problems.append(TrackProblem(
                    tasks[i].name,
                    f"starts at {tasks[i].plan.t_start:.3f} s, {where}"
                    + (f" ({last_time:.3f} s)" if last_time is not None else " (no frame decoded)"),
                    "after_end" if where != "between frames" else "no_frames"))
        if rescaled:
            stats.notes["frames_rescaled_to_the_probed_size"] = [task.name for task in tasks]
    except BaseException:
        wait(in_flight)  # no writer may be in use while it is dropped
        for clip in active.values():
            clip.writer.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return stats


# ---------------------------------------------------------------------------- one video


def validated_records(records: Iterable[TrackRecord], yid: str, source: str = "") -> tuple[list[TrackRecord], list[TrackProblem]]:
    """Validate records read with ``validate=False``: a record that breaks the schema (or
    belongs to another video) becomes a problem instead of failing the whole file."""
    good: list[TrackRecord] = []
    problems: list[TrackProblem] = []
    for n, record in enumerate(records, start=1):
        name = str(getattr(record, "fn", None) or f"{source}record {n}")
        try:
            record = dataclasses.replace(record)  # runs the schema's coercion and validation
        except (TrackRecordError, TypeError, ValueError) as exc:
            problems.append(TrackProblem(name, f"invalid record: {exc}", "bad_record"))
            continue
        if record.yid != yid:
            problems.append(TrackProblem(name, f"belongs to video {record.yid}, not {yid}", "wrong_yid"))
            continue
        good.append(record)
    return good, problems


@dataclass
class VideoResult:
    """Everything :func:`cut_missing_clips` did for one video."""

    written: list[str] = field(default_factory=list)
    existing: int = 0
    problems: list[TrackProblem] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    seconds_decoded: float = 0.0
    frames_written: int = 0
    video_hw: tuple[int, int] | None = None


def cut_missing_clips(
    video_path: str | Path | None,
    tracks: Sequence[tuple[TrackRecord, Path]],
    max_track_len: float = DEFAULT_MAX_DURATION,
    info: VideoInfo | None = None,
    on_frames: Callable[[int], None] | None = None,
    **encoder: Any,
) -> VideoResult:
    """Cut the clips of ``tracks`` whose file does not exist yet, in one pass over the video
    (not opened at all when every clip exists). ``info`` saves a probe when the caller has one;
    ``encoder`` goes to :func:`extract_clips` (``crf``, ``preset``, ``keyframe_interval``, ``threads``)."""
    result = VideoResult()
    missing = [(r, p) for r, p in tracks if not p.exists()]
    result.existing = len(tracks) - len(missing)
    if not missing:
        return result
    if info is None:
        info = probe_video(video_path)
    result.video_hw = (info.height, info.width)
    planned = plan_tasks(missing, result.video_hw, info.duration, max_track_len)
    stats = extract_clips(video_path, planned.tasks, info.fps, on_frames=on_frames, **encoder)
    result.written = stats.clips_written
    result.problems = planned.problems + stats.problems
    result.notes = {**planned.notes}
    for key, names in stats.notes.items():
        result.notes.setdefault(key, []).extend(names)
    result.seconds_decoded = stats.seconds_decoded
    result.frames_written = stats.frames_written
    return result


# ---------------------------------------------------------------------------- done markers


def write_done_marker(path: Path, yid: str, clips: Sequence[str], **fields: Any) -> None:
    """Record, atomically and last, that every clip of ``yid`` exists."""
    atomic_write_json(path, {"version": MARKER_VERSION, "yid": yid, "clips": list(clips), **fields})


def read_done_marker(path: Path) -> dict | None:
    """The marker's content, or None when absent or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and data.get("version") == MARKER_VERSION:
            return data
    return None


def summarize(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c`` or ``a, b, ... and N more``."""
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def problems_text(problems: Sequence[TrackProblem], limit: int = MAX_LISTED) -> str:
    """One line naming each bad track and why (the first ``limit`` of them)."""
    shown = "; ".join(str(p) for p in problems[:limit])
    return shown + (f"; ... and {len(problems) - limit} more" if len(problems) > limit else "")


# ---------------------------------------------------------------------------- the stages


def file_signature(path: Path) -> dict[str, int] | None:
    """Size and modification time of a file (None when absent): a rewritten metadata file
    (always replaced atomically, so a new inode and time) gets a new signature."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def result_stats(result: VideoResult, duplicates: dict[str, str]) -> dict[str, Any]:
    """Numbers for the summary, and notes (what was repaired, what was a duplicate) for the journal."""
    stats: dict[str, Any] = {"clips": float(len(result.written)), "video_s": round(result.seconds_decoded, 3)}
    if result.existing:
        stats["skipped"] = f"{result.existing} clips existed already"
    for what, names in sorted(result.notes.items()):
        stats[what] = summarize(names)
    if duplicates:
        stats["duplicates_not_cut"] = summarize([f"{fn} (repeats {kept})" for fn, kept in duplicates.items()])
    return stats


def bad_tracks_error(problems: Sequence[TrackProblem], total: int, result: VideoResult, extra: str = "") -> ItemError:
    """The item's failure when some of its tracks cannot be cut (the others were)."""
    categories = sorted({p.category for p in problems})
    cut = len(result.written) + result.existing
    return ItemError(
        f"{len(problems)} of {total} tracks cannot be cut ({', '.join(categories)}): {problems_text(problems)}. "
        f"The other {cut} clips exist; no done marker is written, so the video counts as failed "
        f"(--retry_failed re-checks it without re-cutting existing clips){extra}",
        transient=False, category="bad_tracks",
    )


class ExtractTracksStage(Stage):
    """Cut every track listed in a video's metadata into its own mp4, in one decoding pass."""

    name = "extract_tracks"
    description = (
        "Cut every track of each video (tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip) into "
        "its own H.264 mp4, tracks_mp4/<dataset_name>/<fn>, decoding each video once. Tracks overlapping an "
        "earlier-listed track by more than 0.9 are cut once. A video is done when "
        "tracks_mp4/<dataset_name>/<yid[:2]>/<yid>.done.json exists (written last) and its metadata file "
        "has not changed since. A video with tracks that cannot be cut gets its other clips, then fails "
        "(category bad_tracks) with a journal reason naming each bad track."
    )
    default_slurm = {"cpus_per_task": 4, "mem_gb": 16}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("extract_tracks")
        g.add_argument("--yid_index_fn", type=Path, required=True, help="YouTube ids, one per line")
        g.add_argument("--dataset_name", default="TrackVerseLVIS",
                       help="reads tracks_meta/<dataset_name>/, writes tracks_mp4/<dataset_name>/")
        g.add_argument("--max_track_len", type=float, default=DEFAULT_MAX_DURATION,
                       help="clips keep at most this many seconds from the track's start")
        add_threads_argument(g)

    def validate_args(self, args: argparse.Namespace) -> None:
        validate_extraction_args(args)

    def job_key(self, args: argparse.Namespace) -> str:
        return f"{self.name}-{args.dataset_name}"

    def list_items(self, args: argparse.Namespace) -> list[str]:
        return read_item_list(args.yid_index_fn)

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        layout = DatasetLayout(args.base_dir)
        marker = read_done_marker(layout.tracks_done_marker(args.dataset_name, item))
        return marker is not None and marker.get("meta") == file_signature(layout.tracks_meta(args.dataset_name, item))

    def process(self, args: argparse.Namespace, item: str, resources: Any) -> dict[str, Any]:
        validate_yid(item)
        layout = DatasetLayout(args.base_dir)
        meta = layout.tracks_meta(args.dataset_name, item)
        signature = file_signature(meta)
        if signature is None:
            raise NotReady(f"no track metadata {meta} yet (parse_tracks.py has not finished this video)")
        try:
            raw = read_records(meta, validate=False)
        except (RecordsFileError, OSError) as exc:
            raise ItemError(f"unreadable track metadata: {exc}", category="bad_metadata") from None
        records, problems = validated_records(raw, item, f"{meta.name}: ")
        selection = select_tracks(records, lambda r: layout.track_mp4(args.dataset_name, r.fn), deduplicate=True)
        problems += selection.problems
        video = layout.video_mp4(item)
        if not video.exists() and any(not path.exists() for _, path in selection.tracks):
            raise ItemError(f"{video}: the video is missing (its track metadata exists)", category="missing_video")
        result = cut_with_progress(video, selection.tracks, args, item)
        problems += result.problems
        if problems:
            raise bad_tracks_error(problems, len(raw), result)
        write_done_marker(layout.tracks_done_marker(args.dataset_name, item), item,
                          [r.fn for r, _ in selection.tracks], meta=signature, duplicates=selection.duplicates)
        return result_stats(result, selection.duplicates)


def add_threads_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--threads", type=int, default=None,
                       help="worker threads cutting and encoding clips (default: the CPUs this process may "
                            "use, i.e. --cpus_per_task under Slurm; lower it when several ranks share a machine)")


def validate_extraction_args(args: argparse.Namespace) -> None:
    """Flags both stages share: ``--max_track_len``, ``--threads`` and (when present) ``--dataset_name``."""
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if getattr(args, "dataset_name", None) is not None:
        try:
            validate_name(args.dataset_name)
        except InvalidItemError as exc:
            raise UsageError(f"--dataset_name: {exc}") from None
    if not args.max_track_len > 0:
        raise UsageError(f"--max_track_len must be positive, got {args.max_track_len}")


def cut_with_progress(video: Path, tracks: Sequence[tuple[TrackRecord, Path]], args: argparse.Namespace,
                      item: str, info: VideoInfo | None = None) -> VideoResult:
    """:func:`cut_missing_clips` with the stage's flags, a progress bar (on a terminal) and a
    corrupt video as an ItemError."""
    with tqdm(unit="frame", desc=f"{item} frames", leave=False, dynamic_ncols=True,
              disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
        try:
            return cut_missing_clips(video, tracks, args.max_track_len, info=info, on_frames=bar.update,
                                     threads=args.threads)
        except VideoError as exc:
            raise ItemError(f"corrupt video: {exc}", category="corrupt_video") from None


EXTRACT_STAGE = ExtractTracksStage()


# ---------------------------------------------------------------- download_tracks (released subsets)

_YID_IN_LINE = re.compile(rb'"yid"\s*:\s*"([^"\\]*)"')


@dataclass
class SubsetIndex:
    """One pass over a released metadata file: videos in order of first appearance, a digest
    of each video's record lines (it changes when its track list does), and the lines of the
    videos this rank will process, zlib-compressed (memory: about this rank's share of the
    file, compressed). A line that is not a JSON record with a ``yid`` becomes an item of its
    own (``<file>:<line>``) that fails with the reason, so it shows in the journal."""

    items: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    chunks: dict[str, list[bytes]] = field(default_factory=dict)
    bad_lines: dict[str, str] = field(default_factory=dict)
    records: int = 0

    @classmethod
    def scan(cls, path: Path, keep: Callable[[int], bool] | None = None) -> SubsetIndex:
        index = cls()
        hashes: dict[str, Any] = {}
        position: dict[str, int] = {}
        run_item, run_lines = None, []

        def flush() -> None:
            if run_item is not None and run_lines:
                index.chunks.setdefault(run_item, []).append(zlib.compress(b"".join(run_lines), 6))

        lineno = 0
        try:
            with gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb") as f:
                for lineno, raw in enumerate(f, start=1):  # noqa: B007 (reported on errors)
                    line = raw.strip()
                    if not line:
                        continue
                    yid = _yid_of(line)
                    if yid is None:
                        item = f"{path.name}:{lineno}"
                        index.bad_lines[item] = f"line {lineno} of {path} is not a JSON track record with a 'yid'"
                        index.items.append(item)
                        continue
                    index.records += 1
                    if yid not in position:
                        position[yid] = len(index.items)
                        index.items.append(yid)
                        hashes[yid] = hashlib.sha1()
                    hashes[yid].update(line + b"\n")
                    if keep is not None and keep(position[yid]):
                        if yid != run_item:
                            flush()
                            run_item, run_lines = yid, []
                        run_lines.append(line + b"\n")
        except (EOFError, OSError, zlib.error) as exc:
            raise UsageError(f"--db_meta_file {path}: damaged or truncated after line {lineno}: {exc}") from None
        flush()
        index.digests = {yid: h.hexdigest() for yid, h in hashes.items()}
        return index

    def lines(self, item: str) -> list[bytes]:
        """The record lines of ``item`` (a video this rank keeps), in file order."""
        return [line for chunk in self.chunks.get(item, []) for line in zlib.decompress(chunk).splitlines() if line]


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _yid_of(line: bytes) -> str | None:
    match = _YID_IN_LINE.search(line)
    if match is not None:
        return match.group(1).decode("utf-8", "replace")
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return str(data["yid"]) if isinstance(data, dict) and isinstance(data.get("yid"), str) else None


def parse_lines(lines: Iterable[bytes], yid: str, source: str) -> tuple[list[TrackRecord], list[TrackProblem]]:
    """Records of one video from JSON lines in either spelling; a bad one becomes a problem."""
    records, problems = [], []
    for n, line in enumerate(lines, start=1):
        try:
            records.append(TrackRecord.from_json(line))
        except TrackRecordError as exc:
            problems.append(TrackProblem(f"{source} record {n} of {yid}", f"invalid record: {exc}", "bad_record"))
    good, wrong = validated_records(records, yid)
    return good, problems + wrong


def resolve_meta_file(value: str | Path, base_dir: Path) -> Path:
    """``--db_meta_file``: an absolute path, a path from the working folder, or one inside the
    dataset root (the original's convention), in that order."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    try:
        return DatasetLayout(base_dir).relative(path)
    except InvalidItemError as exc:
        raise UsageError(f"--db_meta_file: {exc}") from None


class DownloadTracksStage(Stage):
    """Rebuild a released subset: download each video, cut its listed tracks, keep their names."""

    name = "download_tracks"
    description = (
        "Rebuild a released TrackVerse subset from its metadata file (--db_meta_file, gzip JSON lines, "
        "either spelling of the record): items are its videos in order of first appearance; each is "
        "downloaded (yt-dlp, as download_videos.py) to videos_mp4/ and its tracks are cut to "
        "tracks_mp4/<fn> with the released file names. Boxes are scaled when the downloaded video's "
        "size differs from the record's video_size. A video is done when "
        "tracks_mp4/<yid[:2]>/<yid>.done.json matches its records (written last)."
    )
    default_slurm = {"cpus_per_task": 4, "mem_gb": 16}

    def __init__(self) -> None:
        self._index: tuple[tuple, SubsetIndex] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_index": None}  # submitit pickles the stage: each job scans the file itself

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("download_tracks")
        g.add_argument("--db_meta_file", required=True,
                       help="released subset metadata (gzip JSON lines); absolute, from the working folder, "
                            "or inside --base_dir")
        g.add_argument("--remove_video_mp4", action="store_true",
                       help="delete each source video once all of its tracks' clips exist")
        g.add_argument("--max_track_len", type=float, default=DEFAULT_MAX_DURATION,
                       help="clips keep at most this many seconds from the track's start")
        add_threads_argument(g)
        add_download_arguments(parser)

    def validate_args(self, args: argparse.Namespace) -> None:
        validate_extraction_args(args)
        args.db_meta_file = resolve_meta_file(args.db_meta_file, args.base_dir)
        if not args.db_meta_file.is_file():
            raise UsageError(f"--db_meta_file {args.db_meta_file} does not exist")
        validate_download_args(args)

    def job_key(self, args: argparse.Namespace) -> str:
        stem = Path(args.db_meta_file).name.split(".")[0]
        return f"{self.name}-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-") or "subset")[:80]

    def index(self, args: argparse.Namespace) -> SubsetIndex:
        """The subset file scanned once per process (kept for this rank's videos)."""
        path = Path(args.db_meta_file)
        st = path.stat()
        rank, world = getattr(args, "rank", None), getattr(args, "world_size", None) or 1
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, rank, world)
        if self._index is None or self._index[0] != key:
            keep = None if rank is None else (lambda i: i % world == rank)
            self._index = (key, SubsetIndex.scan(path, keep))
        return self._index[1]

    def list_items(self, args: argparse.Namespace) -> list[str]:
        index = self.index(args)
        if not index.items:
            raise UsageError(f"--db_meta_file {args.db_meta_file} lists no tracks")
        return index.items

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        index = self.index(args)
        if item in index.bad_lines:
            return False  # process() journals it, once
        marker = read_done_marker(DatasetLayout(args.base_dir).tracks_done_marker(None, item))
        return marker is not None and marker.get("tracks_digest") == index.digests.get(item)

    def setup(self, args: argparse.Namespace) -> DownloadSession:
        return DownloadSession(args)

    def process(self, args: argparse.Namespace, item: str, res: DownloadSession) -> dict[str, Any]:
        index = self.index(args)
        if item in index.bad_lines:
            raise ItemError(index.bad_lines[item], category="bad_record")
        validate_yid(item)
        layout = DatasetLayout(args.base_dir)
        lines = index.lines(item)
        if not lines:  # the index was built for another rank: never cut (or mark done) from nothing
            raise ItemError(f"no records of {item} were kept by this rank's index", category="internal")
        records, problems = parse_lines(lines, item, Path(args.db_meta_file).name)
        total = len(records) + len(problems)
        selection = select_tracks(records, lambda r: layout.track_mp4(None, r.fn), deduplicate=False)
        problems += selection.problems
        video = layout.video_mp4(item)
        notes: dict[str, Any] = {}
        info = None
        if any(not path.exists() for _, path in selection.tracks):
            info = self._video(args, item, video, res, notes)
            sizes = {tuple(r.video_size) for r, _ in selection.tracks if r.video_size}
            for size in sorted(sizes):
                factors = scale_factors(size, (info.height, info.width))
                if factors is not None:
                    notes.setdefault("scaled_boxes", []).append(
                        f"records say {size[1]}x{size[0]}, the downloaded video is {info.width}x{info.height}: "
                        f"boxes scaled by {factors[0]:.4g} x {factors[1]:.4g}")
            if any(not r.video_size for r, _ in selection.tracks):
                notes["unscaled_boxes"] = "some records have no video_size: their boxes are used as they are"
        result = cut_with_progress(video, selection.tracks, args, item, info=info)
        problems += result.problems
        if problems:
            kept = f"; {video} is kept" if video.exists() else ""
            scaled = f"; {'; '.join(notes['scaled_boxes'])}" if notes.get("scaled_boxes") else ""
            raise bad_tracks_error(problems, total, result, extra=scaled + kept)
        write_done_marker(layout.tracks_done_marker(None, item), item, [r.fn for r, _ in selection.tracks],
                          tracks_digest=index.digests[item], db_meta_file=str(args.db_meta_file),
                          video_hw=list(result.video_hw) if result.video_hw else None)
        if args.remove_video_mp4 and video.exists():
            video.unlink()
            notes["removed"] = str(video)
        stats = result_stats(result, selection.duplicates)
        stats.update({k: "; ".join(v) if isinstance(v, list) else v for k, v in notes.items()})
        return stats

    def _video(self, args: argparse.Namespace, item: str, video: Path, res: DownloadSession,
               notes: dict[str, Any]) -> VideoInfo:
        """The source video: the one on disk if it decodes, else a fresh download."""
        if video.exists():
            try:
                return probe_video(video)
            except VideoError as exc:
                notes["redownloaded"] = f"the video on disk did not decode ({exc})"
                video.unlink(missing_ok=True)
        res.fetch(item, video)  # ItemError; SystemicError when many network failures in a row
        notes["downloaded"] = str(video)
        try:
            return probe_video(video)
        except VideoError as exc:
            raise ItemError(f"corrupt video: {exc}", category="corrupt_video") from None


DOWNLOAD_STAGE = DownloadTracksStage()
