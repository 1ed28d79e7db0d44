"""export_tracks.py: a records file exported as SOT sequences (``--format sot``), folders the AVA
loaders read (``--format ava``), frame folders with AVA-style annotations (``--format frames``) or
WebDataset shards (``--format webdataset``), sharded with ``--world_size/--rank`` and resumable."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.config import option
from utils.core.errors import ItemError, NotReady, SystemicError, UsageError
from utils.core.layout import DatasetLayout, require_dataset, require_dataset_root
from utils.export import ava, frames, manifest, sot, webdataset
from utils.export.inputs import ExportInputs, ExportSequence, read_inputs
from utils.records.released import KEY_STYLE_HELP, KEY_STYLES
from utils.runner.stage import Stage, StageConfig, check_dataset_name

EXPORT_GROUP = "export_tracks"
FORMATS = ("sot", "frames", "webdataset", "ava")
#: the root's folders each format reads (export_tracks only reads the root: a root without them is refused)
INPUT_FOLDERS = {"sot": ("videos_mp4",), "frames": ("videos_mp4",), "ava": ("videos_mp4",)}


def parse_stride(text: str) -> str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--stride must be 'auto' or a positive integer, got {text!r}") from None
    if value < 1:
        raise UsageError(f"--stride must be 'auto' or a positive integer, got {text!r}")
    return str(value)


@dataclass(frozen=True, kw_only=True)
class ExportTracksConfig(StageConfig):
    records: Path = option(group=EXPORT_GROUP,
                           help="track records (gzip/plain JSON lines, e.g. a subset of tracks_subsets/) or a "
                                "benchmark JSON/JSONL of sequences (seq_id, scene|yid, init_frame_id, init_bbox in "
                                "thousandths, canonical_frame_ids, clip_fps); relative paths that do not exist from "
                                "here are taken under --base_dir")
    format: str = option(group=EXPORT_GROUP, choices=FORMATS,
                         help="sot: one frame folder + sequence_meta.json per track, ground truth apart; "
                              "frames: per-video frame folders + one CSV of normalised boxes + a label map; "
                              "webdataset: tar shards of mp4 + json samples; "
                              "ava: frames at --frame_rate, frame lists, AVA annotation CSVs, label_map.pbtxt and "
                              "proposals, loadable by mmaction2, SlowFast and pytorchvideo")
    out_dir: Path = option(group=EXPORT_GROUP, help="output folder (relative: under --base_dir)")
    nframes: int = option(8, group=EXPORT_GROUP, help="sot: frames per sequence")
    stride: str = option("auto", group=EXPORT_GROUP, parse=str,
                         help="sot: source frames between exported frames, or 'auto' = min(15, span / (nframes - 1)); "
                              "explicit frame ids in the input win when there are at least --nframes; "
                              "frames: every N-th source frame (frame id divisible by N), 'auto' = every frame")
    gt_out: Path | None = option(None, group=EXPORT_GROUP,
                                 help="sot: ground truth JSON lines (default <out_dir>.gt.jsonl; never inside --out_dir); "
                                      "per-sequence parts go to <gt_out>.parts/")
    image_format: str = option("jpg", group=EXPORT_GROUP, choices=("jpg", "png"),
                               help="frames: image format of the frames")
    num_workers: int = option(4, group=EXPORT_GROUP, help="frames: threads encoding and writing frames")
    shard_size: int = option(1000, group=EXPORT_GROUP, help="webdataset: samples per tar shard at most")
    min_shards: int = option(8, group=EXPORT_GROUP,
                             help="webdataset: shards are made smaller than --shard_size until there are at least "
                                  "this many (when there are enough tracks): a DataLoader with more workers than "
                                  "shards fails inside webdataset")
    frame_rate: int = option(30, group=EXPORT_GROUP,
                             help="ava: frames per second written (AVA loaders assume 30)")
    time_offset: int = option(900, group=EXPORT_GROUP,
                              help="ava: added to each keyframe's second in the annotations (AVA's clips start at "
                                   "900 s; SlowFast and pytorchvideo only take timestamps 902..1798)")
    val_fraction: float = option(0.0, group=EXPORT_GROUP,
                                 help="ava: fraction of the videos (chosen by a hash of the id) in the val split")
    key_style: str = option("compact", group=EXPORT_GROUP, choices=KEY_STYLES,
                            help="webdataset: " + KEY_STYLE_HELP)
    dataset_name: str = option("TrackVerseLVIS", group=EXPORT_GROUP,
                               help="webdataset: clips are read from tracks_mp4/<dataset_name>/<fn>")
    overwrite: bool = option(False, group=EXPORT_GROUP,
                             help="--out_dir holds another export (recorded in <out_dir>.export.json): delete that "
                                  "export's files and write this request (files no export writes are never deleted: "
                                  "they refuse it); without it, another request there is refused")

    def stride_value(self) -> int | None:
        return None if self.stride == "auto" else int(self.stride)

    def gt_path(self) -> Path:
        return self.gt_out if self.gt_out is not None else self.out_dir.with_name(self.out_dir.name + ".gt.jsonl")


@dataclass
class ExportResources:
    config: ExportTracksConfig


@functools.lru_cache(maxsize=4)
def _inputs(path: str, size: int, mtime_ns: int) -> ExportInputs:
    return read_inputs(path)


def load_inputs(path: Path) -> ExportInputs:
    """The records file's sequences, read once per process (cached by the file's size and time)."""
    try:
        st = os.stat(path)
        return _inputs(str(path), st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise UsageError(f"cannot read --records {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # a damaged gzip stream: the whole file is unusable
        raise UsageError(f"cannot read --records {path}: {type(exc).__name__}: {exc}") from None


@functools.lru_cache(maxsize=4)
def _plan(path: str, size: int, mtime_ns: int, shard_size: int, min_shards: int) -> dict[str, list[ExportSequence]]:
    return webdataset.plan_shards(list(_inputs(path, size, mtime_ns).sequences.values()), shard_size, min_shards)


def shard_plan(config: ExportTracksConfig) -> dict[str, list[ExportSequence]]:
    load_inputs(config.records)
    st = os.stat(config.records)
    return _plan(str(config.records), st.st_size, st.st_mtime_ns, config.shard_size, config.min_shards)


@functools.lru_cache(maxsize=4)
def _videos(path: str, size: int, mtime_ns: int) -> tuple[dict[str, list[ExportSequence]], dict[str, int]]:
    sequences = list(_inputs(path, size, mtime_ns).sequences.values())
    return frames.group_by_video(sequences), ava.action_ids(sequences)


def ava_plan(config: ExportTracksConfig) -> tuple[dict[str, list[ExportSequence]], dict[str, int]]:
    """The tracks of each video and the AVA action ids, computed once per process (not per video)."""
    load_inputs(config.records)
    st = os.stat(config.records)
    return _videos(str(config.records), st.st_size, st.st_mtime_ns)


def bad_items(inputs: ExportInputs, format: str) -> list[str]:
    """Items that fail when processed: bad lines, and benchmark lines for webdataset (no clip)."""
    return [s.seq_id for s in inputs.sequences.values()
            if s.error is not None or (format != "sot" and s.record is None)]


def merge_until_stable(merge: Callable[[], object], folder: Path, pattern: str, tries: int = 10) -> None:
    """Run ``merge`` (which rewrites a merged file from the parts in ``folder``) until no part
    appeared or changed while it ran: ranks finishing together each re-merge after the last
    one's rename, so the file left in place lists every part."""
    def listing() -> list[tuple[str, int, int]]:
        return sorted((p.name, *(lambda s: (s.st_size, s.st_mtime_ns))(p.stat()))
                      for p in folder.glob(pattern)) if folder.is_dir() else []

    for _ in range(tries):
        before = listing()
        merge()
        if listing() == before:
            return
    raise SystemicError(f"the parts in {folder} kept changing while merging them: re-run to merge again")


