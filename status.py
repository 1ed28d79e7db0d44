"""Where every stage stands: items done / failed / pending per stage, failures by reason,
throughput, ETA and silent ranks, from the per-rank journals. Read-only; safe while jobs run.

  python status.py --base_dir $TRACKVERSE_DB [--dataset_name TrackVerseLVIS] [--json]
"""

import argparse
import json
import sys
from pathlib import Path

from utils.core.layout import default_base_dir
from utils.runner.status import as_dict, dataset_status, render


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_dir", type=Path, default=default_base_dir())
    parser.add_argument("--dataset_name", default=None, help="only this dataset's per-dataset stages")
    parser.add_argument("--stale_minutes", type=float, default=30.0,
                        help="a running rank silent for longer is reported")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    if not args.base_dir.is_dir():
        print(f"error: {args.base_dir} does not exist", file=sys.stderr)
        return 2
    statuses = dataset_status(args.base_dir, args.dataset_name, stale_s=args.stale_minutes * 60)
    print(json.dumps(as_dict(statuses), indent=1) if args.json else render(statuses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
