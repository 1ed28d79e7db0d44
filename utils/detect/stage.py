"""parse_tracks.py: the detector built from the flags, and one metadata file per video
(``tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip``), written atomically once every
segment is parsed. A video without a segment file yet is *not ready*; an empty one is done
with no tracks.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.assets import AssetError, resolve_asset
from utils.core.config import nested, option
from utils.core.errors import ItemError, NotReady, SystemicError, UsageError
from utils.core.io import atomic_write_bytes
from utils.core.layout import DatasetLayout
from utils.core.models import DEVICE_HELP
from utils.core.progress import progress_bar
from utils.core.video import VideoError
from utils.detect.detectors import DEFAULT_DETECTOR, Detector, DetectorError, make_detector
from utils.detect.detectors.base import detector_factory
from utils.detect.parse import DEFAULT_PROMPTS_ASSET, PARSE_GROUP, ParseConfig, parse_video
from utils.records.prompts import Vocabulary, read_prompts
from utils.records.segments import read_segments
from utils.records.tracks import records_to_jsonl_gz_bytes
from utils.runner.stage import Stage, StageConfig, check_dataset_name, read_item_list

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


def detector_options(config: ParseTracksConfig, vocab: Vocabulary) -> dict[str, Any]:
    """Keyword options for the ``--detector`` factory: every flag it accepts (``prompts``,
    ``device``, ``batch_size``, ``nms_threshold``, and ``--model`` as OWLv2's ``model_id``,
    DETIC's ``weights``, or a custom factory's ``model_id``)."""
    accepts = _accepts(detector_factory(config.detector))
    wanted: dict[str, Any] = {"prompts": list(vocab.lines), "device": config.device, "batch_size": config.parse.batch_size}
    if config.parse.nms_threshold is not None:
        wanted["nms_threshold"] = config.parse.nms_threshold
    options = {k: v for k, v in wanted.items() if accepts(k)}
    if config.model is not None:
        key = "weights" if config.detector == "detic" else "model_id"
        if not accepts(key):
            raise UsageError(f"--model: detector {config.detector!r} takes no {key!r} option")
        options[key] = str(config.model)
    return options


def build_detector(config: ParseTracksConfig, vocab: Vocabulary) -> Detector:
    """The ``--detector`` over the vocabulary's labels; a failure to build it (weights
    missing, offline, backend not installed) is a :class:`~utils.core.errors.SystemicError`."""
    options = detector_options(config, vocab)
    try:
        return make_detector(config.detector, list(vocab.labels), **options)
    except (DetectorError, ImportError, OSError, ValueError) as exc:
        hint = ""
        if config.detector == "owlv2" and "hf download" not in str(exc):
            hint = " (pass --model with a local folder of the model and processor to run offline)"
        raise SystemicError(f"cannot build detector {config.detector!r}: {exc}{hint}") from exc


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


@dataclass(frozen=True, kw_only=True)
class ParseTracksConfig(StageConfig):
    yid_index_fn: Path = option(group=PARSE_GROUP, help="YouTube ids, one per line")
    dataset_name: str = option("TrackVerseLVIS", group=PARSE_GROUP, help="tracks_meta/<dataset_name>/ subfolder")
    class_prompts: Path | None = option(
        None, group=PARSE_GROUP,
        help=f"class prompts file, one 'name (also known as ...)' per line (default: the "
             f"pinned {DEFAULT_PROMPTS_ASSET} of TrackVerse, fetched on first use)")
    detector: str = option(DEFAULT_DETECTOR, group=PARSE_GROUP,
                           help="owlv2, detic, ground_truth or 'package.module:callable'")
    device: str = option("auto", group=PARSE_GROUP, help=DEVICE_HELP)
    model: str | None = option(None, group=PARSE_GROUP,
                               help="OWLv2 hub id or local folder (default google/owlv2-base-patch16-ensemble); "
                                    "DETIC weights path or URL")
    parse: ParseConfig = nested(ParseConfig)


class ParseTracksStage(Stage[ParseTracksConfig]):
    """Detect + track every segment of every video of the list -> per-video track metadata."""

    name = "parse_tracks"
    description = (
        "Detect objects (open vocabulary) in every scene segment of each video and track them; "
        "write tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip per video."
    )
    default_slurm = {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32}

    config_class = ParseTracksConfig

    def validate(self, config: ParseTracksConfig) -> ParseTracksConfig:
        check_dataset_name(config.dataset_name)
        _check_range("fps", config.parse.fps, 1e-3)
        if config.parse.max_side is not None and config.parse.max_side < 0:
            raise UsageError(f"--max_side must be >= 0, got {config.parse.max_side}")
        if config.parse.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {config.parse.batch_size}")
        if config.parse.nms_threshold is not None:
            _check_range("nms_threshold", config.parse.nms_threshold, 0.0, 1.0)
        _check_range("min_track_len", config.parse.min_track_len, 0.0)
        _check_range("min_track_area", config.parse.min_track_area, 0.0, 1.0)
        for name in ("track_thresh", "low_thresh", "match_thresh", "motion_weight"):
            _check_range(name, getattr(config.parse, name), 0.0, 1.0)
        if config.parse.track_buffer < 0:
            raise UsageError(f"--track_buffer must be >= 0, got {config.parse.track_buffer}")
        try:
            detector_factory(config.detector)
        except (ValueError, DetectorError) as exc:
            raise UsageError(f"--detector: {exc}") from None
        try:
            prompts = resolve_asset(config.class_prompts, DEFAULT_PROMPTS_ASSET)
            read_prompts(prompts)
        except (AssetError, OSError, ValueError) as exc:
            raise UsageError(f"--class_prompts: {exc}") from None
        return dataclasses.replace(config, class_prompts=prompts)

    def job_key(self, config: ParseTracksConfig) -> str:
        return f"{self.name}-{config.dataset_name}"

    def list_items(self, config: ParseTracksConfig) -> list[str]:
        return read_item_list(config.yid_index_fn)

    def output_exists(self, config: ParseTracksConfig, item: str) -> bool:
        return DatasetLayout(config.base_dir).tracks_meta(config.dataset_name, item).exists()

    def setup(self, config: ParseTracksConfig) -> _Resources:
        vocab = read_prompts(config.class_prompts)
        detector = build_detector(config, vocab)
        log.info("parse_tracks: detector %s (%s), %d classes, vocabulary %s",
                 config.detector, getattr(detector, "weights_id", None), len(vocab), vocab.hash[:12])
        return _Resources(detector, vocab, config.parse)

    def process(self, config: ParseTracksConfig, item: str, resources: _Resources) -> dict[str, float]:
        layout = DatasetLayout(config.base_dir)
        segm_path = layout.video_segments(item)
        out_path = layout.tracks_meta(config.dataset_name, item)
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
        with progress_bar(total=round(total, 2), unit="s", desc=f"{item} video", inner=True,
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
