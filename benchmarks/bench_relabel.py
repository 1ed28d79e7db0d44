"""Relabelling stored track embeddings against a vocabulary, on the CPU: the scoring of
relabel_tracks.py (:func:`utils.relabel.scoring.score_tracks`: chunked float32 matmul + top-10
per track) over ``--tracks`` synthetic track embeddings (float16, as stored; each a random class
direction plus noise, L2-normalised) against ``--classes`` text embeddings of ``--dim`` dimensions.

Measured in a fresh child process (so that its peak memory is the scoring's, not the
generator's), in one run:

- the floor: the same chunked float16 -> float32 matmul, nothing else (no top-k): seconds;
- ours: score_tracks (top-10 ids and scores of every track): seconds, ratio to the floor, peak
  memory of the process (the embeddings held, 2 bytes x dim per track, plus one chunk of scores);
- top-1 agreement with the generating class (a sanity check of the synthetic data, not a metric).

Then the storage cost per track: ``--videos`` per-video embeddings files written by the real
writer (:func:`utils.records.track_embeddings.write_video_tracks`, ``--tracks_per_video`` tracks
each) beside their metadata files (realistic records: ``--frames`` boxes each, top-10 of 1,203
classes): bytes per track of each, and the embeddings as a share of the metadata.

Usage: ``python -m benchmarks.bench_relabel [--tracks 1000000] [--classes 1203] [--dim 512]``.
Goal (issue 17): 1M tracks x 1,203 classes under 60 s and 4 GB on the 2-core build machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from utils.core.resources import peak_memory_gb
from utils.records.provenance import Provenance
from utils.records.track_embeddings import embeddings_path, write_video_tracks
from utils.records.tracks import TrackRecord
from utils.relabel.scoring import CHUNK_ROWS, score_tracks


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_inputs(folder: Path, tracks: int, classes: int, dim: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """Text embeddings (C, D) float32, track embeddings (N, D) float16 and each track's class."""
    rng = np.random.default_rng(seed)
    text = unit(rng.standard_normal((classes, dim))).astype(np.float32)
    truth = rng.integers(classes, size=tracks).astype(np.int32)
    emb = np.lib.format.open_memmap(folder / "emb.npy", mode="w+", dtype=np.float16, shape=(tracks, dim))
    for lo in range(0, tracks, 1 << 16):
        hi = min(tracks, lo + (1 << 16))
        emb[lo:hi] = unit(text[truth[lo:hi]] + 0.08 * rng.standard_normal((hi - lo, dim)).astype(np.float32))
    emb.flush()
    del emb
    np.save(folder / "text.npy", text)
    np.save(folder / "truth.npy", truth)
    return folder / "emb.npy", folder / "text.npy", folder / "truth.npy"


def child(folder: Path) -> dict:
    """Runs in a fresh process: load the stored-precision embeddings, time floor and ours."""
    started = time.perf_counter()
    emb = np.load(folder / "emb.npy")  # float16, what relabel holds per video (here: all at once)
    text = np.load(folder / "text.npy")
    truth = np.load(folder / "truth.npy")
    load_s = time.perf_counter() - started
    t = np.ascontiguousarray(text.T)
    started = time.perf_counter()
    checksum = 0.0
    for lo in range(0, emb.shape[0], CHUNK_ROWS):
        checksum += float((emb[lo:lo + CHUNK_ROWS].astype(np.float32) @ t)[:, 0].sum())
    floor_s = time.perf_counter() - started
    started = time.perf_counter()
    top = score_tracks(emb, text, 10)
    ours_s = time.perf_counter() - started
    return {"tracks": int(emb.shape[0]), "classes": int(text.shape[0]), "dim": int(text.shape[1]),
            "load_s": load_s, "floor_s": floor_s, "ours_s": ours_s, "peak_gb": peak_memory_gb(),
            "embeddings_gb": emb.nbytes / 2**30, "top1_agreement": float(np.mean(top.ids[:, 0] == truth)),
            "checksum": checksum}


def storage(folder: Path, videos: int, per_video: int, dim: int, frames: int, classes: int) -> dict:
    """Bytes per track of the embeddings files and of the metadata files, as written."""
    rng = np.random.default_rng(1)
    names = [f"class {i}" for i in range(classes)]
    emb_bytes = meta_bytes = 0
    for v in range(videos):
        yid = f"bench{v:06d}"
        records, vectors = [], []
        for k in range(per_video):
            ts = np.round(np.arange(frames) / 16.0 + k, 4)
            xy = np.cumsum(rng.normal(0, 2, (frames, 2)), axis=0) + 200
            boxes = np.column_stack([xy, xy + 120])
            logits = rng.normal(0, 1, (frames, classes)).astype(np.float32)
            records.append(TrackRecord.from_history(yid, ts, boxes, logits, rng.uniform(0.3, 0.9, frames), names,
                                                    (720, 1280), segment=(0.0, 600.0), detector="owlv2"))
            vectors.append(unit(rng.standard_normal(dim)))
        meta = folder / "tracks_meta" / yid[:2] / f"{yid}-meta.jsonl.gzip"
        write_video_tracks(meta, records, vectors, Provenance(detector="owlv2", vocab_hash="0" * 64, classes=classes,
                                                              detector_spec="owlv2"))
        emb_bytes += embeddings_path(meta).stat().st_size
        meta_bytes += meta.stat().st_size
    n = videos * per_video
    return {"tracks": n, "embeddings_bytes_per_track": emb_bytes / n, "metadata_bytes_per_track": meta_bytes / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--dim", type=int, default=512, help="OWLv2 base: 512")
    parser.add_argument("--videos", type=int, default=50, help="videos written for the storage figure")
    parser.add_argument("--tracks_per_video", type=int, default=60)
    parser.add_argument("--frames", type=int, default=160, help="frames per track in the storage figure (10 s)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-relabel-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        make_inputs(folder, args.tracks, args.classes, args.dim)
        print(f"inputs: {args.tracks:,} track embeddings (float16) x {args.classes:,} classes, {args.dim} dims "
              f"(generated in {time.perf_counter() - started:.1f} s, not counted)")
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_relabel", "--child", str(folder)],
                              capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"floor (chunked matmul only): {r['floor_s']:.1f} s")
        print(f"relabel scoring (matmul + top-10 per track): {r['ours_s']:.1f} s = {r['ours_s'] / r['floor_s']:.2f}x "
              f"the floor; {r['tracks'] / r['ours_s']:,.0f} tracks/s (goal: 1M in < 60 s)")
        print(f"peak memory of the scoring process: {r['peak_gb']:.2f} GB (embeddings held: {r['embeddings_gb']:.2f} GB; "
              f"goal < 4 GB); loading them took {r['load_s']:.1f} s")
        print(f"top-1 = generating class for {r['top1_agreement']:.4f} of the tracks (sanity check)")
        s = storage(folder / "storage", args.videos, args.tracks_per_video, args.dim, args.frames, args.classes)
        print(f"storage ({s['tracks']:,} tracks of {args.frames} frames, {args.dim}-d float16, zstd Parquet): "
              f"{s['embeddings_bytes_per_track']:,.0f} bytes/track of embeddings vs "
              f"{s['metadata_bytes_per_track']:,.0f} bytes/track of metadata "
              f"({s['embeddings_bytes_per_track'] / s['metadata_bytes_per_track']:.2f}x); "
              f"4M tracks: {4e6 * s['embeddings_bytes_per_track'] / 2**30:.1f} GiB of embeddings")


if __name__ == "__main__":
    main()
