"""Step 7: rebuild a released TrackVerse subset from its metadata file: download each video and
cut its tracks, keeping the released file names (see utils/clips/cut.py)."""

import sys

from utils.clips.released import DOWNLOAD_TRACKS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(DOWNLOAD_TRACKS_STAGE))
