"""visual_metrics throughput on this machine: DIS motion clips/s and ResNet-50 embedding
clips/s (random weights: same cost as trained), against plain decoding of the same clips.

Usage: python -m benchmarks.bench_visual_metrics [--clips 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.test_visual_metrics import make_motion_clip
from utils.core.video import read_frames
from utils.metrics.compute import ClipEmbedder, DISFlow, track_motion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clips = [Path(tmp) / f"c{i}.mp4" for i in range(args.clips)]
        for i, clip in enumerate(clips):
            make_motion_clip(clip, speed=0.5 * i, seconds=4.0)
        t = time.perf_counter()
        for clip in clips:
            sum(1 for _ in read_frames(clip))
        decode = time.perf_counter() - t
        flow = DISFlow()
        t = time.perf_counter()
        for clip in clips:
            track_motion(clip, flow)
        motion = time.perf_counter() - t
        embedder = ClipEmbedder(weights="none", device="cpu")
        t = time.perf_counter()
        for clip in clips:
            embedder(clip)
        embed = time.perf_counter() - t
    n = len(clips)
    print(f"{n} clips of 4 s (96x96, 25 fps)")
    print(f"  plain decode            {n / decode:8.1f} clips/s")
    print(f"  motion (DIS, 360 px)    {n / motion:8.1f} clips/s  ({motion / decode:.0f}x decode)")
    print(f"  embeddings (ResNet-50)  {n / embed:8.1f} clips/s  ({embed / decode:.0f}x decode)")


if __name__ == "__main__":
    main()
