"""Shared fixtures: synthetic videos with ground truth, the local video server. Shared helpers that
are not fixtures live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ASSET_STAND_INS, FETCH_SAMPLES
from tests.http_server import FaultServer
from utils.testing.synthetic import ObjectSpec, SceneSpec, SyntheticVideo, make_synthetic_video


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
def long_video(tmp_path_factory) -> SyntheticVideo:
    """20 s, 480x270, 8 objects whose tracks end one after the other."""
    objects = tuple(
        ObjectSpec(name, (60 + 8 * k, 50 + 6 * k), (10 + 30 * k, 20 + 10 * k), (300 - 20 * k, 150 - 8 * k),
                   appear=0.5 * k, disappear=6.0 + 2 * k)
        for k, name in enumerate(["cat", "cup", "rocket", "person", "dog", "car", "ball", "tree"])
    )
    return make_synthetic_video(tmp_path_factory.mktemp("long") / "long.mp4", [SceneSpec(20.0, objects)],
                                width=480, height=270, fps=25.0)


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


