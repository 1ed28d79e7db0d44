"""Step 5a: per-track motion (optical flow) or appearance embeddings (see utils/metrics/compute.py)."""

import sys

from utils.metrics.stage import VISUAL_METRICS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(VISUAL_METRICS_STAGE))
