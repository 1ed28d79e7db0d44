"""extract_tracks.py: every track of every video of the list cut into its clip, one decoding
pass per video; a video is done when its done marker lists every clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.clips.cut import (
    TrackProblem,
    VideoResult,
    cut_missing_clips,
    problems_text,
    read_done_marker,
    read_file_records,
    select_tracks,
    summarize,
    write_done_marker,
)
from utils.clips.geometry import (
    DEFAULT_MAX_DURATION,
)
from utils.core.config import nested, option
from utils.core.errors import ItemError, NotReady, UsageError
from utils.core.io import file_signature
from utils.core.layout import DatasetLayout, require_dataset, require_dataset_root, validate_yid
from utils.core.progress import progress_bar
from utils.core.video import (
    VideoError,
    VideoInfo,
)
from utils.records.tracks import RecordsFileError, TrackRecord
from utils.runner.stage import Stage, StageConfig, check_dataset_name, read_item_list

# ---------------------------------------------------------------------------- the stages


def result_stats(result: VideoResult, duplicates: dict[str, str]) -> dict[str, Any]:
    """Numbers for the summary, and notes (what was repaired, what was a duplicate) for the journal."""
    stats: dict[str, Any] = {"clips": float(len(result.written)), "video_s": round(result.seconds_decoded, 3)}
    if result.existing:
        stats["skipped"] = f"{result.existing} clips existed already"
    for what, names in sorted(result.notes.items()):
        stats[what] = summarize(names)
    if duplicates:
        stats["duplicates_not_cut"] = summarize([f"{fn} (repeats {kept})" for fn, kept in duplicates.items()])
    return stats


def bad_tracks_error(problems: Sequence[TrackProblem], total: int, result: VideoResult, extra: str = "") -> ItemError:
    """The item's failure when some of its tracks cannot be cut (the others were)."""
    categories = sorted({p.category for p in problems})
    cut = len(result.written) + result.existing
    return ItemError(
        f"{len(problems)} of {total} tracks cannot be cut ({', '.join(categories)}): {problems_text(problems)}. "
        f"The other {cut} clips exist; no done marker is written, so the video counts as failed "
        f"(--retry_failed re-checks it without re-cutting existing clips){extra}",
        transient=False, category="bad_tracks",
    )


EXTRACT_GROUP = "extract_tracks"


