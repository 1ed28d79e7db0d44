"""Stage 4: detect and track objects in every scene segment of each video -> track metadata.

    python parse_tracks.py --base_dir $TRACKVERSE_DB --yid_index_fn assets/trackverse-yids-all.txt \\
        --dataset_name TrackVerseLVIS --class_prompts assets/lvis-prompts.txt --world_size 128 --rank 7

The library is ``utils/detect/parse.py``; run with ``--help`` for every flag.
"""

import sys

from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(PARSE_TRACKS_STAGE))
