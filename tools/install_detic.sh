#!/usr/bin/env bash
# Install the `detic` detector's stack (detectron2, OpenAI's CLIP, Detic + its CenterNet2)
# into the project's virtual environment from source snapshots, for machines that reach only
# the package registries. docs/detic.md has the install from the repositories instead.
#
#   tools/install_detic.sh [--from DIR] [--venv DIR]
#
#   --from DIR   the snapshots: detectron2.tar.gz, CLIP.tar.gz, Detic.tar.gz, CenterNet2.tar.gz
#                and SHA256SUMS (default: ../shared/vendor-src beside the project)
#   --venv DIR   the environment to install into (default: $VIRTUAL_ENV, else .venv)
#
# What it does: checks the snapshots against SHA256SUMS; installs the PyPI dependencies pinned
# in requirements-detic.txt; builds detectron2 (its C++ ops compile against the installed
# torch: minutes) and CLIP into wheels cached under <venv>/detic-cache/ and installs them;
# unpacks Detic with CenterNet2 in its third_party/ into <venv>/src/Detic and makes both
# importable with a .pth file in the environment's site-packages. A second run with the same
# snapshots and torch does nothing; a run after a change rebuilds only what changed.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SOURCE="$REPO/../shared/vendor-src"
VENV="${VIRTUAL_ENV:-$REPO/.venv}"

usage() { sed -n '6,11p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install_detic: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || die "--from needs a folder"; SOURCE="$2"; shift 2 ;;
    --venv) [ $# -ge 2 ] || die "--venv needs a folder"; VENV="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (usage: tools/install_detic.sh [--from DIR] [--venv DIR])" ;;
  esac
done

[ -d "$SOURCE" ] || die "no snapshot folder $SOURCE: pass --from DIR, or install from the repositories (docs/detic.md)"
SOURCE="$(cd "$SOURCE" && pwd)"
[ -x "$VENV/bin/python" ] \
  || die "no Python environment at $VENV (make it first: python3 -m venv $VENV && $VENV/bin/pip install -r requirements.txt)"
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

# 1. the snapshots are the ones the README lists
for name in detectron2 CLIP Detic CenterNet2; do
  [ -f "$SOURCE/$name.tar.gz" ] || die "$SOURCE/$name.tar.gz is missing"
done
[ -f "$SOURCE/SHA256SUMS" ] || die "$SOURCE/SHA256SUMS is missing"
(cd "$SOURCE" && sha256sum --quiet -c SHA256SUMS) || die "snapshots in $SOURCE do not match SHA256SUMS"

torch_version="$("$PY" -c 'import torch; print(torch.__version__)')" \
  || die "torch is not installed in $VENV: pip install -r requirements.txt first"
py_tag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
sum_of() { sha256sum "$SOURCE/$1.tar.gz" | cut -c1-16; }
stamp_value="$(sha256sum "$SOURCE/SHA256SUMS" "$REPO/requirements-detic.txt" | cut -c1-64 | tr '\n' ' ') torch=$torch_version $py_tag"
SRC_DIR="$VENV/src"
STAMP="$SRC_DIR/detic-stack.stamp"
importable() { (cd "$REPO" && "$PY" -c 'import detectron2, clip, detic, centernet' >/dev/null 2>&1); }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp_value" ] && importable; then
  echo "install_detic: already installed in $VENV (snapshots and torch $torch_version unchanged)"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/install-detic.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# 2. PyPI dependencies, pinned; everything else the environment has (the torch the ops are built
#    against first of all) stays at its version: a conflict stops here instead
own="$(sed -e 's/#.*//' -e 's/[<>=!~;[ ].*//' "$REPO/requirements-detic.txt" | grep -v '^$' | paste -sd'|')"
"$PY" -m pip freeze --exclude-editable | grep -v -e ' @ ' -e '^-e ' | grep -v -i -E "^($own)==" \
  > "$WORK/installed.txt" || true
"${PIP[@]}" install -c "$WORK/installed.txt" -r "$REPO/requirements-detic.txt"

# 3. detectron2 and CLIP: wheels built once per snapshot and torch, then installed
CACHE="$VENV/detic-cache"
wheel_of() {  # name -> path of its cached wheel, built when absent
  local name="$1" dir
  dir="$CACHE/$name-$(sum_of "$name")-torch$torch_version-$py_tag"
  if ! compgen -G "$dir/*.whl" >/dev/null; then
    echo "install_detic: building $name (detectron2 compiles its C++ ops: minutes)" >&2
    tar -xzf "$SOURCE/$name.tar.gz" -C "$WORK"
    mkdir -p "$dir.partial"
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$dir.partial" "$WORK/$name"
    rm -rf "$dir" && mv "$dir.partial" "$dir"
  fi
  compgen -G "$dir/*.whl" | head -n 1
}
detectron2_wheel="$(wheel_of detectron2)"
clip_wheel="$(wheel_of CLIP)"
"${PIP[@]}" install --no-deps --force-reinstall "$detectron2_wheel" "$clip_wheel"

# 4. Detic (not a package) with CenterNet2 in its third_party/, replaced whole
mkdir -p "$SRC_DIR"
tar -xzf "$SOURCE/Detic.tar.gz" -C "$WORK"
rm -rf "$WORK/Detic/third_party/CenterNet2"
tar -xzf "$SOURCE/CenterNet2.tar.gz" -C "$WORK/Detic/third_party"
rm -rf "$SRC_DIR/Detic.old"
[ ! -d "$SRC_DIR/Detic" ] || mv "$SRC_DIR/Detic" "$SRC_DIR/Detic.old"
mv "$WORK/Detic" "$SRC_DIR/Detic"
rm -rf "$SRC_DIR/Detic.old"
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n%s\n' "$SRC_DIR/Detic" "$SRC_DIR/Detic/third_party/CenterNet2" > "$site/trackverse-detic.pth"

# 5. check, then remember what was installed
(cd "$REPO" && "$PY" -c 'from utils.detect.detectors.detic import _import_detic; _import_detic()') \
  || die "the stack was installed but does not import (see the error above)"
echo "$stamp_value" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
echo "install_detic: detectron2, CLIP and Detic installed in $VENV (Detic at $SRC_DIR/Detic)"
