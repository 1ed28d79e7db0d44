"""Cut the tracks of one video into small mp4 clips, every track from ONE decoding pass (step 4a).

The source is decoded once, from the first track's start to the last track's end (long
stretches with no track are skipped by seeking). A clip's encoder opens at its track's first
frame and closes after its last, so memory grows with the tracks open at once, not with the
video's length. Frames stay in the decoder's 4:2:0 form and each clip's crop is resized plane
by plane with Pillow's bicubic filter, as the released clips were made (``PIL.Image.resize``
of the integer crop). With more than one worker, the open clips of a frame are cropped,
resized and encoded on worker processes fed through shared memory (:mod:`utils.clips.encode`)
while the next frames decode. What is wrong with a track is reported (:class:`TrackProblem`),
never raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.clips.encode import ClipSpec, ClipWorkers, InProcessClips
from utils.clips.geometry import (
    DEDUP_THRESHOLD,
    DEFAULT_MAX_DURATION,
    ClipPlan,
    deduplicate_tracks,
    plan_clip,
    track_overlap,
)
from utils.core.errors import BadGeometryError, InvalidItemError
from utils.core.io import GZIP_STREAM_ERRORS, atomic_write_json, iter_json_lines, open_maybe_gzip
from utils.core.resources import available_cpus
from utils.core.video import (
    ColorTags,
    VideoInfo,
    Yuv420Image,
    decode_span,
    probe_video,
)
from utils.records.tracks import RecordsFileError, TrackRecord, TrackRecordError

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
    ``utils.clips.geometry.deduplicate_tracks``; the ratio does not change when boxes are scaled).
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
        except BadGeometryError as exc:
            out.problems.append(TrackProblem(name, f"cannot be cut: {exc}", exc.category))
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


def decode_spans(windows: Iterable[tuple[float, float]], gap: float = SEEK_GAP_S) -> list[tuple[float, float]]:
    """Merge clip windows into the spans to decode; gaps shorter than ``gap`` are decoded through."""
    spans: list[list[float]] = []
    for start, end in sorted(windows):
        if spans and start - spans[-1][1] < gap:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(s, e) for s, e in spans]


def extract_clips(
    video_path: str | Path,
    tasks: Sequence[ClipTask],
    fps: float,
    *,
    keyframe_interval: float = 0.5,
    crf: int = 23,
    preset: str = "veryfast",
    workers: int | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> ExtractionStats:
    """Write every task's clip from one decoding pass over ``video_path``.

    Frames stay in the decoder's 4:2:0 form. Each open clip's box is cropped, resized and
    encoded (one x264 thread per clip) in this process with one worker, or on ``workers``
    worker processes (default: the CPUs this process may use, at most one per clip;
    :mod:`utils.clips.encode`) while the next frames decode.

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
    n_workers = workers if workers is not None else available_cpus()
    if n_workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    n_workers = min(n_workers, len(tasks))
    encoder = {"keyframe_interval": keyframe_interval, "crf": crf, "preset": preset}
    windows = [task.window(fps) for task in tasks]
    pending = deque(sorted(range(len(tasks)), key=lambda i: (windows[i][0], i)))
    active: set[int] = set()
    frame_step = 1.0 / fps
    last_time: float | None = None  # of the last frame decoded
    planned_hw = tuple(tasks[0].plan.frame_hw)  # boxes are for frames of this size (the probed one)
    rescaled = False
    clips: InProcessClips | ClipWorkers = InProcessClips() if n_workers == 1 else ClipWorkers(n_workers, planned_hw)
    # decoder threads on the CPUs the workers leave: with none left, more threads only cost CPU
    # time (2 workers on 2 CPUs: 9% faster with 1 decoder thread than with 3)
    decode_threads = None if n_workers == 1 else max(1, available_cpus() + 1 - n_workers)

    def collect(wait: bool = False) -> None:
        for i, frames in clips.finished(wait):
            stats.clips_written.append(tasks[i].name)
            stats.frames_written += frames

    def finish(i: int) -> None:
        active.discard(i)
        clips.close(i)
        collect()

    try:
        for span_start, span_end in decode_spans(windows):
            span_first = None
            decoded = 0
            for frame, t in decode_span(video_path, start=max(span_start, 0.0), end=span_end + 1e-6,
                                        threads=decode_threads):
                span_first = t if span_first is None else span_first
                last_time = t
                decoded += 1
                for i in sorted(i for i in active if t > windows[i][1]):
                    finish(i)
                while pending and windows[pending[0]][0] <= t:
                    i = pending.popleft()
                    if t > windows[i][1]:
                        stats.problems.append(TrackProblem(
                            tasks[i].name,
                            f"no source frame in [{tasks[i].plan.t_start:.3f}, {tasks[i].plan.t_end:.3f}] s",
                            "no_frames"))
                        continue
                    plan = tasks[i].plan
                    spec = ClipSpec(tasks[i].path, plan.out_size, fps, ColorTags.of(frame), encoder)
                    clips.open(i, spec, (plan.out_size[0] * plan.out_size[1], windows[i][1]), t)
                    active.add(i)
                if active:
                    rescaled |= (frame.height, frame.width) != planned_hw  # the stream changed resolution
                    image = Yuv420Image.from_frame(frame, size=(planned_hw[1], planned_hw[0]))
                    clips.add_frame(image, [(i, tasks[i].plan.box_at(t)) for i in sorted(active)])
                if on_frames is not None and decoded % 100 == 0:
                    on_frames(100)
            stats.frames_decoded += decoded
            # the span is over: either its end was reached or the video ended
            if span_first is not None:
                stats.seconds_decoded += last_time - span_first + frame_step
            for i in sorted(active):
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
        collect(wait=True)
        if rescaled:
            stats.notes["frames_rescaled_to_the_probed_size"] = [task.name for task in tasks]
    except BaseException:
        clips.abort()
        raise
    finally:
        clips.shutdown()
    return stats


