"""Step 4: detect and track objects in every scene of each video. What it does and every flag: ``python parse_tracks.py --help`` (library: ``utils.detect.stage``)."""

import sys

from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(PARSE_TRACKS_STAGE))
