"""curate_db.py at scale: index, sample_random and sample_class_balanced on synthetic metadata.

The generator writes realistic metadata files (1,203 classes with a Zipf-like long tail, ~60
tracks per video, tracks of 3-60 s at 16 fps with per-frame boxes and scores, top-10 lists);
its time is excluded. Then, in one run:

- index (the CLI, ``--num_workers`` = CPUs): seconds, MB/s of gzip and of JSON in, peak memory,
  and the per-record cost of its parts (read, parse, validate, compress) on a sample;
- sample_random and sample_class_balanced (the CLI, the default N and Nc): seconds, peak memory;
- selection from the Parquet companion vs re-parsing the JSON index (the original's way), same
  ranking code: seconds and ratio;
- writing a subset by copying gzip members at stored offsets vs streaming the whole index once
  and re-compressing the selected lines: seconds and ratio;
- optionally (``--constraints``) class-balanced sampling with ``--min_motion`` (synthetic motion
  metric) and with ``--max_spt_iou``;
- optionally (``--min_red``) sample_max_motion and sample_min_red with the default Nc on synthetic
  L2-normalised embeddings of ``--min_red_dim`` dimensions (2048: visual_metrics.py's ResNet-50):
  a point per class, an offset per video, noise, so that tracks of one video are near-duplicates.

Everything is extrapolated linearly to 4M tracks (per-track costs measured here; the index also
per 16 workers). Usage: ``python -m benchmarks.bench_curate [--tracks 200000] [--constraints] [--min_red]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from utils.core.io import atomic_path
from utils.core.layout import META_SUFFIX, DatasetLayout, companion_path
from utils.curate.index_lines import canonical_line_scalars
from utils.curate.sampling import rank_within_class
from utils.records.index_file import (
    IndexReader,
    companion_table,
    compress_member,
    load_track_table,
    write_companion,
)
from utils.records.metrics_store import metric_dir, write_metric_file
from utils.records.prompts import label_of
from utils.records.tracks import TrackRecord, track_filename

REPO = Path(__file__).resolve().parents[1]
DS = "BenchLVIS"
INDEX = f"tracks_subsets/{DS}/{DS}-Full.jsonl.gzip"
N_CLASSES = 1203
TARGET = 4_000_000
N_FULL = (82, 184, 259, 392)  # the default random subset sizes at 4M tracks (thousands)
NC = (100, 300, 500, 1000)


# ---------------------------------------------------------------------------- generator


def _video_lines(v: int, n_tracks: int, class_p: np.ndarray) -> bytes:
    rng = np.random.default_rng(1000 + v)
    yid = f"b{v:06d}-Ab_x"[:11]
    lines = []
    for _ in range(n_tracks):
        seconds = float(np.clip(rng.lognormal(math.log(6.0), 0.8), 3.0, 60.0))
        n = int(seconds * 16)
        t0 = round(float(rng.uniform(0, 300)), 1)
        ts = np.round(t0 + np.arange(n) / 16, 4)
        w0, h0 = rng.uniform(80, 500), rng.uniform(80, 400)
        x = np.clip(rng.uniform(0, 1280 - w0) + np.cumsum(rng.normal(0, 2, n)), 0, 1200)
        y = np.clip(rng.uniform(0, 720 - h0) + np.cumsum(rng.normal(0, 2, n)), 0, 650)
        w = np.clip(w0 + np.cumsum(rng.normal(0, 1, n)), 8, 1280)
        h = np.clip(h0 + np.cumsum(rng.normal(0, 1, n)), 8, 720)
        boxes = np.round(np.stack([x, y, w, h], 1), 2).tolist()
        top1 = int(rng.choice(N_CLASSES, p=class_p))
        lbl = [top1, *(int(c) for c in rng.choice(N_CLASSES, 9, replace=False) if c != top1)][:10]
        mu = np.round(np.sort(rng.normal(0, 1, len(lbl)))[::-1] + 2, 5).tolist()
        tid = rng.bytes(16).hex()
        names = [f"class {c:04d} (also thing {c})" for c in lbl]
        record = {
            "yid": yid, "tid": tid, "fn": track_filename(yid, names[0], tid), "video_size": [720, 1280],
            "track_ts": ts.tolist(), "track_bbox": boxes, "top10_lbl": lbl, "top10_desc": names,
            "top10_logit_mu": mu, "top10_logit_std": np.round(rng.uniform(0, 1, len(lbl)), 5).tolist(),
            "top10_wlogit_mu": mu, "top10_wlogit_std": np.round(rng.uniform(0, 1, len(lbl)), 5).tolist(),
            "segment": [0.0, 600.0], "detector": "owlv2", "vocab_hash": "0" * 64,
            "scores": np.round(rng.uniform(0.1, 1, n), 4).tolist(),
        }
        lines.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    return b"".join(lines)


def _write_videos(job: tuple[str, list[tuple[int, int]]]) -> int:
    base, videos = job
    weights = 1.0 / np.arange(1, N_CLASSES + 1) ** 1.1
    class_p = weights / weights.sum()
    layout = DatasetLayout(Path(base))
    for v, n in videos:
        data = _video_lines(v, n, class_p)
        path = layout.tracks_meta(DS, f"b{v:06d}-Ab_x"[:11])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
    return len(videos)


def generate(base: Path, tracks: int, workers: int) -> int:
    rng = np.random.default_rng(0)
    sizes = []
    while sum(sizes) < tracks:
        sizes.append(int(np.clip(rng.poisson(60), 1, 150)))
    sizes[-1] -= sum(sizes) - tracks
    videos = [(v, n) for v, n in enumerate(sizes) if n > 0]
    jobs = [(str(base), videos[i::workers * 8]) for i in range(workers * 8)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_write_videos, jobs)
    verified = base / "verified.txt"  # 1% of the videos are evaluation videos
    verified.write_text("".join(f"b{v:06d}-Ab_x"[:11] + "-x.mp4,x\n" for v, _ in videos[::100]))
    return len(videos)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # CPU seconds of the process and its workers
    peak: float  # GB, from the command's summary
    out: str

    def phases(self) -> dict[str, float]:
        """The sampling summary's phase timings (read, select, write, plots)."""
        line = next((x for x in self.out.splitlines() if "peak memory" in x), "")
        return {k: float(v) for k, v in re.findall(r"(read|select|write|plots) ([\d.]+) s", line)}


