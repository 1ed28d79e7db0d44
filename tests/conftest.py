"""Shared fixtures: synthetic videos with ground truth, the local video server. Shared helpers that
are not fixtures live in tests/helpers.py."""

from __future__ import annotations

import pytest

from tests.helpers import FETCH_SAMPLES
from tests.http_server import FaultServer
from utils.testing.synthetic import make_synthetic_video


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory):
    """Three scenes, cuts at 4.0 s and 7.52 s, 25 fps, keyframe every second."""
    return make_synthetic_video(tmp_path_factory.mktemp("synthetic") / "synthetic.mp4")


@pytest.fixture(scope="session")
def sparse_keyframe_video(tmp_path_factory):
    """The same content with a single keyframe: exact seeking must decode forward."""
    return make_synthetic_video(tmp_path_factory.mktemp("sparse") / "sparse.mp4", keyframe_interval=100.0)


@pytest.fixture()
def server():
    """The local stand-in for YouTube: serves fixture videos, injects faults (tests/http_server.py)."""
    with FaultServer() as s:
        yield s


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


