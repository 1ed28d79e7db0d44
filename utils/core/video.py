"""Video I/O with PyAV: probe, sample frames at a target rate, encode H.264 clips atomically.

Every reader checks a stream that ends against what its container announces (frame count,
duration): a file cut after an intact index (a faststart mp4 whose download stopped in the
middle) decodes without an error but short, and raises :class:`TruncatedVideoError`.

Sampling decodes every frame (seeking lands on the keyframe before ``start``, so exact
timestamps need decoding forward) but converts to RGB only the frames it returns, and lets
swscale do the resize in the same conversion: that is where the time goes.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from utils.core.io import commit_temp, remove_temps_of, temp_path_for
from utils.core.resources import available_cpus


class VideoError(Exception):
    """A file that is not a readable video; the message names the file and the reason.
    ``category`` is what a stage's item failure is grouped under (journal, status)."""

    category = "corrupt_video"


class TruncatedVideoError(VideoError):
    """The video stream ends (without a decoding error) well before what its container
    announces: data cut after an intact index, e.g. a faststart mp4 whose download or copy
    stopped in the middle. Raised by the readers when they reach the stream's end."""

    category = "truncated"


#: a stream may end this much earlier than its container says before it counts as truncated
#: (besides two frame periods; a last frame shown longer, rounded durations, a frame the decoder drops)
TRUNCATION_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    duration: float  # seconds
    num_frames: int  # from the container when known, else estimated
    codec: str


@dataclass
class Frame:
    time: float  # presentation time of the decoded frame, seconds from the stream start
    image: np.ndarray  # HxWx3 uint8 RGB
    index: int  # index of the sample (0, 1, 2, ...) within this read


#: H.273 / FFmpeg code for "unspecified" (matrix, primaries, transfer alike)
UNSPECIFIED_COLOR = 2
#: FFmpeg's colour ranges: full ("JPEG", 0-255) and limited ("MPEG", 16-235), the one H.264 clips use
FULL_RANGE, LIMITED_RANGE = 2, 1


@dataclass(frozen=True)
class ColorTags:
    """How a video's YUV samples map to colours (H.273 codes as FFmpeg numbers them: matrix,
    primaries, transfer). Clips cut in YUV keep their source's samples, so they carry its tags
    (a BT.709 source read as BT.601 would shift its hues)."""

    matrix: int = UNSPECIFIED_COLOR
    primaries: int = UNSPECIFIED_COLOR
    transfer: int = UNSPECIFIED_COLOR

    @classmethod
    def of(cls, frame: av.VideoFrame) -> ColorTags:
        return cls(int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc))


@dataclass(frozen=True)
class Yuv420Image:
    """A picture as H.264 decoders give it and encoders take it: planar 4:2:0, full-size luma
    ``y`` (H x W) and half-size chroma ``u``, ``v`` (ceil(H/2) x ceil(W/2)), uint8. Cropping and
    resizing in this form skips the two colour conversions an RGB detour costs per frame."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @property
    def width(self) -> int:
        return self.y.shape[1]

    @property
    def height(self) -> int:
        return self.y.shape[0]

    @classmethod
    def from_frame(cls, frame: av.VideoFrame, size: tuple[int, int] | None = None) -> Yuv420Image:
        """The planes of a decoded frame, as views when it is limited-range yuv420p already (other
        formats, full-range or 10-bit ones included, are converted to limited-range 8-bit yuv420p;
        the matrix is kept, see :class:`ColorTags`); scaled to ``size`` (w, h) when it differs,
        in the same conversion."""
        changes: dict[str, Any] = {}
        if size is not None and (frame.width, frame.height) != tuple(size):
            changes.update(width=int(size[0]), height=int(size[1]))
        if frame.color_range == FULL_RANGE:
            changes.update(src_color_range="JPEG", dst_color_range="MPEG")
        if changes or frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p", **changes)
        return cls(*(_plane_array(plane) for plane in frame.planes))

    def to_frame(self) -> av.VideoFrame:
        """A yuv420p ``av.VideoFrame`` (width and height must be even)."""
        if self.width % 2 or self.height % 2:
            raise ValueError(f"yuv420p frames need even sizes, got {self.width}x{self.height}")
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        for plane, pixels in zip(frame.planes, (self.y, self.u, self.v), strict=True):
            _plane_array(plane)[...] = pixels
        return frame

    def to_rgb(self) -> np.ndarray:
        """HxWx3 uint8 RGB (even sizes)."""
        return self.to_frame().to_ndarray(format="rgb24")


def _plane_array(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """A uint8 plane as a (height, width) view of the frame's memory (rows are ``line_size`` apart)."""
    return np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[: plane.height, : plane.width]


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path}: is a folder, not a video")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise VideoError(f"{path}: cannot be opened as a video ({exc})") from exc