def cli(*args: object) -> Run:
    """One curate_db.py run: wall and CPU seconds, peak memory from its summary."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "curate_db.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"curate_db.py {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    peaks = [float(m) for m in re.findall(r"peak memory ([\d.]+) GB", proc.stdout)]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, max(peaks, default=math.nan), proc.stdout)


def baseline_memory_gb() -> float:
    """Peak memory of a Python that only imported curate_db (interpreter, numpy, pyarrow)."""
    code = "import curate_db, pyarrow.parquet; from utils.core.resources import peak_memory_gb; print(peak_memory_gb())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return float(out.stdout)


def part_costs(base: Path, sample: int = 2000) -> dict[str, float]:
    """Microseconds per record of the index's parts, on the first ``sample`` records."""
    paths = sorted(DatasetLayout(base).tracks_meta_dir(DS).glob("*/*-meta.jsonl.gzip"))
    raw: list[bytes] = []
    yids: list[str] = []  # each line's video, from its file's name
    clock = time.process_time  # CPU time: other work on the machine does not inflate it
    started = clock()
    for path in paths:
        with gzip.open(path, "rb") as f:
            raw.extend(f)
        yids += [path.name.removesuffix(META_SUFFIX)] * (len(raw) - len(yids))
        if len(raw) >= sample:
            break
    read = clock() - started
    lines = [line.rstrip(b"\n") for line in raw]
    t = clock()
    checked = [canonical_line_scalars(line, yid) for line, yid in zip(lines, yids, strict=True)]
    fast = clock() - t
    t = clock()
    dicts = [json.loads(line) for line in raw]
    parse = clock() - t
    t = clock()
    recs = [TrackRecord.from_dict(d) for d in dicts]
    validate = clock() - t
    t = clock()
    for line in raw:
        compress_member(line)
    compress = clock() - t
    n = len(raw)
    assert all(c is not None for c in checked) and len(recs) == n
    return {name: 1e6 * s / n for name, s in (("gzip read", read), ("parse + check (index fast path)", fast),
                                              ("json.loads (full path)", parse),
                                              ("TrackRecord (full path)", validate),
                                              ("compress (gzip member)", compress))}


