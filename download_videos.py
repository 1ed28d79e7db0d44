"""Steps 1-3: download videos, cut them into scenes, filter the scenes. What it does and every flag: ``python download_videos.py --help`` (library: ``utils.ingest.stage``)."""

import sys

from utils.ingest.stage import DOWNLOAD_VIDEOS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(DOWNLOAD_VIDEOS_STAGE))
