"""Detect and track objects in the scene segments of one video (the library side of step 4).

Each segment is sampled at ``fps`` with the longer side at ``max_side`` px and detected in
batches; boxes are scaled back to source pixels. One ByteTracker follows them and is reset at
every segment boundary, so no track crosses a scene cut. Tracks of at least ``min_track_len``
seconds whose mean box covers ``min_track_area`` of the frame become :class:`TrackRecord` s
with their provenance (detector, weights, vocabulary hash, segment). :func:`parse_video`
writes no file; :mod:`utils.detect.stage` does.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.core.config import option
from utils.core.errors import SystemicError
from utils.core.video import Frame, probe_video, read_frames
from utils.detect.detectors import Detections, Detector
from utils.detect.detectors.owlv2 import PRECISIONS
from utils.detect.tracking import ByteTracker, TrackHistory
from utils.detect.tracking.bytetrack import DEFAULTS as TRACKER_DEFAULTS
from utils.records.tracks import TrackRecord

log = logging.getLogger(__name__)


DEFAULT_PROMPTS_ASSET = "lvis-prompts.txt"


# ---------------------------------------------------------------------------- settings


TRACKER_GROUP = "tracker (ByteTrack)"
PARSE_GROUP = "parse_tracks"


@dataclass(frozen=True, kw_only=True)
class ParseConfig:
    """How a video is parsed: detector batching and NMS, frame sampling, tracking, track filtering
    (flags of parse_tracks.py)."""

    batch_size: int = option(8, group=PARSE_GROUP,
                             help="frames per detector call (OWLv2 halves it on CUDA out-of-memory)")
    nms_threshold: float | None = option(
        None, group=PARSE_GROUP,
        help="detector NMS IoU threshold (default: the backend's, OWLv2 0.5, DETIC 0.7)")
    fps: float = option(16.0, group=PARSE_GROUP, help="frames sampled per second of video")
    max_side: int | None = option(480, group=PARSE_GROUP, help="longer side of sampled frames, in pixels (0: source size)")
    min_track_len: float = option(3.0, group=PARSE_GROUP, help="minimum track duration, seconds")
    min_track_area: float = option(0.1, group=PARSE_GROUP,
                                   help="minimum mean box area, as a fraction of the frame")
    track_thresh: float = option(TRACKER_DEFAULTS.track_thresh, group=TRACKER_GROUP,
                                 help="high-score detection threshold")
    low_thresh: float = option(TRACKER_DEFAULTS.low_thresh, group=TRACKER_GROUP,
                               help="low-score detections below are ignored")
    match_thresh: float = option(TRACKER_DEFAULTS.match_thresh, group=TRACKER_GROUP,
                                 help="maximum fused cost of a match")
    track_buffer: int = option(TRACKER_DEFAULTS.track_buffer, group=TRACKER_GROUP,
                               help="how long a lost track is kept, in frames at 30 fps whatever --fps "
                                    "(24 = 0.8 s)")
    motion_weight: float = option(TRACKER_DEFAULTS.motion_weight, group=TRACKER_GROUP,
                                  help="weight of motion (1 - IoU) against appearance in the matching cost")
    decode_workers: int = option(
        0, group=PARSE_GROUP,
        help="processes that decode and resize segments ahead of the detector (several segments and videos at "
             "once; batches then fill across segment and video boundaries); 0: decode in a thread of this process")
    precision: str = option("auto", group=PARSE_GROUP, choices=PRECISIONS,
                            help="detector precision: auto (on CUDA, OWLv2 float16 weights, DETIC float16 autocast; "
                                 "float32 on CPU), fp32, or bf16/fp16 autocast with float32 weights")
    compile: bool = option(False, group=PARSE_GROUP, help="OWLv2: run the image side through torch.compile")

    def __post_init__(self) -> None:
        if self.max_side == 0:  # the flag's "source size"
            object.__setattr__(self, "max_side", None)

    def make_tracker(self) -> ByteTracker:
        return ByteTracker(
            track_thresh=self.track_thresh,
            low_thresh=self.low_thresh,
            match_thresh=self.match_thresh,
            track_buffer=self.track_buffer,
            frame_rate=self.fps,
            motion_weight=self.motion_weight,
        )


# ---------------------------------------------------------------------------- tracking


def keep_track(history: TrackHistory, min_track_len: float, min_track_area: float, frame_area: float) -> bool:
    """True for tracks of at least ``min_track_len`` s (first to last matched frame) whose
    mean box area is at least ``min_track_area`` of ``frame_area`` (same pixels as the boxes)."""
    if len(history) == 0 or history.duration < min_track_len - 1e-9:
        return False
    wh = np.clip(history.xyxy[:, 2:] - history.xyxy[:, :2], 0.0, None)
    return float(np.mean(wh[:, 0] * wh[:, 1])) >= min_track_area * frame_area


_END = object()


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced by a background thread, up to ``depth`` ahead (video decoding
    releases the GIL, so it overlaps with detection); exceptions are re-raised here."""
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for value in items:
                if not put((value, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer
            put((_END, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="frame-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value, exc = buffer.get()
            if exc is not None:
                raise exc
            if value is _END:
                return
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


def _batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def update_tracker(tracker: ByteTracker, dets: Detections, frame_hw: tuple[int, int], time: float,
                   source_size: tuple[int, int]) -> None:
    """Feed one frame's detections (in the pixels of its ``frame_hw`` sampled frame) to the
    tracker, boxes scaled to source pixels and clipped to the source frame."""
    src_h, src_w = source_size
    h, w = frame_hw
    scale = np.array([src_w / w, src_h / h, src_w / w, src_h / h], dtype=np.float64)
    boxes = np.clip(dets.xyxy.astype(np.float64) * scale, 0.0, [src_w, src_h, src_w, src_h])
    tracker.update(boxes, dets.score, dets.embedding, dets.class_logits, timestamp=time)


def check_detections(detector: Detector, detections: Sequence[Detections], frames: int) -> None:
    """One result per frame, or the detector is broken (systemic)."""
    if len(detections) != frames:
        raise SystemicError(
            f"detector {getattr(detector, 'name', detector)!r} returned {len(detections)} results for {frames} frames"
        )


def track_segment(
    video_path: str | Path,
    segment: tuple[float, float],
    detector: Detector,
    config: ParseConfig,
    source_size: tuple[int, int],
    tracker: ByteTracker | None = None,
    on_frames: Callable[[int, float], None] | None = None,
) -> tuple[list[TrackHistory], int]:
    """Detect and track over ``[start, end)`` of a video; returns every confirmed track's
    history (boxes in source pixels, before filtering) and the number of frames sampled.

    ``source_size`` is the video's ``(h, w)``. ``on_frames(n, t)`` is called after each batch
    with its frame count and the time of its last frame.
    """
    start, end = segment
    tracker = tracker if tracker is not None else config.make_tracker()
    tracker.reset()
    frames = _prefetch(
        read_frames(video_path, fps=config.fps, start=start, end=end, max_side=config.max_side),
        depth=2 * config.batch_size,
    )
    count = 0
    try:
        for batch in _batches(frames, config.batch_size):
            images = [f.image for f in batch]
            times = [f.time for f in batch]
            detections = detector.detect(images, times)
            check_detections(detector, detections, len(batch))
            for frame, dets in zip(batch, detections, strict=True):
                update_tracker(tracker, dets, frame.image.shape[:2], frame.time, source_size)
            count += len(batch)
            if on_frames is not None:
                on_frames(len(batch), batch[-1].time)
    finally:
        frames.close()
    return tracker.flush(), count


class _SegmentProgress:
    """Advances a tqdm bar in seconds of video as a segment's batches are parsed."""

    def __init__(self, bar: tqdm | None, start: float, end: float) -> None:
        self.bar, self.end, self.reached = bar, end, start

    def __call__(self, frames: int, time: float) -> None:
        t = min(max(time, self.reached), self.end)
        if self.bar is not None and t > self.reached:
            self.bar.update(t - self.reached)
        self.reached = t

    def finish(self) -> None:
        self(0, self.end)


def covered_seconds(segment: tuple[float, float], duration: float) -> float:
    """Seconds of a video of ``duration`` seconds that ``segment`` covers."""
    start, end = segment
    return max(0.0, min(end, duration) - start)


@dataclass
class VideoTracks:
    """What :func:`parse_video` found in one video."""

    records: list[TrackRecord]
    video_size: tuple[int, int]  # source (h, w)
    video_seconds: float  # seconds of video covered by the parsed segments
    frames: int  # frames sampled and detected
    tracks_before_filter: int
    #: one per record, in the same order: the L2-normalised mean of the track's detection
    #: embeddings (float32, the detector's class-embedding space), None when it had none
    embeddings: list[np.ndarray | None] = field(default_factory=list)


@dataclass(frozen=True)
class VideoContext:
    """What turning one video's track histories into records needs besides the histories."""

    yid: str
    source_size: tuple[int, int]  # (h, w)
    class_names: Sequence[str]
    detector_name: str
    vocab_hash: str | None
    extra: dict[str, Any]
    file_labels: Sequence[str] | None = None  # per class, what track file names carry


def video_context(yid: str, source_size: tuple[int, int], detector: Detector, class_names: Sequence[str],
                  vocab_hash: str | None, file_labels: Sequence[str] | None = None) -> VideoContext:
    prov = detector.provenance() if hasattr(detector, "provenance") else {}
    name = str(prov.get("detector") or getattr(detector, "name", type(detector).__name__))
    return VideoContext(yid, source_size, class_names, name, vocab_hash, {"weights": prov.get("weights")},
                        file_labels)


def records_from_histories(
    histories: Iterable[TrackHistory], segment: tuple[float, float], context: VideoContext, config: ParseConfig,
) -> tuple[list[TrackRecord], list[np.ndarray | None]]:
    """The kept tracks of one segment as records, and each one's mean embedding (same order).
    Every way of parsing a video (plain or pipelined) builds its records here."""
    src_h, src_w = context.source_size
    records: list[TrackRecord] = []
    embeddings: list[np.ndarray | None] = []
    for history in histories:
        if not keep_track(history, config.min_track_len, config.min_track_area, src_h * src_w):
            continue
        records.append(TrackRecord.from_history(
            context.yid, history.timestamps, history.xyxy, history.class_logits, history.scores,
            context.class_names, (src_h, src_w), segment=segment, detector=context.detector_name,
            vocab_hash=context.vocab_hash, extra=context.extra, file_labels=context.file_labels,
        ))
        embeddings.append(history.embedding_mean)
    return records, embeddings


def parse_video(
    video_path: str | Path,
    yid: str,
    segments: Sequence[tuple[float, float]],
    detector: Detector,
    class_names: Sequence[str],
    config: ParseConfig,
    vocab_hash: str | None = None,
    progress: tqdm | None = None,
    file_labels: Sequence[str] | None = None,
) -> VideoTracks:
    """Track records of every segment of one video, in segment order then track order.

    Raises :class:`~utils.core.video.VideoError` for a file that cannot be decoded.
    """
    info = probe_video(video_path)
    src_h, src_w = info.height, info.width
    context = video_context(yid, (src_h, src_w), detector, class_names, vocab_hash, file_labels)
    tracker = config.make_tracker()
    records: list[TrackRecord] = []
    embeddings: list[np.ndarray | None] = []
    frames = found = 0
    seconds = 0.0
    for start, end in segments:
        covered = covered_seconds((start, end), info.duration)
        shown = _SegmentProgress(progress, start, start + covered)
        histories, n = track_segment(video_path, (start, end), detector, config, (src_h, src_w), tracker, shown)
        shown.finish()
        frames += n
        seconds += covered
        found += len(histories)
        kept, kept_embeddings = records_from_histories(histories, (start, end), context, config)
        records += kept
        embeddings += kept_embeddings
    return VideoTracks(records, (src_h, src_w), seconds, frames, found, embeddings)
