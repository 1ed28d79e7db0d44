"""Frame sampling at 16 fps (longer side 480 px) of a 720p H.264 clip, three ways, one run:

- ours: ``utils.core.video.read_frames`` (decode all, convert + resize only the sampled frames in swscale)
- baseline: plain PyAV decode, ``to_ndarray('rgb24')`` of the same frames, ``cv2.resize``
- original path (TrackVerse's avio.VideoReader): single-threaded PyAV decode, ``to_image()``
  (PIL) of the same frames, PIL resize (its default filter), ``np.array``

Prints seconds and ratios. Targets: ours within 1.3x of the baseline, >= 3x faster than PIL.
Usage: python -m benchmarks.bench_video_sampling [--source ../shared/data/videos/vtest.avi] [--seconds 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from utils.core.video import VideoWriter, read_frames, scaled_size
from utils.testing.synthetic import make_synthetic_video

FPS, MAX_SIDE = 16.0, 480


def make_720p(source: Path | None, seconds: float, out: Path) -> Path:
    if source is None or not source.exists():
        from utils.testing.synthetic import ObjectSpec, SceneSpec

        scene = SceneSpec(seconds, (ObjectSpec("cat", (300, 200), (0, 0), (900, 500)),))
        make_synthetic_video(out, [scene], width=1280, height=720, fps=30, keyframe_interval=2.0)
        return out
    # every source frame three times: 30 fps, 3x ``seconds`` long (vtest.avi is 10 fps)
    with VideoWriter(out, 1280, 720, fps=30, keyframe_interval=2.0) as writer:
        for frame in read_frames(source, end=seconds, size=(1280, 720)):
            for _ in range(3):
                writer.write(frame.image)
    return out


def selected_times(path: Path) -> set[float]:
    return {f.time for f in read_frames(path, fps=FPS, size=(2, 2))}


def plain_decode(path: Path, wanted: set[float], to_pil: bool) -> int:
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if to_pil:
            stream.codec_context.thread_count = 1  # as the original reader did
        else:
            stream.thread_type = "AUTO"
        w, h = scaled_size(stream.codec_context.width, stream.codec_context.height, MAX_SIDE)
        for frame in container.decode(stream):
            if frame.time not in wanted:
                continue
            if to_pil:
                np.array(frame.to_image().resize((w, h)))
            else:
                cv2.resize(frame.to_ndarray(format="rgb24"), (w, h), interpolation=cv2.INTER_AREA)
            n += 1
    return n


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/videos/vtest.avi")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_720p(args.source, args.seconds, Path(tmp) / "clip720p.mp4")
        wanted = selected_times(clip)
        ours_n = sum(1 for _ in read_frames(clip, fps=FPS, max_side=MAX_SIDE))
        assert ours_n == len(wanted) == plain_decode(clip, wanted, False), "the three paths must pick the same frames"
        t_ours = timed(lambda: sum(1 for _ in read_frames(clip, fps=FPS, max_side=MAX_SIDE)))
        t_base = timed(lambda: plain_decode(clip, wanted, to_pil=False))
        t_pil = timed(lambda: plain_decode(clip, wanted, to_pil=True))
    print(f"720p 30 fps clip of {3 * args.seconds:.0f} s from {args.source.name if args.source.exists() else 'synthetic'}; "
          f"{ours_n} frames sampled at {FPS:g} fps to {MAX_SIDE} px")
    print(f"  ours (read_frames)            {t_ours:7.2f} s  {ours_n / t_ours:7.1f} frames/s")
    print(f"  plain PyAV + ndarray + cv2     {t_base:7.2f} s  ratio ours/baseline = {t_ours / t_base:.2f} (target <= 1.3)")
    print(f"  PyAV -> PIL + PIL resize       {t_pil:7.2f} s  speed-up ours vs PIL = {t_pil / t_ours:.2f}x (target >= 3)")


if __name__ == "__main__":
    main()
