"""Pipelined parsing (``--decode_workers N``): keep the detector busy.

The plain path (:func:`utils.detect.parse.parse_video`) decodes one segment in a thread while
the detector works on it, so a GPU waits at every segment start and every short last batch.
Here:

- **decode workers** (``N`` processes, spawned) each decode and resize one segment at a time
  (:func:`utils.core.video.read_frames`) and send its frames in chunks over their own pipe: several
  segments, of several videos, are decoded at once. A blocked pipe holds a worker back, so
  memory stays bounded when the detector is slower;
- a **feeder** thread hands segments to idle workers, gathers their frames into batches of
  ``batch_size`` that fill across segment and video boundaries, and prepares the next batch
  (OWLv2 :meth:`~utils.detect.detectors.owlv2.OwlV2Detector.prepare`: page-locked copy and resize
  on the GPU) while the detector runs the current one;
- the **detector** thread runs batches back to back;
- a **tracker** thread feeds each frame's detections, in frame order, to the tracker of its
  segment (one tracker per segment: none crosses a cut) and, once a video's segments are all
  tracked, builds its records with :func:`~utils.detect.parse.records_from_histories`, the one
  record builder of every parse path. Records are written by the caller, off this path.

For the same detector the records are those of the plain path whenever the detector's output
for a frame does not depend on the other frames of its batch (the fixture detectors; models on
some devices are not bit-for-bit batch-invariant: float32 matmuls round differently by batch
size, by about 1e-6).

A worker that fails on a video (corrupt, truncated, or dying outright) fails that video only;
a failure of the detector stops the pipeline and every waiting video with it. Workers exit
when this process goes away (their pipes close, and they watch their parent).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.core.errors import ItemError, SystemicError
from utils.core.video import VideoError, probe_video, read_frames
from utils.detect.detectors import Detections, Detector, DetectorError
from utils.detect.parse import (
    ParseConfig,
    VideoContext,
    VideoTracks,
    check_detections,
    covered_seconds,
    records_from_histories,
    update_tracker,
    video_context,
)
from utils.detect.tracking import ByteTracker, TrackHistory

log = logging.getLogger(__name__)

#: frames per message from a worker (about 3 MB at 480x270)
CHUNK_FRAMES = 8
_POLL_S = 0.05


# ---------------------------------------------------------------------------- decode worker


def _watch_parent(parent_pid: int) -> None:
    """Exit as soon as the parent is gone (re-parented), even in the middle of a segment."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def _decode_worker(tasks: multiprocessing.connection.Connection, results: multiprocessing.connection.Connection,
                   fps: float, max_side: int | None, parent_pid: int) -> None:
    """Decode the segments sent on ``tasks`` (``(uid, path, start, end)``; ``None`` ends) and send
    ``("frames", uid, times, images)`` chunks then ``("end", uid, count)``, or ``("error", uid,
    category, message)`` for a file that cannot be read."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="watch-parent").start()
    try:
        results.send(("ready",))
        while True:
            task = tasks.recv()
            if task is None:
                return
            uid, path, start, end = task
            count = 0
            times: list[float] = []
            images: list[np.ndarray] = []
            try:
                for frame in read_frames(path, fps=fps, start=start, end=end, max_side=max_side):
                    times.append(frame.time)
                    images.append(frame.image)
                    if len(images) >= CHUNK_FRAMES:
                        results.send(("frames", uid, times, np.stack(images)))
                        count += len(images)
                        times, images = [], []
                if images:
                    results.send(("frames", uid, times, np.stack(images)))
                    count += len(images)
            except VideoError as exc:
                results.send(("error", uid, exc.category, str(exc)))
                continue
            results.send(("end", uid, count))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the parent went away or stops us
        return


class _Worker:
    def __init__(self, ctx: Any, config: ParseConfig, number: int) -> None:
        task_read, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_write = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_decode_worker, args=(task_read, result_write, config.fps, config.max_side, os.getpid()),
            name=f"parse-decode-{number}", daemon=True,
        )
        self.process.start()
        # our copies of the child's ends: closing them lets a dead child show as EOF
        task_read.close()
        result_write.close()
        self.unit: _Unit | None = None

    def ready(self, timeout: float) -> bool:
        """Wait for the worker's first message (it has started and imported what it needs)."""
        try:
            return self.results.poll(timeout) and self.results.recv() == ("ready",)
        except (EOFError, OSError):
            return False

    def close(self, timeout: float = 2.0) -> None:
        try:
            self.tasks.send(None)
        except OSError:  # already gone
            pass
        self.results.close()  # a worker blocked sending frames gets a broken pipe and ends
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.tasks.close()


# ---------------------------------------------------------------------------- bookkeeping


