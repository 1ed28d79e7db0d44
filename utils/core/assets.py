"""The original TrackVerse asset lists, fetched on first use, pinned by sha256, cached.

The project ships only what it wrote itself; these lists (LVIS prompts, the 65,583 YouTube
ids, the verified evaluation list) come from the public TrackVerse repository at a fixed
commit. A flag may always point at a local copy instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.core.io import atomic_write_bytes, file_sha256

log = logging.getLogger("trackverse.assets")

TRACKVERSE_COMMIT = "66a8b6dbc78dcd28ac408c17b352ccb98dde6bdc"
BASE_URL = f"https://raw.githubusercontent.com/MMPLab/TrackVerse/{TRACKVERSE_COMMIT}/assets/"


@dataclass(frozen=True)
class Asset:
    name: str
    sha256: str
    description: str


ASSETS = {
    a.name: a
    for a in (
        Asset("lvis-prompts.txt", "e81d2c69a08de16fad0780420509d2fa8745c25693103fc91ab72e223ebb5932",
              "LVIS class prompts, one per line: 'name (also known as ...)'"),
        Asset("trackverse-yids-all.txt", "614b7db89e402738c86abcf917ad9eb98a9448cee3e27382cce9b20a13f2042e",
              "the 65,583 YouTube ids of TrackVerse"),
        Asset("trackverse-verified-6perclass.txt",
              "70b5493c8d8ed72c9c37672ba7d75b096714ae0e5ff1cddbcc21369840947be3",
              "verified evaluation tracks: '<track file name>,<class>' (first 11 characters: YouTube id)"),
    )
}


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its checksum."""


def cache_root() -> Path:
    """The root of every cache of the project (assets, filter weights, OWLv2 prompt
    embeddings): ``$TRACKVERSE_CACHE``, else ``$XDG_CACHE_HOME/trackverse``, else
    ``~/.cache/trackverse``. Each cache is a folder under it; nothing builds its own root."""
    if os.environ.get("TRACKVERSE_CACHE"):
        return Path(os.environ["TRACKVERSE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trackverse"


def fetch_verified(urls: Sequence[str], target: Path, check: Callable[[bytes], None], what: str,
                   offline_hint: str, timeout: float = 60.0) -> Path:
    """Download the first of ``urls`` whose bytes pass ``check`` (raises on a mismatch) and
    write it atomically to ``target``; every failure is listed in the error, with the hint."""
    errors = []
    for url in urls:
        try:
            log.info("fetching %s from %s", what, url)
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (pinned URLs)
                data = response.read()
            check(data)
        except (OSError, urllib.error.URLError, AssetError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        atomic_write_bytes(target, data)
        return target
    raise AssetError(f"cannot fetch {what} ({'; '.join(errors)}). {offline_hint}")


def asset_path(name: str, base_url: str | None = None, timeout: float = 60.0, flag: str | None = None) -> Path:
    """Local path of asset ``name``, downloading and checking it on first use.

    ``base_url`` overrides the public address (``$TRACKVERSE_ASSETS_URL``: a mirror, or a
    ``file://`` folder on an offline cluster). ``flag``: the flag that takes a local copy instead,
    named in the offline hint.
    """
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    target = cache_root() / "assets" / TRACKVERSE_COMMIT[:12] / name
    if target.exists() and file_sha256(target) == asset.sha256:
        return target
    url = (base_url or os.environ.get("TRACKVERSE_ASSETS_URL") or BASE_URL).rstrip("/") + "/" + name

    def check(data: bytes) -> None:
        got = hashlib.sha256(data).hexdigest()
        if got != asset.sha256:
            raise AssetError(f"sha256 {got}, expected {asset.sha256}: refusing it")

    return fetch_verified(
        [url], target, check, f"{name} ({asset.description})",
        f"Offline? Download it on a machine with internet and pass its path with {flag or 'the stage flag'}, or set "
        "TRACKVERSE_ASSETS_URL to a folder (file:///path/) that holds it.", timeout=timeout,
    )

def resolve_asset(value: str | os.PathLike | None, default_name: str, flag: str | None = None) -> Path:
    """A flag's value: an existing local path is used as is; empty or ``default`` (or an asset
    name) fetches the pinned asset. ``flag`` (e.g. ``--verified_list``) is named in errors."""
    if value is None or str(value) in ("", "default", default_name, f"assets/{default_name}"):
        local = Path(str(value)) if value else None
        if local is not None and local.is_file():
            return local
        return asset_path(default_name, flag=flag)
    path = Path(value)
    if path.is_dir():
        raise AssetError(f"{path} is a folder, not a file")
    if not path.is_file():
        raise AssetError(f"{path} does not exist")
    return path
