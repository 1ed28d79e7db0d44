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

import sys
from collections.abc import Sequence

from utils.core.command import run_script
from utils.curate.command import CurateCommand

COMMAND = CurateCommand(__doc__)
build_parser = COMMAND.build_parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
