"""The per-clip work of step 4a: crop a clip's box out of each decoded 4:2:0 frame, resize it
and encode it, in the decoding process or on worker processes.

Resizing (Pillow) and x264 encoding hold the GIL, so threads do not run them in parallel: with
more than one worker, :class:`ClipWorkers` runs them in worker processes, each owning whole
clips (an encoder's state lives in one process). The decoding process copies each frame once
into a ring of slots in shared memory (:class:`FrameRing`, an anonymous ``memfd``: nothing is
left behind by a killed run) and tells each worker, over a pipe, which boxes of its clips to
cut from which slot; a slot is reused once every worker told it is done with it. (Sending the
crops themselves, pickled, through the pipes cost the decoding process about 0.4 s of CPU on
benchmarks/bench_extract_tracks.py's 20 tracks, pickling alone; with the ring, 2 workers use
about 0.15 s more CPU in all than 1.) The worker runs :func:`crop_resized` on an exact copy of
the frame, so where clips are encoded does not change what the encoder receives.

A worker whose parent dies (killed) reads the end of its pipe, drops its open clips (their
temporaries included) and exits; clips it finished before are whole (renamed into place).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import multiprocessing
import multiprocessing.reduction
import os
import pickle
import select
import signal
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from utils.core.io import remove_temps_of
from utils.core.video import ColorTags, VideoWriter, Yuv420Image

#: frames in the shared ring per worker, and the most memory the ring may take (at least 4
#: frames): frames queue there, so a worker that the system pauses a moment (a busy machine)
#: does not hold up the decoder and the other workers at once
RING_SLOTS_PER_WORKER = 8
RING_BYTES = 64 << 20
#: seconds a worker gets to drop its open clips and exit before it is killed
STOP_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------- pixels


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


# ---------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class ClipSpec:
    """What an encoder needs to open a clip."""

    path: Path
    size: tuple[int, int]  # (w, h), even
    fps: float
    color: ColorTags
    encoder: dict[str, Any] = field(default_factory=dict)  # VideoWriter's keyframe_interval, crf, preset


class _Clip:
    """One clip being written: crop, resize and encode each frame (one x264 thread: many clips run at once)."""

    def __init__(self, spec: ClipSpec):
        self.size = spec.size
        self.writer = VideoWriter(spec.path, *spec.size, spec.fps, threads=1, color=spec.color, **spec.encoder)

    def add(self, image: Yuv420Image, box: Sequence[int]) -> None:
        self.writer.write_yuv(crop_resized(image, box, self.size))


#: (clip key, integer crop box) of each open clip in a frame
Crops = Sequence[tuple[int, tuple[int, int, int, int]]]


class InProcessClips:
    """Clips cut, resized and encoded in this process, as the frames come (one worker)."""

    def __init__(self) -> None:
        self._open: dict[int, _Clip] = {}
        self._done: list[tuple[int, int]] = []

    def open(self, key: int, spec: ClipSpec, cost: tuple[float, float], now: float) -> None:
        self._open[key] = _Clip(spec)

    def add_frame(self, image: Yuv420Image, crops: Crops) -> None:
        for key, box in crops:
            self._open[key].add(image, box)

    def close(self, key: int) -> None:
        clip = self._open.pop(key)
        clip.writer.close()
        self._done.append((key, clip.writer.frames_written))

    def finished(self, wait: bool = False) -> list[tuple[int, int]]:
        """(key, frames written) of the clips closed since the last call."""
        done, self._done = self._done, []
        return done

    def abort(self) -> None:
        """Drop every open clip (finished ones stay)."""
        for clip in self._open.values():
            clip.writer.abort()
        self._open.clear()

    def shutdown(self) -> None:
        self.abort()


# ---------------------------------------------------------------------------- worker processes


class ClipWorkerError(RuntimeError):
    """A worker process stopped without saying why (killed, out of memory)."""


def _context() -> Any:
    """Workers start from a fork server that imported this module once (so a worker costs
    milliseconds, not an interpreter start), never by forking the decoding process itself
    (its decoder threads may hold locks)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start processes without telling them the ``__main__`` module: a worker needs nothing
    from it, and multiprocessing would re-run the main script in every new worker (its fork
    server never preloads it: Python 3.11 looks for a ``main_path`` key that the preparation
    data names ``init_main_from_path``), 0.3 s of CPU per worker and video for extract_tracks.py.
    Only for the moment of ``Process.start()``, on the thread that cuts the clips."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Fd:
    """A file descriptor handed to a worker process as it starts (the fork server passes it on)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self) -> tuple:
        return _inherited_fd, (multiprocessing.reduction.DupFd(self.fd),)


def _inherited_fd(dup: Any) -> int:
    return dup.detach()


class FrameRing:
    """``slots`` frames of ``frame_hw`` (h, w) in 4:2:0, in anonymous shared memory (``memfd``):
    nothing has a name on disk, so nothing outlives the last process that maps it, killed or not."""

    def __init__(self, frame_hw: tuple[int, int], slots: int, fd: int | None = None):
        h, w = frame_hw
        self.frame_hw, self.slots = (h, w), slots
        self._shapes = [(h, w), ((h + 1) // 2, (w + 1) // 2), ((h + 1) // 2, (w + 1) // 2)]
        self.slot_bytes = sum(a * b for a, b in self._shapes)
        size = slots * self.slot_bytes
        self.fd = fd if fd is not None else os.memfd_create("clip-frames", os.MFD_CLOEXEC)
        if fd is None:
            os.ftruncate(self.fd, size)
        self._memory = mmap.mmap(self.fd, size)
        self._planes = [self._slot_planes(k) for k in range(slots)]

    def _slot_planes(self, k: int) -> Yuv420Image:
        planes, offset = [], k * self.slot_bytes
        for shape in self._shapes:
            n = shape[0] * shape[1]
            planes.append(np.frombuffer(self._memory, np.uint8, n, offset).reshape(shape))
            offset += n
        return Yuv420Image(*planes)

    def __getitem__(self, k: int) -> Yuv420Image:
        return self._planes[k]

    def put(self, k: int, image: Yuv420Image) -> None:
        for dst, src in zip((self[k].y, self[k].u, self[k].v), (image.y, image.u, image.v), strict=True):
            np.copyto(dst, src)

    def close(self) -> None:
        self._planes = []
        with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with the process
            self._memory.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` as it can cross to the parent: itself when it pickles (an OSError keeps its errno,
    which tells a full disk from one bad clip), else a plain copy with its type and message."""
    with contextlib.suppress(Exception):
        return pickle.loads(pickle.dumps(exc))
    if isinstance(exc, OSError):
        return OSError(exc.errno, exc.strerror or str(exc))
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def _worker_main(tasks: Connection, results: Connection, fd: int, frame_hw: tuple[int, int], slots: int) -> None:
    """A worker's loop: ("open", key, spec); ("frame", slot, crops) -> ("free", slot); ("close", key)
    -> ("closed", key, frames); ("abort",) -> ("aborted",); ("stop",). After an error it reports
    ("error", exc), drops its open clips and only frees slots until aborted or stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    ring = FrameRing(frame_hw, slots, fd)
    clips: dict[int, _Clip] = {}
    failed = False

    def drop() -> None:
        for clip in clips.values():
            clip.writer.abort()
        clips.clear()

    try:
        while True:
            try:
                message = tasks.recv()
            except EOFError:  # the parent is gone (killed): its open clips must not stay behind
                return
            kind = message[0]
            if kind == "stop":
                return
            if kind == "abort":
                drop()
                failed = False
                results.send(("aborted",))
                continue
            try:
                if kind == "frame" and not failed:
                    image = ring[message[1]]
                    for key, box in message[2]:
                        clips[key].add(image, box)
                elif kind == "open" and not failed:
                    clips[message[1]] = _Clip(message[2])
                elif kind == "close" and not failed:
                    clip = clips.pop(message[1])
                    clip.writer.close()
                    results.send(("closed", message[1], clip.writer.frames_written))
            except (BrokenPipeError, ConnectionResetError):
                return
            except Exception as exc:  # the parent fails the video with it
                failed = True
                drop()
                results.send(("error", _portable(exc)))
            if kind == "frame":
                results.send(("free", message[1]))
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone
        return
    finally:
        drop()
        ring.close()


@dataclass
class _Worker:
    process: Any
    tasks: Connection
    results: Connection
    clips: dict[int, tuple[float, float]] = field(default_factory=dict)  # open key -> (pixels, end time)
    closing: int = 0  # "close" messages not answered yet

    def load(self, now: float, until: float) -> float:
        """The work this worker's open clips hold from ``now`` to ``until``: pixels x seconds
        (encoding and resizing a clip's frame cost about in proportion to its pixels)."""
        return sum(pixels * max(min(end, until) - now, 0.0) for pixels, end in self.clips.values())


class ClipWorkers:
    """Clips cut, resized and encoded on ``n`` worker processes from frames of ``frame_hw``
    (h, w) that the decoding process puts in a ring of shared slots; a clip stays on the worker
    it was opened on, the one with the least work from its open clips over the new clip's time."""

    def __init__(self, n: int, frame_hw: tuple[int, int]):
        ctx = _context()
        self._workers: list[_Worker] = []
        self._owner: dict[int, _Worker] = {}
        self._paths: dict[int, Path] = {}  # of the open clips
        self._done: list[tuple[int, int]] = []
        h, w = frame_hw
        frame_bytes = h * w + 2 * ((h + 1) // 2) * ((w + 1) // 2)
        slots = max(4, min(RING_SLOTS_PER_WORKER * n, RING_BYTES // frame_bytes))
        self._ring = FrameRing(frame_hw, slots)
        self._users = [0] * slots  # workers still reading each slot
        self._next = 0
        self._poller = select.poll()
        self._by_fd: dict[int, _Worker] = {}
        try:
            for k in range(n):
                task_r, task_w = ctx.Pipe(duplex=False)
                result_r, result_w = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_worker_main, name=f"clip-worker-{k}", daemon=True,
                                      args=(task_r, result_w, _Fd(self._ring.fd), frame_hw, slots))
                with _main_hidden():
                    process.start()
                task_r.close()  # only the worker holds these: its end of a pipe closes when it dies
                result_w.close()
                self._workers.append(_Worker(process, task_w, result_r))
                self._by_fd[result_r.fileno()] = self._workers[-1]
                self._poller.register(result_r.fileno(), select.POLLIN)
        except BaseException:
            self.shutdown()
            raise

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def open(self, key: int, spec: ClipSpec, cost: tuple[float, float], now: float) -> None:
        """Open a clip; ``cost`` = (pixels per frame, end time) balances the workers: it goes to
        the one with the least work over the clip's time."""
        worker = min(self._workers, key=lambda w: w.load(now, cost[1]))
        worker.clips[key] = cost
        self._owner[key] = worker
        self._paths[key] = spec.path
        self._send(worker, ("open", key, spec))

    def add_frame(self, image: Yuv420Image, crops: Crops) -> None:
        """Put the frame in the next free slot and tell each worker which of its clips to cut there."""
        slot = self._next
        while self._users[slot]:
            self._receive(block=True)
        self._next = (slot + 1) % len(self._users)
        self._ring.put(slot, image)
        mine: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = {}
        for key, box in crops:
            mine.setdefault(id(self._owner[key]), []).append((key, box))
        for worker in self._workers:
            if id(worker) in mine:
                self._users[slot] += 1
                self._send(worker, ("frame", slot, mine[id(worker)]))
        self._receive()

    def close(self, key: int) -> None:
        worker = self._owner.pop(key)
        del self._paths[key]
        del worker.clips[key]
        worker.closing += 1
        self._send(worker, ("close", key))

    def finished(self, wait: bool = False) -> list[tuple[int, int]]:
        """(key, frames written) of the clips closed since the last call; with ``wait``, once
        every clip asked to close is (the first error of a worker is raised)."""
        self._receive()
        while wait and any(w.closing for w in self._workers):
            self._receive(block=True)
        done, self._done = self._done, []
        return done

    def _send(self, worker: _Worker, message: tuple) -> None:
        try:
            worker.tasks.send(message)
        except (BrokenPipeError, ConnectionResetError):
            self._receive()  # its own error, when it said one
            raise self._gone(worker) from None

    def _receive(self, block: bool = False) -> None:
        """Handle the workers' replies; with ``block``, wait for at least one. (One poll object
        for all workers: ``Connection.poll`` builds a selector per call, a third of this
        process's time when called for every frame.)"""
        timeout = None if block else 0
        while ready := self._poller.poll(timeout):
            timeout = 0
            for fd, _ in ready:
                worker = self._by_fd[fd]
                try:
                    reply = worker.results.recv()
                except EOFError:
                    raise self._gone(worker) from None
                if reply[0] == "free":
                    self._users[reply[1]] -= 1
                elif reply[0] == "closed":
                    worker.closing -= 1
                    self._done.append((reply[1], reply[2]))
                elif reply[0] == "error":
                    raise reply[1]

    def _gone(self, worker: _Worker) -> ClipWorkerError:
        worker.process.join(1.0)
        code = worker.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return ClipWorkerError(f"a clip worker process stopped ({how}; out of memory?)")

    def abort(self) -> None:
        """Drop every open clip on every worker (finished ones stay) and wait until they are gone.
        A worker that does not answer (it died, or hangs) is killed and its temporaries removed here."""
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.tasks.send(("abort",))
        for worker in self._workers:
            answered = False
            with contextlib.suppress(OSError, EOFError):
                while not answered and worker.results.poll(STOP_TIMEOUT_S):
                    answered = worker.results.recv()[0] == "aborted"
            if not answered:
                worker.process.kill()
                worker.process.join()
                for key in worker.clips:
                    remove_temps_of(self._paths[key])
            worker.clips.clear()
            worker.closing = 0
        self._owner.clear()
        self._paths.clear()
        self._users = [0] * len(self._users)

    def shutdown(self) -> None:
        """Stop the workers (open clips are dropped) and wait for them."""
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.tasks.send(("stop",))
        for worker in self._workers:
            worker.process.join(STOP_TIMEOUT_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.tasks.close()
            worker.results.close()
        self._workers.clear()
        self._ring.close()
