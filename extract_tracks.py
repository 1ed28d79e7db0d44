"""Step 4a: cut every track into its own mp4, one decoding pass per video. What it does and every flag: ``python extract_tracks.py --help`` (library: ``utils.clips.stage``)."""

import sys

from utils.clips.stage import EXTRACT_TRACKS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(EXTRACT_TRACKS_STAGE))
