"""Shared fixtures: synthetic videos with ground truth, the real sample data, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from utils.testing.synthetic import make_synthetic_video

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_VIDEOS = SHARED / "data" / "videos"
SHARED_ASSETS = SHARED / "trackverse-assets"


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory):
    """Three scenes, cuts at 4.0 s and 7.52 s, 25 fps, keyframe every second."""
    return make_synthetic_video(tmp_path_factory.mktemp("synthetic") / "synthetic.mp4")


@pytest.fixture(scope="session")
def sparse_keyframe_video(tmp_path_factory):
    """The same content with a single keyframe: exact seeking must decode forward."""
    return make_synthetic_video(tmp_path_factory.mktemp("sparse") / "sparse.mp4", keyframe_interval=100.0)


def shared_video(name: str) -> Path:
    path = SHARED_VIDEOS / name
    if not path.exists():
        pytest.skip(f"real sample video {path} is absent (see ../shared/data/README.md)")
    return path


def shared_asset(name: str) -> Path:
    path = SHARED_ASSETS / name
    if not path.exists():
        pytest.skip(f"TrackVerse asset {path} is absent (tests read it from ../shared/trackverse-assets)")
    return path


def run_cli(*args: str | os.PathLike, timeout: float = 300, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repository root, as a user would."""
    full_env = dict(os.environ)
    full_env.pop("SLURM_ARRAY_TASK_ID", None)
    full_env.update(env or {})
    # Files, not pipes: jobs started by the local submitit backend inherit the descriptors
    # and outlive the command; with pipes, the call would wait for them too.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(
            [sys.executable, *map(str, args)], cwd=REPO, stdout=out, stderr=err,
            timeout=timeout, env=full_env, check=False,
        ).returncode
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(args, code, out.read(), err.read())
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
