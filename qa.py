"""Visual QA of a subset or index: one static HTML page (per class, example clips with score and
duration, contact sheets of source frames with every track's boxes, the subset's class table
and plot) that opens in a browser with no server.

  python qa.py --base_dir $TRACKVERSE_DB --dataset_name TrackVerseLVIS \
      --records tracks_subsets/TrackVerseLVIS-CB100-1K-T0.jsonl.gzip [--per_class 6] [--out qa/]
  python qa.py --base_dir ... --dataset_name ... --yid <yid> --out qa/   # one video's contact sheet

Exit status: 0 written, 2 bad flags or inputs (a missing file, an unknown video).
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.core.config import RawDescriptionDefaultsHelpFormatter
from utils.core.errors import EXIT_OK, EXIT_USAGE, InvalidItemError, UsageError
from utils.core.layout import DatasetLayout, default_base_dir, validate_name, validate_yid
from utils.core.video import VideoError
from utils.records.tracks import RecordsFileError, read_records
from utils.use.qa import build_gallery, check_qa_inputs, contact_sheet, counted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=RawDescriptionDefaultsHelpFormatter)
    parser.add_argument("--base_dir", type=Path, default=default_base_dir(),
                        help="dataset root (default $TRACKVERSE_DB, else ./TrackVerseDB)")
    parser.add_argument("--dataset_name", default="TrackVerseLVIS",
                        help="the dataset whose clips (and, with --yid, track metadata) are shown")
    parser.add_argument("--records", help="subset or index file (relative to --base_dir, or absolute)")
    parser.add_argument("--yid", help="one video: a contact sheet of all its tracks")
    parser.add_argument("--clips_dir", default=None, help="the clips' folder (default <base_dir>/tracks_mp4/<dataset_name>)")
    parser.add_argument("--per_class", type=int, default=6, help="example tracks shown per class")
    parser.add_argument("--max_classes", type=int, default=100, help="at most this many classes, the largest first")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the examples chosen")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default <base_dir>/qa/<name>)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.yid and not args.records:
        parser.error("give --records (a subset or index file) or --yid")
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Checks the inputs (UsageError naming the flag and the path), then writes the page."""
    base_dir = Path(args.base_dir)
    for flag in ("per_class", "max_classes"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    try:
        validate_name(args.dataset_name)
    except InvalidItemError as exc:
        raise UsageError(f"--dataset_name: {exc.reason}") from None
    check_qa_inputs(base_dir, args.dataset_name, Path(args.clips_dir) if args.clips_dir else None, bool(args.yid))
    layout = DatasetLayout(base_dir)
    if args.yid:
        return _video_sheet(layout, args)
    try:
        records_file = layout.relative(args.records)
    except InvalidItemError as exc:
        raise UsageError(f"--records: {exc.reason}") from None
    _check_file("--records", records_file)
    clips_dir = Path(args.clips_dir) if args.clips_dir else layout.tracks_mp4_dir(args.dataset_name)
    name = records_file.name.split(".jsonl")[0]
    try:
        out = args.out or layout.qa_dir(name)
    except InvalidItemError as exc:
        raise UsageError(f"--records {records_file}: no QA folder can be named after it ({exc.reason}); "
                         "give --out") from None
    try:
        result = build_gallery(base_dir, records_file, out, clips_dir, args.per_class, args.max_classes, args.seed)
    except RecordsFileError as exc:
        raise UsageError(f"--records {records_file}: not a track records file ({exc})") from None
    print(f"gallery of {counted(result.tracks, 'track')} in {counted(result.classes, 'class')} "
          f"({counted(result.sheets, 'contact sheet')}, {counted(result.missing_clips, 'clip')} missing): "
          f"open {result.page.resolve().as_uri()}")
    return EXIT_OK


def _video_sheet(layout: DatasetLayout, args: argparse.Namespace) -> int:
    yid = args.yid
    try:
        validate_yid(yid)
    except InvalidItemError as exc:
        raise UsageError(f"--yid: {exc.reason}") from None
    meta = layout.tracks_meta(args.dataset_name, yid)
    if not meta.exists():
        raise UsageError(f"--yid {yid}: no track metadata {meta} (parse_tracks.py has not parsed this video "
                         f"for --dataset_name {args.dataset_name})")
    _check_file(f"--yid {yid}: track metadata", meta)
    video = layout.video_mp4(yid)
    if not video.exists():
        raise UsageError(f"--yid {yid}: its video {video} does not exist")
    try:
        records = list(read_records(meta))
    except RecordsFileError as exc:
        raise UsageError(f"--yid {yid}: unreadable track metadata ({exc})") from None
    out = args.out or layout.qa_dir(yid)
    try:
        sheet = contact_sheet(video, records, out / f"{yid}.png", frames=12)
    except VideoError as exc:
        raise UsageError(f"--yid {yid}: cannot read its video {video}: {exc}") from None
    print(f"contact sheet of {counted(len(records), 'track')}: {sheet}")
    return EXIT_OK


def _check_file(what: str, path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file")
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")


if __name__ == "__main__":
    sys.exit(main())
