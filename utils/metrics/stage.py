"""visual_metrics.py: the metrics of every track of an index, in chunks of index lines; each
chunk is one Parquet file of :mod:`utils.records.metrics_store`, written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.core.config import option
from utils.core.errors import InvalidItemError, ItemError, NotReady, UsageError
from utils.core.layout import DatasetLayout, companion_path, inside, require_dataset, require_dataset_root
from utils.core.models import DEVICE_HELP, resolve_device
from utils.core.video import VideoError
from utils.metrics.compute import QUANTILE_COLUMNS, ClipEmbedder, DISFlow, RAFTFlow, track_motion
from utils.records.index_file import load_track_table
from utils.records.metrics_store import EMBEDDINGS, MOTION, metric_dir, write_metric_file
from utils.records.track_files import iter_records
from utils.records.tracks import RecordsFileError, TrackRecordError
from utils.runner.stage import Stage, StageConfig, check_dataset_name

log = logging.getLogger("trackverse.metrics")

#: the category of a clip that does not decode (a plain VideoError)
CORRUPT_CLIP = "corrupt_clip"


def clip_failure_category(exc: VideoError) -> str:
    """What an unreadable clip is counted and journaled as: the error type's category
    (``truncated`` for a clip cut short), ``corrupt_clip`` for a plain VideoError."""
    return CORRUPT_CLIP if exc.category == VideoError.category else exc.category


@dataclass
class TrackList:
    tids: list[str]
    fns: list[str]


def load_track_list(index_file: Path) -> TrackList:
    """(tid, fn) of every line of an index or subset file, from its Parquet companion when
    curate_db.py wrote one, else by streaming the JSON lines."""
    check_index_file(index_file)
    if companion_path(index_file).is_file():
        table = load_track_table(index_file, columns=["tid", "fn"]).table
        return TrackList(table.column("tid").to_pylist(), table.column("fn").to_pylist())
    tids, fns = [], []
    with _as_usage_error(index_file):
        for record in iter_records(index_file, validate=False):
            tids.append(record.tid)
            fns.append(record.fn)
    if not tids:
        raise UsageError(f"index file {index_file} has no tracks")
    return TrackList(tids, fns)


def count_tracks(index_file: Path) -> int:
    """Lines of an index or subset file: from its companion's metadata when there is one."""
    check_index_file(index_file)
    if companion_path(index_file).is_file():
        return load_track_table(index_file, columns=["row"]).table.num_rows
    with _as_usage_error(index_file):
        return sum(1 for _ in iter_records(index_file, validate=False))


def check_index_file(index_file: Path) -> None:
    """UsageError unless ``--index_file`` is an existing file."""
    if index_file.is_dir():
        raise UsageError(f"--index_file {index_file} is a folder, not an index or subset file")
    if not index_file.is_file():
        raise UsageError(f"--index_file {index_file} does not exist")


