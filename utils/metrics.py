"""Step 5a: per-track visual metrics (visual_metrics.py).

- ``motion``: optical-flow magnitude quantiles (0, .1, .25, .5, .75, .9, 1) over frame pairs of
  the clip sampled at 16 fps, a pair every 4 frames (the original paired consecutive frames and
  kept every other pair), frames resized to a short side of 360 px; per track, the mean of each
  quantile over its pairs. RAFT (torchvision) on GPU, OpenCV DIS on CPU.
- ``embeddings``: ResNet-50 (torchvision ImageNet weights) penultimate features of the clip's
  keyframes at 224x224, averaged, L2-normalised (2048-d).

Tracks are processed in chunks of index lines; each chunk is one Parquet file in the format
of ``utils/metrics_store.py`` (the reader curate_db.py uses), written atomically.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.filters import IMAGENET_MEAN, IMAGENET_STD
from utils.launch import ItemError, NotReady, Stage, SystemicError, UsageError
from utils.layout import DatasetLayout, InvalidItemError, inside
from utils.metrics_store import EMBEDDINGS, MOTION, metric_dir, write_metric_file
from utils.video import VideoError, keyframe_times, probe_video, read_frames, read_frames_at

log = logging.getLogger("trackverse.metrics")

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
QUANTILE_COLUMNS = ("q0", "q10", "q25", "q50", "q75", "q90", "q100")
FLOW_FPS = 16.0
PAIR_STEP = 4  # frames between the starts of two kept pairs
SHORT_SIDE = 360


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_torchvision_model(build, hub_weights, weights: str, what: str, flag: str) -> torch.nn.Module:
    """``build(weights=...)`` with ``weights`` = ``default`` (torchvision's hub, cached), a local
    state-dict path, or ``none`` (random: tests). Failing to load is systemic."""
    try:
        if weights == "default":
            return build(weights=hub_weights, progress=True)
        net = build(weights=None)
        if weights != "none":
            net.load_state_dict(torch.load(weights, map_location="cpu"))
        return net
    except Exception as exc:
        raise SystemicError(f"cannot load {what} weights ({weights}): {exc}. Offline? pass a local state dict "
                            f"with {flag}") from exc


def flow_size(width: int, height: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """(w, h) with the short side ``short_side`` and both multiples of 8 (RAFT needs it)."""
    if width <= height:
        return short_side, max(8, int(height / width * short_side) // 8 * 8)
    return max(8, int(width / height * short_side) // 8 * 8), short_side


def frame_pairs(clip: Path, fps: float = FLOW_FPS, step: int = PAIR_STEP) -> list[tuple[np.ndarray, np.ndarray]]:
    info = probe_video(clip, decode_check=False)
    frames = [f.image for f in read_frames(clip, fps=fps, size=flow_size(info.width, info.height))]
    return [(frames[i], frames[i + 1]) for i in range(0, len(frames) - 1, step)]


def magnitude_quantiles(flow: np.ndarray) -> np.ndarray:
    """Quantiles of the per-pixel flow magnitude of an (H, W, 2) flow field."""
    magnitude = np.sqrt((flow.astype(np.float64) ** 2).sum(axis=-1)).ravel()
    return np.quantile(magnitude, QUANTILES)


class DISFlow:
    """OpenCV's DIS optical flow (CPU)."""

    name = "dis"

    def __init__(self) -> None:
        import cv2

        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        gray = self._cv2.cvtColor
        return [self._dis.calc(gray(a, self._cv2.COLOR_RGB2GRAY), gray(b, self._cv2.COLOR_RGB2GRAY), None)
                for a, b in pairs]


class RAFTFlow:
    """torchvision's RAFT (GPU; runs on CPU too, slowly). ``weights``: ``default`` (torchvision
    hub), a local state-dict path, or ``none`` (random: tests)."""

    name = "raft"

    def __init__(self, weights: str = "default", device: str = "auto", model: str = "large", batch_size: int = 8):
        from torchvision.models import optical_flow

        self.device = resolve_device(device)
        build = {"large": optical_flow.raft_large, "small": optical_flow.raft_small}[model]
        hub = {"large": optical_flow.Raft_Large_Weights.DEFAULT, "small": optical_flow.Raft_Small_Weights.DEFAULT}
        net = load_torchvision_model(build, hub[model], weights, f"RAFT-{model}", "--flow_weights")
        self.model = net.to(self.device).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i in range(0, len(pairs), self.batch_size):
            batch = pairs[i:i + self.batch_size]
            a = torch.from_numpy(np.stack([p[0] for p in batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
            b = torch.from_numpy(np.stack([p[1] for p in batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
            flows = self.model(a.to(self.device), b.to(self.device))[-1]  # last refinement
            out.extend(flows.permute(0, 2, 3, 1).cpu().numpy())
        return out


def track_motion(clip: Path, flow: DISFlow | RAFTFlow) -> tuple[np.ndarray, int]:
    """Mean quantiles over the clip's frame pairs (NaN when it has no pair) and the pair count."""
    pairs = frame_pairs(clip)
    if not pairs:
        return np.full(len(QUANTILES), np.nan), 0
    stats = np.stack([magnitude_quantiles(f) for f in flow(pairs)])
    return stats.mean(axis=0), len(pairs)


class ClipEmbedder:
    """ResNet-50 features (2048-d) of a clip's keyframes, averaged and L2-normalised.
    ``weights``: ``default`` (torchvision's ImageNet weights, as the original), a local
    state-dict path, or ``none`` (random: tests)."""

    def __init__(self, weights: str = "default", device: str = "auto", batch_size: int = 32):
        from torchvision.models import ResNet50_Weights, resnet50

        self.device = resolve_device(device)
        net = load_torchvision_model(resnet50, ResNet50_Weights.IMAGENET1K_V1, weights, "ResNet-50",
                                     "--embedding_weights")
        net.fc = torch.nn.Identity()
        self.model = net.to(self.device).eval()
        self.batch_size = batch_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, clip: Path) -> np.ndarray:
        times = keyframe_times(clip) or [0.0]
        frames = np.stack([f.image for f in read_frames_at(clip, times, size=(224, 224))])
        feats = []
        for i in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(frames[i:i + self.batch_size]).permute(0, 3, 1, 2).float() / 255
            x = (x - self.mean) / self.std
            feats.append(self.model(x.to(self.device)).cpu())
        vector = torch.cat(feats).mean(0).numpy().astype(np.float32)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)


# ---------------------------------------------------------------------------- the stage


@dataclass
class TrackList:
    tids: list[str]
    fns: list[str]


def load_track_list(index_file: Path) -> TrackList:
    """(tid, fn) of every line of an index or subset file, from its Parquet companion when
    curate_db.py wrote one, else by streaming the JSON lines."""
    from utils.curation import companion_path, load_track_table
    from utils.tracks import iter_records

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


STAGE = VisualMetricsStage()
