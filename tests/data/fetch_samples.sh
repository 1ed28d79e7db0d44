#!/usr/bin/env bash
# Fetch the real sample data some tests read, into tests/data/samples/ (git-ignored), so that a
# fresh clone runs them instead of skipping:
#
#   samples/videos/             vtest.avi, Megamind.avi, box.mp4, cup.mp4: the example videos of
#                               Debian's opencv-doc package (OpenCV 4.6.0 sample data, BSD licence),
#                               through the package manager (apt-get download: no root needed), checked
#                               against tests/data/videos.sha256
#   samples/trackverse-assets/  the TrackVerse asset lists, through the project's own pinned fetcher
#                               (utils/core/assets.py: a fixed commit, sha256-checked; offline, set
#                               TRACKVERSE_ASSETS_URL=file:///folder/ holding them)
#
# Usage: tests/data/fetch_samples.sh [--deb FILE] [--videos-only | --assets-only]
#   --deb FILE  an opencv-doc .deb fetched elsewhere (e.g. on a machine without apt-get: from
#               https://packages.debian.org/bookworm/all/opencv-doc/download)
# What is already there and checks out is kept. Exit status 0 when everything is in place.
set -euo pipefail

src="${BASH_SOURCE[0]}"
if [[ "$src" == */* ]]; then here="$(cd "${src%/*}" && pwd)"; else here="$(pwd)"; fi
repo="$(cd "$here/../.." && pwd)"
out="$here/samples"
sums="$here/videos.sha256"
deb="" videos=1 assets=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --deb) deb="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
        --videos-only) assets=0; shift ;;
        --assets-only) videos=0; shift ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fetch_samples.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "fetch_samples: $*" >&2; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

expected_sha() { awk -v f="$1" '$2 == f {print $1}' "$sums"; }

video_ok() { [[ -f "$out/videos/$1" && "$(sha256_of "$out/videos/$1")" == "$(expected_sha "$1")" ]]; }

fetch_videos() {
    local names=(vtest.avi Megamind.avi box.mp4 cup.mp4) missing=() name
    for name in "${names[@]}"; do video_ok "$name" || missing+=("$name"); done
    if [[ ${#missing[@]} -eq 0 ]]; then say "videos: all ${#names[@]} already in $out/videos"; return 0; fi
    local tmp; tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    if [[ -z "$deb" ]]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            say "videos: no apt-get here: download opencv-doc's .deb (https://packages.debian.org/bookworm/all/opencv-doc/download) and pass it with --deb FILE"
            return 1
        fi
        say "videos: apt-get download opencv-doc (about 96 MB)"
        if ! (cd "$tmp" && apt-get download opencv-doc >&2); then
            say "videos: apt-get could not download opencv-doc: refresh the package lists (sudo apt-get update) or pass --deb FILE"
            return 1
        fi
        deb="$(ls "$tmp"/opencv-doc_*.deb)"
    fi
    local doc=./usr/share/doc/opencv-doc
    local members=("$doc/examples/data/vtest.avi" "$doc/examples/data/Megamind.avi"
                   "$doc/opencv4/html/box.mp4.gz" "$doc/opencv4/html/cup.mp4.gz")
    mkdir -p "$tmp/x"
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" "${members[@]}"
    else  # a .deb is an ar archive holding data.tar.*
        (cd "$tmp" && ar x "$deb" && tar -x -f data.tar.* -C "$tmp/x" "${members[@]}")
    fi
    gzip -d "$tmp/x/$doc/opencv4/html/box.mp4.gz" "$tmp/x/$doc/opencv4/html/cup.mp4.gz"
    mkdir -p "$out/videos"
    local failed=0 file
    for name in "${missing[@]}"; do
        file="$(find "$tmp/x" -name "$name" -type f | head -n 1)"
        if [[ -z "$file" ]]; then say "videos: $name is not in $(basename "$deb")"; failed=1; continue; fi
        if [[ "$(sha256_of "$file")" != "$(expected_sha "$name")" ]]; then
            say "videos: $name from $(basename "$deb") has another sha256 than tests/data/videos.sha256 (another opencv-doc version?): not used"
            failed=1; continue
        fi
        cp "$file" "$out/videos/.$name.tmp" && mv "$out/videos/.$name.tmp" "$out/videos/$name"
        say "videos: $out/videos/$name"
    done
    return "$failed"
}

python_of_project() {
    if [[ -x "$repo/.venv/bin/python" ]]; then echo "$repo/.venv/bin/python"
    elif [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"
    else echo python3; fi
}

fetch_assets() {
    say "assets: through utils/core/assets.py (pinned commit, sha256-checked)"
    (cd "$repo" && "$(python_of_project)" - "$out/trackverse-assets" <<'PY'
import os
import shutil
import sys
from pathlib import Path

from utils.core.assets import ASSETS, AssetError, asset_path

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
failed = False
for name in sorted(ASSETS):
    try:
        source = asset_path(name)
    except AssetError as exc:
        print(f"fetch_samples: assets: {exc}", file=sys.stderr)
        failed = True
        continue
    tmp = folder / f".{name}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, folder / name)
    print(f"fetch_samples: assets: {folder / name}", file=sys.stderr)
sys.exit(1 if failed else 0)
PY
    )
}

status=0
if [[ $videos -eq 1 ]]; then fetch_videos || status=1; fi
if [[ $assets -eq 1 ]]; then fetch_assets || status=1; fi
if [[ $status -eq 0 ]]; then say "done: the tests read $out"; else say "some samples are missing (see above); the tests that need them skip"; fi
exit "$status"
