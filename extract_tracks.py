"""Step 4a: cut every track of each video into its own mp4, all tracks of a video from one
decoding pass (see utils/clips.py)."""

import sys

from utils.clips import EXTRACT_STAGE
from utils.launch import main

if __name__ == "__main__":
    sys.exit(main(EXTRACT_STAGE))
