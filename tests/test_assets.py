"""Assets are fetched on first use, pinned by sha256 and cached; offline is reported clearly.
Every cache of the project (assets, filter weights, OWLv2 prompt embeddings) lives under one
root: ``$TRACKVERSE_CACHE``, else ``$XDG_CACHE_HOME/trackverse``, else ``~/.cache/trackverse``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers import shared_asset
from tests.tiny_models import build_tiny_owlv2
from utils.core.assets import ASSETS, Asset, AssetError, asset_path, cache_root, resolve_asset


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fetch_checks_sha_and_caches(stand_in_assets):
    for name in ASSETS:
        path = asset_path(name)  # from the mirror $TRACKVERSE_ASSETS_URL
        assert path.read_bytes() == (stand_in_assets / name).read_bytes()
    # cached: a dead mirror is not consulted again
    assert asset_path("lvis-prompts.txt", base_url="file:///nonexistent/") == path.parent / "lvis-prompts.txt"


def test_pins_are_the_sha256_of_the_real_lists():
    for name, asset in ASSETS.items():
        assert hashlib.sha256(shared_asset(name).read_bytes()).hexdigest() == asset.sha256, name


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


# ---------------------------------------------------------------------------- the cache root


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRACKVERSE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "trackverse"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # set but empty: ignored, as the XDG spec says
    assert cache_root() == tmp_path / "home" / ".cache" / "trackverse"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "trackverse"
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "tv"))
    assert cache_root() == tmp_path / "tv"  # the project's own variable wins


def test_every_cache_lands_under_xdg_cache_home(tmp_path, monkeypatch):
    """With only XDG_CACHE_HOME set, the assets, the filter weights and the OWLv2 prompt
    embeddings are all written under ``$XDG_CACHE_HOME/trackverse``, nothing under HOME."""
    from utils.detect.detectors.owlv2 import OwlV2Detector
    from utils.ingest.filters import WEIGHTS, WeightSource, resolve_weights

    home, root = tmp_path / "home", tmp_path / "xdg" / "trackverse"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TRACKVERSE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    payload = b"cat\ndog\n"
    (mirror / "tiny-prompts.txt").write_bytes(payload)
    (mirror / "w.pth").write_bytes(b"not really weights")
    monkeypatch.setitem(ASSETS, "tiny-prompts.txt",
                        Asset("tiny-prompts.txt", hashlib.sha256(payload).hexdigest(), "two prompts"))
    monkeypatch.setitem(WEIGHTS, "tiny", WeightSource("w.pth", (f"file://{mirror}/w.pth",)))

    asset = asset_path("tiny-prompts.txt", base_url=f"file://{mirror}/")
    weights = resolve_weights("tiny", "test")
    model, processor = build_tiny_owlv2(tmp_path / "tokenizer")
    owl = OwlV2Detector(["cat", "dog"], model=model, processor=processor, device="cpu")

    for written in (asset, weights, owl.text_cache_path):
        assert written is not None and written.is_file() and written.is_relative_to(root), written
    assert asset.read_bytes() == payload
    assert not home.exists() or not [p for p in home.rglob("*") if p.is_file()]


def test_the_cache_root_is_built_in_one_place():
    """No module builds its own cache root (they disagreed on XDG_CACHE_HOME)."""
    root = Path(__file__).resolve().parents[1]
    builders = sorted(
        str(path.relative_to(root))
        for path in (root / "utils").rglob("*.py")
        if any(word in path.read_text(encoding="utf-8") for word in ("XDG_CACHE_HOME", '".cache"', "TRACKVERSE_CACHE"))
    )
    assert builders == ["utils/core/assets.py"]
