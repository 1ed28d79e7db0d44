"""Stage 5: index every track's metadata, then sample random, class-balanced, max-motion and
minimum-redundancy subsets.

  INDEX_FILE=tracks_subsets/TrackVerseLVIS/TrackVerseLVIS-Full-4M.jsonl.gzip   # relative to --base_dir
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --dataset_name TrackVerseLVIS \\
      --action index --num_workers 16 [--allow_mixed_vocabularies]
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --action sample_random --N 82 184 259 392
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --action sample_class_balanced \\
      --Nc 100 300 500 1000 [--temperature 0 0.1 inf] [--min_motion 1.] [--min_nn_dist D] [--max_spt_iou V --iou_tbuff S]
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --action sample_max_motion \\
      --Nc 100 300 500 1000 [--motion_column q90]          # per class, the Nc tracks that move most
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --action sample_min_red \\
      --Nc 100 300 500 1000 [--max_swaps S]                # per class, Nc tracks far apart in embedding space

What each action writes and promises: utils/curate/. Exit status: 0 all good, 1 the index
skipped damaged files or invalid records (the index is still written), 2 bad flags or inputs
(also: metadata of several vocabularies or detectors without --allow_mixed_vocabularies), 3 a
systemic fault (disk full).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from utils.core.config import RawDescriptionDefaultsHelpFormatter, add_config_arguments, config_from_args
from utils.core.errors import EXIT_SYSTEMIC, EXIT_USAGE, InvalidItemError, UsageError, is_systemic
from utils.curate.config import CurateConfig
from utils.curate.index import build_index
from utils.curate.subsets import run_sampling
from utils.runner.stage import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=RawDescriptionDefaultsHelpFormatter)
    add_config_arguments(parser, CurateConfig)
    return parser


def run(config: CurateConfig) -> int:
    """One index or sampling run; prints its summary, returns the exit status."""
    index_path = config.index_path
    if config.action == "index":
        if not config.dataset_name:
            raise UsageError("--action index needs --dataset_name (which tracks_meta/<dataset_name> to merge)")
        summary = build_index(config.base_dir, config.dataset_name, index_path, num_workers=max(1, config.num_workers),
                              progress=config.progress, allow_mixed=config.allow_mixed_vocabularies)
        print("\n".join(summary.lines_out()), flush=True)
        return summary.exit_code
    result = run_sampling(config)
    print("\n".join(result.lines), flush=True)
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(CurateConfig, build_parser().parse_args(argv))
    setup_logging(config.log_level)
    try:
        return run(config)
    except (UsageError, InvalidItemError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if is_systemic(exc):
            print(f"STOPPED: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_SYSTEMIC
        raise


if __name__ == "__main__":
    sys.exit(main())
