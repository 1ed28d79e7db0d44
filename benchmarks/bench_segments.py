"""Scene segmentation throughput (frames/s) of PySceneDetect's decoding backends, one run:

- ``opencv``: PySceneDetect's OpenCV backend (``cv2.VideoCapture``)
- ``pyav``: its PyAV backend with ``threading_mode='AUTO'`` (frame + slice threads), as
  ``utils.ingest.scenes`` runs it
- ``pyav-default``: its PyAV backend with PyAV's default decoder threading

Each runs ``utils.ingest.scenes.detect_scenes`` (AdaptiveDetector, what download_videos.py runs)
on a 720p H.264 clip with hard cuts (synthetic, as YouTube's 720p format 136) and on the real
sample videos in ../shared/data/videos when present; the backends alternate over
``--repeats`` rounds and the best time of each counts. Every backend must find the same
scenes. Prints frames/s per backend and which is fastest overall (``utils.ingest.scenes.DEFAULT_BACKEND``
should name it).

Usage: python -m benchmarks.bench_segments [--seconds 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from utils.ingest.scenes import DEFAULT_BACKEND, detect_scenes
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
VARIANTS = {"opencv": ("opencv", None), "pyav": ("pyav", "AUTO"), "pyav-default": ("pyav", None)}


def make_720p(path: Path, seconds: float) -> Path:
    """A 1280x720 30 fps H.264 clip with a hard cut every ``seconds / 4`` seconds."""
    n = 4
    scenes = [
        SceneSpec(seconds / n, (ObjectSpec(f"obj{i}", (300, 200), (40 * i, 50), (900 - 40 * i, 450)),))
        for i in range(n)
    ]
    make_synthetic_video(path, scenes, width=1280, height=720, fps=30, keyframe_interval=2.0)
    return path


def run_variant(path: Path, variant: str) -> tuple[float, float, int, list]:
    """Wall seconds, CPU seconds (all threads of this process), frames, scenes."""
    backend, threading = VARIANTS[variant]
    wall, cpu = time.perf_counter(), time.process_time()
    result = detect_scenes(path, backend=backend, threading_mode=threading)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, result.frames, [(round(s, 2), round(e, 2)) for s, e in result.scenes]


def bench(path: Path, repeats: int) -> dict[str, float]:
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    frames: dict[str, int] = {}
    scenes: dict[str, list] = {}
    for _ in range(repeats):
        for variant in VARIANTS:
            seconds, cpu, n, found = run_variant(path, variant)
            best[variant] = min(best.get(variant, float("inf")), seconds)
            best_cpu[variant] = min(best_cpu.get(variant, float("inf")), cpu)
            frames[variant], scenes[variant] = n, found
    reference = scenes["opencv"]
    for variant, found in scenes.items():
        if found != reference:
            print(f"  WARNING: {variant} found {found}, opencv found {reference}")
    rates = {v: frames[v] / best[v] for v in VARIANTS}
    line = ", ".join(f"{v} {rates[v]:5.0f} ({frames[v] / best_cpu[v]:4.0f})" for v in VARIANTS)
    print(f"{path.name:>18} ({frames['opencv']:3d} frames, {len(reference)} scenes): {line}")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the synthetic 720p clip")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    totals: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        clip = make_720p(Path(tmp) / "synthetic-720p.mp4", args.seconds)
        print(f"made {clip.name} ({args.seconds:.0f} s, 1280x720, 30 fps) in {time.perf_counter() - started:.1f} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print("frames/s (wall clock), in brackets frames per CPU-second (all decoder threads):")
        sources = [clip] + [SHARED_VIDEOS / n for n in ("vtest.avi", "Megamind.avi", "box.mp4", "cup.mp4")
                            if (SHARED_VIDEOS / n).exists()]
        for path in sources:
            for variant, rate in bench(path, args.repeats).items():
                totals[variant].append(rate)
    # the 720p clip decides (it is what the stage reads); the others are reported
    main_rates = {v: rates[0] for v, rates in totals.items()}
    fastest = max(main_rates, key=main_rates.get)
    ratio = ", ".join(f"{v} {main_rates[v] / main_rates[fastest]:.2f}x" for v in VARIANTS)
    print(f"720p H.264: fastest is {fastest} (relative throughput: {ratio})")
    print(f"utils.ingest.scenes.DEFAULT_BACKEND = {DEFAULT_BACKEND!r}"
          + ("" if VARIANTS[fastest][0] == DEFAULT_BACKEND else "  <- differs from the fastest measured here"))


if __name__ == "__main__":
    main()
