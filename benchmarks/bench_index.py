"""curate_db.py --action index against the gunzip + json.loads floor and the original's way.

Generates ``--videos`` (default 2,000) realistic per-video metadata files, as parse_tracks.py
writes them (provenance in the gzip header, canonical JSON lines): ~60 tracks each (Poisson),
tracks of 5-15 s at 16 fps with per-frame boxes and scores, top-10 lists over 1,203 classes
(Zipf-like). Generation is not timed. Then, in one run, wall seconds of:

- the floor: one process that only gunzips every file and ``json.loads`` every line;
- ours: :func:`utils.curate.index.build_index` (in-process, no progress bar) with 1 and 2
  workers (and ``--workers`` more if asked);
- the original TrackVerse way (``curate_db.py --action index`` of MMPLab/TrackVerse, emulated
  here with the same code shape): its ``index_db`` copies every line of every file through
  ``gzip.open(fn, 'rt')`` into one of 32 ``gzip.open(part, 'wt')`` chunk files (compresslevel 9,
  Python's default) on a pool of workers and ``cat``s the parts together; nothing is parsed or
  checked there. Its index is only usable after ``load_tracks``, which ``json.loads`` every line
  of the joined index in one process, drops repeated ``fn``, and keeps per track the yid,
  label (``parse_label``), top-1 weighted logit, a softmax over the top-10 logits and numpy
  arrays of ``track_ts`` and ``track_bbox``. Both parts are timed; "original" is their sum
  (what it costs before the first subset can be drawn), with the same worker count as ours.

Each ours run is repeated ``--repeat`` times and every time printed (the machine may be shared).
Usage: ``python -m benchmarks.bench_index [--videos 2000] [--repeat 2] [--workers 4]``.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import math
import multiprocessing
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from utils.core.layout import DatasetLayout
from utils.curate.index import build_index
from utils.records.provenance import Provenance, gzip_with_provenance
from utils.records.tracks import CANONICAL_KEYS, track_filename

DS = "BenchIndex"
N_CLASSES = 1203
PROVENANCE = Provenance(detector="owlv2", weights="google/owlv2-base-patch16-ensemble", vocab_hash="a" * 64,
                        classes=N_CLASSES, detector_spec="owlv2")


def _yid(v: int) -> str:
    return f"v{v:07d}_Ab"[:11]


def _video_bytes(v: int, n_tracks: int, class_cdf: np.ndarray) -> bytes:
    """One video's metadata file, written as parse_tracks.py writes it (TrackRecord.to_json:
    values rounded to their decimals, so they print short)."""
    rng = np.random.default_rng(1000 + v)
    yid = _yid(v)
    lines = []

    def rounded(a: np.ndarray, decimals: int) -> list:
        scale = 10.0 ** decimals  # k / 10**d: the double round(x, d) gives
        return (np.rint(np.asarray(a) * scale) / scale).tolist()

    for _ in range(n_tracks):
        n = int(rng.uniform(5, 15) * 16)
        ts = ((int(rng.integers(0, 300 * 16)) + np.arange(n)) / 16).tolist()  # exact in binary
        w0, h0 = rng.uniform(80, 500), rng.uniform(80, 400)
        x = np.clip(rng.uniform(0, 1280 - w0) + np.cumsum(rng.normal(0, 2, n)), 0, 1200)
        y = np.clip(rng.uniform(0, 720 - h0) + np.cumsum(rng.normal(0, 2, n)), 0, 650)
        w = np.clip(w0 + np.cumsum(rng.normal(0, 1, n)), 8, 1280)
        h = np.clip(h0 + np.cumsum(rng.normal(0, 1, n)), 8, 720)
        boxes = rounded(np.stack([x, y, w, h], 1), 2)
        top1 = int(np.searchsorted(class_cdf, rng.random()))
        others = [int(c) for c in rng.integers(0, N_CLASSES, 16)]
        lbl = list(dict.fromkeys([top1, *others]))[:10]
        names = [f"class {c:04d} (also thing {c})" for c in lbl]
        mu = np.sort(rng.normal(0, 1, len(lbl)))[::-1] + 2
        tid = rng.bytes(16).hex()
        values = {
            "yid": yid, "tid": tid, "fn": track_filename(yid, names[0], tid), "video_size": [720, 1280],
            "track_ts": ts, "track_bbox": boxes, "top10_lbl": lbl, "top10_desc": names,
            "top10_logit_mu": rounded(mu, 5), "top10_logit_std": rounded(rng.uniform(0, 1, len(lbl)), 5),
            "top10_wlogit_mu": rounded(mu * 0.6, 5), "top10_wlogit_std": rounded(rng.uniform(0, 1, len(lbl)), 5),
            "segment": [0.0, 600.0], "detector": "owlv2", "vocab_hash": "a" * 64,
            "scores": rounded(rng.uniform(0.1, 1, n), 4),
        }
        record = {k: values[k] for k in CANONICAL_KEYS}
        lines.append(json.dumps(record, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode() + b"\n")
    return gzip_with_provenance(b"".join(lines), PROVENANCE)


def _write_videos(job: tuple[str, list[tuple[int, int]]]) -> int:
    base, videos = job
    weights = 1.0 / np.arange(1, N_CLASSES + 1) ** 1.1
    class_cdf = np.cumsum(weights / weights.sum())
    class_cdf[-1] = 1.0
    layout = DatasetLayout(Path(base))
    for v, n in videos:
        path = layout.tracks_meta(DS, _yid(v))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_video_bytes(v, n, class_cdf))
    return len(videos)


def generate(base: Path, videos: int, workers: int) -> int:
    rng = np.random.default_rng(0)
    sizes = np.clip(rng.poisson(60, videos), 1, 150).tolist()
    items = list(enumerate(sizes))
    jobs = [(str(base), items[i::workers * 4]) for i in range(workers * 4)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_write_videos, jobs)
    return int(sum(sizes))


def meta_files(base: Path) -> list[str]:
    return sorted(glob.glob(f"{base}/tracks_meta/{DS}/*/*.gzip"))


# ---------------------------------------------------------------------------- the runs


def floor(base: Path) -> tuple[float, int]:
    """One process: gunzip every file and json.loads every line. (seconds, lines)."""
    started = time.perf_counter()
    n = 0
    for fn in meta_files(base):
        with gzip.open(fn, "rb") as f:
            for line in f:
                json.loads(line)
                n += 1
    return time.perf_counter() - started, n


def ours(base: Path, workers: int) -> tuple[float, int]:
    started = time.perf_counter()
    summary = build_index(base, DS, base / f"ours-{workers}.jsonl.gzip", num_workers=workers, progress=False)
    return time.perf_counter() - started, summary.written


# The original TrackVerse curate_db.py (MMPLab/TrackVerse): Curator.index_db and load_tracks.


def _original_index_worker(job: tuple[str, list[str], int]) -> None:
    tracks_db_part, meta_fns_part, _chunk_id = job
    with gzip.open(tracks_db_part, "wt") as fp:
        for fn in meta_fns_part:
            for ln in gzip.open(fn, "rt"):
                fp.write(ln)


def original_index_db(base: Path, index_file: Path, workers: int) -> float:
    started = time.perf_counter()
    num_chunks = 32
    fns = meta_files(base)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = [pool.apply_async(_original_index_worker, ((f"{index_file}.part{ck}", fns[ck::num_chunks], ck),))
                   for ck in range(num_chunks)]
        for res in results:
            res.get()
    with open(index_file, "ab") as out:  # the original appended each part with `cat part >> index`
        for ck in range(num_chunks):
            subprocess.run(["cat", f"{index_file}.part{ck}"], stdout=out, check=True)
    for ck in range(num_chunks):
        os.remove(f"{index_file}.part{ck}")
    return time.perf_counter() - started


def _softmax(x: list[float], temperature: float = 1.0) -> np.ndarray:
    x = np.array(x)
    e_x = np.exp((x - np.max(x)) / temperature)
    return e_x / e_x.sum()


def original_load_tracks(index_file: Path) -> tuple[float, int]:
    started = time.perf_counter()
    db: set[str] = set()
    fns, yids, classes, logits, confs, tss, bboxes = [], [], [], [], [], [], []
    class2idx = defaultdict(list)
    for line in gzip.open(index_file):
        data = json.loads(line)
        if data["fn"] in db:
            continue
        db.add(data["fn"])
        probs = _softmax(data["top10_wlogit_mu"], temperature=0.1)  # the original's top10_wcls[0]
        fns.append(data["fn"])
        yids.append(data["yid"])
        classes.append(data["top10_desc"][0].replace("photo of a ", "").split(" (also")[0])
        logits.append(data["top10_wlogit_mu"][0])
        confs.append(probs[0] - probs[1])
        tss.append(np.array(data["track_ts"]))
        bboxes.append(np.array(data["track_bbox"]))
    for idx, cls in enumerate(classes):
        class2idx[cls].append(idx)
    return time.perf_counter() - started, len(fns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts of ours")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder (removed)")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        base = Path(tmp)
        t = time.perf_counter()
        tracks = generate(base, args.videos, max(1, cpus))
        mb = sum(os.path.getsize(p) for p in meta_files(base)) / 1e6
        print(f"generated {args.videos} metadata files, {tracks} tracks ({mb:.0f} MB gzip) in "
              f"{time.perf_counter() - t:.0f} s (not timed); {cpus} CPUs, load average {os.getloadavg()[0]:.1f}")
        floors, runs = [], defaultdict(list)
        for _ in range(args.repeat):
            seconds, lines = floor(base)
            assert lines == tracks
            floors.append(seconds)
            for w in args.workers:
                seconds, written = ours(base, w)
                assert written == tracks, (written, tracks)
                runs[w].append(seconds)
        outputs = {(base / f"ours-{w}.jsonl.gzip").read_bytes() for w in args.workers}
        assert len(outputs) == 1, "index differs between worker counts"
        orig_workers = max(args.workers)
        index_file = base / "original.jsonl.gzip"
        db_s = original_index_db(base, index_file, orig_workers)
        load_s, loaded = original_load_tracks(index_file)
        assert loaded == tracks
        fl = min(floors)

        def fmt(values: list[float]) -> str:
            return ", ".join(f"{v:.2f}" for v in values)

        print(f"floor (1 process, gunzip + json.loads): {fmt(floors)} s ({1e6 * fl / tracks:.0f} us/track)")
        for w, values in runs.items():
            best = min(values)
            print(f"ours, {w} worker{'s' if w != 1 else ''}: {fmt(values)} s ({1e6 * best / tracks:.0f} us/track): "
                  f"{best / fl:.2f}x the floor")
        original = db_s + load_s
        best = min(runs[orig_workers])
        print(f"original ({orig_workers} workers): index_db {db_s:.2f} s + load_tracks {load_s:.2f} s = "
              f"{original:.2f} s ({1e6 * original / tracks:.0f} us/track)")
        print(f"ours vs the original, {orig_workers} workers each: {original / best:.1f}x faster "
              f"(index_db alone: {db_s / best:.1f}x)")
        if 1 in runs and 2 in runs:
            print(f"ours, 2 workers vs 1: {min(runs[1]) / min(runs[2]):.2f}x")
        print(f"  (4M tracks at ours' best rate: {math.ceil(best / tracks * 4e6 / 60)} min with {orig_workers} "
              f"worker{'s' if orig_workers != 1 else ''})")


if __name__ == "__main__":
    main()
