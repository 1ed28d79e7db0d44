"""Throughput of the parse_tracks stage, and what a GPU node needs to run it fast.

Default report (CPU), one run, on a synthetic 1280x720, 30 fps H.264 video (two scenes) made
in the run, sampled at 16 fps with the longer side at 480 px:

- decode + resize alone: sampled frames per second of one process pinned to one core (the
  figure that sizes the decode side), and of ``read_frames`` on every core (the baseline);
- the whole stage in seconds of video per second, plain and pipelined (``--decode_workers``),
  with the ground-truth detector (``tests.tiny_models:FixtureDetector``: no model, so this is
  the stage's own ceiling) and with OWLv2 (the tiny random model, or ``--model``);
- the detector alone: the tiny model, and the full-size ``random:owlv2-base`` (the published
  architecture with random weights, a few frames: it is slow on a CPU);
- ``--compare_detic N``: only the two full-size random detectors alone on the same ``N`` frames,
  ``random:owlv2-base`` (the baseline) and DETIC's ``random:detic-swinb`` (needs
  ``tools/install_detic.sh``): seconds per frame and their ratio;
- how many cores of decode + resize feed a detector running N frames/s (N = 100, 300, 1000).

GPU steps (benchmarks/gpu_parse.sh runs them, each time-boxed):

- ``--sweep``: the detector alone at ``--batch_sizes`` for one ``--precision`` (and ``--compile``):
  frames/s and peak GPU memory per batch size, printed as each is measured; ``--detector detic``
  sweeps ``random:detic-swinb`` instead of ``random:owlv2-base``;
- ``--stage``: the whole stage, plain and pipelined, on ``--video`` (or a video made in the run),
  with ``--detector`` (owlv2 or detic);
- ``--make_video PATH``: only make the synthetic video (``--seconds`` long).

Usage: python -m benchmarks.bench_parse_tracks [--seconds 20] [--model DIR_OR_HUB_ID|random:owlv2-base]
       [--device cuda] [--batch_size 8] [--decode_workers N] [--precision bf16] [--compile]
       [--detector owlv2|detic] [--compare_detic N]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.tiny_models import GROUND_TRUTH_ENV, save_tiny_owlv2, write_ground_truth
from utils.core.layout import DatasetLayout
from utils.core.resources import available_cpus
from utils.core.video import probe_video, read_frames
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.runner.cli import main as run_stage
from utils.runner.journal import read_journals
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video

YIDS = ["benchVideo1", "benchVideo2", "benchVideo3"]
PROMPTS = ["cat (also known as kitty)", "cup", "person (also known as human)", "rocket", "table"]
FPS, MAX_SIDE = 16, 480
RANDOM_BASE = "random:owlv2-base"
RANDOM_DETIC = "random:detic-swinb"
#: the weights option of each detector this benchmark builds, and its full-size random model
DETECTOR_MODELS = {"owlv2": ("model_id", RANDOM_BASE), "detic": ("weights", RANDOM_DETIC)}


def make_video(folder: Path, seconds: float, path: Path | None = None):
    half = seconds / 2
    scenes = [
        SceneSpec(half, (
            ObjectSpec("cat", (400, 300), (0, 0), (800, 400)),
            ObjectSpec("cup", (300, 360), (900, 300), (500, 100), appear=min(2.0, half / 4)),
        )),
        SceneSpec(half, (ObjectSpec("person", (350, 500), (100, 100), (850, 200)),)),
    ]
    return make_synthetic_video(path or folder / "bench.mp4", scenes, width=1280, height=720, fps=30,
                                keyframe_interval=2.0)


def prepare_db(db: Path, video_path: Path, yids: list[str]) -> None:
    layout = DatasetLayout(db)
    duration = probe_video(video_path).duration
    half = duration / 2
    for yid in yids:
        target = layout.video_mp4(yid)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(video_path, target)
        segm = layout.video_segments(yid)
        segm.parent.mkdir(parents=True, exist_ok=True)
        segm.write_text(f"0.0,{half}\n{half},{duration}\n")


def stage_run(folder: Path, name: str, video_path: Path, yids: list[str], *flags: str) -> tuple[float, float, int]:
    """(video seconds per second while parsing, the same counting start-up, tracks written)."""
    db = folder / name
    prepare_db(db, video_path, yids)
    (folder / "yids.txt").write_text("\n".join(yids) + "\n")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    argv = ["--base_dir", str(db), "--yid_index_fn", str(folder / "yids.txt"),
            "--class_prompts", str(folder / "prompts.txt"), "--log_level", "WARNING", *flags]
    started = time.perf_counter()
    code = run_stage(PARSE_TRACKS_STAGE, argv)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"stage run {name} failed with exit {code}")
    done = [r for r in read_journals(db / "logs" / "parse_tracks-TrackVerseLVIS") if r["event"] == "done"]
    video_s = sum(r["stats"]["video_s"] for r in done)
    shutil.rmtree(db)
    return video_s / sum(r["seconds"] for r in done), video_s / wall, sum(int(r["stats"]["tracks"]) for r in done)


def sample_frames(video_path: Path) -> int:
    return sum(1 for _ in read_frames(video_path, fps=FPS, max_side=MAX_SIDE))


def _pinned_decode(video_path: str, cpu: int, out: multiprocessing.Queue) -> None:
    os.sched_setaffinity(0, {cpu})  # available_cpus() is now 1: FFmpeg uses 2 threads on that core
    started = time.perf_counter()
    frames = sample_frames(Path(video_path))
    out.put(frames / (time.perf_counter() - started))


def decode_per_core(video_path: Path) -> float:
    """Sampled frames/s (decode + resize) of one process on one core."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    cpu = sorted(os.sched_getaffinity(0))[-1]
    proc = ctx.Process(target=_pinned_decode, args=(str(video_path), cpu, out))
    proc.start()
    rate = out.get(timeout=600)
    proc.join()
    return rate


