"""Where every stage stands: items done / failed / pending per stage, failures by reason,
throughput, ETA and silent ranks, from the per-rank journals. Read-only; safe while jobs run.

Each item of a stage's latest list counts by its latest journal record, whichever run wrote it;
items that only earlier runs journaled (a longer or another list) are shown apart. Throughput is
measured over the time ranks were working (the last 15 minutes while any runs), not the gaps
between runs.

  python status.py --base_dir $TRACKVERSE_DB [--dataset_name TrackVerseLVIS] [--json]
"""

import sys
from collections.abc import Sequence

from utils.core.command import run_script
from utils.runner.status_command import StatusCommand

COMMAND = StatusCommand(__doc__)
build_parser = COMMAND.build_parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