@dataclass(frozen=True, kw_only=True)
class ClipOptions:
    """How clips are cut (extract_tracks.py, download_tracks.py)."""

    max_track_len: float = option(DEFAULT_MAX_DURATION, group=EXTRACT_GROUP,
                                  help="clips keep at most this many seconds from the track's start")
    num_workers: int | None = option(None, group=EXTRACT_GROUP, aliases=("threads",),
                                     help="worker processes resizing and encoding clips, each one CPU (default: the "
                                          "CPUs this process may use, i.e. --cpus_per_task under Slurm; lower it when "
                                          "several ranks share a machine); 1 does it all in the decoding process. "
                                          "--threads is its old name")

    def validate(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise UsageError(f"--num_workers (--threads) must be at least 1, got {self.num_workers}")
        if not self.max_track_len > 0:
            raise UsageError(f"--max_track_len must be positive, got {self.max_track_len}")


@dataclass(frozen=True, kw_only=True)
class ExtractTracksConfig(StageConfig):
    yid_index_fn: Path = option(group=EXTRACT_GROUP, help="YouTube ids, one per line")
    dataset_name: str = option("TrackVerseLVIS", group=EXTRACT_GROUP,
                               help="reads tracks_meta/<dataset_name>/, writes tracks_mp4/<dataset_name>/")
    clips: ClipOptions = nested(ClipOptions)


class ExtractTracksStage(Stage[ExtractTracksConfig]):
    """Cut every track listed in a video's metadata into its own mp4, in one decoding pass."""

    name = "extract_tracks"
    description = (
        "Cut every track of each video (tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip) into "
        "its own H.264 mp4, tracks_mp4/<dataset_name>/<fn>, decoding each video once. Tracks overlapping an "
        "earlier-listed track by more than 0.9 are cut once. A video is done when "
        "tracks_mp4/<dataset_name>/<yid[:2]>/<yid>.done.json exists (written last) and its metadata file "
        "has not changed since. A video with tracks that cannot be cut (a record with a key missing or a "
        "wrong value included) gets its other clips, then fails (category bad_tracks) with a journal reason "
        "naming each bad track. A video that decodes short of what its container announces fails (category "
        "truncated); one that does not decode, corrupt_video."
    )
    default_slurm = {"cpus_per_task": 4, "mem_gb": 16}

    config_class = ExtractTracksConfig

    def validate(self, config: ExtractTracksConfig) -> ExtractTracksConfig:
        check_dataset_name(config.dataset_name)
        config.clips.validate()
        require_dataset_root(config.base_dir)  # a video missing is one item's failure, the metadata missing a slip
        require_dataset(config.base_dir, config.dataset_name, ("tracks_meta",),
                        producers=("parse_tracks", "relabel_tracks"))
        return config

    def job_key(self, config: ExtractTracksConfig) -> str:
        return f"{self.name}-{config.dataset_name}"

    def list_items(self, config: ExtractTracksConfig) -> list[str]:
        return read_item_list(config.yid_index_fn)

    def output_exists(self, config: ExtractTracksConfig, item: str) -> bool:
        layout = DatasetLayout(config.base_dir)
        marker = read_done_marker(layout.tracks_done_marker(config.dataset_name, item))
        return marker is not None and marker.get("meta") == file_signature(layout.tracks_meta(config.dataset_name, item))

    def process(self, config: ExtractTracksConfig, item: str, resources: Any) -> dict[str, Any]:
        validate_yid(item)
        layout = DatasetLayout(config.base_dir)
        meta = layout.tracks_meta(config.dataset_name, item)
        signature = file_signature(meta)
        if signature is None:
            raise NotReady(f"no track metadata {meta} yet (parse_tracks.py has not finished this video)")
        try:  # record by record: a bad one is a problem of its own track, the others are cut
            read = read_file_records(meta, item)
        except (RecordsFileError, OSError) as exc:
            raise ItemError(f"unreadable track metadata: {exc}", category="bad_metadata") from None
        problems = list(read.problems)
        selection = select_tracks(read.records, lambda r: layout.track_mp4(config.dataset_name, r.fn), deduplicate=True)
        problems += selection.problems
        video = layout.video_mp4(item)
        if not video.exists() and any(not path.exists() for _, path in selection.tracks):
            raise ItemError(f"{video}: the video is missing (its track metadata exists)", category="missing_video")
        result = cut_with_progress(video, selection.tracks, config.clips, item)
        problems += result.problems
        if problems:
            raise bad_tracks_error(problems, read.total, result)
        write_done_marker(layout.tracks_done_marker(config.dataset_name, item), item,
                          [r.fn for r, _ in selection.tracks], meta=signature, duplicates=selection.duplicates)
        return result_stats(result, selection.duplicates)


def cut_with_progress(video: Path, tracks: Sequence[tuple[TrackRecord, Path]], options: ClipOptions,
                      item: str, info: VideoInfo | None = None) -> VideoResult:
    """:func:`cut_missing_clips` with the stage's options, a progress bar (on a terminal) and a
    corrupt video as an ItemError."""
    with progress_bar(unit="frame", desc=f"{item} frames", inner=True) as bar:
        try:
            return cut_missing_clips(video, tracks, options.max_track_len, info=info, on_frames=bar.update,
                                     workers=options.num_workers)
        except VideoError as exc:
            raise ItemError(f"corrupt video: {exc}", category=exc.category) from None


EXTRACT_TRACKS_STAGE = ExtractTracksStage()
