"""visual_metrics.py: the metrics of every track of an index, in chunks of index lines; each
chunk is one Parquet file of :mod:`utils.records.metrics_store`, written atomically.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.core.errors import ItemError, NotReady, UsageError
from utils.core.layout import DatasetLayout, InvalidItemError, inside
from utils.core.models import resolve_device
from utils.core.video import VideoError
from utils.metrics.compute import QUANTILE_COLUMNS, ClipEmbedder, DISFlow, RAFTFlow, track_motion
from utils.records.metrics_store import EMBEDDINGS, MOTION, metric_dir, write_metric_file
from utils.runner.stage import Stage

log = logging.getLogger("trackverse.metrics")


# ---------------------------------------------------------------------------- the stage


@dataclass
class TrackList:
    tids: list[str]
    fns: list[str]


def load_track_list(index_file: Path) -> TrackList:
    """(tid, fn) of every line of an index or subset file, from its Parquet companion when
    curate_db.py wrote one, else by streaming the JSON lines."""
    from utils.core.layout import companion_path
    from utils.records.index_file import load_track_table
    from utils.records.tracks import iter_records

    if not index_file.is_file():
        raise UsageError(f"index file {index_file} does not exist")
    if companion_path(index_file).is_file():
        table = load_track_table(index_file, columns=["tid", "fn"]).table
        return TrackList(table.column("tid").to_pylist(), table.column("fn").to_pylist())
    tids, fns = [], []
    for record in iter_records(index_file, validate=False):
        tids.append(record.tid)
        fns.append(record.fn)
    if not tids:
        raise UsageError(f"index file {index_file} has no tracks")
    return TrackList(tids, fns)


class VisualMetricsStage(Stage):
    name = "visual_metrics"
    description = "Per-track motion (optical flow) or appearance embeddings, sharded over the index."
    default_slurm = {"cpus_per_task": 8, "gpus_per_node": 1, "mem_gb": 32}

    def __init__(self) -> None:
        self._tracks: dict[str, TrackList] = {}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset_name", default="TrackVerseLVIS")
        parser.add_argument("--index_file", "--db_meta_file", dest="index_file", required=True,
                            help="index or subset file (relative to --base_dir, or absolute)")
        parser.add_argument("--metric", required=True, choices=[MOTION, EMBEDDINGS])
        parser.add_argument("--clips_dir", default=None,
                            help="folder the records' fn are relative to (default <base_dir>/tracks_mp4/<dataset_name>)")
        parser.add_argument("--flow", default="auto", choices=["auto", "dis", "raft"],
                            help="optical flow: RAFT on GPU, DIS on CPU (auto)")
        parser.add_argument("--raft_model", default="large", choices=["large", "small"])
        parser.add_argument("--flow_weights", default="default", help="RAFT weights: default (hub) or a local path")
        parser.add_argument("--embedding_weights", default="default",
                            help="ResNet-50 weights: default (torchvision ImageNet) or a local path")
        parser.add_argument("--device", default="auto")
        parser.add_argument("--chunk_size", type=int, default=256, help="tracks per output file (one item)")
        parser.add_argument("--allow_missing_clips", action="store_true",
                            help="finish a chunk even when some clips are missing (else it waits for them)")

    def validate_args(self, args: argparse.Namespace) -> None:
        if args.chunk_size < 1:
            raise UsageError("--chunk_size must be positive")

    def job_key(self, args: argparse.Namespace) -> str:
        return f"visual_metrics-{args.metric}-{args.dataset_name}"

    def _index(self, args: argparse.Namespace) -> Path:
        return DatasetLayout(args.base_dir).relative(args.index_file)

    def tracks(self, args: argparse.Namespace) -> TrackList:
        key = str(self._index(args))
        if key not in self._tracks:
            self._tracks[key] = load_track_list(self._index(args))
        return self._tracks[key]

    def list_items(self, args: argparse.Namespace) -> list[str]:
        n = len(self.tracks(args).tids)
        return [f"chunk{args.chunk_size}-{i:07d}" for i in range(math.ceil(n / args.chunk_size))]

    def output_path(self, args: argparse.Namespace, item: str) -> Path:
        return metric_dir(args.base_dir, args.dataset_name, args.metric) / f"{item}.parquet"

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        return self.output_path(args, item).exists()

    def setup(self, args: argparse.Namespace) -> DISFlow | RAFTFlow | ClipEmbedder:
        if args.metric == EMBEDDINGS:
            return ClipEmbedder(args.embedding_weights, args.device)
        flow = args.flow
        if flow == "auto":
            flow = "raft" if resolve_device(args.device) == "cuda" else "dis"
        if flow == "raft":
            return RAFTFlow(args.flow_weights, args.device, args.raft_model)
        return DISFlow()

    def process(self, args: argparse.Namespace, item: str, resources) -> dict[str, float]:
        tracks = self.tracks(args)
        chunk = int(item.rsplit("-", 1)[1])
        lines = range(chunk * args.chunk_size, min((chunk + 1) * args.chunk_size, len(tracks.tids)))
        clips_dir = Path(args.clips_dir) if args.clips_dir else DatasetLayout(args.base_dir).base_dir / "tracks_mp4" / args.dataset_name
        paths: dict[int, Path] = {}
        problems: list[str] = []
        for i in lines:
            try:
                paths[i] = inside(clips_dir, tracks.fns[i])
            except InvalidItemError as exc:
                problems.append(f"line {i}: {exc}")
        missing = [i for i, p in paths.items() if not p.exists()]
        if missing and not args.allow_missing_clips:
            raise NotReady(f"{len(missing)} of {len(lines)} clips not extracted yet, e.g. {paths[missing[0]]}")
        rows_tid, rows_fn, values, pairs_count = [], [], [], []
        for i in lines:
            if i not in paths or i in missing:
                continue
            try:
                if args.metric == EMBEDDINGS:
                    values.append(resources(paths[i]))
                else:
                    quantiles, n_pairs = track_motion(paths[i], resources)
                    values.append(quantiles)
                    pairs_count.append(n_pairs)
            except VideoError as exc:  # one corrupt clip: no value for it, the chunk goes on
                problems.append(str(exc))
                continue
            rows_tid.append(tracks.tids[i])
            rows_fn.append(tracks.fns[i])
        for problem in problems:
            log.warning("%s: %s", item, problem)
        if not rows_tid and lines:
            raise ItemError(f"no clip of {item} could be read: {problems[:3]}", category="corrupt_clip")
        if args.metric == EMBEDDINGS:
            columns = {"embedding": np.stack(values)}
        else:
            stacked = np.stack(values)
            columns = {name: stacked[:, k] for k, name in enumerate(QUANTILE_COLUMNS)}
            columns["num_pairs"] = np.asarray(pairs_count, dtype=np.float64)
        write_metric_file(self.output_path(args, item), rows_tid, rows_fn, columns)
        return {"clips": float(len(rows_tid)), "unreadable_clips": float(len(problems)),
                "missing_clips": float(len(missing))}


VISUAL_METRICS_STAGE = VisualMetricsStage()
