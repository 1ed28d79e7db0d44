"""Step 7: rebuild a released TrackVerse subset from its metadata file: download each video and
cut its tracks, keeping the released file names (see utils/clips.py)."""

import sys

from utils.clips import DOWNLOAD_STAGE
from utils.launch import main

if __name__ == "__main__":
    sys.exit(main(DOWNLOAD_STAGE))
