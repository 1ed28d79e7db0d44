"""The one progress-bar policy: redraw often on a terminal, rarely in a log file (Slurm), and
show a per-item bar (frames of one video) only on a terminal, where it is erased when done."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def is_tty() -> bool:
    return sys.stderr.isatty()


def progress_interval() -> float:
    """Seconds between progress-bar updates: 0.5 on a terminal, 30 in a log file."""
    return 0.5 if is_tty() else 30.0


def progress_bar(iterable: Iterable[Any] | None = None, *, inner: bool = False, enabled: bool = True,
                 **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr under the policy above. ``inner`` bars (the progress of one item
    inside a shard's bar) exist only on a terminal and vanish when done."""
    if inner:
        enabled = enabled and is_tty()
        kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, mininterval=progress_interval(),
                file=sys.stderr, **kwargs)
