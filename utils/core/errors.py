"""Typed errors every stage and library function raises, and the exit codes of every script.

An error's *type* says what happened (a bad item, inputs not ready, a systemic fault, bad
flags); its ``category`` groups item failures in journals and reports. Nothing is classified
by the text of a message.
"""

from __future__ import annotations

import errno
import signal
import sys

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_USAGE = 2
EXIT_SYSTEMIC = 3
# 128 + the signal's number, as a shell reports a process a signal ended
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class ItemError(Exception):
    """One item failed; the shard goes on. ``transient`` failures are retried by a plain
    re-run, permanent ones only with ``--retry_failed``. ``category`` groups failures in
    summaries and the status report (e.g. ``private``, ``rate_limited``, ``corrupt``)."""

    def __init__(self, reason: str, *, transient: bool = False, category: str = "error"):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.category = category


class InvalidItemError(ItemError, ValueError):
    """An id or relative path that must not become a path under the dataset root (a malformed
    YouTube id, a file name escaping its folder). Permanent; category ``invalid_id``."""

    def __init__(self, reason: str):
        super().__init__(reason, category="invalid_id")


class DataError(ValueError):
    """An input's content cannot be used (a malformed track, say): the data's fault, not a bug.
    Pure code raises it where it has no item to fail; ``category`` names the kind."""

    category = "bad_input"


class BadGeometryError(DataError):
    """Track timestamps or boxes that no clip can be cut from."""

    category = "bad_geometry"


class ZeroSizeTrackError(BadGeometryError):
    """Every box of the track has zero width or height."""

    category = "zero_size"


class NotReady(Exception):
    """The item's inputs do not exist yet (an earlier stage has not reached it). Not a
    failure: counted apart as ``not ready``, journaled, and picked up by a later re-run."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SystemicError(Exception):
    """A fault that would fail every item (model missing, disk full, GPU gone): stop."""


class UsageError(Exception):
    """Bad flags or inputs detected before any work starts."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler's end) reached a command: raised where
    the code happens to be, so every ``with``/``finally`` on the way out removes its
    temporaries. A KeyboardInterrupt, so code that already stops cleanly on Ctrl-C (worker
    processes forked with the command's handlers) treats SIGTERM the same. ``progress`` is set
    on the way out by whoever knows what finished (the shard loop)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.progress: str | None = None
        super().__init__(self.signal_name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_SYSTEMIC_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE}


def is_systemic(exc: BaseException) -> bool:
    """Faults that no other item would survive either: our SystemicError, out of memory, a full
    or read-only disk, no file descriptors left, and the accelerator failing (torch's typed
    CUDA errors, checked only when torch is loaded)."""
    if isinstance(exc, SystemicError | MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno in _SYSTEMIC_ERRNOS:
        return True
    torch = sys.modules.get("torch")
    accelerator_errors = tuple(getattr(torch, name) for name in ("AcceleratorError", "OutOfMemoryError")
                               if torch is not None and hasattr(torch, name))
    return bool(accelerator_errors) and isinstance(exc, accelerator_errors)