def select_from_parquet(index_path: Path) -> tuple[float, int]:
    started = time.process_time()
    table = load_track_table(index_path, columns=["yid", "label", "score"])
    codes, _ = table.labels
    ranks = rank_within_class(codes, table.numpy("score"), 0.0, eligible_mask=codes >= 0)
    total = sum(int(((ranks >= 0) & (ranks < nc)).sum()) for nc in NC)
    return time.process_time() - started, total


def select_from_json(index_path: Path) -> tuple[float, int]:
    """The original's way: parse every line of the index, then the same ranking."""
    started = time.process_time()
    labels, scores, yids = [], [], []
    with gzip.open(index_path, "rb") as f:
        for line in f:
            data = json.loads(line)
            yids.append(data["yid"])
            labels.append(label_of(data["top10_desc"][0]))
            scores.append(data["top10_wlogit_mu"][0])
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    ranks = rank_within_class(codes, np.asarray(scores), 0.0)
    total = sum(int(((ranks >= 0) & (ranks < nc)).sum()) for nc in NC)
    return time.process_time() - started, total


def write_by_offsets(index_path: Path, rows: np.ndarray, out: Path) -> float:
    started = time.process_time()
    with IndexReader(load_track_table(index_path, columns=["offset", "length", "crc32", "ulen"])) as reader, \
            open(out, "wb") as f:
        reader.copy_rows(rows, f)
    return time.process_time() - started


def write_by_streaming(index_path: Path, rows: np.ndarray, out: Path) -> float:
    started = time.process_time()
    wanted = np.zeros(int(rows.max()) + 1, dtype=bool)
    wanted[rows] = True
    with gzip.open(index_path, "rb") as f, gzip.open(out, "wb", compresslevel=6) as g:
        for i, line in enumerate(f):
            if i < wanted.size and wanted[i]:
                g.write(line)
    return time.process_time() - started