def _video_stream(container: av.container.InputContainer, path: str | os.PathLike) -> av.video.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{path}: has no video stream")
    return container.streams.video[0]


def _decode_threaded(stream: av.video.VideoStream, threads: int | None = None) -> None:
    """Frame and slice threads for decoding: ``threads``, by default one more than the CPUs this
    process may use, as FFmpeg's own default does, but counting a Slurm task's CPUs rather than the node's."""
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads if threads is not None else min(available_cpus() + 1, 16)


def _stream_fps(stream: av.video.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(path: str | os.PathLike, decode_check: bool = True) -> VideoInfo:
    """Facts of a video; with ``decode_check``, also decode its first frame (a truncated
    or corrupt file fails here with a VideoError that names it)."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        width, height = stream.codec_context.width, stream.codec_context.height
        if decode_check:
            try:
                first = next(container.decode(stream), None)
            except av.error.FFmpegError as exc:
                raise VideoError(f"{path}: cannot decode ({exc})") from exc
            if first is None:
                raise VideoError(f"{path}: has no decodable frame")
            width, height = first.width, first.height
        if not width or not height:
            raise VideoError(f"{path}: video stream has no frame size")
        if duration is None:
            raise VideoError(f"{path}: duration unknown")
        num_frames = stream.frames or (round(duration * fps) if fps else 0)
        return VideoInfo(str(path), width, height, fps, duration, int(num_frames), stream.codec_context.name)


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Size with the longer side ``max_side`` (never upscaled), both sides even."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _rgb_converter(out_w: int, out_h: int):
    """Frame -> RGB array of ``out_w x out_h``; swscale resizes in the same conversion."""

    def convert(frame: av.VideoFrame) -> np.ndarray:
        if (frame.width, frame.height) == (out_w, out_h):
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(format="rgb24", width=out_w, height=out_h, interpolation="AREA")

    return convert


def decode_span(path: str | os.PathLike, start: float = 0.0, end: float | None = None,
                threads: int | None = None) -> Iterator[tuple[av.VideoFrame, float]]:
    """Every frame over ``[start, end)`` seconds as PyAV decoded it (no conversion), with its
    presentation time; a frame up to half a frame period before ``start`` counts as inside.
    A stream that ends short of what its container announces raises :class:`TruncatedVideoError`
    when the span reaches that end. ``threads``: decoder threads (default: the CPUs + 1; fewer
    when other processes keep the CPUs busy: each thread costs some CPU time)."""
    if end is not None and end <= start:
        return
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        _decode_threaded(stream, threads)
        half_frame = 0.5 / (_stream_fps(stream) or 30.0)
        for frame, t in _decode_from(container, stream, start, path):
            if t < start - half_frame:
                continue
            if end is not None and t >= end - 1e-9:
                break
            yield frame, t
    finally:
        container.close()


def read_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    start: float = 0.0,
    end: float | None = None,
    max_side: int | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[Frame]:
    """Yield RGB frames over ``[start, end)`` seconds.

    With ``fps``, targets are ``start + k / fps`` and each yields the decoded frame whose
    timestamp is nearest; a source frame is yielded at most once, so a rate above the
    source's gives the source's frames. Without ``fps``, every frame in the span.
    ``max_side`` resizes so the longer side is that many pixels; ``size`` = (w, h) forces one.

    Reaching the stream's end short of what the container announces (beyond a tolerance,
    :data:`TRUNCATION_TOLERANCE_S`) raises :class:`TruncatedVideoError`; a read that stops at
    ``end`` before the missing part does not notice it.
    """
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if end is not None and end <= start:
        return
    if fps is None:
        convert = None
        for index, (frame, t) in enumerate(decode_span(path, start, end)):
            if convert is None:
                convert = _rgb_converter(*(size if size is not None else scaled_size(frame.width, frame.height, max_side)))
            yield Frame(t, convert(frame), index)
        return
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        _decode_threaded(stream)
        src_fps = _stream_fps(stream) or 30.0
        half_frame = 0.5 / src_fps
        width, height = stream.codec_context.width, stream.codec_context.height
        convert = _rgb_converter(*(size if size is not None else scaled_size(width, height, max_side)))

        frames = _decode_from(container, stream, start, path)
        index = 0
        step = 1.0 / fps
        k = 0  # index of the next target, start + k * step (no float drift over hours)
        prev: tuple[av.VideoFrame, float] | None = None
        last_emitted = -math.inf

        def target(k: int) -> float:
            return start + k * step

        for frame, t in frames:
            while target(k) <= t and (end is None or target(k) < end):
                tk = target(k)
                chosen = prev if prev is not None and (tk - prev[1]) < (t - tk) else (frame, t)
                if chosen[1] > last_emitted and (end is None or chosen[1] < end):
                    yield Frame(chosen[1], convert(chosen[0]), index)
                    index += 1
                    last_emitted = chosen[1]
                k += 1
            if end is not None and target(k) >= end:
                return
            prev = (frame, t)
        # the stream ended: its last frame serves targets within its display time
        if prev is not None and prev[1] > last_emitted:
            tk = target(k)
            if (end is None or tk < end) and tk - prev[1] <= 2 * half_frame:
                yield Frame(prev[1], convert(prev[0]), index)
    finally:
        container.close()


def read_frames_at(
    path: str | os.PathLike,
    times: list[float] | np.ndarray,
    size: tuple[int, int] | None = None,
    max_side: int | None = None,
    seek_gap: float = 1.0,
) -> list[Frame]:
    """The frames nearest to each of ``times`` (sorted ascending), one per time.

    Between targets further apart than ``seek_gap`` seconds it seeks (to the keyframe before)
    instead of decoding through: cheap on clips with short keyframe intervals. Targets past
    the last frame get the last frame, unless the stream ends short of what its container
    announces (:class:`TruncatedVideoError`, as every reader here raises at such an end).
    """
    times = [float(t) for t in times]
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError("times must be sorted")
    out: list[Frame] = []
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        _decode_threaded(stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        convert = _rgb_converter(*(size if size is not None else scaled_size(width, height, max_side)))

        k = 0
        while k < len(times):
            prev: tuple[av.VideoFrame, float] | None = None
            k_at_seek = k
            for frame, t in _decode_from(container, stream, max(times[k] - 1e-3, 0.0), path):
                while k < len(times) and times[k] <= t:
                    chosen = prev if prev is not None and times[k] - prev[1] < t - times[k] else (frame, t)
                    out.append(Frame(chosen[1], convert(chosen[0]), k))
                    k += 1
                # seek ahead only after this seek served a target: a seek always makes progress
                if k >= len(times) or (k > k_at_seek and times[k] - t > seek_gap):
                    break
                prev = (frame, t)
            else:  # the stream ended (not short of its announced end): remaining targets get its last frame
                if prev is not None:
                    last = Frame(prev[1], convert(prev[0]), k)
                elif out:  # this seek found no frame (the stream's very end): the last one served
                    last = out[-1]
                else:
                    break
                while k < len(times):
                    out.append(Frame(last.time, last.image.copy(), k))
                    k += 1
    finally:
        container.close()
    return out


def _decode_from(container, stream, start: float, path) -> Iterator[tuple[av.VideoFrame, float]]:
    """Decoded frames from the keyframe at or before ``start``, with their times."""
    if start > 0 and stream.time_base is not None:
        offset = int(start / stream.time_base)
        if stream.start_time is not None:
            offset += stream.start_time
        try:
            container.seek(offset, stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            container.seek(0)
    step = 1.0 / (_stream_fps(stream) or 30.0)
    seen = _Decoded(from_start=start <= 0)
    try:
        for frame, t in _presentation_times(container.decode(stream), step):
            if seen.count == 0 and start > 0 and t > start + step:
                # the index sent us past the start (rare, broken indexes): decode from 0
                container.seek(0)
                seen = _Decoded(from_start=True)
                for frame0, t0 in _presentation_times(container.decode(stream), step):
                    seen.add(t0)
                    yield frame0, t0
                break
            seen.add(t)
            yield frame, t
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: decoding failed ({exc})") from exc
    # the stream ended (a reader that stops at its span's end never gets here)
    _check_complete(container, stream, path, seen, max(start, 0.0), step)


@dataclass
class _Decoded:
    """What one pass of :func:`_decode_from` decoded: how many frames, the first and last time."""

    from_start: bool
    count: int = 0
    first: float | None = None
    last: float | None = None

    def add(self, t: float) -> None:
        self.count += 1
        self.first = t if self.first is None else self.first
        self.last = t


def announced_end(container: av.container.InputContainer, stream: av.video.VideoStream) -> float | None:
    """Where the container says the video stream ends (seconds, on the frames' clock): the
    stream's own duration, else the container's when the video is its only stream (a
    container's duration covers its audio too); None when neither is known."""
    if stream.duration and stream.time_base is not None:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return (container.duration + (container.start_time or 0)) / av.time_base
    return None


def _check_complete(container, stream, path, seen: _Decoded, start: float, step: float) -> None:
    """Raise :class:`TruncatedVideoError` when the stream ended short of what the container
    announces. A pass from the first frame compares frame counts (when the container lists
    them: exact, and blind to a last frame shown long); other passes compare where the last
    frame ends with the announced duration. Tolerance: :data:`TRUNCATION_TOLERANCE_S` worth of
    frames (at least two) for counts, that plus two frame periods for times; a pass that decodes
    no frame at all before the announced end is truncated."""
    end = announced_end(container, stream)
    stream_start = float((stream.start_time or 0) * stream.time_base) if stream.time_base is not None else 0.0
    reached = seen.last + step if seen.last is not None else start
    where = f"the stream ends at {reached:.2f} s" if seen.last is not None else f"no frame decodes from {start:.2f} s"
    announced = f" of {end:.2f} s announced by the container" if end is not None else ""
    expected = stream.frames or 0
    if seen.from_start and expected and seen.first is not None and seen.first <= stream_start + 2 * step:
        if expected - seen.count > max(2, math.ceil(TRUNCATION_TOLERANCE_S / step)):
            raise TruncatedVideoError(
                f"{path}: truncated video: {seen.count} of its {expected} frames decode ({where}{announced}); "
                "the file is cut short (an interrupted download or copy?)")
        return
    if end is None:
        return
    # a seek lands on the keyframe at or before its target (the last one, past the end), so a
    # complete stream always decodes something there: nothing at all means its data is missing
    tolerance = TRUNCATION_TOLERANCE_S + 2 * step if seen.last is not None else 0.5 * step
    if end - reached > tolerance:
        raise TruncatedVideoError(
            f"{path}: truncated video: {where}{announced}; the file is cut short (an interrupted download or copy?)")


_REORDER_DEPTH = 16


def _presentation_times(frames: Iterator[av.VideoFrame], step: float) -> Iterator[tuple[av.VideoFrame, float]]:
    """Pair each decoded frame with its presentation time.

    Decoders emit frames in display order, but some muxers store decode times as
    presentation times when B-frames are present (e.g. OpenCV's ``box.mp4``), so the
    ``pts`` of emitted frames go back and forth. The set of time stamps is still right:
    give the k-th emitted frame the k-th smallest stamp, with a small window.
    """
    pending: list[av.VideoFrame] = []
    stamps: list[float] = []
    counter = 0
    for frame in frames:
        stamp = float(frame.time) if frame.time is not None else counter * step
        counter += 1
        pending.append(frame)
        heapq.heappush(stamps, stamp)
        if len(pending) > _REORDER_DEPTH:
            yield pending.pop(0), heapq.heappop(stamps)
    while pending:
        yield pending.pop(0), heapq.heappop(stamps)


# ------------------------------------------------------------------------------ writing


class VideoWriter:
    """H.264 (libx264, yuv420p) mp4 written to a temporary name and renamed into place by
    ``close()``; ``abort()`` (or leaving a ``with`` block by an exception) leaves nothing.

    ``keyframe_interval`` seconds between keyframes (fixed GOP, no scene-cut keyframes), for
    fast random access in data loaders. ``color``: the colour tags to write (for YUV pictures
    cut from a tagged source; RGB frames are converted with the tagged matrix).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float,
        keyframe_interval: float = 0.5,
        crf: int = 23,
        preset: str = "veryfast",
        threads: int | None = None,
        color: ColorTags | None = None,
    ):
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"H.264 yuv420p needs even positive sizes, got {width}x{height}")
        self.path = Path(path)
        self.width, self.height = width, height
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_temps_of(self.path)
        self._tmp = temp_path_for(self.path)
        self._closed = False
        try:
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            rate = Fraction(fps).limit_denominator(1001)
            gop = max(1, round(fps * keyframe_interval))
            stream = self._container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.gop_size = gop
            if threads is not None:  # 1 for many small clips at once: x264's threads only add overhead there
                stream.codec_context.thread_count = threads
            self._matrix = color.matrix if color is not None else UNSPECIFIED_COLOR
            if color is not None:  # YUV pictures written as they are keep their source's meaning
                ctx = stream.codec_context
                ctx.colorspace, ctx.color_primaries, ctx.color_trc = color.matrix, color.primaries, color.transfer
                ctx.color_range = LIMITED_RANGE
            stream.options = {
                "crf": str(crf), "preset": preset,
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
            }
            self._stream = stream
        except BaseException:
            self.abort()
            raise

    def write(self, image: np.ndarray) -> None:
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame is {image.shape[1]}x{image.shape[0]}, writer is {self.width}x{self.height}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        if self._matrix != UNSPECIFIED_COLOR:  # RGB to YUV with the matrix the stream is tagged with
            frame = frame.reformat(format="yuv420p", dst_colorspace=self._matrix)
        self._encode(frame)

    def write_yuv(self, image: Yuv420Image) -> None:
        """Write a planar 4:2:0 picture as it is (no colour conversion)."""
        if (image.height, image.width) != (self.height, self.width):
            raise ValueError(f"frame is {image.width}x{image.height}, writer is {self.width}x{self.height}")
        self._encode(image.to_frame())

    def _encode(self, frame: av.VideoFrame) -> None:
        frame.pts = self.frames_written
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def finish(self) -> Path:
        """Flush and close the encoder without renaming: returns the complete temporary file,
        for callers that must record something before it replaces ``path`` (they rename it
        with ``utils.core.io.commit_temp`` or drop it with ``abort``). No frames is an error."""
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"{self.path}: no frames written")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self._tmp

    def close(self) -> None:
        """Flush, close and rename into place."""
        commit_temp(self.finish(), self.path)

    def abort(self) -> None:
        """Drop the partial clip; the final path is never touched."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._container.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def keyframe_times(path: str | os.PathLike) -> list[float]:
    """Timestamps of keyframes (from packets, no decoding)."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        base = stream.time_base or 1
        times = [float(p.pts * base) for p in container.demux(stream) if p.pts is not None and p.is_keyframe]
    return sorted(times)
