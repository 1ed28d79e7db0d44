"""Scene segments of a video (pipeline steps 2-3): detection, trimming, the segment file.

Three layers, kept apart so each can be tested on its own:

- :func:`detect_scenes` decodes a video with PySceneDetect's ``AdaptiveDetector`` (PyAV or
  OpenCV backend) and returns the raw scene spans in seconds;
- :func:`plan_segments` is pure logic: a video without cuts is one segment, segments longer
  than ``max_len`` are trimmed to ``max_len`` and those shorter than ``min_len`` are dropped
  (with the reason kept, so callers can report and re-threshold);
- :func:`write_segments` / :func:`read_segments` own the segment file: one ``start,end``
  (seconds) per kept segment, written atomically. The file's existence means "segmented",
  even when it is empty because no segment was kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2

from utils.core.io import atomic_write_json
from utils.records.segments import round_time, write_segments

log = logging.getLogger(__name__)


# PyAV with frame+slice threads decodes the stage's 720p H.264 fastest (benchmarks/bench_segments.py)
DEFAULT_BACKEND = "pyav"
BACKENDS = ("opencv", "pyav")
DEFAULT_MAX_SEGMENT_LEN = 600.0
DEFAULT_MIN_SEGMENT_LEN = 3.0
# A decode that stops this far short of the container's frame count is a corrupt video.
MIN_DECODED_FRACTION = 0.75


# What the decoders raise on a damaged file: PyAV's FFmpeg errors, OpenCV's, and I/O.
DECODER_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, cv2.error, OSError, EOFError)


class SegmentationError(Exception):
    """The video could not be decoded well enough to find its scenes."""


@dataclass(frozen=True)
class SceneDetection:
    """What scene detection saw: spans in seconds, and facts of the decode."""

    scenes: list[tuple[float, float]]  # (start, end) of every scene, cut to cut
    frames: int  # frames decoded
    fps: float
    start: float  # first decoded frame, seconds
    end: float  # end of the last decoded frame, seconds
    backend: str
    expected_frames: int | None = None  # from the container, when known


@dataclass
class SegmentCandidate:
    """One scene after trimming, with the verdict on it. ``reason`` is None when kept."""

    start: float
    end: float
    scene_start: float
    scene_end: float
    reason: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.reason is None

    @property
    def length(self) -> float:
        return self.end - self.start

    @property
    def trimmed(self) -> bool:
        return self.end < self.scene_end

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["kept"] = self.kept
        record["trimmed"] = self.trimmed
        return record


# ------------------------------------------------------------------------ pure logic


def plan_segments(
    scenes: list[tuple[float, float]],
    video_start: float,
    video_end: float,
    max_len: float = DEFAULT_MAX_SEGMENT_LEN,
    min_len: float = DEFAULT_MIN_SEGMENT_LEN,
) -> list[SegmentCandidate]:
    """Candidates from scene spans: no scene at all means one scene spanning the video;
    each scene longer than ``max_len`` keeps its first ``max_len`` seconds; a scene shorter
    than ``min_len`` is marked ``too_short``."""
    if max_len <= 0:
        raise ValueError(f"max segment length must be positive, got {max_len}")
    if min_len < 0:
        raise ValueError(f"min segment length must not be negative, got {min_len}")
    spans = [(float(s), float(e)) for s, e in scenes if e > s]
    if not spans and video_end > video_start:
        spans = [(float(video_start), float(video_end))]
    candidates = []
    for scene_start, scene_end in sorted(spans):
        end = min(scene_end, scene_start + max_len)
        candidate = SegmentCandidate(round_time(scene_start), round_time(end), round_time(scene_start), round_time(scene_end))
        if candidate.length < min_len - 1e-9:
            candidate.reason = "too_short"
        candidates.append(candidate)
    return candidates












# ------------------------------------------------------------------------- decoding


def detect_scenes(
    path: str | os.PathLike,
    backend: str = DEFAULT_BACKEND,
    adaptive_threshold: float = 3.0,
    threading_mode: str | None = "AUTO",
) -> SceneDetection:
    """Scene spans of a video with PySceneDetect's ``AdaptiveDetector``.

    ``threading_mode`` is the PyAV backend's decoder threading (``AUTO``: frame and slice
    threads; ``FRAME``, ``SLICE``; None keeps PyAV's default). Raises :class:`SegmentationError` when the video cannot be opened, yields no frame, or
    decoding stops well short of the frame count its container announces (a corrupt file).
    """
    from scenedetect import AdaptiveDetector, SceneManager, open_video
    from scenedetect.video_stream import VideoOpenFailure

    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # one "Detecting scenes..." per video
    # FFmpeg inside OpenCV reports recoverable stream glitches of real videos on stderr, once
    # per frame; only fatal ones (AV_LOG_FATAL) stay. Corruption is caught by the frame count
    # below. Set OPENCV_FFMPEG_LOGLEVEL yourself to see them.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

    if backend not in BACKENDS:
        raise ValueError(f"unknown scene detection backend {backend!r} (choose from {', '.join(BACKENDS)})")
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise SegmentationError(f"{path}: missing or empty")
    kwargs: dict[str, Any] = {}
    if backend == "pyav":
        # suppress_output leaves PyAV's logging as it is: off by default since PyAV 13, so no
        # Python log callback runs on decoder threads (the lock-up PySceneDetect warns about
        # needs one); without it, FFmpeg would print every stream glitch on stderr.
        kwargs = {"suppress_output": True}
        if threading_mode:
            kwargs["threading_mode"] = threading_mode
    try:
        video = open_video(str(path), backend=backend, **kwargs)
    except (VideoOpenFailure, *DECODER_ERRORS) as exc:
        raise SegmentationError(f"{path}: cannot be opened for scene detection ({exc})") from exc
    manager = SceneManager()
    manager.add_detector(AdaptiveDetector(adaptive_threshold=adaptive_threshold))
    try:
        frames = manager.detect_scenes(video=video, show_progress=False)
    except DECODER_ERRORS as exc:  # the video's fault; anything else (a library bug, no memory) is not
        raise SegmentationError(f"{path}: decoding failed during scene detection ({exc})") from exc
    if frames <= 0:
        raise SegmentationError(f"{path}: no frame could be decoded")
    fps = float(video.frame_rate)
    expected = None
    duration = video.duration
    if duration is not None and duration.frame_num > 0:
        expected = int(duration.frame_num)
        if frames < MIN_DECODED_FRACTION * expected:
            raise SegmentationError(
                f"{path}: decoding stopped after {frames} of {expected} frames (truncated or corrupt video)"
            )
    scene_list = manager.get_scene_list(start_in_scene=True)
    scenes = [(float(s.seconds), float(e.seconds)) for s, e in scene_list]
    start = scenes[0][0] if scenes else 0.0
    end = scenes[-1][1] if scenes else frames / fps
    return SceneDetection(scenes, int(frames), fps, start, end, backend, expected)


# ---------------------------------------------------------------------- one video


@dataclass
class SegmentationResult:
    segments: list[tuple[float, float]]  # kept, as written to the segment file
    candidates: list[SegmentCandidate]
    detection: SceneDetection
    record: dict[str, Any]  # what the scores sidecar holds


def segment_video(
    video_path: str | os.PathLike,
    segments_path: str | os.PathLike,
    sidecar_path: str | os.PathLike | None = None,
    *,
    backend: str = DEFAULT_BACKEND,
    adaptive_threshold: float = 3.0,
    max_len: float = DEFAULT_MAX_SEGMENT_LEN,
    min_len: float = DEFAULT_MIN_SEGMENT_LEN,
    filter_settings: Any = None,
    apply_filters: Callable[[list[SegmentCandidate]], None] | None = None,
    filter_info: dict[str, Any] | None = None,
) -> SegmentationResult:
    """Detect, trim, drop, optionally filter (``apply_filters``, e.g. utils.ingest.filters), then write the scores
    sidecar (every candidate, its scores and verdict: JSON) and last the segment file, both
    atomically: the segment file existing means the video is segmented."""
    detection = detect_scenes(video_path, backend=backend, adaptive_threshold=adaptive_threshold)
    candidates = plan_segments(detection.scenes, detection.start, detection.end, max_len, min_len)
    if apply_filters is not None:
        apply_filters(candidates)
    kept = [(c.start, c.end) for c in candidates if c.kept]
    record = {
        "version": 1,
        "video": Path(video_path).name,
        "scene_detection": {
            "detector": "AdaptiveDetector", "adaptive_threshold": adaptive_threshold,
            "backend": detection.backend, "frames": detection.frames, "fps": round(detection.fps, 6),
            "start": round_time(detection.start), "end": round_time(detection.end),
        },
        "max_segment_len": max_len,
        "min_segment_len": min_len,
        "filters": {
            "cartoon": bool(filter_settings is not None and filter_settings.cartoon),
            "aesthetics": bool(filter_settings is not None and filter_settings.aesthetics),
            **({} if filter_settings is None else {
                "min_aesthetic_score": filter_settings.min_aesthetic_score,
                "fps": filter_settings.fps, "seconds": filter_settings.seconds,
            }),
            **(filter_info or {}),
        },
        "scenes": [[round_time(s), round_time(e)] for s, e in detection.scenes],
        "segments": [c.as_record() for c in candidates],
        "kept": len(kept),
    }
    if sidecar_path is not None:
        atomic_write_json(sidecar_path, record)
    write_segments(segments_path, kept)
    return SegmentationResult(kept, candidates, detection, record)
