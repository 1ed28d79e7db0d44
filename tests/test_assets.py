"""Assets are fetched on first use, pinned by sha256 and cached; offline is reported clearly."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_ASSETS
from utils.core.assets import ASSETS, AssetError, asset_path, resolve_asset


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fetch_checks_sha_and_caches(cache, tmp_path):
    if not (SHARED_ASSETS / "lvis-prompts.txt").exists():
        pytest.skip("../shared/trackverse-assets is absent")
    mirror = f"file://{SHARED_ASSETS}/"
    for name in ASSETS:
        path = asset_path(name, base_url=mirror)
        assert path.read_bytes() == (SHARED_ASSETS / name).read_bytes()
    # cached: a dead mirror is not consulted again
    assert asset_path("lvis-prompts.txt", base_url="file:///nonexistent/") == path.parent / "lvis-prompts.txt"


def test_tampered_asset_is_refused(cache, tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "lvis-prompts.txt").write_text("cat\ndog\n")
    with pytest.raises(AssetError, match="expected e81d2c69"):
        asset_path("lvis-prompts.txt", base_url=f"file://{tmp_path}/mirror/")
    assert not (cache / "assets").exists() or not list((cache / "assets").rglob("lvis-prompts.txt"))


def test_offline_message_says_what_to_do(cache):
    with pytest.raises(AssetError, match="Offline.*TRACKVERSE_ASSETS_URL"):
        asset_path("trackverse-yids-all.txt", base_url="http://127.0.0.1:9/", timeout=2)


def test_local_path_wins(tmp_path):
    local = tmp_path / "my-prompts.txt"
    local.write_text("cat\n")
    assert resolve_asset(local, "lvis-prompts.txt") == local
    with pytest.raises(AssetError, match="does not exist"):
        resolve_asset(tmp_path / "missing.txt", "lvis-prompts.txt")
