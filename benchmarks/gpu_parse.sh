#!/usr/bin/env bash
# parse_tracks on one GPU node, no network: the full-size OWLv2-base architecture with random
# weights (random:owlv2-base) alone at batch sizes 8/16/32/64 in fp32 and bf16, with and without
# torch.compile, then the whole stage (plain and pipelined) on a 60 s 720p synthetic video; then,
# where tools/install_detic.sh installed it, DETIC's full-size Swin-B with random weights
# (random:detic-swinb) alone at batch sizes 4/8/16 in fp16 autocast (its CUDA default) and fp32.
# Prints frames/s, seconds of video per second and peak GPU memory. Every step is time-boxed
# (a slow compile cannot eat the rest); the whole script stays under 8 minutes, 10 with DETIC.
#
# Usage, from anywhere, with the project's virtual environment in .venv (or PYTHON=...):
#   benchmarks/gpu_parse.sh [DEVICE]        # DEVICE: cuda (default), cuda:1, ...
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${1:-cuda}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_parse.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRACKVERSE_CACHE="$WORK/cache"
CPUS=$(nproc)
WORKERS=$(( CPUS > 3 ? CPUS - 2 : 1 ))  # leave the main process (detector, tracker) its cores

bench() {  # bench SECONDS ARGS...: one step, killed when it runs past SECONDS
    local limit=$1
    shift
    echo "== bench_parse_tracks $* (at most ${limit} s)"
    timeout -k 5 "$limit" "$PY" -m benchmarks.bench_parse_tracks "$@"
    local code=$?
    if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        printf "\n!! time box of %s s reached: the lines above are what it measured\n" "$limit"
    elif [ "$code" -ne 0 ]; then
        printf "\n!! step failed with exit code %s\n" "$code"
    fi
}

date -u
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
echo "$CPUS CPU cores; pipelined stage with --decode_workers $WORKERS"

# the stage's video is made on the CPUs while the GPU runs the detector alone
"$PY" -m benchmarks.bench_parse_tracks --make_video "$WORK/video-60s-720p.mp4" --seconds 60 \
    > "$WORK/make_video.log" 2>&1 &
MAKER=$!

bench 45 --sweep --device "$DEVICE" --precision fp32 --batch_sizes 8 16 32 64 --repeats 1
bench 45 --sweep --device "$DEVICE" --precision bf16 --batch_sizes 8 16 32 64 --repeats 1
bench 100 --sweep --device "$DEVICE" --precision bf16 --compile --batch_sizes 8 16 32 64 --repeats 1
bench 100 --sweep --device "$DEVICE" --precision fp32 --compile --batch_sizes 8 16 32 64 --repeats 1

# at most 20 s more for the video (it had the 290 s above)
for _ in $(seq 20); do kill -0 "$MAKER" 2>/dev/null || break; sleep 1; done
kill "$MAKER" 2>/dev/null
wait "$MAKER" 2>/dev/null
cat "$WORK/make_video.log"
if [ -s "$WORK/video-60s-720p.mp4" ]; then
    bench 120 --stage --video "$WORK/video-60s-720p.mp4" --device "$DEVICE" --precision bf16 --batch_size 32 \
        --decode_workers "$WORKERS"
else
    echo "!! no video: the stage was not measured"
fi

# DETIC (issue 25): only where its stack is installed (tools/install_detic.sh)
if "$PY" -c "from utils.detect.detectors.detic import detic_available; raise SystemExit(not detic_available())"; then
    bench 60 --sweep --detector detic --device "$DEVICE" --precision auto --batch_sizes 4 8 16 --repeats 1
    bench 60 --sweep --detector detic --device "$DEVICE" --precision fp32 --batch_sizes 4 8 16 --repeats 1
else
    echo "!! DETIC not installed (tools/install_detic.sh): not measured"
fi
date -u
