#!/usr/bin/env bash
# Step 3a: blur faces in every video under $TRACKVERSE_DB (or --base_dir). The real entry is
# gdpr_blur_faces.py (every flag passes through; --help lists them; WORLD_SIZE/RANK are read
# there). This wrapper only finds the project's interpreter, as the README installs it:
# .venv/bin/python beside this script, else $PYTHON, else python3 on PATH.
set -euo pipefail
src="${BASH_SOURCE[0]}"
if [[ "$src" == */* ]]; then here="$(cd "${src%/*}" && pwd)"; else here="$(pwd)"; fi
if [[ -x "$here/.venv/bin/python" ]]; then
    python="$here/.venv/bin/python"
elif [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif command -v python3 >/dev/null 2>&1; then
    python="python3"
else
    echo "gdpr_blur_faces.sh: no Python interpreter: install the project as the README says" \
         "(python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt) or set PYTHON" >&2
    exit 2
fi
exec "$python" "$here/gdpr_blur_faces.py" "$@"
