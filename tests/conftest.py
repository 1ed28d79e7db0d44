"""Shared fixtures: synthetic videos with ground truth, the real sample data (beside the project
in ../shared, or fetched by tests/data/fetch_samples.sh), CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from utils.testing.synthetic import make_synthetic_video

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The real sample data: beside the project (../shared, every developer and CI), else what
# tests/data/fetch_samples.sh fetched into tests/data/samples (a fresh clone; git-ignored).
FETCH_SAMPLES = "tests/data/fetch_samples.sh"
SAMPLES = REPO / "tests" / "data" / "samples"
VIDEO_FOLDERS = (SHARED / "data" / "videos", SAMPLES / "videos")
ASSET_FOLDERS = (SHARED / "trackverse-assets", SAMPLES / "trackverse-assets")


def _holding(folders: tuple[Path, ...], names: tuple[str, ...]) -> Path:
    """The first folder that holds every one of ``names`` (else the first that holds any, else
    the first folder): what tests that read a whole folder use."""
    for test in (all, any):
        for folder in folders:
            if test((folder / name).is_file() for name in names):
                return folder
    return folders[0]


SHARED_VIDEOS = _holding(VIDEO_FOLDERS, ("vtest.avi", "Megamind.avi", "box.mp4", "cup.mp4"))
SHARED_ASSETS = _holding(ASSET_FOLDERS, ("lvis-prompts.txt", "trackverse-yids-all.txt",
                                         "trackverse-verified-6perclass.txt"))
# Small lists with the assets' shape, written for the tests (tests/data/asset-stand-ins/README.md).
ASSET_STAND_INS = REPO / "tests" / "data" / "asset-stand-ins"


@pytest.fixture
def stand_in_assets(tmp_path, monkeypatch) -> Path:
    """The pinned assets replaced by the small stand-ins: each pin becomes its stand-in's sha256,
    the mirror (``$TRACKVERSE_ASSETS_URL``) their folder, the cache an empty folder. Returns the
    folder. For tests of what is done with an asset, not of the real list's content."""
    import hashlib

    from utils.core import assets

    for name, asset in list(assets.ASSETS.items()):
        sha = hashlib.sha256((ASSET_STAND_INS / name).read_bytes()).hexdigest()
        monkeypatch.setitem(assets.ASSETS, name, assets.Asset(name, sha, asset.description))
    monkeypatch.setenv("TRACKVERSE_ASSETS_URL", ASSET_STAND_INS.as_uri() + "/")
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "stand-in-cache"))
    return ASSET_STAND_INS


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory):
    """Three scenes, cuts at 4.0 s and 7.52 s, 25 fps, keyframe every second."""
    return make_synthetic_video(tmp_path_factory.mktemp("synthetic") / "synthetic.mp4")


@pytest.fixture(scope="session")
def sparse_keyframe_video(tmp_path_factory):
    """The same content with a single keyframe: exact seeking must decode forward."""
    return make_synthetic_video(tmp_path_factory.mktemp("sparse") / "sparse.mp4", keyframe_interval=100.0)


def _sample(folders: tuple[Path, ...], name: str, what: str) -> Path:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    where = " or ".join(os.path.relpath(folder, REPO) for folder in folders)
    pytest.skip(f"{what} {name} is absent (looked in {where}): run {FETCH_SAMPLES} to fetch it")


def shared_video(name: str) -> Path:
    """A real sample video (Debian's opencv-doc examples), or skip naming the fetch script."""
    return _sample(VIDEO_FOLDERS, name, "real sample video")


def shared_asset(name: str) -> Path:
    """A TrackVerse asset list, or skip naming the fetch script."""
    return _sample(ASSET_FOLDERS, name, "TrackVerse asset")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Skips for absent sample data written in test files (``../shared/...``) also name the
    script that fetches it."""
    outcome = yield
    report = outcome.get_result()
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, lineno, reason = longrepr
        if "shared/" in str(reason) and FETCH_SAMPLES not in str(reason):
            report.longrepr = (path, lineno, f"{reason} (run {FETCH_SAMPLES} to fetch the sample data)")


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


class Stopwatch:
    """The seconds the calling thread spent blocked (waiting on the network, in sleeps, back-offs
    and timeouts) since it was made: wall-clock time minus the time it ran on a CPU or waited in
    the run queue for one (Linux ``/proc``). What a "fails within seconds, not minutes" promise is
    about, whatever the machine's load: CPU work stretches on a loaded machine and is not counted.
    As a context manager, ``waited`` is frozen when the block ends. For a command, see
    :func:`run_cli_blocked`."""

    def __init__(self) -> None:
        self._path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._start = self._now()
        self._frozen: float | None = None

    def _now(self) -> float:
        from tests.blocked_time import schedstat

        ran, queued = schedstat(self._path)
        return time.monotonic() - ran - queued

    @property
    def waited(self) -> float:
        return self._frozen if self._frozen is not None else max(0.0, self._now() - self._start)

    def __enter__(self) -> Stopwatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._frozen = self.waited


def run_cli_blocked(*args: str | os.PathLike, **kw) -> tuple[subprocess.CompletedProcess, float]:
    """:func:`run_cli`, and the seconds the command's main thread spent blocked
    (tests/blocked_time.py; infinite when it did not say)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "blocked"
        proc = run_cli("-m", "tests.blocked_time", report, *args, **kw)
        return proc, float(report.read_text()) if report.is_file() else float("inf")
