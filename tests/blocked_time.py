"""Run a Python script (``python -m tests.blocked_time REPORT script.py args...``, or ``REPORT -c
CODE args...``) and write, at its exit, the seconds its main thread spent blocked into REPORT.

Blocked: alive, neither running on a CPU nor waiting in the run queue for one (Linux
``/proc/self/schedstat``): waiting on the network, in a sleep, a back-off or a timeout. What a
"fails within seconds, not minutes" promise is about; starting Python and importing torch are CPU
work, which a loaded machine stretches, and are not counted (tests/conftest.py: ``run_cli_blocked``).
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
from pathlib import Path


def schedstat(path: str = "/proc/self/schedstat") -> tuple[float, float]:
    """(seconds run on a CPU, seconds waited in the run queue) of a thread, since it started."""
    with open(path) as f:
        ran, queued = (int(x) / 1e9 for x in f.read().split()[:2])
    return ran, queued


def blocked_seconds() -> float:
    """Seconds this process's main thread has been blocked since the process started."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in clock ticks
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    ran, queued = schedstat()
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK") - ran - queued)


def main() -> None:
    report, rest = Path(sys.argv[1]), sys.argv[2:]
    atexit.register(lambda: report.write_text(f"{blocked_seconds():.3f}\n"))
    if rest[0] == "-c":
        sys.argv = ["-c", *rest[2:]]
        exec(compile(rest[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 (the test's own code)
    else:
        sys.argv = rest
        sys.path[0] = str(Path(rest[0]).resolve().parent)
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
