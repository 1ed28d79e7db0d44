"""`pip install -e .` (README: "Training on a subset") makes the library importable from a script
anywhere: pyproject.toml's [project] table is checked by building the wheel it describes and
importing the training loader from it in a folder outside the repository."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # pip builds the wheel: 10-40 s


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("setuptools") is None or _version(importlib.metadata.version("setuptools")) < (70, 1):
        pytest.skip("setuptools 70.1 or later (the build backend, which torch's requirements bring) is not "
                    "installed: `pip install -U setuptools` brings it")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "utils", src / "utils", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("trackverse_pipeline-*.whl")
    return built


def test_the_wheel_holds_the_library_and_declares_its_requirements(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "utils/use/dataset.py" in names and "utils/testing/example.py" in names
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"utils"}
    required = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    pinned = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert "torch==2.14.1" in required and len(required) == len(pinned)


def test_a_script_outside_the_repository_imports_the_training_loader(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:  # what pip puts in site-packages for a pure-Python wheel
        z.extractall(site)
    script = tmp_path / "elsewhere" / "train.py"
    script.parent.mkdir()
    script.write_text("import utils\nfrom utils.use.dataset import TrackClipDataset, collate_tracks\n"
                      "print(utils.__file__)\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=script.parent, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == site / "utils" / "__init__.py"
