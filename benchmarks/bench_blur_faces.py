"""Face blurring throughput on CPU: CenterFace + blur + re-encode, versus the plain decode +
encode of the same video (the floor), in one run.

Usage: python -m benchmarks.bench_blur_faces [--seconds 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.test_anonymize import make_face_video
from utils.core.video import VideoWriter, probe_video, read_frames
from utils.ingest.anonymize import FaceBlurrer, blur_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "faces.mp4"
        make_face_video(src, seconds=args.seconds, fps=30)
        info = probe_video(src)
        t = time.perf_counter()
        with VideoWriter(Path(tmp) / "copy.mp4", info.width, info.height, info.fps, keyframe_interval=2.0,
                         crf=18) as writer:
            for frame in read_frames(src):
                writer.write(frame.image)
        floor = time.perf_counter() - t
        blurrer = FaceBlurrer("auto")
        t = time.perf_counter()
        record = blur_video(src, Path(tmp) / "faces.blurred.json", blurrer)
        blur = time.perf_counter() - t
    n = record["frames"]
    print(f"{n} frames of {info.width}x{info.height} on {blurrer.provider}")
    print(f"  decode + encode (floor)     {n / floor:7.1f} frames/s")
    print(f"  CenterFace + blur + encode  {n / blur:7.1f} frames/s  ({blur / floor:.1f}x the floor)")


if __name__ == "__main__":
    main()