def sampling_only(video_path: Path) -> float:
    """Sampled frames/s of read_frames using every core (the plain path's decoding)."""
    started = time.perf_counter()
    frames = sample_frames(video_path)
    return frames / (time.perf_counter() - started)


def build_owlv2(model: str, device: str, batch_size: int, cache: Path, precision: str = "auto",
                compile: bool = False):
    from utils.detect.detectors import make_detector

    return make_detector("owlv2", [p.split(" (")[0] for p in PROMPTS], model_id=model, device=device,
                         batch_size=batch_size, prompts=PROMPTS, cache_dir=cache, precision=precision,
                         compile=compile)


def build_detector(detector: str, model: str | None, device: str, batch_size: int, cache: Path,
                   precision: str = "auto", compile: bool = False):
    """``detector`` (owlv2 or detic) with ``model`` (default: its full-size random model)."""
    if detector == "owlv2":
        return build_owlv2(model or RANDOM_BASE, device, batch_size, cache, precision, compile)
    from utils.detect.detectors import make_detector

    if compile:
        raise SystemExit("--compile is for OWLv2 only")
    key, default = DETECTOR_MODELS[detector]
    return make_detector(detector, [p.split(" (")[0] for p in PROMPTS], device=device, batch_size=batch_size,
                         prompts=PROMPTS, precision=precision, **{key: model or default})


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def detector_rate(detector, frames: list[np.ndarray], device: str, batch_size: int, repeats: int = 1) -> float:
    """Frames/s of prepare + detect over ``frames`` in batches (after one warm-up batch)."""
    detector.batch_size = batch_size
    detector.detect(detector.prepare(frames[:batch_size]))
    sync(device)
    started = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for i in range(0, len(frames), batch_size):
            chunk = frames[i:i + batch_size]
            detector.detect(detector.prepare(chunk))
            n += len(chunk)
    sync(device)
    return n / (time.perf_counter() - started)


def video_frames(video_path: Path, count: int) -> list[np.ndarray]:
    frames = [f.image for f, _ in zip(read_frames(video_path, fps=FPS, max_side=MAX_SIDE), range(count), strict=False)]
    while len(frames) < count:  # a short video: repeat it
        frames += frames[: count - len(frames)]
    return frames


# ---------------------------------------------------------------------------- modes


