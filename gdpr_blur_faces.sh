#!/usr/bin/env bash
# Step 3a: blur faces in every video under $TRACKVERSE_DB (or --base_dir), sharded like
# every stage: flags (--world_size/--rank), else WORLD_SIZE/RANK, else an sbatch array.
# All flags of gdpr_blur_faces.py pass through; run with --help to list them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
args=()
if [[ -n "${WORLD_SIZE:-}" ]]; then args+=(--world_size "$WORLD_SIZE"); fi
if [[ -n "${RANK:-}" ]]; then args+=(--rank "$RANK"); fi
exec "${PYTHON:-python}" "$here/gdpr_blur_faces.py" "${args[@]}" "$@"
