"""Visual QA of a subset or index: one static HTML page (per class, example clips with score and
duration, contact sheets of source frames with every track's boxes, the subset's class table
and plot) that opens in a browser with no server.

  python qa.py --base_dir $TRACKVERSE_DB --dataset_name TrackVerseLVIS \
      --records tracks_subsets/TrackVerseLVIS-CB100-1K-T0.jsonl.gzip [--per_class 6] [--out qa/]
  python qa.py --base_dir ... --dataset_name ... --yid <yid> --out qa/   # one video's contact sheet

Exit status: 0 written, 2 bad flags or inputs (a missing file, an unknown video).
"""

import sys
from collections.abc import Sequence

from utils.core.command import run_script
from utils.use.qa_command import QACommand

COMMAND = QACommand(__doc__)
build_parser = COMMAND.build_parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
