"""Stage 4 (``parse_tracks.py``): detect objects in every scene segment of a video, track
them, and write the video's track metadata (DESIGN.md "Stages", issue 9).

Per video:

1. ``videos_segm/<yid[:2]>/<yid>.txt`` lists the kept scenes (one ``start,end`` per line). No
   file yet: the video is *not ready* (counted apart, picked up by a later re-run). An empty
   file: the video is done with no tracks (an empty metadata file is written).
2. Each segment is sampled at ``fps`` (16) with the longer side at ``max_side`` (480) px; the
   frames go to the detector in batches of ``batch_size``. Detectors answer in the pixels of
   the frames they are given; boxes are scaled back to the *source* pixels of the video.
3. One :class:`~utils.tracking.ByteTracker` follows the boxes; it is flushed and reset at
   every segment boundary, so no track crosses a scene cut.
4. Tracks lasting at least ``min_track_len`` seconds (first to last matched frame, as in the
   original) whose mean box covers at least ``min_track_area`` of the frame become
   :class:`~utils.tracks.TrackRecord` s (provenance: detector, weights, vocabulary hash,
   segment).
5. The whole file is written atomically once every segment is parsed: a kill leaves either
   no file or the complete one, and a re-run recomputes the video from scratch.

:func:`parse_video` is the library entry (no launcher, no files written);
:class:`ParseTracksStage` wraps it in the shared launcher.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import math
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.assets import AssetError, resolve_asset
from utils.detectors import DEFAULT_DETECTOR, Detector, DetectorError, make_detector
from utils.detectors.base import detector_factory
from utils.io import atomic_write_bytes
from utils.launch import ItemError, NotReady, Stage, SystemicError, UsageError, read_item_list
from utils.layout import DatasetLayout, InvalidItemError, validate_name
from utils.prompts import Vocabulary, read_prompts
from utils.segments import read_segments
from utils.tracking import ByteTracker, TrackHistory
from utils.tracks import TrackRecord, records_to_jsonl_gz_bytes
from utils.video import Frame, VideoError, probe_video, read_frames

__all__ = [
    "DEFAULT_PROMPTS_ASSET",
    "ParseConfig",
    "ParseTracksStage",
    "STAGE",
    "VideoTracks",
    "build_detector",
    "keep_track",
    "parse_video",
    "track_segment",
]

log = logging.getLogger(__name__)

DEFAULT_PROMPTS_ASSET = "lvis-prompts.txt"


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ParseConfig:
    """Sampling, batching, tracking and filtering settings (the stage's flags)."""

    fps: float = 16.0
    max_side: int | None = 480
    batch_size: int = 8
    min_track_len: float = 3.0
    min_track_area: float = 0.1
    track_thresh: float = 0.55
    low_thresh: float = 0.1
    match_thresh: float = 0.45
    track_buffer: int = 24
    motion_weight: float = 0.4

    def make_tracker(self) -> ByteTracker:
        return ByteTracker(
            track_thresh=self.track_thresh,
            low_thresh=self.low_thresh,
            match_thresh=self.match_thresh,
            track_buffer=self.track_buffer,
            frame_rate=self.fps,
            motion_weight=self.motion_weight,
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ParseConfig:
        """Every field from the flag of the same name (``--max_side 0``: source size)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        values["max_side"] = values["max_side"] or None
        return cls(**values)


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
    src_h, src_w = source_size
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
            if len(detections) != len(batch):
                raise SystemicError(
                    f"detector {getattr(detector, 'name', detector)!r} returned {len(detections)} results "
                    f"for {len(batch)} frames"
                )
            for frame, dets in zip(batch, detections, strict=True):
                h, w = frame.image.shape[:2]
                scale = np.array([src_w / w, src_h / h, src_w / w, src_h / h], dtype=np.float64)
                boxes = np.clip(dets.xyxy.astype(np.float64) * scale, 0.0, [src_w, src_h, src_w, src_h])
                tracker.update(boxes, dets.score, dets.embedding, dets.class_logits, timestamp=frame.time)
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


@dataclass
class VideoTracks:
    """What :func:`parse_video` found in one video."""

    records: list[TrackRecord]
    video_size: tuple[int, int]  # source (h, w)
    video_seconds: float  # seconds of video covered by the parsed segments
    frames: int  # frames sampled and detected
    tracks_before_filter: int


def parse_video(
    video_path: str | Path,
    yid: str,
    segments: Sequence[tuple[float, float]],
    detector: Detector,
    class_names: Sequence[str],
    config: ParseConfig,
    vocab_hash: str | None = None,
    progress: tqdm | None = None,
) -> VideoTracks:
    """Track records of every segment of one video, in segment order then track order.

    Raises :class:`~utils.video.VideoError` for a file that cannot be decoded.
    """
    info = probe_video(video_path)
    src_h, src_w = info.height, info.width
    prov = detector.provenance() if hasattr(detector, "provenance") else {}
    name = str(prov.get("detector") or getattr(detector, "name", type(detector).__name__))
    extra = {"weights": prov.get("weights")}
    tracker = config.make_tracker()
    records: list[TrackRecord] = []
    frames = found = 0
    seconds = 0.0
    for start, end in segments:
        covered = max(0.0, min(end, info.duration) - start)
        shown = _SegmentProgress(progress, start, start + covered)
        histories, n = track_segment(video_path, (start, end), detector, config, (src_h, src_w), tracker, shown)
        shown.finish()
        frames += n
        seconds += covered
        found += len(histories)
        for history in histories:
            if not keep_track(history, config.min_track_len, config.min_track_area, src_h * src_w):
                continue
            records.append(TrackRecord.from_history(
                yid, history.timestamps, history.xyxy, history.class_logits, history.scores, class_names,
                (src_h, src_w), segment=(start, end), detector=name, vocab_hash=vocab_hash, extra=extra,
            ))
    return VideoTracks(records, (src_h, src_w), seconds, frames, found)


# ---------------------------------------------------------------------------- detector


def _accepts(factory: Callable[..., Any]) -> Callable[[str], bool]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return lambda name: True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return lambda name: True
    names = {p.name for p in params}
    return names.__contains__


def detector_options(args: argparse.Namespace, vocab: Vocabulary) -> dict[str, Any]:
    """Keyword options for the ``--detector`` factory: every flag it accepts (``prompts``,
    ``device``, ``batch_size``, ``nms_threshold``, and ``--model`` as OWLv2's ``model_id``,
    DETIC's ``weights``, or a custom factory's ``model_id``)."""
    accepts = _accepts(detector_factory(args.detector))
    wanted: dict[str, Any] = {"prompts": list(vocab.lines), "device": args.device, "batch_size": args.batch_size}
    if args.nms_threshold is not None:
        wanted["nms_threshold"] = args.nms_threshold
    options = {k: v for k, v in wanted.items() if accepts(k)}
    if args.model is not None:
        key = "weights" if args.detector == "detic" else "model_id"
        if not accepts(key):
            raise UsageError(f"--model: detector {args.detector!r} takes no {key!r} option")
        options[key] = str(args.model)
    return options


def build_detector(args: argparse.Namespace, vocab: Vocabulary) -> Detector:
    """The ``--detector`` over the vocabulary's labels; a failure to build it (weights
    missing, offline, backend not installed) is a :class:`~utils.launch.SystemicError`."""
    options = detector_options(args, vocab)
    try:
        return make_detector(args.detector, list(vocab.labels), **options)
    except (DetectorError, ImportError, OSError, ValueError) as exc:
        hint = ""
        if args.detector == "owlv2" and "hf download" not in str(exc):
            hint = " (pass --model with a local folder of the model and processor to run offline)"
        raise SystemicError(f"cannot build detector {args.detector!r}: {exc}{hint}") from exc


# ---------------------------------------------------------------------------- the stage


@dataclass
class _Resources:
    detector: Detector
    vocab: Vocabulary
    config: ParseConfig


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise UsageError(f"--{name} must be {bounds}, got {value}")


class ParseTracksStage(Stage):
    """Detect + track every segment of every video of the list -> per-video track metadata."""

    name = "parse_tracks"
    description = (
        "Detect objects (open vocabulary) in every scene segment of each video and track them; "
        "write tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip per video."
    )
    default_slurm = {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("parse_tracks")
        g.add_argument("--yid_index_fn", type=Path, required=True, help="YouTube ids, one per line")
        g.add_argument("--dataset_name", default="TrackVerseLVIS", help="tracks_meta/<dataset_name>/ subfolder")
        g.add_argument("--class_prompts", default=None,
                       help=f"class prompts file, one 'name (also known as ...)' per line (default: the "
                            f"pinned {DEFAULT_PROMPTS_ASSET} of TrackVerse, fetched on first use)")
        g.add_argument("--detector", default=DEFAULT_DETECTOR,
                       help="owlv2, detic, ground_truth or 'package.module:callable'")
        g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
        g.add_argument("--model", default=None,
                       help="OWLv2 hub id or local folder (default google/owlv2-base-patch16-ensemble); "
                            "DETIC weights path or URL")
        g.add_argument("--batch_size", type=int, default=8,
                       help="frames per detector call (OWLv2 halves it on CUDA out-of-memory)")
        g.add_argument("--nms_threshold", type=float, default=None,
                       help="detector NMS IoU threshold (default: the backend's, OWLv2 0.5, DETIC 0.7)")
        g.add_argument("--fps", type=float, default=16.0, help="frames sampled per second of video")
        g.add_argument("--max_side", type=int, default=480, help="longer side of sampled frames (0: source size)")
        g.add_argument("--min_track_len", type=float, default=3.0, help="minimum track duration, seconds")
        g.add_argument("--min_track_area", type=float, default=0.1,
                       help="minimum mean box area, as a fraction of the frame")
        t = parser.add_argument_group("tracker (ByteTrack)")
        t.add_argument("--track_thresh", type=float, default=0.55, help="high-score detection threshold")
        t.add_argument("--low_thresh", type=float, default=0.1, help="low-score detections below are ignored")
        t.add_argument("--match_thresh", type=float, default=0.45, help="maximum fused cost of a match")
        t.add_argument("--track_buffer", type=int, default=24, help="lost-track patience (30-fps frames)")
        t.add_argument("--motion_weight", type=float, default=0.4,
                       help="weight of motion (1 - IoU) against appearance in the matching cost")

    def validate_args(self, args: argparse.Namespace) -> None:
        try:
            validate_name(args.dataset_name)
        except InvalidItemError as exc:
            raise UsageError(f"--dataset_name: {exc}") from None
        _check_range("fps", args.fps, 1e-3)
        if args.max_side < 0:
            raise UsageError(f"--max_side must be >= 0, got {args.max_side}")
        if args.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
        if args.nms_threshold is not None:
            _check_range("nms_threshold", args.nms_threshold, 0.0, 1.0)
        _check_range("min_track_len", args.min_track_len, 0.0)
        _check_range("min_track_area", args.min_track_area, 0.0, 1.0)
        for name in ("track_thresh", "low_thresh", "match_thresh", "motion_weight"):
            _check_range(name, getattr(args, name), 0.0, 1.0)
        if args.track_buffer < 0:
            raise UsageError(f"--track_buffer must be >= 0, got {args.track_buffer}")
        try:
            detector_factory(args.detector)
        except (ValueError, DetectorError) as exc:
            raise UsageError(f"--detector: {exc}") from None
        try:
            args.class_prompts = resolve_asset(args.class_prompts, DEFAULT_PROMPTS_ASSET)
            read_prompts(args.class_prompts)
        except (AssetError, OSError, ValueError) as exc:
            raise UsageError(f"--class_prompts: {exc}") from None

    def job_key(self, args: argparse.Namespace) -> str:
        return f"{self.name}-{args.dataset_name}"

    def list_items(self, args: argparse.Namespace) -> list[str]:
        return read_item_list(args.yid_index_fn)

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        return DatasetLayout(args.base_dir).tracks_meta(args.dataset_name, item).exists()

    def setup(self, args: argparse.Namespace) -> _Resources:
        vocab = read_prompts(args.class_prompts)
        detector = build_detector(args, vocab)
        log.info("parse_tracks: detector %s (%s), %d classes, vocabulary %s",
                 args.detector, getattr(detector, "weights_id", None), len(vocab), vocab.hash[:12])
        return _Resources(detector, vocab, ParseConfig.from_args(args))

    def process(self, args: argparse.Namespace, item: str, resources: _Resources) -> dict[str, float]:
        layout = DatasetLayout(args.base_dir)
        segm_path = layout.video_segments(item)
        out_path = layout.tracks_meta(args.dataset_name, item)
        try:
            segments = read_segments(segm_path)
        except FileNotFoundError:
            raise NotReady(f"no segment file {segm_path} yet (download_videos.py has not finished this video)") from None
        except ValueError as exc:
            raise ItemError(f"{segm_path}: {exc}", category="bad_segments") from None
        if not segments:
            atomic_write_bytes(out_path, records_to_jsonl_gz_bytes([]))
            return {"video_s": 0.0, "frames": 0.0, "tracks": 0.0}
        video_path = layout.video_mp4(item)
        if not video_path.exists():
            raise ItemError(f"{video_path}: the video is missing (its segment file exists)", category="missing_video")
        total = sum(end - start for start, end in segments)
        with tqdm(total=round(total, 2), unit="s", desc=f"{item} video", leave=False, dynamic_ncols=True,
                  disable=not sys.stderr.isatty(), file=sys.stderr,
                  bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}, {rate_fmt}]") as bar:
            try:
                result = parse_video(
                    video_path, item, segments, resources.detector, resources.vocab.labels, resources.config,
                    vocab_hash=resources.vocab.hash, progress=bar,
                )
            except VideoError as exc:
                raise ItemError(f"corrupt video: {exc}", category="corrupt_video") from None
            except DetectorError as exc:
                raise SystemicError(f"detector failed on {item}: {exc}") from exc
        atomic_write_bytes(out_path, records_to_jsonl_gz_bytes(result.records))
        return {"video_s": result.video_seconds, "frames": float(result.frames), "tracks": float(len(result.records))}


STAGE = ParseTracksStage()
