"""extract_tracks.py: every track of every video of the list cut into its clip, one decoding
pass per video; a video is done when its done marker lists every clip.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.clips.cut import (
    TrackProblem,
    VideoResult,
    cut_missing_clips,
    problems_text,
    read_done_marker,
    select_tracks,
    summarize,
    validated_records,
    write_done_marker,
)
from utils.clips.geometry import (
    DEFAULT_MAX_DURATION,
)
from utils.core.errors import ItemError, NotReady, UsageError
from utils.core.layout import DatasetLayout, InvalidItemError, validate_name, validate_yid
from utils.core.video import (
    VideoError,
    VideoInfo,
)
from utils.records.tracks import RecordsFileError, TrackRecord, read_records
from utils.runner.stage import Stage, read_item_list

# ---------------------------------------------------------------------------- the stages


def file_signature(path: Path) -> dict[str, int] | None:
    """Size and modification time of a file (None when absent): a rewritten metadata file
    (always replaced atomically, so a new inode and time) gets a new signature."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


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


class ExtractTracksStage(Stage):
    """Cut every track listed in a video's metadata into its own mp4, in one decoding pass."""

    name = "extract_tracks"
    description = (
        "Cut every track of each video (tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip) into "
        "its own H.264 mp4, tracks_mp4/<dataset_name>/<fn>, decoding each video once. Tracks overlapping an "
        "earlier-listed track by more than 0.9 are cut once. A video is done when "
        "tracks_mp4/<dataset_name>/<yid[:2]>/<yid>.done.json exists (written last) and its metadata file "
        "has not changed since. A video with tracks that cannot be cut gets its other clips, then fails "
        "(category bad_tracks) with a journal reason naming each bad track."
    )
    default_slurm = {"cpus_per_task": 4, "mem_gb": 16}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("extract_tracks")
        g.add_argument("--yid_index_fn", type=Path, required=True, help="YouTube ids, one per line")
        g.add_argument("--dataset_name", default="TrackVerseLVIS",
                       help="reads tracks_meta/<dataset_name>/, writes tracks_mp4/<dataset_name>/")
        g.add_argument("--max_track_len", type=float, default=DEFAULT_MAX_DURATION,
                       help="clips keep at most this many seconds from the track's start")
        add_threads_argument(g)

    def validate_args(self, args: argparse.Namespace) -> None:
        validate_extraction_args(args)

    def job_key(self, args: argparse.Namespace) -> str:
        return f"{self.name}-{args.dataset_name}"

    def list_items(self, args: argparse.Namespace) -> list[str]:
        return read_item_list(args.yid_index_fn)

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        layout = DatasetLayout(args.base_dir)
        marker = read_done_marker(layout.tracks_done_marker(args.dataset_name, item))
        return marker is not None and marker.get("meta") == file_signature(layout.tracks_meta(args.dataset_name, item))

    def process(self, args: argparse.Namespace, item: str, resources: Any) -> dict[str, Any]:
        validate_yid(item)
        layout = DatasetLayout(args.base_dir)
        meta = layout.tracks_meta(args.dataset_name, item)
        signature = file_signature(meta)
        if signature is None:
            raise NotReady(f"no track metadata {meta} yet (parse_tracks.py has not finished this video)")
        try:
            raw = read_records(meta, validate=False)
        except (RecordsFileError, OSError) as exc:
            raise ItemError(f"unreadable track metadata: {exc}", category="bad_metadata") from None
        records, problems = validated_records(raw, item, f"{meta.name}: ")
        selection = select_tracks(records, lambda r: layout.track_mp4(args.dataset_name, r.fn), deduplicate=True)
        problems += selection.problems
        video = layout.video_mp4(item)
        if not video.exists() and any(not path.exists() for _, path in selection.tracks):
            raise ItemError(f"{video}: the video is missing (its track metadata exists)", category="missing_video")
        result = cut_with_progress(video, selection.tracks, args, item)
        problems += result.problems
        if problems:
            raise bad_tracks_error(problems, len(raw), result)
        write_done_marker(layout.tracks_done_marker(args.dataset_name, item), item,
                          [r.fn for r, _ in selection.tracks], meta=signature, duplicates=selection.duplicates)
        return result_stats(result, selection.duplicates)


def add_threads_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--threads", type=int, default=None,
                       help="worker threads cutting and encoding clips (default: the CPUs this process may "
                            "use, i.e. --cpus_per_task under Slurm; lower it when several ranks share a machine)")


def validate_extraction_args(args: argparse.Namespace) -> None:
    """Flags both stages share: ``--max_track_len``, ``--threads`` and (when present) ``--dataset_name``."""
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if getattr(args, "dataset_name", None) is not None:
        try:
            validate_name(args.dataset_name)
        except InvalidItemError as exc:
            raise UsageError(f"--dataset_name: {exc}") from None
    if not args.max_track_len > 0:
        raise UsageError(f"--max_track_len must be positive, got {args.max_track_len}")


def cut_with_progress(video: Path, tracks: Sequence[tuple[TrackRecord, Path]], args: argparse.Namespace,
                      item: str, info: VideoInfo | None = None) -> VideoResult:
    """:func:`cut_missing_clips` with the stage's flags, a progress bar (on a terminal) and a
    corrupt video as an ItemError."""
    with tqdm(unit="frame", desc=f"{item} frames", leave=False, dynamic_ncols=True,
              disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
        try:
            return cut_missing_clips(video, tracks, args.max_track_len, info=info, on_frames=bar.update,
                                     threads=args.threads)
        except VideoError as exc:
            raise ItemError(f"corrupt video: {exc}", category="corrupt_video") from None


EXTRACT_TRACKS_STAGE = ExtractTracksStage()