@dataclass(eq=False)
class _Unit:
    """One segment of one video: decoded by one worker, tracked by its own tracker."""

    uid: int
    video: _Video
    index: int  # the segment's position in the video
    segment: tuple[float, float]
    tracker: ByteTracker | None = None
    expected: int | None = None  # frames, once the worker has sent them all
    tracked: int = 0
    reached: float | None = None  # time of the last frame tracked
    histories: list[TrackHistory] | None = None

    def seconds_tracked(self) -> float:
        """Seconds of the segment's video tracked so far (for the progress bar)."""
        covered = covered_seconds(self.segment, self.video.duration)
        if self.histories is not None:
            return covered
        if self.reached is None:
            return 0.0
        return min(max(0.0, self.reached - self.segment[0]), covered)


@dataclass(eq=False)
class _Video:
    yid: str
    path: str
    segments: list[tuple[float, float]]
    context: VideoContext | None  # None: the file could not be probed
    duration: float
    units_left: int = 0
    units: list[_Unit] = field(default_factory=list)
    result: VideoTracks | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass
class _Batch:
    units: list[_Unit]
    times: list[float]
    shapes: list[tuple[int, int]]
    frames: Any  # the detector's input: arrays, or what its prepare() made of them


_STOP = object()


class ParsePipeline:
    """Parse videos through decode worker processes and a detector kept busy (module docstring).

    ``submit`` videos in the order they will be asked for (ahead of time, so batches fill
    across videos), then ``result`` each; ``close`` ends the workers and threads.
    """

    def __init__(self, detector: Detector, class_names: Sequence[str], config: ParseConfig,
                 vocab_hash: str | None = None, workers: int | None = None,
                 file_labels: Sequence[str] | None = None) -> None:
        self.detector = detector
        self.class_names = list(class_names)
        self.file_labels = file_labels
        self.config = config
        self.vocab_hash = vocab_hash
        self.workers_wanted = max(1, int(workers if workers is not None else config.decode_workers))
        self._ctx = multiprocessing.get_context("spawn")  # fork is unsafe once CUDA is initialised
        self._videos: dict[str, _Video] = {}
        self._lock = threading.Lock()
        self._pending: collections.deque[_Unit] = collections.deque()  # units no worker has taken yet
        self._uids = 0
        self._fatal: BaseException | None = None
        self._stop = threading.Event()
        self._to_detector: queue.Queue = queue.Queue(maxsize=2)  # the next batches, prepared
        self._to_tracker: queue.Queue = queue.Queue()
        self._prepare = getattr(detector, "prepare", None)
        self._workers = [_Worker(self._ctx, config, i) for i in range(self.workers_wanted)]
        self._wait_ready(self._workers)
        self.detector_seconds = 0.0  # time spent inside detect(), for benchmarks
        self.batches = 0
        self._threads = [
            threading.Thread(target=self._guard, args=(self._feed,), name="parse-feeder", daemon=True),
            threading.Thread(target=self._guard, args=(self._detect,), name="parse-detector", daemon=True),
            threading.Thread(target=self._guard, args=(self._track,), name="parse-tracker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _wait_ready(self, workers: list[_Worker], timeout: float = 120.0) -> None:
        """Workers start in parallel; one that cannot start (say, an import failing in a fresh
        interpreter) is a fault of the installation, not of a video."""
        deadline = time.monotonic() + timeout
        for worker in workers:
            if not worker.ready(max(0.0, deadline - time.monotonic())):
                code = worker.process.exitcode
                for other in workers:
                    other.close(timeout=0.5)
                raise SystemicError(f"a parse decode worker process did not start (exit code {code}); "
                                    "run with --decode_workers 0 to decode in this process")

    # ------------------------------------------------------------------ caller side
    def submit(self, yid: str, video_path: str | Path, segments: Sequence[tuple[float, float]]) -> None:
        """Queue a video (once; again only after its result was taken). A file that cannot be
        probed fails now and raises from :meth:`result`."""
        if yid in self._videos:
            return
        self._check_alive()
        try:
            info = probe_video(video_path)
        except VideoError as exc:
            video = _Video(yid, str(video_path), list(segments), None, 0.0, error=exc)
            video.done.set()
            with self._lock:
                self._videos[yid] = video
            return
        context = video_context(yid, (info.height, info.width), self.detector, self.class_names, self.vocab_hash,
                                self.file_labels)
        video = _Video(yid, str(video_path), [(float(a), float(b)) for a, b in segments], context, info.duration)
        with self._lock:
            for index, segment in enumerate(video.segments):
                unit = _Unit(self._uids, video, index, segment)
                self._uids += 1
                video.units.append(unit)
                self._pending.append(unit)
            video.units_left = len(video.units)
            self._videos[yid] = video
        if not video.units:
            self._to_tracker.put(("finish", video))

    def backlog(self) -> int:
        """Segments queued that no worker has started yet."""
        with self._lock:
            return len(self._pending)

    def wants_more(self) -> bool:
        """Whether queueing another video now would help keep the workers and batches full."""
        return self.backlog() < 2 * len(self._workers)

    def submitted(self, yid: str) -> bool:
        return yid in self._videos

    def result(self, yid: str, progress: tqdm | None = None) -> VideoTracks:
        """The submitted video's tracks (waits for them); raises its failure (``VideoError``,
        :class:`~utils.core.errors.ItemError`), or the pipeline's (a detector fault)."""
        video = self._videos[yid]
        shown = 0.0  # seconds of video the bar shows

        def show(seconds: float) -> None:
            nonlocal shown
            if progress is not None and seconds > shown:
                progress.update(round(seconds - shown, 2))
                shown = seconds

        while not video.done.wait(0.2):
            self._check_alive()
            show(sum(unit.seconds_tracked() for unit in list(video.units)))  # read while the tracker writes: floats
        with self._lock:
            del self._videos[yid]
        if video.error is not None:
            raise video.error
        assert video.result is not None
        show(video.result.video_seconds)
        return video.result

    def parse(self, yid: str, video_path: str | Path, segments: Sequence[tuple[float, float]],
              ahead: Iterable[tuple[str, str | Path, Sequence[tuple[float, float]]]] = (),
              progress: tqdm | None = None) -> VideoTracks:
        """Submit ``yid`` (if not yet) and the videos of ``ahead`` while :meth:`wants_more`
        (lazily: ``ahead`` is consumed only as far as needed), then return ``yid``'s tracks."""
        self.submit(yid, video_path, segments)
        for other in ahead:
            if not self.wants_more():
                break
            self.submit(*other)
        return self.result(yid, progress)

    def _check_alive(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._stop.is_set():
            raise SystemicError("the parse pipeline was closed")

    def close(self) -> None:
        """Stop the threads and the workers (idempotent)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> ParsePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    # ------------------------------------------------------------------ threads
    def _guard(self, body: Any) -> None:
        """Run a pipeline thread; its failure stops the pipeline and every waiting video."""
        try:
            body()
        except Exception as exc:  # handed to every waiting video, and to every later call
            name = threading.current_thread().name
            if self._fatal is None:
                # the pipeline is down for every video: a detector fault stays one (the stage
                # makes it systemic), anything else is said as the pipeline's failure
                if isinstance(exc, DetectorError | SystemicError):
                    self._fatal = exc
                else:
                    self._fatal = SystemicError(f"the parse pipeline's {name} thread failed: {type(exc).__name__}: {exc}")
                    self._fatal.__cause__ = exc
            self._stop.set()
            log.error("parse pipeline: %s failed: %s: %s", name, type(exc).__name__, exc)
            with self._lock:
                videos = list(self._videos.values())
            for video in videos:
                if not video.done.is_set():
                    video.error = self._fatal
                    video.done.set()

    def _put(self, q: queue.Queue, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(value, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while not self._stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _STOP

    def _fail(self, unit: _Unit, error: BaseException) -> None:
        self._to_tracker.put(("fail", unit.video, error))

    def _feed(self) -> None:
        units: list[_Unit] = []
        times: list[float] = []
        images: list[np.ndarray] = []
        size = self.config.batch_size
        while not self._stop.is_set():
            self._dispatch()
            busy = [w for w in self._workers if w.unit is not None]
            ready = multiprocessing.connection.wait([w.results for w in busy], timeout=_POLL_S) if busy else []
            if not busy and not images:
                self._stop.wait(_POLL_S / 5)
            for worker in busy:
                if worker.results not in ready:
                    continue
                unit = worker.unit
                assert unit is not None
                try:
                    message = worker.results.recv()
                except (EOFError, OSError):
                    self._replace(worker, unit)
                    continue
                kind = message[0]
                if kind == "frames":
                    if not unit.video.failed:
                        for t, image in zip(message[2], message[3], strict=True):
                            units.append(unit)
                            times.append(float(t))
                            images.append(image)
                elif kind == "end":
                    worker.unit = None
                    self._to_tracker.put(("end", unit, int(message[2])))
                elif kind == "error":
                    worker.unit = None
                    error = VideoError(message[3])
                    error.category = message[2]
                    self._fail(unit, error)
            # full batches go now; a short one only when no worker has more frames coming
            while len(images) >= size or (images and not self._in_flight()):
                n = min(size, len(images))
                if not self._emit(units[:n], times[:n], images[:n]):
                    return
                del units[:n], times[:n], images[:n]
        self._put(self._to_detector, _STOP)

    def _in_flight(self) -> bool:
        with self._lock:
            return bool(self._pending) or any(w.unit is not None for w in self._workers)

    def _dispatch(self) -> None:
        for worker in list(self._workers):
            if worker.unit is not None:
                continue
            if not worker.process.is_alive():  # died idle: nothing lost, start another
                self._replace(worker, None)
                continue
            with self._lock:
                unit = None
                while self._pending:
                    candidate = self._pending.popleft()
                    if not candidate.video.failed:
                        unit = candidate
                        break
                    self._to_tracker.put(("skip", candidate))
                if unit is None:
                    return
                worker.unit = unit
            start, end = unit.segment
            try:
                worker.tasks.send((unit.uid, unit.video.path, start, end))
            except (BrokenPipeError, OSError):
                self._replace(worker, unit)

    def _replace(self, worker: _Worker, unit: _Unit | None) -> None:
        """A worker died (or its pipe broke), on ``unit`` if any: fail that video, start another worker."""
        worker.process.join(1.0)
        code = worker.process.exitcode
        if unit is not None:
            start, end = unit.segment
            self._fail(unit, ItemError(
                f"{unit.video.path}: the decode worker died (exit code {code}) on the segment {start:.2f}-{end:.2f} s",
                category="decode_crash"))
        worker.unit = None
        worker.close(timeout=0.5)
        index = self._workers.index(worker)
        replacement = _Worker(self._ctx, self.config, index)
        if not replacement.ready(60.0):
            raise SystemicError(f"a parse decode worker died and its replacement did not start "
                                f"(exit code {replacement.process.exitcode})")
        self._workers[index] = replacement

    def _emit(self, units: list[_Unit], times: list[float], images: list[np.ndarray]) -> bool:
        shapes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        frames: Any = self._prepare(images) if self._prepare is not None else images
        return self._put(self._to_detector, _Batch(units, times, shapes, frames))

    def _detect(self) -> None:
        while True:
            batch = self._get(self._to_detector)
            if batch is _STOP:
                return
            started = time.perf_counter()
            detections = self.detector.detect(batch.frames, batch.times)
            self.detector_seconds += time.perf_counter() - started
            self.batches += 1
            check_detections(self.detector, detections, len(batch.units))
            self._to_tracker.put(("batch", batch, detections))

    def _track(self) -> None:
        while True:
            message = self._get(self._to_tracker)
            if message is _STOP:
                return
            kind = message[0]
            if kind == "batch":
                _, batch, detections = message
                self._track_batch(batch, detections)
            elif kind == "end":
                _, unit, count = message
                unit.expected = count
                self._maybe_finish(unit)
            elif kind == "fail":
                _, video, error = message
                if not video.done.is_set():
                    video.error = error
                    video.done.set()
            elif kind == "skip":
                pass  # a unit of a failed video: nothing to track
            elif kind == "finish":
                self._finish_video(message[1])

    def _track_batch(self, batch: _Batch, detections: Sequence[Detections]) -> None:
        touched: dict[int, _Unit] = {}
        for unit, t, shape, dets in zip(batch.units, batch.times, batch.shapes, detections, strict=True):
            if unit.video.failed:
                continue
            if unit.tracker is None:
                unit.tracker = self.config.make_tracker()
            assert unit.video.context is not None
            update_tracker(unit.tracker, dets, shape, t, unit.video.context.source_size)
            unit.tracked += 1
            unit.reached = t
            touched[unit.uid] = unit
        for unit in touched.values():
            self._maybe_finish(unit)

    def _maybe_finish(self, unit: _Unit) -> None:
        video = unit.video
        if video.failed or unit.expected is None or unit.tracked < unit.expected or unit.histories is not None:
            return
        tracker = unit.tracker if unit.tracker is not None else self.config.make_tracker()
        unit.histories = tracker.flush()
        unit.tracker = None
        video.units_left -= 1
        if video.units_left == 0:
            self._finish_video(video)

    def _finish_video(self, video: _Video) -> None:
        assert video.context is not None
        records: list = []
        embeddings: list = []
        frames = found = 0
        seconds = 0.0
        for unit in video.units:  # segment order, as the plain path
            assert unit.histories is not None and unit.expected is not None
            kept, kept_embeddings = records_from_histories(unit.histories, unit.segment, video.context, self.config)
            records += kept
            embeddings += kept_embeddings
            frames += unit.expected
            found += len(unit.histories)
            seconds += covered_seconds(unit.segment, video.duration)
        video.result = VideoTracks(records, video.context.source_size, seconds, frames, found, embeddings)
        video.done.set()
