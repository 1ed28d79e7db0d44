"""Step 3a: blur faces in every video of the dataset root. What it does and every flag: ``python gdpr_blur_faces.py --help`` (library: ``utils.ingest.stage``)."""

import sys

from utils.ingest.stage import BLUR_FACES_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(BLUR_FACES_STAGE))
