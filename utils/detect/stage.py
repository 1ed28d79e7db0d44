"""parse_tracks.py: the detector built from the flags, and one metadata file per video
(``tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip``), written atomically once every
segment is parsed. A video without a segment file yet is *not ready*; an empty one is done
with no tracks.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.core.assets import AssetError, resolve_asset
from utils.core.errors import ItemError, NotReady, SystemicError, UsageError
from utils.core.io import atomic_write_bytes
from utils.core.layout import DatasetLayout, InvalidItemError, validate_name
from utils.core.video import VideoError
from utils.detect.detectors import DEFAULT_DETECTOR, Detector, DetectorError, make_detector
from utils.detect.detectors.base import detector_factory
from utils.detect.parse import DEFAULT_PROMPTS_ASSET, ParseConfig, parse_video
from utils.records.prompts import Vocabulary, read_prompts
from utils.records.segments import read_segments
from utils.records.tracks import records_to_jsonl_gz_bytes
from utils.runner.stage import Stage, read_item_list

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- detector


def _accepts(factory: Callable[..., Any]) -> Callable[[str], bool]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return lambda name: True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return lambda name: True
    names = {p.name for p in params}
    return names.__contains__


def detector_options(args: argparse.Namespace, vocab: Vocabulary) -> dict[str, Any]:
    """Keyword options for the ``--detector`` factory: every flag it accepts (``prompts``,
    ``device``, ``batch_size``, ``nms_threshold``, and ``--model`` as OWLv2's ``model_id``,
    DETIC's ``weights``, or a custom factory's ``model_id``)."""
    accepts = _accepts(detector_factory(args.detector))
    wanted: dict[str, Any] = {"prompts": list(vocab.lines), "device": args.device, "batch_size": args.batch_size}
    if args.nms_threshold is not None:
        wanted["nms_threshold"] = args.nms_threshold
    options = {k: v for k, v in wanted.items() if accepts(k)}
    if args.model is not None:
        key = "weights" if args.detector == "detic" else "model_id"
        if not accepts(key):
            raise UsageError(f"--model: detector {args.detector!r} takes no {key!r} option")
        options[key] = str(args.model)
    return options


def build_detector(args: argparse.Namespace, vocab: Vocabulary) -> Detector:
    """The ``--detector`` over the vocabulary's labels; a failure to build it (weights
    missing, offline, backend not installed) is a :class:`~utils.core.errors.SystemicError`."""
    options = detector_options(args, vocab)
    try:
        return make_detector(args.detector, list(vocab.labels), **options)
    except (DetectorError, ImportError, OSError, ValueError) as exc:
        hint = ""
        if args.detector == "owlv2" and "hf download" not in str(exc):
            hint = " (pass --model with a local folder of the model and processor to run offline)"
        raise SystemicError(f"cannot build detector {args.detector!r}: {exc}{hint}") from exc


# ---------------------------------------------------------------------------- the stage


@dataclass
class _Resources:
    detector: Detector
    vocab: Vocabulary
    config: ParseConfig


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise UsageError(f"--{name} must be {bounds}, got {value}")


class ParseTracksStage(Stage):
    """Detect + track every segment of every video of the list -> per-video track metadata."""

    name = "parse_tracks"
    description = (
        "Detect objects (open vocabulary) in every scene segment of each video and track them; "
        "write tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip per video."
    )
    default_slurm = {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("parse_tracks")
        g.add_argument("--yid_index_fn", type=Path, required=True, help="YouTube ids, one per line")
        g.add_argument("--dataset_name", default="TrackVerseLVIS", help="tracks_meta/<dataset_name>/ subfolder")
        g.add_argument("--class_prompts", default=None,
                       help=f"class prompts file, one 'name (also known as ...)' per line (default: the "
                            f"pinned {DEFAULT_PROMPTS_ASSET} of TrackVerse, fetched on first use)")
        g.add_argument("--detector", default=DEFAULT_DETECTOR,
                       help="owlv2, detic, ground_truth or 'package.module:callable'")
        g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
        g.add_argument("--model", default=None,
                       help="OWLv2 hub id or local folder (default google/owlv2-base-patch16-ensemble); "
                            "DETIC weights path or URL")
        g.add_argument("--batch_size", type=int, default=8,
                       help="frames per detector call (OWLv2 halves it on CUDA out-of-memory)")
        g.add_argument("--nms_threshold", type=float, default=None,
                       help="detector NMS IoU threshold (default: the backend's, OWLv2 0.5, DETIC 0.7)")
        g.add_argument("--fps", type=float, default=16.0, help="frames sampled per second of video")
        g.add_argument("--max_side", type=int, default=480, help="longer side of sampled frames (0: source size)")
        g.add_argument("--min_track_len", type=float, default=3.0, help="minimum track duration, seconds")
        g.add_argument("--min_track_area", type=float, default=0.1,
                       help="minimum mean box area, as a fraction of the frame")
        t = parser.add_argument_group("tracker (ByteTrack)")
        t.add_argument("--track_thresh", type=float, default=0.55, help="high-score detection threshold")
        t.add_argument("--low_thresh", type=float, default=0.1, help="low-score detections below are ignored")
        t.add_argument("--match_thresh", type=float, default=0.45, help="maximum fused cost of a match")
        t.add_argument("--track_buffer", type=int, default=24, help="lost-track patience (30-fps frames)")
        t.add_argument("--motion_weight", type=float, default=0.4,
                       help="weight of motion (1 - IoU) against appearance in the matching cost")

    def validate_args(self, args: argparse.Namespace) -> None:
        try:
            validate_name(args.dataset_name)
        except InvalidItemError as exc:
            raise UsageError(f"--dataset_name: {exc}") from None
        _check_range("fps", args.fps, 1e-3)
        if args.max_side < 0:
            raise UsageError(f"--max_side must be >= 0, got {args.max_side}")
        if args.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
        if args.nms_threshold is not None:
            _check_range("nms_threshold", args.nms_threshold, 0.0, 1.0)
        _check_range("min_track_len", args.min_track_len, 0.0)
        _check_range("min_track_area", args.min_track_area, 0.0, 1.0)
        for name in ("track_thresh", "low_thresh", "match_thresh", "motion_weight"):
            _check_range(name, getattr(args, name), 0.0, 1.0)
        if args.track_buffer < 0:
            raise UsageError(f"--track_buffer must be >= 0, got {args.track_buffer}")
        try:
            detector_factory(args.detector)
        except (ValueError, DetectorError) as exc:
            raise UsageError(f"--detector: {exc}") from None
        try:
            args.class_prompts = resolve_asset(args.class_prompts, DEFAULT_PROMPTS_ASSET)
            read_prompts(args.class_prompts)
        except (AssetError, OSError, ValueError) as exc:
            raise UsageError(f"--class_prompts: {exc}") from None

    def job_key(self, args: argparse.Namespace) -> str:
        return f"{self.name}-{args.dataset_name}"

    def list_items(self, args: argparse.Namespace) -> list[str]:
        return read_item_list(args.yid_index_fn)

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        return DatasetLayout(args.base_dir).tracks_meta(args.dataset_name, item).exists()

    def setup(self, args: argparse.Namespace) -> _Resources:
        vocab = read_prompts(args.class_prompts)
        detector = build_detector(args, vocab)
        log.info("parse_tracks: detector %s (%s), %d classes, vocabulary %s",
                 args.detector, getattr(detector, "weights_id", None), len(vocab), vocab.hash[:12])
        return _Resources(detector, vocab, ParseConfig.from_args(args))

    def process(self, args: argparse.Namespace, item: str, resources: _Resources) -> dict[str, float]:
        layout = DatasetLayout(args.base_dir)
        segm_path = layout.video_segments(item)
        out_path = layout.tracks_meta(args.dataset_name, item)
        try:
            segments = read_segments(segm_path)
        except FileNotFoundError:
            raise NotReady(f"no segment file {segm_path} yet (download_videos.py has not finished this video)") from None
        except ValueError as exc:
            raise ItemError(f"{segm_path}: {exc}", category="bad_segments") from None
        if not segments:
            atomic_write_bytes(out_path, records_to_jsonl_gz_bytes([]))
            return {"video_s": 0.0, "frames": 0.0, "tracks": 0.0}
        video_path = layout.video_mp4(item)
        if not video_path.exists():
            raise ItemError(f"{video_path}: the video is missing (its segment file exists)", category="missing_video")
        total = sum(end - start for start, end in segments)
        with tqdm(total=round(total, 2), unit="s", desc=f"{item} video", leave=False, dynamic_ncols=True,
                  disable=not sys.stderr.isatty(), file=sys.stderr,
                  bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}, {rate_fmt}]") as bar:
            try:
                result = parse_video(
                    video_path, item, segments, resources.detector, resources.vocab.labels, resources.config,
                    vocab_hash=resources.vocab.hash, progress=bar,
                )
            except VideoError as exc:
                raise ItemError(f"corrupt video: {exc}", category="corrupt_video") from None
            except DetectorError as exc:
                raise SystemicError(f"detector failed on {item}: {exc}") from exc
        atomic_write_bytes(out_path, records_to_jsonl_gz_bytes(result.records))
        return {"video_s": result.video_seconds, "frames": float(result.frames), "tracks": float(len(result.records))}


PARSE_TRACKS_STAGE = ParseTracksStage()
