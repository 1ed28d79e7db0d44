"""Step 5a: per-track motion or appearance embeddings. What it does and every flag: ``python visual_metrics.py --help`` (library: ``utils.metrics.stage``)."""

import sys

from utils.metrics.stage import VISUAL_METRICS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(VISUAL_METRICS_STAGE))
