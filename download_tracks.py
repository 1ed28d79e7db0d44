"""Step 7: rebuild a released TrackVerse subset from its metadata file. What it does and every flag: ``python download_tracks.py --help`` (library: ``utils.clips.released``)."""

import sys

from utils.clips.released import DOWNLOAD_TRACKS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(DOWNLOAD_TRACKS_STAGE))
