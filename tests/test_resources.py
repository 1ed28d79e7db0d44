"""What a process may use: CPUs (affinity, Slurm's share), memory (MemAvailable, cgroup
limits) and the torch device (one policy for every model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from utils.core.models import resolve_device, torch_device
from utils.core.resources import available_cpus, available_memory_bytes

ROOT = Path(__file__).resolve().parents[1]

GiB = 1 << 30


def test_cpus_follow_the_affinity_mask_and_a_slurm_tasks_share():
    cpus = len(os.sched_getaffinity(0))
    assert available_cpus({}) == cpus
    assert available_cpus({"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert available_cpus({"SLURM_CPUS_PER_TASK": str(cpus + 8)}) == cpus
    assert available_cpus({"SLURM_CPUS_PER_TASK": "garbage"}) == cpus


def _machine(tmp: Path, mem_available_kb: int, cgroup_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc, cgroup = tmp / "proc", tmp / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemFree: 1 kB\nMemAvailable: {mem_available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    for rel, text in files.items():
        (cgroup / rel).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / rel).write_text(text)
    return proc, cgroup


def test_memory_is_the_least_of_mem_available_and_the_cgroups_headroom(tmp_path):
    # no limit: MemAvailable
    proc, cgroup = _machine(tmp_path / "a", 20 * GiB // 1024, "0::/job\n", {"job/memory.max": "max\n"})
    assert available_memory_bytes(proc, cgroup) == 20 * GiB
    # a Slurm job's cgroup v2: 8 GiB limit, 3 GiB used
    proc, cgroup = _machine(tmp_path / "b", 20 * GiB // 1024, "0::/slurm/job_7\n",
                            {"slurm/job_7/memory.max": f"{8 * GiB}\n", "slurm/job_7/memory.current": f"{3 * GiB}\n"})
    assert available_memory_bytes(proc, cgroup) == 5 * GiB
    # cgroup v1 memory controller, "no limit" written as a huge number, then a real one
    lines = "4:memory:/docker/abc\n3:cpu:/\n"
    proc, cgroup = _machine(tmp_path / "c", 20 * GiB // 1024, lines, {
        "memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n",
        "memory/docker/abc/memory.usage_in_bytes": "123\n"})
    assert available_memory_bytes(proc, cgroup) == 20 * GiB
    (cgroup / "memory/docker/abc/memory.limit_in_bytes").write_text(f"{2 * GiB}\n")
    assert available_memory_bytes(proc, cgroup) == 2 * GiB - 123
    # nothing readable
    assert available_memory_bytes(tmp_path / "none", tmp_path / "none") is None


# ---------------------------------------------------------------------------- the torch device


@pytest.mark.parametrize("gpu", [False, True])
def test_auto_device_follows_cuda_availability(monkeypatch, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    want = "cuda" if gpu else "cpu"
    for auto in ("auto", "", None):
        assert resolve_device(auto) == want
        assert torch_device(auto) == torch.device(want)
    # an explicit choice is kept as asked, GPU or not
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    assert resolve_device(torch.device("cuda", 2)) == "cuda:2"
    assert torch_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_availability_is_asked_in_one_place():
    """Every model (filters, OWLv2, DETIC, visual metrics) resolves ``auto`` through
    utils.core.models; a second copy of the policy would drift from it."""
    askers = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "utils").rglob("*.py")
        if "cuda.is_available(" in path.read_text(encoding="utf-8")
    )
    assert askers == ["utils/core/models.py"]
