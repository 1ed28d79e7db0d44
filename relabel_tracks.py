"""Relabel tracks with a new vocabulary from their stored embeddings, without re-running the detector.
What it does and every flag: ``python relabel_tracks.py --help`` (library: ``utils.relabel.stage``)."""

import sys

from utils.relabel.stage import RELABEL_TRACKS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(RELABEL_TRACKS_STAGE))
