"""Step 4a: cut every track of each video into its own mp4, all tracks of a video from one
decoding pass (see utils/clips/cut.py)."""

import sys

from utils.clips.stage import EXTRACT_TRACKS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(EXTRACT_TRACKS_STAGE))
