"""Where every stage stands: items done / failed / pending per stage, failures by reason,
throughput, ETA and silent ranks, from the per-rank journals. Read-only; safe while jobs run.

Each item of a stage's latest list counts by its latest journal record, whichever run wrote it;
items that only earlier runs journaled (a longer or another list) are shown apart. Throughput is
measured over the time ranks were working (the last 15 minutes while any runs), not the gaps
between runs.

  python status.py --base_dir $TRACKVERSE_DB [--dataset_name TrackVerseLVIS] [--json]
"""

import argparse
import json
import sys
from pathlib import Path

from utils.core.config import RawDescriptionDefaultsHelpFormatter
from utils.core.layout import default_base_dir
from utils.runner.status import as_dict, dataset_status, render, status_input_problem


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=RawDescriptionDefaultsHelpFormatter)
    parser.add_argument("--base_dir", type=Path, default=default_base_dir(),
                        help="dataset root (default $TRACKVERSE_DB, else ./TrackVerseDB)")
    parser.add_argument("--dataset_name", default=None,
                        help="only this dataset's per-dataset stages (default: every dataset's)")
    parser.add_argument("--stale_minutes", type=float, default=30.0,
                        help="a running rank whose journal is silent for longer than this many minutes is reported")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = status_input_problem(args.base_dir, args.dataset_name)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    statuses = dataset_status(args.base_dir, args.dataset_name, stale_s=args.stale_minutes * 60)
    print(json.dumps(as_dict(statuses), indent=1) if args.json else render(statuses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
