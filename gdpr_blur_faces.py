"""Step 3a: blur faces in every video of the dataset root (see utils/ingest/anonymize.py)."""

import sys

from utils.ingest.stage import BLUR_FACES_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(BLUR_FACES_STAGE))
