"""parse_tracks.py: the detector built from the flags, and one metadata file per video
(``tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip``), written atomically once every
segment is parsed, with each kept track's embedding beside it (``<yid>-emb.parquet``,
:mod:`utils.records.track_embeddings`: written first, and the metadata counts as done only with
the embeddings file written with it). A video without a segment file yet is *not ready*; an
empty one is done with no tracks.

A metadata file is done only for what produced it: its gzip header records the detector, the
weights id and the vocabulary hash (:class:`~utils.records.provenance.Provenance`, read without
decompressing). Before any work (and before a ``--slurm`` submission) :meth:`ParseTracksStage.validate`
reads the provenance of the run's existing metadata files; if some were parsed with another
detector, weights or vocabulary the run stops with a usage error that counts them, unless
``--reparse_stale`` is given, in which case they are parsed again (atomically replaced).
The weights id is known before the detector is built: the ``--model`` string (a local path made
absolute), else the default of the backend's weights option (OWLv2's hub id, DETIC's URL), else
none. Files written before provenance headers are judged by their first record's ``detector``,
``weights`` and ``vocab_hash``; an empty one (or a damaged one) has no provenance and counts as
stale.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.assets import AssetError, resolve_asset
from utils.core.config import nested, option
from utils.core.errors import ItemError, NotReady, SystemicError, UsageError, is_systemic
from utils.core.layout import DatasetLayout, require_dataset_root
from utils.core.models import DEVICE_HELP
from utils.core.progress import progress_bar
from utils.core.video import VideoError
from utils.detect.detectors import DEFAULT_DETECTOR, Detector, DetectorError, make_detector
from utils.detect.detectors.owlv2 import DEFAULT_MODEL_ID as OWLV2_DEFAULT_MODEL_ID
from utils.detect.detectors.registry import detector_factory
from utils.detect.parse import DEFAULT_PROMPTS_ASSET, PARSE_GROUP, ParseConfig, parse_video
from utils.detect.pipeline import ParsePipeline
from utils.records.prompts import Vocabulary, read_prompts
from utils.records.provenance import Provenance, read_provenance
from utils.records.segments import read_segments
from utils.records.track_embeddings import embeddings_path, embeddings_problem, write_video_tracks
from utils.records.tracks import RecordsFileError
from utils.runner.stage import (
    Stage,
    StageConfig,
    check_dataset_name,
    read_item_list,
)

log = logging.getLogger(__name__)

#: with --decode_workers, at most this many items past the current one are looked at to decode ahead
LOOKAHEAD_ITEMS = 32


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
    options.update(_speed_options(config, accepts))
    if config.model is not None:
        key = "weights" if config.detector == "detic" else "model_id"
        if not accepts(key):
            raise UsageError(f"--model: detector {config.detector!r} takes no {key!r} option")
        options[key] = str(config.model)
    return options


def _speed_options(config: ParseTracksConfig, accepts: Callable[[str], bool]) -> dict[str, Any]:
    """``--precision`` and ``--compile`` when not their defaults; a :class:`UsageError` when the
    detector takes no such option."""
    options: dict[str, Any] = {}
    for key, value, default in (("precision", config.parse.precision, "auto"), ("compile", config.parse.compile, False)):
        if value != default:
            if not accepts(key):
                raise UsageError(f"--{key}: detector {config.detector!r} takes no {key!r} option")
            options[key] = value
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


# ---------------------------------------------------------------------------- provenance


def _weights_option(spec: str) -> str:
    return "weights" if spec == "detic" else "model_id"


def expected_weights_id(detector: str, model: str | None) -> str | None:
    """The weights id a run will record, known without building the detector: ``--model``
    (an existing local path made absolute), else the default of the factory's weights option
    (DETIC's URL), else OWLv2's default hub id for ``owlv2``, else ``None``."""
    if model is not None:
        return str(Path(model).resolve()) if os.path.exists(model) else str(model)
    try:
        param = inspect.signature(detector_factory(detector)).parameters.get(_weights_option(detector))
    except (TypeError, ValueError, DetectorError):
        param = None
    if param is not None and isinstance(param.default, str | os.PathLike):
        return str(param.default)
    if detector == "owlv2":
        return OWLV2_DEFAULT_MODEL_ID
    return None


@functools.lru_cache(maxsize=8)
def _expected(prompts: str, detector: str, model: str | None) -> Provenance:
    vocab = read_prompts(prompts)
    try:
        name = getattr(detector_factory(detector), "name", None)
    except (TypeError, ValueError, DetectorError):
        name = None
    return Provenance(detector=name if isinstance(name, str) else detector, weights=expected_weights_id(detector, model),
                      vocab_hash=vocab.hash, classes=len(vocab), detector_spec=detector)


def expected_provenance(config: ParseTracksConfig) -> Provenance:
    """What this run's metadata files will record (``config`` validated: prompts resolved).
    ``detector`` is the factory's ``name`` when it declares one, else the spec."""
    if config.class_prompts is None:
        raise UsageError("--class_prompts is not resolved (validate the config first)")
    return _expected(str(config.class_prompts), config.detector, config.model)


def provenance_matches(found: Provenance | None, expected: Provenance) -> bool:
    """Whether a file's provenance is this run's: the same vocabulary hash, and the same
    ``--detector`` and weights id (a header), or the same detector name and, when this run's
    weights id is known, the same weights (a file from before headers: its first record)."""
    if found is None or not found.known or found.vocab_hash != expected.vocab_hash:
        return False
    if found.source == "header":
        return found.detector_spec == expected.detector_spec and found.weights == expected.weights
    if found.detector not in (expected.detector, expected.detector_spec):
        return False
    if expected.weights is None or found.weights == expected.weights:
        return True
    # records keep --model as given; this run's id has a local path made absolute
    return found.weights is not None and os.path.exists(found.weights) and \
        str(Path(found.weights).resolve()) == expected.weights


_NO_PROVENANCE = "without provenance (written before parse_tracks recorded it, or by another tool)"
_UNREADABLE = "unreadable (damaged metadata file)"
_NO_EMBEDDINGS = "without track embeddings (parsed before parse_tracks kept them, or the -emb.parquet file was removed)"
_NOT_WITH = (_NO_PROVENANCE, _UNREADABLE, _NO_EMBEDDINGS)  # descriptions that read without "with"


@dataclass
class StaleScan:
    """What :func:`scan_metadata` found among the metadata files of a run's videos."""

    expected: Provenance
    existing: int = 0  # videos with a metadata file
    stale: dict[str, int] = dataclasses.field(default_factory=dict)  # description -> videos

    @property
    def stale_count(self) -> int:
        return sum(self.stale.values())

    def groups(self) -> str:
        return "; ".join(f"{n} {'with ' if what not in _NOT_WITH else ''}{what}"
                         for what, n in sorted(self.stale.items(), key=lambda kv: (-kv[1], kv[0])))


def _file_state(path: Path, expected: Provenance) -> str | None:
    """``""``: no file; ``None``: made for ``expected`` (whether its embeddings file is the one
    written with it is :meth:`ParseTracksStage.output_exists`'s to check); else what the file
    was parsed with, or that it has no embeddings file at all: re-parsing it costs detector time,
    so like another vocabulary it waits for ``--reparse_stale``."""
    try:
        found = read_provenance(path)
    except FileNotFoundError:
        return ""
    except (OSError, RecordsFileError) as exc:
        if is_systemic(exc):
            raise
        return _UNREADABLE
    if provenance_matches(found, expected):
        return None if embeddings_path(path).exists() else _NO_EMBEDDINGS
    if found is None or not found.known:
        return _NO_PROVENANCE
    return found.describe()


def scan_metadata(config: ParseTracksConfig, items: Sequence[str], threads: int = 16) -> StaleScan:
    """Read the provenance of the existing metadata files of ``items`` (a gzip header each,
    on a few threads: cheap on network file systems too)."""
    expected = expected_provenance(config)
    layout = DatasetLayout(config.base_dir)
    paths = []
    for item in items:
        try:
            paths.append(layout.tracks_meta(config.dataset_name, item))
        except ValueError:  # an invalid id: journaled as such by the run
            continue
    scan = StaleScan(expected)
    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        for state in pool.map(lambda p: _file_state(p, expected), paths):
            if state == "":
                continue
            scan.existing += 1
            if state is not None:
                scan.stale[state] = scan.stale.get(state, 0) + 1
    return scan


def check_stale(config: ParseTracksConfig, items: Sequence[str]) -> StaleScan:
    """Raise :class:`UsageError` when metadata of this run's videos (``items``) were parsed with
    another detector, weights or vocabulary, unless ``--reparse_stale``; returns the scan."""
    scan = scan_metadata(config, items)
    if not scan.stale:
        return scan
    folder = f"tracks_meta/{config.dataset_name}"
    n, ok = scan.stale_count, scan.existing - scan.stale_count
    videos = f"{n} of the {scan.existing} video{'s' if scan.existing != 1 else ''} of this run with metadata in {folder}"
    if not config.reparse_stale:
        raise UsageError(
            f"{videos} {'was' if n == 1 else 'were'} parsed otherwise than this run would "
            f"({scan.expected.describe()}, with track embeddings): {scan.groups()}. Re-run with --reparse_stale to parse "
            f"{'it' if n == 1 else f'these {n}'} again" + (f" (the other {ok} {'is' if ok == 1 else 'are'} skipped)"
                                                         if ok else "")
            + ", or give another --dataset_name"
        )
    log.warning("parse_tracks: --reparse_stale: %s will be parsed again with %s: %s",
                videos, scan.expected.describe(), scan.groups())
    return scan


# ---------------------------------------------------------------------------- the stage


@dataclass
class _Resources:
    detector: Detector
    vocab: Vocabulary
    config: ParseConfig
    provenance: Provenance  # what every metadata file of the run records in its header
    pipeline: ParsePipeline | None = None  # --decode_workers > 0
    items: list[str] = dataclasses.field(default_factory=list)  # this rank's, in order (what to decode ahead)


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
    reparse_stale: bool = option(
        False, group=PARSE_GROUP,
        help="parse again the videos whose metadata were made with another detector, weights or vocabulary, "
             "or before parse_tracks kept track embeddings "
             "(without it such a run stops before any work, saying how many and with what)")
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
        if config.parse.decode_workers < 0:
            raise UsageError(f"--decode_workers must be >= 0, got {config.parse.decode_workers}")
        try:
            factory = detector_factory(config.detector)
        except (ValueError, DetectorError) as exc:
            raise UsageError(f"--detector: {exc}") from None
        _speed_options(config, _accepts(factory))
        try:
            prompts = resolve_asset(config.class_prompts, DEFAULT_PROMPTS_ASSET, flag="--class_prompts")
            read_prompts(prompts)
        except (AssetError, OSError, ValueError) as exc:
            raise UsageError(f"--class_prompts: {exc}") from None
        config = dataclasses.replace(config, class_prompts=prompts)
        # the flags first, then the root: parsing reads what download_videos.py made, and creates no root
        require_dataset_root(config.base_dir, needs=("videos_mp4", "videos_segm"))
        return config

    def check_items(self, config: ParseTracksConfig, items: Sequence[str]) -> None:
        check_stale(config, items)

    def job_key(self, config: ParseTracksConfig) -> str:
        return f"{self.name}-{config.dataset_name}"

    def list_items(self, config: ParseTracksConfig) -> list[str]:
        return read_item_list(config.yid_index_fn)

    def output_exists(self, config: ParseTracksConfig, item: str) -> bool:
        """The metadata file exists and was made with this run's detector, weights and
        vocabulary. One made otherwise is parsed again with ``--reparse_stale``, else (a file
        that appeared after :meth:`validate` checked) a transient failure that names it."""
        path = DatasetLayout(config.base_dir).tracks_meta(config.dataset_name, item)
        expected = expected_provenance(config)
        state = _file_state(path, expected)
        if state is None:
            # done only with the embeddings file written with it: another one is what a kill between
            # the two writes of a re-parse leaves
            return embeddings_problem(path) is None
        if state == "" or config.reparse_stale:
            return False
        raise ItemError(f"{path} was parsed {'with ' if state not in _NOT_WITH else ''}{state}, "
                        f"not with this run's {expected.describe()}: re-run with --reparse_stale",
                        transient=True, category="stale_metadata")

    def setup(self, config: ParseTracksConfig, items: Sequence[str]) -> _Resources:
        vocab = read_prompts(config.class_prompts)
        detector = build_detector(config, vocab)
        log.info("parse_tracks: detector %s (%s), %d classes, vocabulary %s",
                 config.detector, getattr(detector, "weights_id", None), len(vocab), vocab.hash[:12])
        prov = detector.provenance() if hasattr(detector, "provenance") else {}
        name = str(prov.get("detector") or getattr(detector, "name", type(detector).__name__))
        provenance = dataclasses.replace(expected_provenance(config), detector=name, vocab_hash=vocab.hash,
                                         classes=len(vocab))
        if config.parse.decode_workers == 0:
            return _Resources(detector, vocab, config.parse, provenance)
        pipeline = ParsePipeline(detector, vocab.labels, config.parse, vocab_hash=vocab.hash,
                                 file_labels=vocab.file_labels)
        return _Resources(detector, vocab, config.parse, provenance, pipeline, list(items))

    def teardown(self, resources: _Resources) -> None:
        if resources.pipeline is not None:
            resources.pipeline.close()

    def _ahead(self, config: ParseTracksConfig, item: str, resources: _Resources) -> Iterator[tuple[str, Path, Any]]:
        """The videos after ``item`` in this rank's list that :meth:`process` will parse (not
        done, segments and video present), for the pipeline to decode ahead; lazily."""
        layout = DatasetLayout(config.base_dir)
        try:
            position = resources.items.index(item)
        except ValueError:
            return
        for other in resources.items[position + 1:position + 1 + LOOKAHEAD_ITEMS]:
            try:
                if self.output_exists(config, other):
                    continue
                segments = read_segments(layout.video_segments(other))
                video_path = layout.video_mp4(other)
            except (ItemError, OSError, ValueError):  # process() reports it when it gets there
                continue
            if segments and video_path.exists():
                yield other, video_path, segments

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
            write_video_tracks(out_path, [], [], resources.provenance)
            return {"video_s": 0.0, "frames": 0.0, "tracks": 0.0}
        video_path = layout.video_mp4(item)
        if not video_path.exists():
            raise ItemError(f"{video_path}: the video is missing (its segment file exists)", category="missing_video")
        total = sum(end - start for start, end in segments)
        with progress_bar(total=round(total, 2), unit="s", desc=f"{item} video", inner=True,
                          bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}, {rate_fmt}]") as bar:
            try:
                if resources.pipeline is not None:
                    result = resources.pipeline.parse(item, video_path, segments,
                                                      self._ahead(config, item, resources), progress=bar)
                else:
                    result = parse_video(
                        video_path, item, segments, resources.detector, resources.vocab.labels, resources.config,
                        vocab_hash=resources.vocab.hash, progress=bar, file_labels=resources.vocab.file_labels,
                    )
            except VideoError as exc:
                raise ItemError(f"corrupt video: {exc}", category=exc.category) from None
            except DetectorError as exc:
                raise SystemicError(f"detector failed on {item}: {exc}") from exc
        write_video_tracks(out_path, result.records, result.embeddings, resources.provenance)
        return {"video_s": result.video_seconds, "frames": float(result.frames), "tracks": float(len(result.records))}


PARSE_TRACKS_STAGE = ParseTracksStage()