class ExportTracksStage(Stage[ExportTracksConfig]):
    """Export a records file as SOT sequences, AVA loader folders, frame folders or WebDataset shards."""

    name = "export_tracks"
    description = (
        "Export the tracks of --records. --format sot: per track <out_dir>/<seq_id>/ (seq_id = <yid>-<tid>, or "
        "the benchmark's) with frames/f00.png.. at the chosen source frame ids, frames/f00_ann.png (first frame, "
        "target box drawn), frames/crop.png and sequence_meta.json (written last); ground truth (boxes in "
        "thousandths [x1, y1, x2, y2]) only outside <out_dir>: <gt_out>.parts/<seq_id>.json per sequence, merged "
        "into <gt_out> and <out_dir>/gt_requests.json at the end of every rank (re-run any rank to re-merge). "
        "--format frames: <out_dir>/frames/<yid>/<yid>_<frame:06d>.jpg|png (each source frame of the tracks' spans "
        "once, one video an item), <out_dir>/annotations.csv (video_id,timestamp,x1,y1,x2,y2,label_id,track_id, "
        "normalised to [0, 1]) and <out_dir>/label_map.csv (id,name), merged from per-video parts at each rank's end. "
        "--format webdataset: <out_dir>/shard-NNNNNN.tar of at most --shard_size samples (fewer while that makes at least --min_shards shards; <key>.mp4 + <key>.json), "
        "the valid records in file order, and <out_dir>/shards.json. "
        "--format ava: <out_dir>/frames/<yid>/img_NNNNN.jpg at --frame_rate from the video's start, "
        "frame_lists/{train,val}.csv, annotations/{train,val}.csv (headerless AVA rows at each whole second of a "
        "track, + --time_offset), label_map.pbtxt, person_ids.csv, dense_proposals_{train,val}.pkl, "
        "val_predicted_boxes.csv, video_info.csv, merged from ava.parts/ at each rank's end. Items are sequences "
        "(sot), videos (frames, ava) or shards (webdataset); a bad line of --records is an item of its own (bad-line-NNNNNN) that fails with category "
        "bad_record."
    )
    default_slurm = {"cpus_per_task": 2, "mem_gb": 8}
    config_class = ExportTracksConfig

    def validate(self, config: ExportTracksConfig) -> ExportTracksConfig:
        layout = DatasetLayout(config.base_dir)
        records = config.records
        if not records.is_absolute() and not records.exists():
            records = layout.base_dir / records
        if not records.is_file():
            raise UsageError(f"--records {config.records} does not exist (looked here and under --base_dir)")
        # a stage that only reads: a mistyped root or dataset is refused before anything is made
        require_dataset_root(config.base_dir, needs=INPUT_FOLDERS.get(config.format, ()))
        if config.format == "webdataset":
            require_dataset(config.base_dir, config.dataset_name, ("tracks_mp4",), producers=("extract_tracks",))
        out_dir = config.out_dir if config.out_dir.is_absolute() else layout.base_dir / config.out_dir
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--out_dir {out_dir} is a file, not a folder")
        if config.nframes < 1:
            raise UsageError(f"--nframes must be at least 1, got {config.nframes}")
        if config.num_workers < 1:
            raise UsageError(f"--num_workers must be at least 1, got {config.num_workers}")
        if config.shard_size < 1:
            raise UsageError(f"--shard_size must be at least 1, got {config.shard_size}")
        if config.min_shards < 1:
            raise UsageError(f"--min_shards must be at least 1, got {config.min_shards}")
        parse_stride(config.stride)
        if config.frame_rate < 1:
            raise UsageError(f"--frame_rate must be at least 1, got {config.frame_rate}")
        if not 0.0 <= config.val_fraction <= 1.0:
            raise UsageError(f"--val_fraction must be in [0, 1], got {config.val_fraction}")
        check_dataset_name(config.dataset_name)
        config = dataclasses.replace(config, records=records.absolute(), out_dir=out_dir.absolute())
        gt = config.gt_path()
        gt = (gt if gt.is_absolute() else layout.base_dir / gt).absolute()
        if sot.is_inside(gt, config.out_dir) or sot.is_inside(sot.parts_dir(gt), config.out_dir):
            raise UsageError(f"--gt_out {gt} is inside --out_dir {config.out_dir}: ground truth must stay apart "
                             "from the sequences handed to the people under evaluation")
        config = dataclasses.replace(config, gt_out=gt)
        if not load_inputs(config.records).sequences:  # a run with no item would end "done" having done nothing
            raise UsageError(f"--records {config.records} holds no track or sequence: nothing to export")
        # last, once every check passed: the folder holds this request only (utils/export/manifest.py)
        manifest.claim(config.out_dir, manifest.export_request(config), config.records, config.overwrite)
        return config

    def job_key(self, config: ExportTracksConfig) -> str:
        # ends with the dataset name, as every stage's key does: status.py --dataset_name finds it
        out = re.sub(r"[^A-Za-z0-9_.]", "_", config.out_dir.name)[:80]
        return f"{self.name}-{config.format}-{out}-{config.dataset_name}"

    def list_items(self, config: ExportTracksConfig) -> list[str]:
        inputs = load_inputs(config.records)
        if config.format == "sot":
            return inputs.ids()
        if config.format in ("frames", "ava"):
            return list(frames.group_by_video(list(inputs.sequences.values()))) + bad_items(inputs, config.format)
        return list(shard_plan(config)) + bad_items(inputs, config.format)

    def output_exists(self, config: ExportTracksConfig, item: str) -> bool:
        if config.format == "sot":
            return sot.sequence_complete(config.out_dir / item, sot.part_path(config.gt_path(), item), config.nframes)
        if config.format == "frames":
            return frames.part_path(config.out_dir, item).exists()
        if config.format == "ava":
            return ava.part_path(config.out_dir, item).exists()
        samples = shard_plan(config).get(item)
        if samples is None:
            return False
        return webdataset.shard_members(config.out_dir / f"{item}.tar") == webdataset.expected_members(samples)

    def setup(self, config: ExportTracksConfig, items: Sequence[str]) -> ExportResources:
        config.out_dir.mkdir(parents=True, exist_ok=True)
        return ExportResources(config)

    def process(self, config: ExportTracksConfig, item: str, resources: Any) -> dict[str, Any]:
        inputs = load_inputs(config.records)
        layout = DatasetLayout(config.base_dir)
        if config.format == "sot":
            seq = inputs.sequences[item]
            if seq.error is not None:
                raise ItemError(seq.error, category="bad_record")
            video = layout.video_mp4(seq.yid)
            if not video.exists():
                raise ItemError(f"{video}: the source video is missing", transient=True, category="missing_video")
            return sot.export_sequence(seq, video, config.out_dir / item, sot.part_path(config.gt_path(), item),
                                       config.nframes, config.stride_value())
        if item in bad_items(inputs, config.format):  # a bad line, or a benchmark line: no track to export
            seq = inputs.sequences[item]
            raise ItemError(seq.error or f"{item}: a benchmark sequence has no track (boxes, clip) for "
                            f"--format {config.format}", category="bad_record")
        if config.format == "frames":
            tracks = frames.group_by_video(list(inputs.sequences.values()))[item]
            video = layout.video_mp4(item)
            if not video.exists():
                raise ItemError(f"{video}: the source video is missing", transient=True, category="missing_video")
            labels = frames.label_map(list(inputs.sequences.values()))
            return frames.export_video(video, item, tracks, labels, config.out_dir, config.image_format,
                                       config.stride_value() or 1, config.num_workers)
        if config.format == "ava":
            videos, actions = ava_plan(config)
            video = layout.video_mp4(item)
            if not video.exists():
                raise ItemError(f"{video}: the source video is missing", transient=True, category="missing_video")
            return ava.export_video(video, item, videos[item], actions, config.out_dir, config.image_format,
                                    config.frame_rate, config.time_offset, config.val_fraction, config.num_workers)
        samples = shard_plan(config)[item]
        clips: list[tuple[ExportSequence, Path]] = []
        missing: list[tuple[ExportSequence, Path]] = []
        for s in samples:
            assert s.record is not None
            path = layout.track_mp4(config.dataset_name, s.record.fn)
            (clips if path.is_file() else missing).append((s, path))
        if missing:
            raise NotReady(f"{len(missing)} clip(s) not extracted yet, e.g. {missing[0][1]}")
        return webdataset.write_shard(config.out_dir / f"{item}.tar", clips, config.key_style)

    def teardown(self, resources: Any) -> None:
        config = resources.config
        if config.format == "sot":
            parts = sot.parts_dir(config.gt_path())
            merge_until_stable(lambda: sot.merge_ground_truth(config.out_dir, config.gt_path()), parts, "*.json")
        elif config.format == "frames":
            labels = frames.label_map(list(load_inputs(config.records).sequences.values()))
            merge_until_stable(lambda: frames.merge_annotations(config.out_dir, labels),
                               config.out_dir / frames.PARTS, "*.csv")
        elif config.format == "ava":
            actions = ava_plan(config)[1]
            merge_until_stable(lambda: ava.merge(config.out_dir, actions, config.image_format),
                               config.out_dir / ava.PARTS, "*.json")
        else:
            merge_until_stable(lambda: webdataset.write_index(config.out_dir), config.out_dir, "shard-*.tar")


EXPORT_TRACKS_STAGE = ExportTracksStage()
