"""Visual QA of a subset or index: one static HTML page (per class, example clips with score and
duration, contact sheets of source frames with every track's boxes, the subset's class table
and plot) that opens in a browser with no server.

  python qa.py --base_dir $TRACKVERSE_DB --dataset_name TrackVerseLVIS \
      --records tracks_subsets/TrackVerseLVIS-CB100-1K-T0.jsonl.gzip [--per_class 6] [--out qa/]
  python qa.py --base_dir ... --dataset_name ... --yid <yid> --out qa/   # one video's contact sheet
"""

import argparse
import sys
from pathlib import Path

from utils.core.layout import DatasetLayout, default_base_dir
from utils.records.tracks import read_records
from utils.use.qa import build_gallery, contact_sheet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_dir", type=Path, default=default_base_dir())
    parser.add_argument("--dataset_name", default="TrackVerseLVIS")
    parser.add_argument("--records", help="subset or index file (relative to --base_dir, or absolute)")
    parser.add_argument("--yid", help="one video: a contact sheet of all its tracks")
    parser.add_argument("--clips_dir", default=None, help="default <base_dir>/tracks_mp4/<dataset_name>")
    parser.add_argument("--per_class", type=int, default=6)
    parser.add_argument("--max_classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default <base_dir>/qa/<name>)")
    args = parser.parse_args()
    layout = DatasetLayout(args.base_dir)
    if args.yid:
        records = list(read_records(layout.tracks_meta(args.dataset_name, args.yid)))
        out = args.out or layout.qa_dir(args.yid)
        sheet = contact_sheet(layout.video_mp4(args.yid), records, out / f"{args.yid}.png", frames=12)
        print(f"contact sheet of {len(records)} tracks: {sheet}")
        return 0
    if not args.records:
        parser.error("give --records (a subset or index file) or --yid")
    records_file = layout.relative(args.records)
    clips_dir = Path(args.clips_dir) if args.clips_dir else layout.tracks_mp4_dir(args.dataset_name)
    out = args.out or layout.qa_dir(records_file.name.split(".jsonl")[0])
    result = build_gallery(args.base_dir, records_file, out, clips_dir, args.per_class, args.max_classes, args.seed)
    print(f"gallery of {result.tracks} tracks in {result.classes} classes ({result.sheets} contact sheets, "
          f"{result.missing_clips} clips missing): open {result.page.resolve().as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
