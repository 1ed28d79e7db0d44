"""How a rank waits between downloads: exponential backoff with jitter between retries, a minimum
interval between requests, and the guard that pauses (then stops) a rank that keeps being rate
limited."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("utils.ingest.download")

RATE_LIMIT_HELP = (
    "What helps: pass --cookiefile with the cookies of a browser session logged into YouTube "
    "(Netscape format); run fewer ranks from the same IP address (a smaller --world_size, or "
    "--array_parallelism with --slurm); pace each rank with --sleep_interval 5 (or more). "
    "YouTube allows a session roughly 300 videos per hour."
)

# ------------------------------------------------------------------ pacing and backoff


@dataclass
class Backoff:
    """Exponential backoff with jitter: attempt ``n`` (0-based) waits a random time in
    ``[d/2, d]`` with ``d = min(cap, base * 2**n)`` (never two ranks in lockstep)."""

    base: float = 5.0
    cap: float = 300.0
    rng: random.Random | None = None

    def delay(self, attempt: int) -> float:
        d = min(self.cap, self.base * (2 ** max(0, attempt)))
        rng = self.rng or random
        return d / 2 + rng.uniform(0, d / 2)


class Pacer:
    """At least ``interval`` seconds (times a random 1-1.5) between download starts."""

    def __init__(self, interval: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        self.interval = max(0.0, interval)
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()
        self._next_allowed: float | None = None

    def wait(self) -> float:
        """Sleep until the next download may start; returns the seconds slept."""
        if self.interval <= 0:
            return 0.0
        now = self._clock()
        waited = 0.0
        if self._next_allowed is not None and now < self._next_allowed:
            waited = self._next_allowed - now
            self._sleep(waited)
            now += waited
        self._next_allowed = now + self.interval * self._rng.uniform(1.0, 1.5)
        return waited


class RateLimitGuard:
    """Counts rate-limit answers in a row (across items) and pauses the rank when there are
    ``pause_after`` of them: ``pause`` seconds the first time, doubling each time up to
    ``pause_max``, until a download succeeds. Says plainly what is going on and what helps."""

    def __init__(self, pause_after: int = 3, pause: float = 600.0, pause_max: float = 3600.0,
                 sleep: Callable[[float], None] = time.sleep, notify: Callable[[str], None] | None = None):
        self.pause_after = max(1, pause_after)
        self.pause, self.pause_max = pause, pause_max
        self.in_a_row = 0
        self.pauses = 0
        self.total_paused = 0.0
        self._sleep = sleep
        self._notify = notify or log.warning

    def success(self) -> None:
        self.in_a_row = 0
        self.pauses = 0

    def rate_limited(self, message: str) -> float:
        """Record one rate-limit answer; pause if there were enough in a row. Returns the pause."""
        self.in_a_row += 1
        if self.in_a_row % self.pause_after:
            return 0.0
        seconds = min(self.pause_max, self.pause * (2 ** self.pauses))
        self.pauses += 1
        self._notify(
            f"RATE LIMITED: the last {self.in_a_row} answers in a row were rate limits "
            f"(last: {message[:200]}). Pausing this rank for {seconds:g} s "
            f"(pause {self.pauses}; pauses grow until a download succeeds). {RATE_LIMIT_HELP}"
        )
        self._sleep(seconds)
        self.total_paused += seconds
        return seconds


