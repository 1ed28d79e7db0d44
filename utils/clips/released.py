"""download_tracks.py: rebuild a released TrackVerse subset from its metadata file: download
each video with ingest's downloader, cut its tracks, scale boxes when the video's size changed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.clips.cut import (
    TrackProblem,
    read_done_marker,
    scale_factors,
    select_tracks,
    validated_records,
    write_done_marker,
)
from utils.clips.stage import ClipOptions, bad_tracks_error, cut_with_progress, result_stats
from utils.core.config import nested, option
from utils.core.errors import InvalidItemError, ItemError, UsageError
from utils.core.io import GZIP_STREAM_ERRORS, open_maybe_gzip
from utils.core.layout import DatasetLayout, validate_yid
from utils.core.video import (
    VideoError,
    VideoInfo,
    probe_video,
)
from utils.ingest.download import DownloadOptions, DownloadSession
from utils.records.tracks import TrackRecord, TrackRecordError
from utils.runner.stage import Stage, StageConfig

# ---------------------------------------------------------------- download_tracks (released subsets)

_YID_IN_LINE = re.compile(rb'"yid"\s*:\s*"([^"\\]*)"')


@dataclass
class SubsetIndex:
    """One pass over a released metadata file: videos in order of first appearance, a digest
    of each video's record lines (it changes when its track list does), and the lines of the
    videos this rank will process, zlib-compressed (memory: about this rank's share of the
    file, compressed). A line that is not a JSON record with a ``yid`` becomes an item of its
    own (``<file>:<line>``) that fails with the reason, so it shows in the journal."""

    items: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    chunks: dict[str, list[bytes]] = field(default_factory=dict)
    bad_lines: dict[str, str] = field(default_factory=dict)
    records: int = 0

    @classmethod
    def scan(cls, path: Path, keep: Callable[[int], bool] | None = None) -> SubsetIndex:
        index = cls()
        hashes: dict[str, Any] = {}
        position: dict[str, int] = {}
        run_item, run_lines = None, []

        def flush() -> None:
            if run_item is not None and run_lines:
                index.chunks.setdefault(run_item, []).append(zlib.compress(b"".join(run_lines), 6))

        lineno = 0
        try:
            with open_maybe_gzip(path) as f:
                for lineno, raw in enumerate(f, start=1):  # noqa: B007 (reported on errors)
                    line = raw.strip()
                    if not line:
                        continue
                    yid = _yid_of(line)
                    if yid is None:
                        item = f"{path.name}:{lineno}"
                        index.bad_lines[item] = f"line {lineno} of {path} is not a JSON track record with a 'yid'"
                        index.items.append(item)
                        continue
                    index.records += 1
                    if yid not in position:
                        position[yid] = len(index.items)
                        index.items.append(yid)
                        hashes[yid] = hashlib.sha1()
                    hashes[yid].update(line + b"\n")
                    if keep is not None and keep(position[yid]):
                        if yid != run_item:
                            flush()
                            run_item, run_lines = yid, []
                        run_lines.append(line + b"\n")
        except (*GZIP_STREAM_ERRORS, OSError) as exc:
            raise UsageError(f"--db_meta_file {path}: damaged or truncated after line {lineno}: {exc}") from None
        flush()
        index.digests = {yid: h.hexdigest() for yid, h in hashes.items()}
        return index

    def lines(self, item: str) -> list[bytes]:
        """The record lines of ``item`` (a video this rank keeps), in file order."""
        return [line for chunk in self.chunks.get(item, []) for line in zlib.decompress(chunk).splitlines() if line]


def _yid_of(line: bytes) -> str | None:
    match = _YID_IN_LINE.search(line)
    if match is not None:
        return match.group(1).decode("utf-8", "replace")
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return str(data["yid"]) if isinstance(data, dict) and isinstance(data.get("yid"), str) else None


def parse_lines(lines: Iterable[bytes], yid: str, source: str) -> tuple[list[TrackRecord], list[TrackProblem]]:
    """Records of one video from JSON lines in either spelling; a bad one becomes a problem."""
    records, problems = [], []
    for n, line in enumerate(lines, start=1):
        try:
            records.append(TrackRecord.from_json(line))
        except TrackRecordError as exc:
            problems.append(TrackProblem(f"{source} record {n} of {yid}", f"invalid record: {exc}", "bad_record"))
    good, wrong = validated_records(records, yid)
    return good, problems + wrong


def resolve_meta_file(value: str | Path, base_dir: Path) -> Path:
    """``--db_meta_file``: an absolute path, a path from the working folder, or one inside the
    dataset root (the original's convention), in that order."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    try:
        return DatasetLayout(base_dir).relative(path)
    except InvalidItemError as exc:
        raise UsageError(f"--db_meta_file: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class DownloadTracksConfig(StageConfig):
    db_meta_file: Path = option(group="download_tracks",
                                help="released subset metadata (gzip JSON lines); absolute, from the working folder, "
                                     "or inside --base_dir")
    remove_video_mp4: bool = option(False, group="download_tracks",
                                    help="delete each source video once all of its tracks' clips exist")
    clips: ClipOptions = nested(ClipOptions, group="download_tracks")
    download: DownloadOptions = nested(DownloadOptions)


@functools.lru_cache(maxsize=2)
def _scan(path: str, size: int, mtime_ns: int, rank: int | None, world_size: int) -> SubsetIndex:
    keep = None if rank is None else (lambda i: i % world_size == rank)
    return SubsetIndex.scan(Path(path), keep)


def subset_index(config: DownloadTracksConfig) -> SubsetIndex:
    """The subset file scanned once per process and file version, keeping this rank's videos.
    Cached here, not on the stage: submitit pickles the stage into every job."""
    path = Path(config.db_meta_file)
    st = path.stat()
    return _scan(str(path.resolve()), st.st_size, st.st_mtime_ns, config.rank, config.world_size or 1)


class DownloadTracksStage(Stage[DownloadTracksConfig]):
    """Rebuild a released subset: download each video, cut its listed tracks, keep their names."""

    name = "download_tracks"
    description = (
        "Rebuild a released TrackVerse subset from its metadata file (--db_meta_file, gzip JSON lines, "
        "either spelling of the record): items are its videos in order of first appearance; each is "
        "downloaded (yt-dlp, as download_videos.py) to videos_mp4/ and its tracks are cut to "
        "tracks_mp4/<fn> with the released file names. Boxes are scaled when the downloaded video's "
        "size differs from the record's video_size. A video is done when "
        "tracks_mp4/<yid[:2]>/<yid>.done.json matches its records (written last)."
    )
    default_slurm = {"cpus_per_task": 4, "mem_gb": 16}

    config_class = DownloadTracksConfig

    def validate(self, config: DownloadTracksConfig) -> DownloadTracksConfig:
        config.clips.validate()
        meta = resolve_meta_file(config.db_meta_file, config.base_dir)
        if not meta.is_file():
            raise UsageError(f"--db_meta_file {meta} does not exist")
        config.download.validate()
        return dataclasses.replace(config, db_meta_file=meta)

    def job_key(self, config: DownloadTracksConfig) -> str:
        stem = Path(config.db_meta_file).name.split(".")[0]
        return f"{self.name}-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-") or "subset")[:80]

    def list_items(self, config: DownloadTracksConfig) -> list[str]:
        index = subset_index(config)
        if not index.items:
            raise UsageError(f"--db_meta_file {config.db_meta_file} lists no tracks")
        return index.items

    def output_exists(self, config: DownloadTracksConfig, item: str) -> bool:
        index = subset_index(config)
        if item in index.bad_lines:
            return False  # process() journals it, once
        marker = read_done_marker(DatasetLayout(config.base_dir).tracks_done_marker(None, item))
        return marker is not None and marker.get("tracks_digest") == index.digests.get(item)

    def setup(self, config: DownloadTracksConfig, items: Sequence[str]) -> DownloadSession:
        return DownloadSession(config.download, config.max_consecutive_errors)

    def process(self, config: DownloadTracksConfig, item: str, res: DownloadSession) -> dict[str, Any]:
        index = subset_index(config)
        if item in index.bad_lines:
            raise ItemError(index.bad_lines[item], category="bad_record")
        validate_yid(item)
        layout = DatasetLayout(config.base_dir)
        lines = index.lines(item)
        if not lines:  # the index was built for another rank: never cut (or mark done) from nothing
            raise ItemError(f"no records of {item} were kept by this rank's index", category="internal")
        records, problems = parse_lines(lines, item, Path(config.db_meta_file).name)
        total = len(records) + len(problems)
        selection = select_tracks(records, lambda r: layout.track_mp4(None, r.fn), deduplicate=False)
        problems += selection.problems
        video = layout.video_mp4(item)
        notes: dict[str, Any] = {}
        info = None
        if any(not path.exists() for _, path in selection.tracks):
            info = self._video(config, item, video, res, notes)
            sizes = {tuple(r.video_size) for r, _ in selection.tracks if r.video_size}
            for size in sorted(sizes):
                factors = scale_factors(size, (info.height, info.width))
                if factors is not None:
                    notes.setdefault("scaled_boxes", []).append(
                        f"records say {size[1]}x{size[0]}, the downloaded video is {info.width}x{info.height}: "
                        f"boxes scaled by {factors[0]:.4g} x {factors[1]:.4g}")
            if any(not r.video_size for r, _ in selection.tracks):
                notes["unscaled_boxes"] = "some records have no video_size: their boxes are used as they are"
        result = cut_with_progress(video, selection.tracks, config.clips, item, info=info)
        problems += result.problems
        if problems:
            kept = f"; {video} is kept" if video.exists() else ""
            scaled = f"; {'; '.join(notes['scaled_boxes'])}" if notes.get("scaled_boxes") else ""
            raise bad_tracks_error(problems, total, result, extra=scaled + kept)
        write_done_marker(layout.tracks_done_marker(None, item), item, [r.fn for r, _ in selection.tracks],
                          tracks_digest=index.digests[item], db_meta_file=str(config.db_meta_file),
                          video_hw=list(result.video_hw) if result.video_hw else None)
        if config.remove_video_mp4 and video.exists():
            video.unlink()
            notes["removed"] = str(video)
        stats = result_stats(result, selection.duplicates)
        stats.update({k: "; ".join(v) if isinstance(v, list) else v for k, v in notes.items()})
        return stats

    def _video(self, config: DownloadTracksConfig, item: str, video: Path, res: DownloadSession,
               notes: dict[str, Any]) -> VideoInfo:
        """The source video: the one on disk if it decodes, else a fresh download."""
        if video.exists():
            try:
                return probe_video(video)
            except VideoError as exc:
                notes["redownloaded"] = f"the video on disk did not decode ({exc})"
                video.unlink(missing_ok=True)
        res.fetch(item, video)  # ItemError; SystemicError when many network failures in a row
        notes["downloaded"] = str(video)
        try:
            return probe_video(video)
        except VideoError as exc:
            raise ItemError(f"corrupt video: {exc}", category="corrupt_video") from None


DOWNLOAD_TRACKS_STAGE = DownloadTracksStage()
