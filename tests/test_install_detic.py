"""tools/install_detic.sh refuses what it must not install, before building anything: snapshots
that do not match their checksums, a missing snapshot folder or environment. (The install itself
is what tests/test_detic.py runs on, in CI: .ci/run calls the script.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, SHARED

SCRIPT = REPO / "tools" / "install_detic.sh"
SNAPSHOTS = SHARED / "vendor-src"
VENV = Path(sys.prefix)


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_snapshot_that_does_not_match_its_checksum_is_refused(tmp_path):
    if not (SNAPSHOTS / "SHA256SUMS").is_file():
        pytest.skip(f"no snapshots in {SNAPSHOTS}")
    copy = shutil.copytree(SNAPSHOTS, tmp_path / "vendor-src")
    for path in copy.iterdir():
        path.chmod(0o644)
    with open(copy / "CLIP.tar.gz", "ab") as f:
        f.write(b"\0")
    proc = run("--from", copy, "--venv", VENV)
    assert proc.returncode == 2 and "do not match SHA256SUMS" in proc.stderr
    (copy / "Detic.tar.gz").unlink()
    proc = run("--from", copy, "--venv", VENV)
    assert proc.returncode == 2 and "Detic.tar.gz is missing" in proc.stderr


def test_missing_folders_and_bad_arguments_are_one_line_each(tmp_path):
    proc = run("--from", tmp_path / "none", "--venv", VENV)
    assert proc.returncode == 2 and "no snapshot folder" in proc.stderr and "docs/detic.md" in proc.stderr
    proc = run("--from", tmp_path, "--venv", tmp_path / "no-venv")
    assert proc.returncode == 2 and "no Python environment" in proc.stderr
    proc = run("--frm", tmp_path)
    assert proc.returncode == 2 and "unknown argument '--frm'" in proc.stderr
    assert run("--help").returncode == 0
