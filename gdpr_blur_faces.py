"""Step 3a: blur faces in every video of the dataset root (see utils/anonymize.py)."""

import sys

from utils.anonymize import STAGE
from utils.launch import main

if __name__ == "__main__":
    sys.exit(main(STAGE))
