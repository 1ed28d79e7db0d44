"""Throughput of the whole parse_tracks stage, in seconds of video per second, one run:

- baseline: sampling only (``read_frames`` at 16 fps, longer side 480 px) over the segments;
- stage with the ground-truth detector (``tests.tiny_models:FixtureDetector``): sampling +
  tracker + records + atomic write, no model: the stage's own overhead;
- stage with OWLv2 (default: the tiny random-weight model of ``tests/tiny_models.py`` on
  CPU; ``--model``/``--device`` measure real weights on a GPU);
- detector alone on pre-decoded frames (frames per second), to see where the time goes.

The input is a synthetic 1280x720, 30 fps H.264 video (two scenes) made in the run.
Usage: python -m benchmarks.bench_parse_tracks [--seconds 20] [--model DIR_OR_HUB_ID]
       [--device cuda] [--batch_size 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tests.tiny_models import GROUND_TRUTH_ENV, save_tiny_owlv2, write_ground_truth
from utils.core.layout import DatasetLayout
from utils.core.video import read_frames
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.runner.cli import main as run_stage
from utils.runner.journal import read_journals
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video

YID = "benchVideo1"
PROMPTS = ["cat (also known as kitty)", "cup", "person (also known as human)", "rocket", "table"]


def make_video(folder: Path, seconds: float):
    half = seconds / 2
    scenes = [
        SceneSpec(half, (
            ObjectSpec("cat", (400, 300), (0, 0), (800, 400)),
            ObjectSpec("cup", (300, 360), (900, 300), (500, 100), appear=min(2.0, half / 4)),
        )),
        SceneSpec(half, (ObjectSpec("person", (350, 500), (100, 100), (850, 200)),)),
    ]
    return make_synthetic_video(folder / "bench.mp4", scenes, width=1280, height=720, fps=30, keyframe_interval=2.0)


def prepare_db(db: Path, video) -> None:
    layout = DatasetLayout(db)
    target = layout.video_mp4(YID)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.link(video.path, target)
    segm = layout.video_segments(YID)
    segm.parent.mkdir(parents=True, exist_ok=True)
    segm.write_text("".join(f"{a},{b}\n" for a, b in video.scene_spans()))


def stage_run(folder: Path, name: str, video, *flags: str) -> tuple[float, float, int]:
    """(video seconds per second of the item, of the whole command, tracks written)."""
    db = folder / name
    prepare_db(db, video)
    (folder / "yids.txt").write_text(YID + "\n")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    argv = ["--base_dir", str(db), "--yid_index_fn", str(folder / "yids.txt"),
            "--class_prompts", str(folder / "prompts.txt"), "--log_level", "WARNING", *flags]
    started = time.perf_counter()
    code = run_stage(PARSE_TRACKS_STAGE, argv)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"stage run {name} failed with exit {code}")
    (done,) = [r for r in read_journals(db / "logs" / "parse_tracks-TrackVerseLVIS") if r["event"] == "done"]
    return done["stats"]["video_s"] / done["seconds"], video.duration / wall, int(done["stats"]["tracks"])


def sampling_only(video) -> float:
    started = time.perf_counter()
    for start, end in video.scene_spans():
        for _ in read_frames(video.path, fps=16, start=start, end=end, max_side=480):
            pass
    return video.duration / (time.perf_counter() - started)


def detector_only(model: str, device: str, batch_size: int, video, cache: Path) -> float:
    from utils.detect.detectors import make_detector

    detector = make_detector("owlv2", [p.split(" (")[0] for p in PROMPTS], model_id=model, device=device,
                             batch_size=batch_size, prompts=PROMPTS, cache_dir=cache)
    frames = [f.image for f in read_frames(video.path, fps=16, end=min(video.duration, 4.0), max_side=480)]
    detector.detect(frames[:batch_size])  # warm-up
    started = time.perf_counter()
    detector.detect(frames)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return len(frames) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the synthetic video")
    parser.add_argument("--model", default=None, help="OWLv2 folder or hub id (default: the tiny random model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["TRACKVERSE_CACHE"] = str(folder / "cache")
        video = make_video(folder, args.seconds)
        model = args.model or str(save_tiny_owlv2(folder / "tiny-owlv2"))
        label = "tiny random OWLv2" if args.model is None else args.model
        os.environ[GROUND_TRUTH_ENV] = str(write_ground_truth(video, folder / "ground-truth.json"))
        print(f"video: {video.duration:.0f} s, {video.width}x{video.height} @ {video.fps:.0f} fps, "
              f"{len(video.scene_spans())} scenes; sampling 16 fps, 480 px; batch {args.batch_size}; "
              f"{os.cpu_count()} CPU cores")

        base = sampling_only(video)
        print(f"{'sampling only (baseline)':44s} {base:7.2f} video-s/s")
        item, wall, tracks = stage_run(folder, "gt", video, "--detector", "tests.tiny_models:FixtureDetector",
                                       "--batch_size", str(args.batch_size))
        print(f"{'stage, ground-truth detector':44s} {item:7.2f} video-s/s  ({item / base:.2f}x baseline; "
              f"{wall:.2f} with start-up; {tracks} tracks)")
        item, wall, tracks = stage_run(folder, "owl", video, "--detector", "owlv2", "--model", model,
                                       "--device", args.device, "--batch_size", str(args.batch_size))
        print(f"{'stage, ' + label + ' on ' + args.device:44s} {item:7.2f} video-s/s  ({item / base:.2f}x "
              f"baseline; {wall:.2f} with model loading; {tracks} tracks)")
        fps = detector_only(model, args.device, args.batch_size, video, folder / "cache")
        print(f"{'detector alone, ' + label:44s} {fps:7.1f} frames/s = {fps / 16:.2f} video-s/s at 16 fps")


if __name__ == "__main__":
    main()