def cpu_report(args: argparse.Namespace, folder: Path) -> None:
    video = make_video(folder, args.seconds)
    model = args.model or str(save_tiny_owlv2(folder / "tiny-owlv2"))
    label = "tiny random OWLv2" if args.model is None else args.model
    os.environ[GROUND_TRUTH_ENV] = str(write_ground_truth(video, folder / "ground-truth.json"))
    workers = args.decode_workers or max(1, available_cpus())
    print(f"video: {video.duration:.0f} s, {video.width}x{video.height} @ {video.fps:.0f} fps H.264, "
          f"{len(video.scene_spans())} scenes, {len(YIDS)} copies; sampling {FPS} fps, {MAX_SIDE} px; "
          f"batch {args.batch_size}; {available_cpus()} CPU cores; pipelined: --decode_workers {workers}")

    per_core = decode_per_core(video.path)
    base = sampling_only(video.path)
    print(f"{'decode + resize, one process on one core':48s} {per_core:7.1f} frames/s = "
          f"{per_core / FPS:.2f} video-s/s per core")
    print(f"{'decode + resize, read_frames on every core':48s} {base:7.1f} frames/s = "
          f"{base / FPS:.2f} video-s/s (baseline)")
    base_s = base / FPS
    for name, flags in (("ground-truth detector", ("--detector", "tests.tiny_models:FixtureDetector")),
                        (label, ("--detector", "owlv2", "--model", model, "--device", args.device,
                                 "--precision", args.precision))):
        rates = {}
        for mode, extra in (("plain", ()), ("pipelined", ("--decode_workers", str(workers)))):
            item, wall, tracks = stage_run(folder, f"{mode}-{len(rates)}", video.path, YIDS, *flags,
                                           "--batch_size", str(args.batch_size), *extra)
            rates[mode] = item
            print(f"{'stage, ' + name + ', ' + mode:48s} {item:7.2f} video-s/s  ({item / base_s:.2f}x baseline; "
                  f"{wall:.2f} with start-up; {tracks} tracks)")
        print(f"{'  pipelined / plain':48s} {rates['pipelined'] / rates['plain']:7.2f}x")

    frames = video_frames(video.path, 64)
    tiny = build_owlv2(model, args.device, args.batch_size, folder / "cache", args.precision)
    fps = detector_rate(tiny, frames, args.device, args.batch_size)
    print(f"{'detector alone, ' + label:48s} {fps:7.1f} frames/s = {fps / FPS:.2f} video-s/s at {FPS} fps")
    if args.random_frames > 0:
        big = build_owlv2(RANDOM_BASE, args.device, 1, folder / "cache", args.precision)
        n = args.random_frames
        fps = detector_rate(big, frames[:n], args.device, min(n, 2))
        print(f"{'detector alone, ' + RANDOM_BASE + f' ({n} frames)':48s} {fps:7.3f} frames/s = "
              f"{fps / FPS:.4f} video-s/s at {FPS} fps")
    for n in (100, 300, 1000):
        print(f"cores of decode + resize to feed {n:5d} frames/s ({n / FPS:5.1f} video-s/s): "
              f"{math.ceil(n / per_core):4d} (at {per_core:.1f} frames/s per core)")


def compare_detic(args: argparse.Namespace, folder: Path) -> None:
    """The full-size random OWLv2 and DETIC alone on the same frames, one at a time: seconds per
    frame each and DETIC / OWLv2 (the baseline), after one warm-up frame each."""
    video = make_video(folder, 4.0)
    n = args.compare_detic
    frames = video_frames(video.path, n + 1)
    print(f"detector alone, {n} frames {frames[0].shape[1]}x{frames[0].shape[0]} (sampled at {MAX_SIDE} px from "
          f"{video.width}x{video.height}), batch 1, on {args.device}, {available_cpus()} CPU cores")
    seconds = {}
    for name in ("owlv2", "detic"):
        started = time.perf_counter()
        detector = build_detector(name, None, args.device, 1, folder / "cache", args.precision)
        built = time.perf_counter() - started
        detector.detect(detector.prepare(frames[:1]))
        sync(args.device)
        started = time.perf_counter()
        for frame in frames[1:]:
            detector.detect(detector.prepare([frame]))
        sync(args.device)
        seconds[name] = (time.perf_counter() - started) / n
        print(f"  {DETECTOR_MODELS[name][1]:20s} {seconds[name]:7.2f} s/frame (built in {built:.1f} s)", flush=True)
        del detector
    print(f"  DETIC / OWLv2 time per frame: {seconds['detic'] / seconds['owlv2']:.2f}x")