@contextlib.contextmanager
def _as_usage_error(index_file: Path) -> Iterator[None]:
    """A file that is not gzip/plain JSON lines of track records is a bad input (exit 2)."""
    try:
        yield
    except (RecordsFileError, TrackRecordError) as exc:
        raise UsageError(f"--index_file {index_file} is not a track index or subset file: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class VisualMetricsConfig(StageConfig):
    dataset_name: str = option("TrackVerseLVIS", help="dataset whose clips are measured and whose metric files are written")
    index_file: Path = option(aliases=["db_meta_file"],
                              help="index or subset file (relative to --base_dir, or absolute)")
    metric: str = option(choices=[MOTION, EMBEDDINGS],
                         help="what to compute per track: motion (optical flow) or embeddings (ResNet-50)")
    clips_dir: Path | None = option(
        None, help="folder the records' fn are relative to (default <base_dir>/tracks_mp4/<dataset_name>)")
    flow: str = option("auto", choices=["auto", "dis", "raft"], help="optical flow: RAFT on GPU, DIS on CPU (auto)")
    raft_model: str = option("large", choices=["large", "small"],
                             help="RAFT variant with --flow raft: large (more accurate) or small (faster)")
    flow_weights: str = option("default", help="RAFT weights: default (hub) or a local path")
    embedding_weights: str = option("default", help="ResNet-50 weights: default (torchvision ImageNet) or a local path")
    device: str = option("auto", help=DEVICE_HELP)
    chunk_size: int = option(256, help="tracks per output file (one item)")
    allow_missing_clips: bool = option(
        False, help="finish a chunk even when some clips are missing (else it waits for them)")


@dataclass
class _Resources:
    model: DISFlow | RAFTFlow | ClipEmbedder
    tracks: TrackList


class VisualMetricsStage(Stage[VisualMetricsConfig]):
    name = "visual_metrics"
    description = "Per-track motion (optical flow) or appearance embeddings, sharded over the index."
    default_slurm = {"cpus_per_task": 8, "gpus_per_node": 1, "mem_gb": 32}
    config_class = VisualMetricsConfig

    def validate(self, config: VisualMetricsConfig) -> VisualMetricsConfig:
        check_dataset_name(config.dataset_name)
        if config.chunk_size < 1:
            raise UsageError("--chunk_size must be positive")
        index_file = DatasetLayout(config.base_dir).relative(config.index_file)
        if count_tracks(index_file) == 0:  # a run with no item would end "done" having done nothing
            raise UsageError(f"index file {index_file} has no tracks")
        # then the clips: from the root (a mistyped root or dataset name is no "not ready"), or from
        # --clips_dir, when the root only receives the metric files (made if need be, as any output)
        if config.clips_dir is None:
            require_dataset_root(config.base_dir)
            require_dataset(config.base_dir, config.dataset_name, ("tracks_mp4",), producers=("extract_tracks",))
        elif not Path(config.clips_dir).is_dir():
            problem = "is a file, not a folder" if Path(config.clips_dir).exists() else "does not exist"
            raise UsageError(f"--clips_dir {config.clips_dir} {problem}")
        return dataclasses.replace(config, index_file=index_file)

    def job_key(self, config: VisualMetricsConfig) -> str:
        return f"visual_metrics-{config.metric}-{config.dataset_name}"

    def list_items(self, config: VisualMetricsConfig) -> list[str]:
        n = count_tracks(config.index_file)
        return [f"chunk{config.chunk_size}-{i:07d}" for i in range(math.ceil(n / config.chunk_size))]

    def output_path(self, config: VisualMetricsConfig, item: str) -> Path:
        return metric_dir(config.base_dir, config.dataset_name, config.metric) / f"{item}.parquet"

    def output_exists(self, config: VisualMetricsConfig, item: str) -> bool:
        return self.output_path(config, item).exists()

    def setup(self, config: VisualMetricsConfig, items: Sequence[str]) -> _Resources:
        tracks = load_track_list(config.index_file)
        if config.metric == EMBEDDINGS:
            return _Resources(ClipEmbedder(config.embedding_weights, config.device), tracks)
        flow = config.flow
        if flow == "auto":
            flow = "raft" if resolve_device(config.device) == "cuda" else "dis"
        if flow == "raft":
            return _Resources(RAFTFlow(config.flow_weights, config.device, config.raft_model), tracks)
        return _Resources(DISFlow(), tracks)

    def process(self, config: VisualMetricsConfig, item: str, resources: _Resources) -> dict[str, float]:
        tracks = resources.tracks
        chunk = int(item.rsplit("-", 1)[1])
        lines = range(chunk * config.chunk_size, min((chunk + 1) * config.chunk_size, len(tracks.tids)))
        clips_dir = Path(config.clips_dir) if config.clips_dir else DatasetLayout(config.base_dir).tracks_mp4_dir(config.dataset_name)
        paths: dict[int, Path] = {}
        problems: list[str] = []
        for i in lines:
            try:
                paths[i] = inside(clips_dir, tracks.fns[i])
            except InvalidItemError as exc:
                problems.append(f"line {i}: {exc}")
        missing = [i for i, p in paths.items() if not p.exists()]
        if missing and not config.allow_missing_clips:
            raise NotReady(f"{len(missing)} of {len(lines)} clips not extracted yet, e.g. {paths[missing[0]]}")
        rows_tid, rows_fn, values, pairs_count = [], [], [], []
        unreadable: dict[str, int] = {}  # category -> clips (truncated, corrupt_clip)
        for i in lines:
            if i not in paths or i in missing:
                continue
            try:
                if config.metric == EMBEDDINGS:
                    values.append(resources.model(paths[i]))
                else:
                    quantiles, n_pairs = track_motion(paths[i], resources.model)
                    values.append(quantiles)
                    pairs_count.append(n_pairs)
            except VideoError as exc:  # one unreadable clip: no value for it, the chunk goes on
                category = clip_failure_category(exc)
                unreadable[category] = unreadable.get(category, 0) + 1
                problems.append(f"[{category}] {exc}")
                continue
            rows_tid.append(tracks.tids[i])
            rows_fn.append(tracks.fns[i])
        for problem in problems:
            log.warning("%s: %s", item, problem)
        if not rows_tid and lines:
            # one kind of failure names the chunk's (every clip truncated: "truncated")
            category = next(iter(unreadable)) if len(unreadable) == 1 and len(problems) == sum(unreadable.values()) \
                else CORRUPT_CLIP
            raise ItemError(f"no clip of {item} could be read: {problems[:3]}", category=category)
        if config.metric == EMBEDDINGS:
            columns = {"embedding": np.stack(values)}
        else:
            stacked = np.stack(values)
            columns = {name: stacked[:, k] for k, name in enumerate(QUANTILE_COLUMNS)}
            columns["num_pairs"] = np.asarray(pairs_count, dtype=np.float64)
        write_metric_file(self.output_path(config, item), rows_tid, rows_fn, columns)
        return {"clips": float(len(rows_tid)), "unreadable_clips": float(len(problems)),
                "missing_clips": float(len(missing)),
                **{f"{category}_clips": float(n) for category, n in sorted(unreadable.items()) if category != CORRUPT_CLIP}}


VISUAL_METRICS_STAGE = VisualMetricsStage()