def scale_companion(base: Path, rows: int) -> tuple[Path, int]:
    """A ``rows``-track index as sampling sees it, without metadata to parse: a realistic
    companion (long-tailed classes, ~60 tracks per video, random tids) and an index of the right
    shape whose members are all one small valid record. Returns (index path, member bytes)."""
    rng = np.random.default_rng(1)
    index_path = DatasetLayout(base).relative(f"tracks_subsets/{DS}/{DS}-Scale.jsonl.gzip")
    index_path.parent.mkdir(parents=True, exist_ok=True)
    line = TrackRecord(yid="s000000-Ab_", tid="0" * 32, fn="s0/s000000-Ab_-x-0.mp4", track_ts=[0.0],
                       track_bbox=[[0.0, 0.0, 1.0, 1.0]]).to_json().encode() + b"\n"
    member = compress_member(line)
    block = member * 65536
    with open(index_path, "wb") as f:
        for lo in range(0, rows, 65536):
            f.write(block if lo + 65536 <= rows else member * (rows - lo))
    videos = max(1, rows // 60)
    video = np.sort(rng.integers(0, videos, rows)).astype(np.int32)
    names = pa.array([f"s{v:06d}-Ab_x"[:11] for v in range(videos)])
    yid = pa.DictionaryArray.from_arrays(pa.array(video), names).dictionary_decode()
    weights = 1.0 / np.arange(1, N_CLASSES + 1) ** 1.1
    cls = rng.choice(N_CLASSES, rows, p=weights / weights.sum()).astype(np.int32)
    labels = pa.array([f"class {c:04d}" for c in range(N_CLASSES)])
    label = pa.DictionaryArray.from_arrays(pa.array(cls), labels).dictionary_decode()
    hex_pairs = np.array([f"{i:02x}" for i in range(256)], dtype="S2")
    tid = pa.array(hex_pairs[np.frombuffer(rng.bytes(16 * rows), np.uint8).reshape(rows, 16)]
                   .view("S32").ravel()).cast(pa.string())
    fn = pc.binary_join_element_wise(pc.utf8_slice_codeunits(yid, 0, 2), "/", yid, "-",
                                     label.cast(pa.string()), "-", tid, ".mp4", "")
    score = rng.normal(2.0, 1.0, rows)
    seconds = np.clip(rng.lognormal(math.log(6.0), 0.8, rows), 3, 60)
    columns = pa.table({
        "row": np.arange(rows), "offset": np.arange(rows, dtype=np.int64) * len(member),
        "length": np.full(rows, len(member)), "crc32": pa.array(np.full(rows, zlib.crc32(line), np.uint32)),
        "ulen": pa.array(np.full(rows, len(line), np.uint32)), "yid": yid, "tid": tid, "fn": fn, "label": label,
        "label_id": cls, "score": score, "logit": score + 1, "duration": seconds,
        "num_frames": (seconds * 16).astype(np.int32), "t_start": np.zeros(rows), "t_end": seconds,
        "video_h": np.full(rows, 720, np.int32), "video_w": np.full(rows, 1280, np.int32),
    })
    with atomic_path(companion_path(index_path)) as tmp:
        write_companion(companion_table(columns, DS, index_path, index_path.stat().st_size), tmp)
    (base / "verified-scale.txt").write_text("".join(f"s{v:06d}-Ab_x"[:11] + "\n" for v in range(0, videos, 100)))
    folder = metric_dir(base, DS, "motion")
    folder.mkdir(parents=True, exist_ok=True)
    q90 = rng.gamma(2.0, 0.7, rows)
    half = rows // 2
    for part, (lo, hi) in enumerate(((0, half), (half, rows))):
        pq.write_table(pa.table({"tid": tid.slice(lo, hi - lo), "fn": fn.slice(lo, hi - lo), "q90": q90[lo:hi]}),
                       folder / f"rank-{part:05d}-of-00002.parquet")
    return index_path, len(member)


def scale_test(base: Path, rows: int, real_member: float, copy_mb_per_cpu_s: float, base_gb: float) -> None:
    t = time.perf_counter()
    index_path, member = scale_companion(base, rows)
    print(f"\n== {rows} tracks as sampling sees them (synthetic companion, an index of {member}-byte members; "
          f"built in {time.perf_counter() - t:.0f} s) ==")
    common = ("--base_dir", base, "--index_file", index_path.relative_to(base), "--verified_list",
              base / "verified-scale.txt")
    for title, extra in (
        ("sample_random --N " + " ".join(map(str, N_FULL)), ("--action", "sample_random", "--N", *N_FULL, "--no_plots")),
        ("sample_class_balanced --Nc " + " ".join(map(str, NC)) + " (4 subsets with plots)",
         ("--action", "sample_class_balanced", "--Nc", *NC)),
        ("sample_class_balanced --Nc ... --temperature 0 0.1 inf (12 subsets)",
         ("--action", "sample_class_balanced", "--Nc", *NC, "--temperature", "0", "0.1", "inf", "--no_plots")),
        ("sample_class_balanced --Nc ... --min_motion 1", ("--action", "sample_class_balanced", "--Nc", *NC,
                                                           "--min_motion", "1", "--no_plots")),
    ):
        run = cli(*extra, *common)
        phases = run.phases()
        tracks = sum(int(m) for m in re.findall(r"jsonl\.gzip: (\d+) tracks", run.out))
        real_gb = tracks * real_member / 1e9
        print(f"{title}: {run.wall:.1f} s wall, {run.cpu:.1f} CPU s ("
              + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()) + f"), peak {run.peak:.2f} GB "
              f"({run.peak - base_gb:.2f} GB above the bare interpreter)")
        print(f"  {tracks} tracks written; with real records that is {real_gb:.1f} GB to copy, "
              f"+{real_gb * 1e3 / copy_mb_per_cpu_s:.0f} CPU s at the {copy_mb_per_cpu_s:.0f} MB/s measured above "
              f"(+ disk time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder (removed)")
    parser.add_argument("--constraints", action="store_true", help="also time --min_motion and --max_spt_iou")
    parser.add_argument("--min_red", action="store_true",
                        help="also time sample_max_motion and sample_min_red (synthetic metrics)")
    parser.add_argument("--min_red_dim", type=int, default=2048, help="embedding dimensions for --min_red")
    parser.add_argument("--scale_rows", type=int, default=TARGET,
                        help="then sample from a synthetic companion of this many tracks (0: skip)")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    scale = TARGET / args.tracks
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        base = Path(tmp)
        t = time.perf_counter()
        videos = generate(base, args.tracks, cpus)
        meta_mb = sum(p.stat().st_size for p in (base / "tracks_meta").rglob("*.gzip")) / 1e6
        print(f"generated {args.tracks} tracks in {videos} videos ({meta_mb:.0f} MB of gzip metadata) "
              f"in {time.perf_counter() - t:.0f} s (not timed below); {cpus} CPUs")
        common = ("--base_dir", base, "--index_file", INDEX)
        load = os.getloadavg()[0]
        print(f"load average before the timings: {load:.1f} on {cpus} CPUs (other work inflates wall times; "
              "CPU times are what the work costs)")

        run = cli("--action", "index", "--dataset_name", DS, "--num_workers", cpus, *common)
        index_path = DatasetLayout(base).relative(INDEX)
        index_mb = index_path.stat().st_size / 1e6
        json_mb = float(re.search(r"([\d.]+) MB/s JSON", run.out).group(1)) * float(
            re.search(r"\n  ([\d.]+) s:", run.out).group(1))
        cpu_per_track = run.cpu / args.tracks
        print(f"\nindex ({cpus} workers): {run.wall:.1f} s wall, {run.cpu:.1f} CPU s ({1e3 * cpu_per_track:.2f} ms/track); "
              f"{meta_mb / run.wall:.1f} MB/s gzip in and {json_mb / run.wall:.1f} MB/s JSON in (wall), "
              f"{meta_mb / run.cpu:.1f} / {json_mb / run.cpu:.1f} MB/s per CPU; peak {run.peak:.2f} GB")
        print(f"  index {index_mb:.0f} MB ({100 * (index_mb / meta_mb - 1):+.0f}% vs the per-video files: one gzip "
              f"member per line), companion {companion_path(index_path).stat().st_size / 1e6:.1f} MB")
        costs = part_costs(base)
        total_us = sum(costs.values())
        print("  per record, CPU: " + ", ".join(f"{k} {v:.0f} us" for k, v in costs.items())
              + f"; total {total_us:.0f} us")
        print(f"  -> 4M tracks: {cpu_per_track * TARGET / 3600:.1f} CPU hours: ~{cpu_per_track * TARGET / cpus / 60:.0f} "
              f"min on {cpus} idle cores, ~{cpu_per_track * TARGET / 16 / 60:.0f} min with --num_workers 16 "
              f"(bounded by JSON parsing + validation, not by gzip: decompression is "
              f"{100 * costs['gzip read'] / total_us:.0f}% of the work)")

        base_gb = baseline_memory_gb()
        verified = ("--verified_list", base / "verified.txt")
        n_random = [f"{n / scale:.4g}" for n in N_FULL]
        run = cli("--action", "sample_random", "--N", *n_random, *verified, "--no_plots", *common)
        report_sampling(f"sample_random --N {' '.join(n_random)} (the default sizes x {1 / scale:.3g})",
                        run)
        run = cli("--action", "sample_class_balanced", "--Nc", *NC, *verified, *common)
        report_sampling(f"sample_class_balanced --Nc {' '.join(map(str, NC))} --temperature 0", run)
        print("  " + "\n  ".join(line.strip() for line in run.out.splitlines() if "-CB" in line))
        run = cli("--action", "sample_class_balanced", "--Nc", *NC, "--temperature", "0", "0.1", "inf", *verified,
                  "--no_plots", *common)
        report_sampling("  the same with --temperature 0 0.1 inf (12 subsets, no plots)", run)

        parquet_s, total_p = select_from_parquet(index_path)
        json_s, total_j = select_from_json(index_path)
        assert total_p == total_j, (total_p, total_j)
        print(f"\nselection (read + rank + 4 cuts, T=0), CPU: Parquet companion {parquet_s:.2f} s, re-parsing the "
              f"JSON index {json_s:.1f} s: {json_s / parquet_s:.0f}x  -> 4M: {parquet_s * scale:.1f} s vs "
              f"{json_s * scale / 60:.0f} min")

        table = load_track_table(index_path, columns=["label", "score"])
        codes, _ = table.labels
        ranks = rank_within_class(codes, table.numpy("score"), 0.0, eligible_mask=codes >= 0)
        rows = np.flatnonzero((ranks >= 0) & (ranks < max(NC)))
        offs_s = write_by_offsets(index_path, rows, base / "a.jsonl.gzip")
        copied_mb = (base / "a.jsonl.gzip").stat().st_size / 1e6
        stream_s = write_by_streaming(index_path, rows, base / "b.jsonl.gzip")
        with gzip.open(base / "a.jsonl.gzip", "rb") as a, gzip.open(base / "b.jsonl.gzip", "rb") as b:
            assert zlib.crc32(a.read()) == zlib.crc32(b.read())
        print(f"writing CB{max(NC)} ({rows.size} tracks), CPU: copying members at stored offsets {offs_s:.2f} s, "
              f"streaming the whole index and re-compressing the selected lines {stream_s:.1f} s: "
              f"{stream_s / offs_s:.0f}x ({copied_mb / offs_s:.0f} MB/s per CPU)")

        if args.constraints:
            table = load_track_table(index_path, columns=["tid", "fn"])
            rng = np.random.default_rng(0)
            tids, fns = table.table.column("tid").to_pylist(), table.table.column("fn").to_pylist()
            q90 = rng.gamma(2.0, 0.7, len(tids))
            half = len(tids) // 2
            for part, sl in enumerate((slice(0, half), slice(half, None))):
                write_metric_file(metric_dir(base, DS, "motion") / f"rank-{part:05d}-of-00002.parquet",
                                  tids[sl], fns[sl], {"q90": q90[sl]})
            run = cli("--action", "sample_class_balanced", "--Nc", *NC, "--min_motion", "1", *verified,
                      "--no_plots", *common)
            report_sampling("\nsample_class_balanced --min_motion 1 (vectorised)", run)
            run = cli("--action", "sample_class_balanced", "--Nc", "100", "--max_spt_iou", "0.5", *verified,
                      "--no_plots", *common)
            report_sampling("sample_class_balanced --Nc 100 --max_spt_iou 0.5 (per-class walk)", run)
            print("  " + "\n  ".join(line.strip() for line in run.out.splitlines() if "-CB" in line))

        if args.min_red:
            bench_metric_actions(base, index_path, args.min_red_dim, (*verified, "--no_plots", *common), scale)

        if args.scale_rows:
            real_member = index_mb * 1e6 / args.tracks
            scale_test(base, args.scale_rows, real_member, copied_mb / offs_s, base_gb)


