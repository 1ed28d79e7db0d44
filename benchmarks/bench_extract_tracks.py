"""Track extraction: 20 tracks from a 720p H.264 clip of a minute or more, five ways, one run:

- ours: ``utils.clips.cut.extract_clips`` (one decoding pass, frames kept in 4:2:0, one encoder
  per open track, clips cut on one worker thread per CPU), and the same on one worker thread
- per-track, same code: ``extract_clips`` called once per track, so the source is decoded again
  from the keyframe before every track's start; cropping, resizing and encoding are identical,
  so this isolates what the single pass alone saves (at most the tracks' total length over the
  span they cover: about 3.5x here, however cheap decoding or encoding get)
- per-track re-decoding, the original's way (the target's baseline): what TrackVerse's
  extract_tracks.py did per track, re-done here for timing: a single-threaded decoder seeking
  to the track, every frame of the track turned into a PIL image and a full-frame array, crop +
  PIL resize, float normalisation, RGB into libx264 with PyAV's defaults (preset medium) on one
  thread
- floor: one plain PyAV decode + libx264 encode (our clip settings) of the same span at full
  size: the cost of decoding every frame once and encoding as many pixels as a frame has
- decode only: one plain PyAV decode of the span (informative)

Prints seconds and ratios. Targets: ours >= 5x faster than per-track re-decoding, within 2x of
decode + encode. Usage: python -m benchmarks.bench_extract_tracks
    [--source ../shared/data/videos/vtest.avi] [--seconds 60] [--fps 25] [--tracks 20]
    [--min_len 4] [--max_len 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from utils.clips.cut import ClipTask, extract_clips, plan_tasks
from utils.core.resources import available_cpus
from utils.core.video import VideoWriter, probe_video, read_frames
from utils.records.tracks import TrackRecord, compute_tid
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video

WIDTH, HEIGHT = 1280, 720


def make_720p(source: Path | None, seconds: float, fps: float, out: Path) -> Path:
    """A 720p H.264 clip of ``seconds`` at ``fps``: the source's frames resized (repeated to
    reach ``fps``), or a synthetic scene when the source is absent."""
    if source is None or not source.exists():
        scene = SceneSpec(seconds, (ObjectSpec("cat", (300, 200), (0, 0), (900, 500)),
                                    ObjectSpec("cup", (200, 260), (1000, 400), (100, 100))))
        make_synthetic_video(out, [scene], width=WIDTH, height=HEIGHT, fps=fps, keyframe_interval=2.0)
        return out
    src_fps = probe_video(source).fps
    with VideoWriter(out, WIDTH, HEIGHT, fps=fps, keyframe_interval=2.0) as writer:
        frames = read_frames(source, size=(WIDTH, HEIGHT))
        frame = next(frames)
        for k in range(int(round(seconds * fps))):
            wanted = int(k * src_fps / fps)  # the source frame shown at output time k / fps
            while frame.index < wanted:
                frame = next(frames, None)
                if frame is None:
                    return out
            writer.write(frame.image)
    return out


def make_tracks(video: Path, n_tracks: int, min_len: float = 4.0, max_len: float = 16.0,
                seed: int = 0) -> list[tuple[TrackRecord, Path]]:
    """``n_tracks`` deterministic tracks sampled at 16 fps on source frame times, ``min_len`` to
    ``max_len`` seconds long, boxes of 120-400 px drifting across the frame."""
    info = probe_video(video)
    rng = np.random.default_rng(seed)
    frame_times = np.arange(info.num_frames) / info.fps
    yid = "benchmark_1"
    records = []
    for k in range(n_tracks):
        length = min(rng.uniform(min_len, max_len), info.duration - 1.0)
        start = rng.uniform(0, max(info.duration - length - 0.5, 0.1))
        grid = np.arange(start, start + length, 1 / 16)
        ts = np.unique(frame_times[np.abs(frame_times[:, None] - grid[None, :]).argmin(axis=0)])
        w0, h0 = rng.uniform(120, 400, size=2)
        x0, y0 = rng.uniform(0, WIDTH - w0), rng.uniform(0, HEIGHT - h0)
        x1, y1 = rng.uniform(0, WIDTH - w0), rng.uniform(0, HEIGHT - h0)
        a = (ts - ts[0]) / max(ts[-1] - ts[0], 1e-9)
        jitter = rng.normal(0, 3, size=(len(ts), 4))
        boxes = np.stack([x0 + a * (x1 - x0), y0 + a * (y1 - y0), np.full_like(a, w0), np.full_like(a, h0)], 1) + jitter
        track_ts = [round(float(t), 4) for t in ts]
        track_bbox = [[round(float(v), 2) for v in b] for b in boxes]
        tid = compute_tid(yid, track_ts, track_bbox)
        records.append(TrackRecord(yid=yid, tid=tid, fn=f"be/{yid}-obj{k}-{tid}.mp4", track_ts=track_ts,
                                   track_bbox=track_bbox, video_size=[HEIGHT, WIDTH]))
    return [(r, Path()) for r in records]


def tasks_in(folder: Path, tracks: list[tuple[TrackRecord, Path]], video: Path) -> list[ClipTask]:
    info = probe_video(video)
    placed = [(r, folder / r.fn) for r, _ in tracks]
    planned = plan_tasks(placed, (info.height, info.width), info.duration)
    assert not planned.problems, planned.problems
    return planned.tasks


def plain_decode(video: Path, start: float, end: float, encode_to: Path | None) -> int:
    """Decode [start, end] once (threaded, like ours); optionally encode every decoded frame
    at full size with libx264 and the clips' settings (veryfast, crf 23, keyframe every 0.5 s)."""
    n = 0
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        container.seek(int(start / stream.time_base), stream=stream, backward=True)
        sink = out = None
        if encode_to is not None:
            sink = av.open(str(encode_to), mode="w")
            out = sink.add_stream("libx264", rate=stream.average_rate)
            out.width, out.height, out.pix_fmt = stream.codec_context.width, stream.codec_context.height, "yuv420p"
            gop = max(1, round(float(stream.average_rate) / 2))
            out.options = {"crf": "23", "preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        try:
            for frame in container.decode(stream):
                if frame.time < start - 1e-3:
                    continue
                if frame.time > end + 1e-3:
                    break
                if out is not None:
                    yuv = frame.reformat(format="yuv420p")
                    yuv.pts, yuv.time_base = n, 1 / Fraction(stream.average_rate)
                    sink.mux(out.encode(yuv))
                n += 1
            if out is not None:
                sink.mux(out.encode(None))
        finally:
            if sink is not None:
                sink.close()
    return n


def original_per_track(video: Path, task: ClipTask, out: Path) -> int:
    """One track cut the way the original extract_tracks.py did it (see the module docstring);
    same frames and boxes as ours, so only the work per frame differs."""
    plan, n = task.plan, 0
    start, end = task.window(probe_video(video, decode_check=False).fps)
    with av.open(str(video)) as container, av.open(str(out), mode="w") as sink:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = int(round(float(stream.average_rate)))
        encoder = sink.add_stream("libx264", rate=rate)
        encoder.width, encoder.height = plan.out_size
        encoder.pix_fmt, encoder.gop_size = "yuv420p", rate // 2
        encoder.codec_context.thread_count = 1
        container.seek(int(max(start, 0) * av.time_base))
        for frame in container.decode(stream):
            t = float(frame.time)
            if t < start:
                continue
            if t > end:
                break
            image = np.array(frame.to_image())
            x0, y0, x1, y1 = plan.box_at(t)
            crop = np.array(Image.fromarray(image[y0:y1, x0:x1]).resize(plan.out_size))
            crop = np.clip(np.round(crop.astype(float) / 255 * 255), 0, 255).astype(np.uint8)
            sink.mux(encoder.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")))
            n += 1
        sink.mux(encoder.encode(None))
    return n


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/videos/vtest.avi")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--min_len", type=float, default=4.0, help="shortest track (s)")
    parser.add_argument("--max_len", type=float, default=16.0, help="longest track (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        clip = make_720p(args.source, args.seconds, args.fps, tmp / "clip720p.mp4")
        info = probe_video(clip)
        tracks = make_tracks(clip, args.tracks, args.min_len, args.max_len)
        print(f"source: {info.width}x{info.height} {info.fps:g} fps, {info.duration:.1f} s "
              f"({args.source.name if args.source.exists() else 'synthetic'}), made in {time.perf_counter() - t0:.1f} s")

        ours_tasks = tasks_in(tmp / "ours", tracks, clip)
        start = min(t.plan.t_start for t in ours_tasks)
        end = max(t.plan.t_end for t in ours_tasks)
        track_s = sum(t.plan.duration for t in ours_tasks)
        print(f"{len(ours_tasks)} tracks, {track_s:.0f} s of track in total, spanning {start:.1f}-{end:.1f} s; "
              f"mean clip size {np.mean([t.plan.out_size[0] for t in ours_tasks]):.0f}x"
              f"{np.mean([t.plan.out_size[1] for t in ours_tasks]):.0f}")

        stats = None

        def ours() -> None:
            nonlocal stats
            stats = extract_clips(clip, ours_tasks, info.fps)

        t_ours = timed(ours)
        single_tasks = tasks_in(tmp / "single", tracks, clip)
        t_single = timed(lambda: extract_clips(clip, single_tasks, info.fps, threads=1))
        per_tasks = tasks_in(tmp / "per_track", tracks, clip)
        t_per = timed(lambda: [extract_clips(clip, [task], info.fps) for task in per_tasks])
        (tmp / "original").mkdir()
        t_orig = timed(lambda: [original_per_track(clip, task, tmp / "original" / f"{k}.mp4")
                                for k, task in enumerate(per_tasks)])
        t_floor = timed(lambda: plain_decode(clip, start, end, tmp / "floor.mp4"))
        t_decode = timed(lambda: plain_decode(clip, start, end, None))

        for k, (a, b) in enumerate(zip(ours_tasks, per_tasks, strict=True)):  # the same clips each way
            # (not byte-identical: small clips encode differently run to run from identical pixels)
            frames = probe_video(a.path).num_frames
            assert frames == probe_video(b.path).num_frames == probe_video(tmp / "original" / f"{k}.mp4").num_frames
        ours_bytes = sum(t.path.stat().st_size for t in ours_tasks)
        original_bytes = sum(f.stat().st_size for f in (tmp / "original").iterdir())

    n = stats.frames_decoded
    print(f"  ours (one pass, {available_cpus()} threads)     {t_ours:7.2f} s  {n / t_ours:6.1f} source frames/s, "
          f"{stats.frames_written / t_ours:6.1f} clip frames/s")
    print(f"  ours (one pass, 1 thread)      {t_single:7.2f} s  {n / t_single:6.1f} source frames/s")
    print(f"  per-track, same code           {t_per:7.2f} s  speed-up ours vs per-track same code = {t_per / t_ours:.2f}x")
    print(f"  per-track, the original's way  {t_orig:7.2f} s  speed-up ours vs original = {t_orig / t_ours:.2f}x "
          f"(target >= 5; on 1 thread {t_orig / t_single:.2f}x)")
    print(f"  floor: decode + encode 720p    {t_floor:7.2f} s  ratio ours/floor = {t_ours / t_floor:.2f} (target <= 2)")
    print(f"  decode only                    {t_decode:7.2f} s  ratio ours/decode = {t_ours / t_decode:.2f}")
    print(f"clip bytes: ours {ours_bytes / 1e6:.1f} MB (x264 veryfast, crf 23), the original's way "
          f"{original_bytes / 1e6:.1f} MB (medium, crf 23): {ours_bytes / original_bytes:.2f}x")


if __name__ == "__main__":
    main()
