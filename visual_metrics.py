"""Step 5a: per-track motion (optical flow) or appearance embeddings (see utils/metrics.py)."""

import sys

from utils.launch import main
from utils.metrics import STAGE

if __name__ == "__main__":
    sys.exit(main(STAGE))