# ---------------------------------------------------------------------------- one video


def validated_record(record: TrackRecord, yid: str, name: str) -> TrackRecord | TrackProblem:
    """``record`` validated (it was read with ``validate=False``), or the problem, under
    ``name``, that keeps it from being cut."""
    try:
        record = dataclasses.replace(record)  # runs the schema's coercion and validation
    except (TrackRecordError, TypeError, ValueError) as exc:
        return TrackProblem(name, f"invalid record: {exc}", "bad_record")
    if record.yid != yid:
        return TrackProblem(name, f"belongs to video {record.yid}, not {yid}", "wrong_yid")
    return record


def validated_records(records: Iterable[TrackRecord], yid: str, source: str = "") -> tuple[list[TrackRecord], list[TrackProblem]]:
    """Validate records read with ``validate=False``: a record that breaks the schema (or
    belongs to another video) becomes a problem instead of failing the whole file."""
    good: list[TrackRecord] = []
    problems: list[TrackProblem] = []
    for n, record in enumerate(records, start=1):
        name = str(getattr(record, "fn", None) or f"{source}record {n}")
        checked = validated_record(record, yid, name)
        if isinstance(checked, TrackProblem):
            problems.append(checked)
        else:
            good.append(checked)
    return good, problems


@dataclass
class FileRecords:
    """The records of one metadata file, from :func:`read_file_records`."""

    records: list[TrackRecord] = field(default_factory=list)  # valid, of the video
    problems: list[TrackProblem] = field(default_factory=list)  # one per line that cannot be cut
    total: int = 0  # records (non-blank lines) in the file


def read_file_records(path: str | Path, yid: str) -> FileRecords:
    """Every record of a track metadata file (gzip or plain JSON lines), each on its own: a
    line that is not a JSON object, a record the schema refuses (a key missing, a wrong type)
    or one of another video becomes a :class:`TrackProblem`, named by its ``fn`` when it has
    one (else ``<file>: line N``), and the others are kept, so one bad record costs only its
    own clip. A damaged gzip stream or a torn last line (a killed writer: nothing after it can
    be trusted) raises :class:`~utils.records.tracks.RecordsFileError`; ``OSError`` when the
    file cannot be read."""
    path = Path(path)
    out = FileRecords()
    try:
        with open_maybe_gzip(path) as f:
            for line in iter_json_lines(f):
                out.total += 1
                where = f"{path.name}: line {line.lineno}"
                if line.torn:
                    raise RecordsFileError(f"{path}:{line.lineno}: torn last line")
                if line.error is not None or not isinstance(line.value, dict):
                    why = f"not a JSON line ({line.error})" if line.error is not None else "not a JSON object"
                    out.problems.append(TrackProblem(where, why, "bad_record"))
                    continue
                fn = line.value.get("fn", line.value.get("track_mp4_filename"))
                name = str(fn) if isinstance(fn, str) and fn else where
                try:
                    record = TrackRecord.from_dict(line.value, validate=False)
                except TrackRecordError as exc:
                    out.problems.append(TrackProblem(name, f"invalid record: {exc}", "bad_record"))
                    continue
                checked = validated_record(record, yid, name)
                if isinstance(checked, TrackProblem):
                    out.problems.append(checked)
                else:
                    out.records.append(checked)
    except GZIP_STREAM_ERRORS as exc:
        raise RecordsFileError(f"{path}: damaged or truncated after {out.total} records: "
                               f"{type(exc).__name__}: {exc}") from exc
    return out


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
    ``encoder`` goes to :func:`extract_clips` (``crf``, ``preset``, ``keyframe_interval``, ``workers``)."""
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