def write_synthetic_metrics(base: Path, index_path: Path, dim: int) -> tuple[float, float]:
    """Motion (q90) and embeddings for every indexed track; returns (seconds, GB of vectors)."""
    started = time.perf_counter()
    table = load_track_table(index_path, columns=["yid", "label", "tid", "fn"])
    codes, _ = table.labels
    videos, _ = table.videos
    n = len(table)
    rng = np.random.default_rng(7)
    centre = rng.normal(size=(int(codes.max()) + 1, dim)).astype(np.float32)
    offset = rng.normal(size=(int(videos.max()) + 1, dim)).astype(np.float32)
    vectors = np.empty((n, dim), np.float32)
    for lo in range(0, n, 16384):
        sl = slice(lo, min(n, lo + 16384))
        v = centre[codes[sl]] + 0.6 * offset[videos[sl]] + 0.4 * rng.normal(size=(sl.stop - lo, dim)).astype(np.float32)
        vectors[sl] = v / np.linalg.norm(v, axis=1, keepdims=True)
    tids, fns = table.table.column("tid").to_pylist(), table.table.column("fn").to_pylist()
    half = n // 2
    for part, sl in enumerate((slice(0, half), slice(half, None))):
        name = f"rank-{part:05d}-of-00002.parquet"
        write_metric_file(metric_dir(base, DS, "embeddings") / name, tids[sl], fns[sl], {"embedding": vectors[sl]})
        write_metric_file(metric_dir(base, DS, "motion") / name, tids[sl], fns[sl],
                          {"q90": rng.gamma(2.0, 0.7, len(tids[sl]))})
    return time.perf_counter() - started, vectors.nbytes / 1e9


