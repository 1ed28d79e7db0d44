"""Export a curated subset as evaluator-ready SOT sequences or WebDataset shards. What it does and every flag: ``python export_tracks.py --help`` (library: ``utils.export.stage``)."""

import sys

from utils.export.stage import EXPORT_TRACKS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(EXPORT_TRACKS_STAGE))