def sweep(args: argparse.Namespace, folder: Path) -> None:
    """The detector alone at each batch size: frames/s and peak GPU memory, printed as measured."""
    import torch

    video_path = Path(args.video) if args.video else make_video(folder, 4.0).path
    frames = video_frames(video_path, max(args.batch_sizes) * 2)
    started = time.perf_counter()
    model = args.model or DETECTOR_MODELS[args.detector][1]
    detector = build_detector(args.detector, model, args.device, max(args.batch_sizes), folder / "cache",
                              args.precision, args.compile)
    print(f"sweep: {model} on {args.device}, precision {args.precision}, "
          f"compile {args.compile}; built in {time.perf_counter() - started:.1f} s; frames "
          f"{frames[0].shape[1]}x{frames[0].shape[0]}", flush=True)
    for size in args.batch_sizes:
        cuda = args.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        fps = detector_rate(detector, frames, args.device, size, repeats=args.repeats)
        memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"  batch {size:3d}: {fps:8.1f} frames/s = {fps / FPS:6.2f} video-s/s at {FPS} fps; "
              f"peak GPU memory {memory:6.2f} GiB; step {time.perf_counter() - started:.1f} s", flush=True)


def stage_only(args: argparse.Namespace, folder: Path) -> None:
    video_path = Path(args.video) if args.video else make_video(folder, args.seconds).path
    duration = probe_video(video_path).duration
    model = args.model or DETECTOR_MODELS[args.detector][1]
    workers = args.decode_workers or max(1, available_cpus() - 2)
    os.environ["TRACKVERSE_CACHE"] = str(folder / "cache")
    flags = ("--detector", args.detector, "--model", model, "--device", args.device, "--precision", args.precision,
             "--batch_size", str(args.batch_size), *(("--compile",) if args.compile else ()))
    print(f"stage: {model} on {args.device}, {duration:.0f} s video, batch {args.batch_size}, precision "
          f"{args.precision}, compile {args.compile}, {available_cpus()} CPU cores", flush=True)
    modes = [("pipelined", ("--decode_workers", str(workers)))]
    if not args.pipelined_only:
        modes.append(("plain", ()))
    for mode, extra in modes:
        item, wall, tracks = stage_run(folder, mode, video_path, YIDS[:1], *flags, *extra)
        print(f"  {mode:10s} {item:7.2f} video-s/s while parsing ({wall:.2f} counting start-up, "
              f"{' '.join(extra) or 'no decode workers'}; {tracks} tracks)", flush=True)
        if args.device.startswith("cuda"):
            import torch

            print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the synthetic video")
    parser.add_argument("--model", default=None,
                        help=f"OWLv2 folder, hub id or {RANDOM_BASE} (default: the tiny random model; "
                             f"--sweep and --stage: {RANDOM_BASE})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--decode_workers", type=int, default=0, help="pipelined runs (default: the CPU count)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--random_frames", type=int, default=2,
                        help=f"frames for {RANDOM_BASE} on the CPU report (0: skip)")
    parser.add_argument("--detector", default="owlv2", choices=sorted(DETECTOR_MODELS),
                        help=f"--sweep/--stage: the detector (default model: {RANDOM_BASE} / {RANDOM_DETIC})")
    parser.add_argument("--compare_detic", type=int, default=0, metavar="N",
                        help=f"only {RANDOM_BASE} and {RANDOM_DETIC} alone on the same N frames")
    parser.add_argument("--sweep", action="store_true", help="detector alone at --batch_sizes")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=2, help="--sweep: passes over 2x the largest batch")
    parser.add_argument("--stage", action="store_true", help="the whole stage, pipelined then plain")
    parser.add_argument("--pipelined_only", action="store_true")
    parser.add_argument("--video", default=None, help="--sweep/--stage: this video instead of a new one")
    parser.add_argument("--make_video", default=None, metavar="PATH", help="only make the synthetic video")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ.setdefault("TRACKVERSE_CACHE", str(folder / "cache"))
        if args.make_video:
            started = time.perf_counter()
            video = make_video(folder, args.seconds, Path(args.make_video))
            print(f"made {video.path}: {video.duration:.0f} s {video.width}x{video.height} in "
                  f"{time.perf_counter() - started:.1f} s")
        elif args.compare_detic > 0:
            compare_detic(args, folder)
        elif args.sweep:
            sweep(args, folder)
        elif args.stage:
            stage_only(args, folder)
        else:
            cpu_report(args, folder)


if __name__ == "__main__":
    main()
