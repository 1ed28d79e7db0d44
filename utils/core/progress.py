"""The one progress-bar policy: redraw often on a terminal, rarely in a log file (Slurm)."""

from __future__ import annotations

import sys


def is_tty() -> bool:
    return sys.stderr.isatty()


def progress_interval() -> float:
    """Seconds between progress-bar updates: 0.5 on a terminal, 30 in a log file."""
    return 0.5 if is_tty() else 30.0