def bench_metric_actions(base: Path, index_path: Path, dim: int, common: tuple, scale: float) -> None:
    seconds, gb = write_synthetic_metrics(base, index_path, dim)
    codes, _ = load_track_table(index_path, columns=["label"]).labels
    sizes = np.bincount(codes[codes >= 0])
    print(f"\nsynthetic metrics: {dim}-d embeddings ({gb:.2f} GB as float32) and q90 motion, written in {seconds:.0f} s; "
          f"largest class {sizes.max()} tracks, classes above Nc: "
          + ", ".join(f"{nc}: {int((sizes > nc).sum())}" for nc in NC))
    run = cli("--action", "sample_max_motion", "--Nc", *NC, *common)
    report_sampling(f"sample_max_motion --Nc {' '.join(map(str, NC))}", run)
    for nc in NC:
        run = cli("--action", "sample_min_red", "--Nc", nc, *common)
        report_sampling(f"sample_min_red --Nc {nc}", run)
        print("  " + "\n  ".join(line.strip() for line in run.out.splitlines() if "-MinRed-" in line))
        print(f"  -> x{scale:.3g} tracks (4M): at least {run.phases().get('select', math.nan) * scale / 60:.0f} min of "
              f"selection (classes grow too: swaps per class and candidates per swap rise with them), "
              f"{gb * scale:.0f} GB of embeddings, held at once when they fit --max_embedding_gb")
    # over the budget: the embeddings are read a group of classes at a time (same subsets)
    budget = gb / 4
    whole = cli("--action", "sample_min_red", "--Nc", NC[0], *common)
    grouped = cli("--action", "sample_min_red", "--Nc", NC[0], "--max_embedding_gb", f"{budget * 1e9 / 2**30:.4f}",
                  *common)
    report_sampling(f"sample_min_red --Nc {NC[0]}, embeddings held at once", whole)
    report_sampling(f"sample_min_red --Nc {NC[0]}, --max_embedding_gb = a quarter of them", grouped)
    print("  " + "\n  ".join(line.strip() for line in grouped.out.splitlines() if "groups of classes" in line))
    print(f"  -> peak memory {grouped.peak / whole.peak:.2f}x, time {grouped.wall / whole.wall:.2f}x of holding them all")


def report_sampling(title: str, run: Run) -> None:
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in run.phases().items())
    print(f"{title}: {run.wall:.2f} s wall, {run.cpu:.2f} CPU s ({phases}), peak {run.peak:.2f} GB")


if __name__ == "__main__":
    main()
