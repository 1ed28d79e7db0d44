"""Step 3a: blur faces in every video of the dataset root (library: ``utils.ingest.stage``).

What it does and every flag: ``python gdpr_blur_faces.py --help``. Sharded like every stage:
``--world_size/--rank``, else the ``WORLD_SIZE``/``RANK`` environment variables, else an sbatch
array. ``./gdpr_blur_faces.sh`` runs this file with the project's interpreter.
"""

from __future__ import annotations

import os
import sys

from utils.core.errors import EXIT_SYSTEMIC


def rank_from_environment(argv: list[str]) -> list[str]:
    """``--world_size``/``--rank`` from ``WORLD_SIZE``/``RANK`` when the command line has none."""
    extra = []
    for flag, variable in (("--world_size", "WORLD_SIZE"), ("--rank", "RANK")):
        value = os.environ.get(variable, "").strip()
        if value and not any(arg == flag or arg.startswith(f"{flag}=") for arg in argv):
            extra += [flag, value]
    return extra


if __name__ == "__main__":
    try:
        from utils.ingest.stage import BLUR_FACES_STAGE
        from utils.runner.cli import main
    except ImportError as exc:  # not the project's interpreter: say which one, and what helps
        print(f"error: {sys.executable} cannot import {exc.name or exc}: run this with the project's interpreter "
              "(README: python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt; then "
              "./gdpr_blur_faces.sh or .venv/bin/python gdpr_blur_faces.py), or set PYTHON to one that has "
              "the requirements", file=sys.stderr)
        sys.exit(EXIT_SYSTEMIC)
    args = sys.argv[1:]
    sys.exit(main(BLUR_FACES_STAGE, rank_from_environment(args) + args))
