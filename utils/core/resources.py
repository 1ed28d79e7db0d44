"""What this process may use of the machine: CPUs and memory (a Slurm task's share, not the node's)."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("trackverse.resources")


def available_cpus(environ: Mapping[str, str] | None = None) -> int:
    """CPUs this process may run on: its affinity mask, and no more than a Slurm task's
    ``SLURM_CPUS_PER_TASK`` (clusters without CPU binding show every CPU of the node)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    with contextlib.suppress(KeyError, ValueError):
        cpus = min(cpus, int(env["SLURM_CPUS_PER_TASK"]))
    return max(cpus, 1)


def available_memory_bytes(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory this process can still take: the kernel's ``MemAvailable``, and no more than what
    its cgroup (a Slurm job's, a container's) has left under its limit. None when unknown."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    for group in _own_cgroups(proc, cgroup):
        for limit_name, usage_name in (("memory.max", "memory.current"),  # cgroup v2
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):  # v1
            with contextlib.suppress(OSError, ValueError):
                limit = (group / limit_name).read_text().strip()
                if limit != "max" and int(limit) < 1 << 60:  # v1 writes "no limit" as a huge number
                    found.append(max(int(limit) - int((group / usage_name).read_text().strip()), 0))
    return min(found) if found else None


def _own_cgroups(proc: Path, cgroup: Path) -> list[Path]:
    """The memory cgroup folders of this process (v2 unified, or v1 memory controller)."""
    folders = []
    with contextlib.suppress(OSError):
        for line in (proc / "self" / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            rel = path.lstrip("/")
            if controllers == "":  # v2; on hybrid systems its tree is mounted at unified/
                folders.append((cgroup / "unified" if (cgroup / "unified").is_dir() else cgroup) / rel)
            elif "memory" in controllers.split(","):
                folders.append(cgroup / "memory" / rel)
    return [f for f in folders if f.is_dir()]

def peak_memory_gb() -> float:
    """Peak resident memory of this process since it started and of its finished worker
    processes (GB). The own peak comes from ``VmHWM``: ``ru_maxrss`` would also count what the
    parent held when it started this process."""
    own = 0
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])  # kB
                break
    if not own:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2
