"""Stage 5 (curate_db.py): the track index, its columnar companion, and the subsets.

Index (``--action index``)
    Merges every ``tracks_meta/<dataset_name>/*/*-meta.jsonl.gzip`` (sorted by path, records in
    file order) into one gzip JSON-lines file: every record is validated (:class:`TrackRecord`,
    and its ``yid`` must be the file's), the first occurrence of a ``tid`` or ``fn`` wins and
    later ones are dropped, a damaged or truncated file keeps the lines before the damage and is
    reported by name, an invalid line is reported and dropped; nothing stops the run. Files are
    read and compressed in ``num_workers`` processes; the output does not depend on how many.
    A record is written as it was read when it is already in the canonical spelling, else as
    :meth:`TrackRecord.to_json` writes it.

    **Every line of the index is its own gzip member.** Concatenated members are one valid gzip
    stream to every reader (``gzip.open``, ``zcat``, :func:`utils.tracks.read_records`); the
    price is more bytes than one stream (+7% against the per-video files on the benchmark's
    metadata, up to ~25% on very repetitive records), and what it buys is random access: the
    companion stores each line's byte range, so a subset is written by copying the selected
    members (no decompression, no JSON), and a constraint that needs boxes reads only the
    records it looks at. Subsets are made of the same members. Each copied member is checked against the companion (gzip magic,
    CRC-32 and length in its trailer), so a companion that does not belong to the index is
    caught, never silently used.
Companion (``<index stem>.columns.parquet``, beside the index)
    One row per index line, in line order: ``row offset length crc32 ulen yid tid fn label
    label_id score logit duration num_frames t_start t_end video_h video_w`` where ``label`` is
    the top-1 label (``None`` without ``top10_desc``), ``score`` the top-1 objectness-weighted
    mean logit ``top10_wlogit_mu[0]`` (NaN without it), ``logit`` ``top10_logit_mu[0]``.
    Its schema metadata (``trackverse.index``) records the dataset name and the index's size.
    ``<index stem>.report.json`` lists every problem the index run met.
Subsets (``sample_random``, ``sample_class_balanced``, ``sample_max_motion``, ``sample_min_red``)
    Read only the companion (and the metric files the action needs), never the JSON; videos of the verified evaluation list are never
    sampled; names come from :func:`utils.sampling.subset_name`. Each subset
    ``<base_dir>/tracks_subsets/<name>.jsonl.gzip`` gets ``<stem>.classes.csv`` (per class:
    label, count, available, relax_round), ``<stem>.classes.png`` (the class distribution) and
    ``<stem>.report.json`` (parameters, counts, exclusions), all written atomically.
Constraints (``sample_class_balanced``)
    ``min_motion`` (a per-track value of visual_metrics.py's ``motion`` metric, ``q90`` by
    default), ``min_nn_dist`` (Euclidean distance between ``embeddings`` to every track already
    selected in the class), ``max_spt_iou`` with ``iou_tbuff`` (:func:`spt_iou` with every track
    already selected in the class from the same video). A class walks its ranking and accepts a
    track only if it satisfies them against the tracks accepted before it. When a class cannot
    fill ``max(Nc)``, a new round relaxes the thresholds (x0.8 per round: ``min`` thresholds
    times 0.8, ``max_spt_iou`` moves 1 - (1 - v) x 0.8 towards 1), and the fifth round drops
    them, as in the original; the round that accepted each track is kept, so the CSV and the
    summary say which classes were relaxed and how far (a class counts as relaxed in a subset
    when one of its tracks there was accepted after round 0). A subset's ``Nc`` tracks of a
    class are the first ``Nc`` it accepted, so CB100 is contained in CB300 for the same T and
    seed. The ranking ignores the constraints (same order as the unconstrained subset), and
    ``min_motion`` alone is applied in one vectorised pass (:func:`picks_by_level`); the
    diversity and overlap constraints walk each class in Python (:func:`walk_class`), reading
    boxes from the index through the stored offsets and embeddings for the eligible tracks
    only (``rows x D`` float32 in memory).
    **Missing metric values**: a track without the value a constraint needs (no row in the
    metric files, or NaN) is never selected by that constraint, not even once it is relaxed
    off; the summary says how many there were. Nothing is ever filled in.
Per-class selections by a metric (``sample_max_motion``, ``sample_min_red``; ``--Nc``, no
temperature, no constraints, names in :mod:`utils.sampling`), as the original's actions of the
same names, deterministic (``--seed`` plays no part):
    ``sample_max_motion``: per class, the ``Nc`` tracks with the highest motion value
    (``--motion_column`` of the ``motion`` metric, ``q90`` by default; ties by index order). CB100
    is contained in CB300. The original ranked every track and read a missing value as 0; here a
    track without a value is never selected and is counted (``no_motion_value``).
    ``sample_min_red``: per class, ``Nc`` tracks whose smallest pairwise Euclidean distance
    between ``embeddings`` (``--embedding_column``) is as large as possible,
    :func:`utils.sampling.min_redundancy`: start from the class's top ``Nc`` by score (the T=0
    ranking, where the original started from a random sample), then greedy swaps (one track of
    the closest pair out, the candidate farthest from the rest in) until no swap improves, at
    most ``--max_swaps`` per class (default 2 x Nc; the original made 5 passes over the
    candidates, swapping in the first that improved and dropping a random one of the pair). Each
    ``Nc`` is computed on its own (so CB100 need not lie in CB300). Candidates: the class's tracks
    with a score and an embedding; a track without an embedding is never selected and is counted
    (``no_embedding``; the original used random noise). The report adds, per class that had more
    candidates than ``Nc``, the minimum pairwise distance at the start and at the end and the
    swaps made. Memory: ``candidates x D`` float32 embeddings when they fit
    ``--max_embedding_gb`` (default: half the memory free at the start); beyond it they are read
    again for each group of whole classes that fits (:class:`ClassVectors`; ``--min_nn_dist``
    likewise; a class is a view of them, or a copy when some of its tracks have none), plus
    ``4096 x Nc`` floats while a class is set up.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import logging
import math
import multiprocessing
import os
import resource
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from utils.io import atomic_path, atomic_write_json, atomic_write_text, is_temp_file
from utils.launch import UsageError, is_systemic
from utils.layout import YID_PATTERN, DatasetLayout, validate_name
from utils.metrics_store import EMBEDDINGS, MOTION, MetricsError, VectorSource, load_metric_columns
from utils.resources import available_memory_bytes
from utils.sampling import (
    MIN_RED_SWAPS_PER_TRACK,
    SUBSET_EXT,
    SamplingConstraints,
    eligible_by_video,
    format_number,
    min_redundancy,
    rank_within_class,
    sample_random,
    subset_name,
)
from utils.tracks import TrackRecord

log = logging.getLogger("trackverse.curation")

INDEX_FORMAT = 1
INDEX_COMPRESSLEVEL = 6
META_GLOB = "*/*-meta.jsonl.gzip"
META_SUFFIX = "-meta.jsonl.gzip"
VERIFIED_ASSET = "trackverse-verified-6perclass.txt"
RELAX_ROUNDS = 5  # rounds 0-3: thresholds x RELAX_FACTOR**round; round 4: constraints off
RELAX_FACTOR = 0.8
NO_VALUE = RELAX_ROUNDS  # relaxation level of a track without the metric value
_METADATA_KEY = b"trackverse.index"
_PROBLEMS_PER_FILE = 20

COMPANION_SCHEMA = pa.schema([
    ("row", pa.int64()),
    ("offset", pa.int64()),
    ("length", pa.int64()),
    ("crc32", pa.uint32()),
    ("ulen", pa.uint32()),
    ("yid", pa.string()),
    ("tid", pa.string()),
    ("fn", pa.string()),
    ("label", pa.string()),
    ("label_id", pa.int32()),
    ("score", pa.float64()),
    ("logit", pa.float64()),
    ("duration", pa.float64()),
    ("num_frames", pa.int32()),
    ("t_start", pa.float64()),
    ("t_end", pa.float64()),
    ("video_h", pa.int32()),
    ("video_w", pa.int32()),
])
# columns a worker fills per record, in schema order after crc32/ulen
_RECORD_COLUMNS = COMPANION_SCHEMA.names[5:]


class IndexMismatchError(UsageError):
    """The companion does not describe the index file next to it."""


# ------------------------------------------------------------------------------------ names


def _stem(path: Path) -> str:
    name = path.name
    for ext in (SUBSET_EXT, ".jsonl.gz", ".gzip", ".gz", ".jsonl"):
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def beside(path: str | os.PathLike, suffix: str) -> Path:
    """``<stem><suffix>`` beside an index or subset file (``<stem>.jsonl.gzip``)."""
    path = Path(path)
    return path.with_name(f"{_stem(path)}{suffix}")


def companion_path(index_path: str | os.PathLike) -> Path:
    """``<index stem>.columns.parquet`` beside the index."""
    return beside(index_path, ".columns.parquet")


def report_path(jsonl_path: str | os.PathLike) -> Path:
    """``<stem>.report.json`` beside an index or a subset."""
    return beside(jsonl_path, ".report.json")


def class_table_path(subset_path: str | os.PathLike) -> Path:
    return beside(subset_path, ".classes.csv")


def class_plot_path(subset_path: str | os.PathLike) -> Path:
    return beside(subset_path, ".classes.png")


def _progress_interval() -> float:
    return 0.5 if sys.stderr.isatty() else 30.0


def peak_memory_gb() -> float:
    """Peak resident memory of this process since it started and of its finished worker
    processes (GB). The own peak comes from ``VmHWM``: ``ru_maxrss`` would also count what the
    parent held when it started this process."""
    own = 0
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])  # kB
                break
    if not own:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2


# ------------------------------------------------------------------------------------ index


@dataclass
class MetaFileResult:
    """What one worker made of one metadata file."""

    rel: str
    rows: list[tuple] = field(default_factory=list)  # _RECORD_COLUMNS values per kept record
    members: list[bytes] = field(default_factory=list)  # one gzip member per kept record
    lines: int = 0
    bytes_in: int = 0
    bytes_raw: int = 0
    invalid: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: str | None = None

    def problem(self, message: str) -> None:
        if len(self.problems) < _PROBLEMS_PER_FILE:
            self.problems.append(message)


def _yid_of_meta_file(name: str) -> str | None:
    yid = name[: -len(META_SUFFIX)] if name.endswith(META_SUFFIX) else ""
    return yid if YID_PATTERN.match(yid) else None


def _record_scalars(rec: TrackRecord) -> tuple:
    video_h, video_w = rec.video_size if rec.video_size else (-1, -1)
    return (
        rec.yid,
        rec.tid,
        rec.fn,
        rec.label,
        rec.top10_lbl[0] if rec.top10_lbl else -1,
        rec.top10_wlogit_mu[0] if rec.top10_wlogit_mu else math.nan,
        rec.top10_logit_mu[0] if rec.top10_logit_mu else math.nan,
        rec.duration,
        len(rec),
        rec.track_ts[0],
        rec.track_ts[-1],
        video_h,
        video_w,
    )


def _index_line(raw: bytes, lineno: int, expected_yid: str | None, result: MetaFileResult) -> None:
    stripped = raw.strip()
    if not stripped:
        return
    try:
        data = json.loads(stripped)
    except ValueError as exc:
        result.invalid += 1
        if raw.endswith(b"\n"):
            result.problem(f"line {lineno}: not JSON: {exc}")
        else:
            result.problem(f"line {lineno}: torn last line")
            result.damaged = result.damaged or f"torn last line {lineno}"
        return
    try:
        rec = TrackRecord.from_dict(data)
        if expected_yid is not None and rec.yid != expected_yid:
            raise ValueError(f"record of video {rec.yid} in the metadata file of {expected_yid}")
        # as read when already canonical (no re-serialisation), else canonical
        line = stripped if data == rec.to_dict() else rec.to_json().encode("utf-8")
        scalars = _record_scalars(rec)
    except Exception as exc:  # untrusted input: any failure drops the line, never the run
        result.invalid += 1
        result.problem(f"line {lineno}: {exc}")
        return
    line += b"\n"
    result.bytes_raw += len(line)
    result.members.append(gzip.compress(line, compresslevel=INDEX_COMPRESSLEVEL, mtime=0))
    result.rows.append(scalars)


def index_meta_file(task: tuple[str, str]) -> MetaFileResult:
    """Read, validate and compress one metadata file (runs in a worker process)."""
    path, rel = task
    result = MetaFileResult(rel=rel)
    expected = _yid_of_meta_file(Path(path).name)
    try:
        result.bytes_in = os.path.getsize(path)
        with gzip.open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                result.lines = lineno
                _index_line(raw, lineno, expected, result)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        result.damaged = f"damaged or truncated after line {result.lines}: {type(exc).__name__}: {exc}"
    except OSError as exc:
        if is_systemic(exc):
            raise
        result.damaged = f"unreadable: {type(exc).__name__}: {exc}"
    return result


def _map_files(tasks: list[tuple[str, str]], num_workers: int) -> Iterator[MetaFileResult]:
    """Results in task order, whatever the number of workers."""
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(index_meta_file, tasks)
        return
    chunksize = max(1, min(64, len(tasks) // (num_workers * 8)))
    with multiprocessing.get_context("spawn").Pool(min(num_workers, len(tasks))) as pool:
        yield from pool.imap(index_meta_file, tasks, chunksize=chunksize)


@dataclass
class IndexSummary:
    index_path: Path
    companion_path: Path
    report_path: Path
    files: int = 0
    damaged_files: int = 0
    files_with_invalid: int = 0
    lines: int = 0
    invalid: int = 0
    written: int = 0
    duplicate_tid: int = 0
    duplicate_fn: int = 0
    bytes_in: int = 0
    bytes_raw: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    problems: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.damaged_files or self.invalid else 0

    def lines_out(self, max_problems: int = 20) -> list[str]:
        mb_in, mb_raw = self.bytes_in / 1e6, self.bytes_raw / 1e6
        secs = max(self.seconds, 1e-9)
        out = [
            f"index: {self.written} tracks from {self.files} metadata files -> {self.index_path} "
            f"({self.bytes_out / 1e6:.1f} MB)",
            f"  read {self.lines} lines: {self.invalid} invalid (dropped), {self.duplicate_tid} duplicate tid "
            f"and {self.duplicate_fn} duplicate fn (later copies dropped)",
            f"  {self.damaged_files} damaged/truncated files (lines before the damage kept), "
            f"{self.files_with_invalid} files with invalid lines",
            f"  {self.seconds:.1f} s: {mb_in / secs:.1f} MB/s gzip in, {mb_raw / secs:.1f} MB/s JSON, "
            f"{self.written / secs:.0f} tracks/s; peak memory {peak_memory_gb():.2f} GB",
            f"  companion: {self.companion_path}; report: {self.report_path}",
        ]
        for problem in self.problems[:max_problems]:
            first = problem["messages"][0] if problem["messages"] else ""
            out.append(f"  PROBLEM {problem['file']}: {problem['kind']}: {first}"
                       + (f" (+{len(problem['messages']) - 1} more)" if len(problem["messages"]) > 1 else ""))
        if len(self.problems) > max_problems:
            out.append(f"  ... {len(self.problems) - max_problems} more files with problems in {self.report_path}")
        return out


class _Columns:
    """Companion rows, buffered in Python and turned into Arrow batches every ``batch`` rows."""

    def __init__(self, batch: int = 8192):
        self.batch = batch
        self.batches: list[pa.RecordBatch] = []
        self._cols: list[list] = [[] for _ in COMPANION_SCHEMA]

    def append(self, values: tuple) -> None:
        for col, value in zip(self._cols, values, strict=True):
            col.append(value)
        if len(self._cols[0]) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self._cols[0]:
            self.batches.append(pa.record_batch(
                [pa.array(col, type=f.type) for col, f in zip(self._cols, COMPANION_SCHEMA, strict=True)],
                schema=COMPANION_SCHEMA,
            ))
            self._cols = [[] for _ in COMPANION_SCHEMA]

    def table(self) -> pa.Table:
        self.flush()
        return pa.Table.from_batches(self.batches, schema=COMPANION_SCHEMA)


def companion_table(columns: pa.Table, dataset_name: str, index_path: str | os.PathLike, index_size: int,
                    **extra: Any) -> pa.Table:
    """``columns`` (those of ``COMPANION_SCHEMA``, one row per index line) with the metadata that
    ties them to their index: format, dataset name, the index's name and size, the row count."""
    metadata = {"format": INDEX_FORMAT, "dataset_name": dataset_name, "index_file": Path(index_path).name,
                "index_size": int(index_size), "rows": columns.num_rows, **extra}
    return columns.select(COMPANION_SCHEMA.names).cast(COMPANION_SCHEMA).replace_schema_metadata(
        {_METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})


def write_companion(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a :func:`companion_table` to ``path`` (give it the temporary of ``atomic_path``)."""
    pq.write_table(table, path, compression="zstd", use_dictionary=["yid", "label"], row_group_size=1 << 20)


def list_meta_files(base_dir: str | os.PathLike, dataset_name: str) -> tuple[Path, list[tuple[str, str]]]:
    """(the metadata folder, sorted (path, relative path) of its ``*/*-meta.jsonl.gzip``)."""
    folder = DatasetLayout(Path(base_dir)).tracks_meta_dir(dataset_name)
    found = [p for p in folder.glob(META_GLOB) if p.is_file() and not is_temp_file(p)]
    tasks = sorted((str(p), p.relative_to(folder).as_posix()) for p in found)
    return folder, sorted(tasks, key=lambda t: t[1])


def build_index(
    base_dir: str | os.PathLike,
    dataset_name: str,
    index_path: str | os.PathLike,
    num_workers: int = 1,
    progress: bool = True,
) -> IndexSummary:
    """Merge the dataset's metadata files into ``index_path`` and its companion (atomically)."""
    started = time.time()
    validate_name(dataset_name)
    index_path = Path(index_path)
    folder, tasks = list_meta_files(base_dir, dataset_name)
    if not tasks:
        raise UsageError(f"no metadata files ({META_GLOB}) under {folder}: run parse_tracks.py first")
    summary = IndexSummary(index_path, companion_path(index_path), report_path(index_path), files=len(tasks))
    seen_tid: set[str] = set()
    seen_fn: set[str] = set()
    columns = _Columns()
    bar = tqdm(total=len(tasks), desc=f"index {dataset_name}", unit="file", disable=not progress,
               dynamic_ncols=True, mininterval=_progress_interval(), file=sys.stderr)
    with atomic_path(summary.companion_path) as companion_tmp:
        with atomic_path(index_path) as index_tmp, open(index_tmp, "wb") as out:
            offset = 0
            for result in _map_files(tasks, num_workers):
                summary.lines += result.lines
                summary.invalid += result.invalid
                summary.bytes_in += result.bytes_in
                summary.bytes_raw += result.bytes_raw
                duplicates: list[str] = []
                for scalars, member in zip(result.rows, result.members, strict=True):
                    tid, fn = scalars[1], scalars[2]
                    if tid in seen_tid:
                        summary.duplicate_tid += 1
                        duplicates.append(f"tid {tid}")
                        continue
                    if fn in seen_fn:
                        summary.duplicate_fn += 1
                        duplicates.append(f"fn {fn}")
                        continue
                    seen_tid.add(tid)
                    seen_fn.add(fn)
                    out.write(member)
                    crc = int.from_bytes(member[-8:-4], "little")
                    ulen = int.from_bytes(member[-4:], "little")
                    columns.append((summary.written, offset, len(member), crc, ulen, *scalars))
                    offset += len(member)
                    summary.written += 1
                if result.damaged:
                    summary.damaged_files += 1
                    summary.problems.append({"file": result.rel, "kind": "damaged", "kept_lines": len(result.rows),
                                             "messages": [result.damaged, *result.problems]})
                elif result.invalid:
                    summary.files_with_invalid += 1
                    summary.problems.append({"file": result.rel, "kind": "invalid lines", "kept_lines": len(result.rows),
                                             "messages": result.problems})
                if duplicates:
                    log.debug("%s: %d duplicates dropped: %s", result.rel, len(duplicates), ", ".join(duplicates[:20]))
                bar.update(1)
                elapsed = max(time.time() - started, 1e-9)
                bar.set_postfix({"tracks": summary.written, "MB/s": f"{summary.bytes_in / 1e6 / elapsed:.1f}"},
                                refresh=False)
            summary.bytes_out = offset
        bar.close()
        write_companion(companion_table(columns.table(), dataset_name, index_path, summary.bytes_out,
                                        meta_files=len(tasks)), companion_tmp)
    summary.seconds = round(time.time() - started, 3)
    atomic_write_json(summary.report_path, {
        "index_file": str(index_path), "dataset_name": dataset_name, "meta_folder": str(folder),
        "files": summary.files, "lines": summary.lines, "written": summary.written,
        "invalid": summary.invalid, "duplicate_tid": summary.duplicate_tid, "duplicate_fn": summary.duplicate_fn,
        "damaged_files": summary.damaged_files, "files_with_invalid": summary.files_with_invalid,
        "seconds": summary.seconds, "problems": summary.problems,
    })
    return summary


# ------------------------------------------------------------------------------- companion


@dataclass
class TrackTable:
    """The companion of an index, checked against it: the per-track scalars sampling needs."""

    index_path: Path
    table: pa.Table
    meta: dict

    def __len__(self) -> int:
        return self.table.num_rows

    def numpy(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy()

    def strings(self, name: str) -> pa.Array:
        return self.table.column(name).combine_chunks()

    def _encoded(self, name: str) -> tuple[np.ndarray, list[str]]:
        column = self.table.column(name)
        if pa.types.is_dictionary(column.type):  # read as dictionary: no string per row
            encoded = column.unify_dictionaries().combine_chunks()
        else:
            encoded = pc.dictionary_encode(column.combine_chunks())
        codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
        names = encoded.dictionary.to_pylist()
        used = np.bincount(codes[codes >= 0], minlength=len(names)) > 0
        if not used.all():  # drop values no row uses, keep the order
            new_code = np.cumsum(used) - 1
            codes = np.where(codes >= 0, new_code[np.maximum(codes, 0)], -1)
            names = [v for v, u in zip(names, used.tolist(), strict=True) if u]
        return codes, names

    @cached_property
    def labels(self) -> tuple[np.ndarray, list[str]]:
        """(class code per row, -1 without a label; class names by code)."""
        return self._encoded("label")

    @cached_property
    def videos(self) -> tuple[np.ndarray, list[str]]:
        """(video code per row; YouTube ids by code)."""
        return self._encoded("yid")


def load_track_table(index_path: str | os.PathLike, columns: Sequence[str] | None = None) -> TrackTable:
    """Read the companion of ``index_path`` after checking that it describes that file."""
    index_path = Path(index_path)
    path = companion_path(index_path)
    if not index_path.is_file():
        raise UsageError(f"index file {index_path} does not exist: run curate_db.py --action index first")
    if not path.is_file():
        raise UsageError(f"{path} (the index's companion) does not exist: re-run curate_db.py --action index")
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(_METADATA_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != INDEX_FORMAT:
        raise IndexMismatchError(f"{path} is not an index companion of format {INDEX_FORMAT}: re-run --action index")
    size = index_path.stat().st_size
    if meta.get("index_size") != size:
        raise IndexMismatchError(
            f"{path} describes an index of {meta.get('index_size')} bytes but {index_path} has {size}: "
            "the index changed after its companion was written; re-run --action index"
        )
    names = list(columns) if columns else schema.names
    table = pq.read_table(path, columns=names, read_dictionary=[c for c in ("yid", "label") if c in names])
    if table.num_rows != meta.get("rows"):
        raise IndexMismatchError(f"{path} has {table.num_rows} rows, its metadata says {meta.get('rows')}")
    return TrackTable(index_path=index_path, table=table, meta=meta)


class IndexReader:
    """Random access to the index's records through the companion's byte ranges."""

    def __init__(self, table: TrackTable):
        self.path = table.index_path
        self.offset = table.numpy("offset")
        self.length = table.numpy("length")
        self.crc32 = table.numpy("crc32").astype(np.uint32)
        self.ulen = table.numpy("ulen").astype(np.uint32)
        self._fd = os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, buf: bytes, rows: np.ndarray) -> None:
        """Every member in ``buf`` (the members of ``rows``, back to back) is the one the
        companion describes: gzip magic, and CRC-32 and length in its trailer."""
        lens = self.length[rows]
        ends = np.cumsum(lens)
        starts = ends - lens
        data = np.frombuffer(buf, dtype=np.uint8)
        if data.size != (int(ends[-1]) if ends.size else 0):
            raise IndexMismatchError(f"{self.path} is shorter than its companion says: re-run --action index")

        def u32(at: np.ndarray) -> np.ndarray:
            b = [data[at + k].astype(np.uint32) for k in range(4)]
            return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)

        ok = (data[starts] == 0x1F) & (data[starts + 1] == 0x8B) & (data[starts + 2] == 8)
        ok &= (u32(ends - 8) == self.crc32[rows]) & (u32(ends - 4) == self.ulen[rows])
        if not ok.all():
            bad = int(rows[np.argmin(ok)])
            raise IndexMismatchError(
                f"record {bad} of {self.path} is not the one its companion describes: re-run --action index"
            )

    def member(self, row: int) -> bytes:
        data = os.pread(self._fd, int(self.length[row]), int(self.offset[row]))
        self._check(data, np.array([row]))
        return data

    def record(self, row: int) -> TrackRecord:
        return TrackRecord.from_json(gzip.decompress(self.member(row)), validate=False)

    def copy_rows(self, rows: np.ndarray, out: IO[bytes], batch: int = 16384, max_gap: int = 16384,
                  span: int = 32 << 20) -> int:
        """Write the members of ``rows`` (ascending) to ``out``; returns the bytes written.

        Adjacent members are copied as one run; runs less than ``max_gap`` bytes apart are
        fetched with one ``pread`` of at most about ``span`` bytes (reading a short gap costs
        less than another call). Every member is checked (:meth:`_check`) before it is written."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size > 1 and np.any(np.diff(rows) <= 0):
            raise ValueError("rows must be strictly increasing")
        written = 0
        for lo in range(0, rows.size, batch):
            chunk = rows[lo:lo + batch]
            offs, ends = self.offset[chunk], self.offset[chunk] + self.length[chunk]
            run_cut = np.flatnonzero(offs[1:] != ends[:-1]) + 1
            run_start = offs[np.concatenate([[0], run_cut])]
            run_end = ends[np.concatenate([run_cut, [chunk.size]]) - 1]
            cut = (run_start[1:] - run_end[:-1] > max_gap) | (run_start[1:] // span != run_start[:-1] // span)
            bounds = np.concatenate([[0], np.flatnonzero(cut) + 1, [run_start.size]]).tolist()
            starts, stops = run_start.tolist(), run_end.tolist()
            parts: list[bytes | memoryview] = []
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                first = starts[a]
                data = os.pread(self._fd, stops[b - 1] - first, first)
                if b - a == 1:
                    parts.append(data)
                else:
                    view = memoryview(data)
                    parts.extend(view[x - first:y - first] for x, y in zip(starts[a:b], stops[a:b], strict=True))
            buf = b"".join(parts)
            self._check(buf, chunk)
            out.write(buf)
            written += len(buf)
        return written


# ------------------------------------------------------------------------ verified videos


def read_verified_yids(path: str | os.PathLike) -> set[str]:
    """YouTube ids of the verified evaluation list: the first 11 characters of each line."""
    yids: set[str] = set()
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if YID_PATTERN.match(text[:11]):
                yids.add(text[:11])
            else:
                skipped += 1
    if skipped:
        log.warning("%s: %d lines do not start with a YouTube id (ignored)", path, skipped)
    return yids


# --------------------------------------------------------------------------- constraints


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired ``[x, y, w, h]`` boxes, (n, 4) each."""
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def spt_iou(ts_a: np.ndarray, box_a: np.ndarray, ts_b: np.ndarray, box_b: np.ndarray,
            tbuff: float = math.inf) -> float:
    """Spatio-temporal overlap of two tracks (timestamps (n,), ``[x, y, w, h]`` boxes (n, 4)).

    Frames are paired in time: over the common time span, the frames of each track inside it
    (the longer list thinned evenly to the shorter one's length); for tracks that do not
    overlap in time, the last frame of the earlier one with the first frame of the later one;
    if the common span holds no frame of one track, the two frames closest in time. The result
    is the mean over pairs of IoU x decay, where decay = 1 / max(sqrt(|dt| / tbuff), 1): no
    penalty for pairs less than ``tbuff`` seconds apart, then a slow decay (``tbuff`` = inf:
    none). Two tracks far apart in time thus overlap only with a finite ``tbuff``.
    """
    ts_a, ts_b = np.asarray(ts_a, np.float64), np.asarray(ts_b, np.float64)
    box_a, box_b = np.asarray(box_a, np.float64).reshape(-1, 4), np.asarray(box_b, np.float64).reshape(-1, 4)
    if ts_a[-1] < ts_b[0]:
        ia, ib = np.array([ts_a.size - 1]), np.array([0])
    elif ts_b[-1] < ts_a[0]:
        ia, ib = np.array([0]), np.array([ts_b.size - 1])
    else:
        lo, hi = max(ts_a[0], ts_b[0]), min(ts_a[-1], ts_b[-1])
        ia = np.flatnonzero((ts_a >= lo) & (ts_a <= hi))
        ib = np.flatnonzero((ts_b >= lo) & (ts_b <= hi))
        if ia.size == 0 or ib.size == 0:
            gap = np.abs(np.subtract.outer(ts_a, ts_b))
            i, j = np.unravel_index(np.argmin(gap), gap.shape)
            ia, ib = np.array([i]), np.array([j])
        elif ia.size != ib.size:
            m = min(ia.size, ib.size)
            ia = ia[np.linspace(0, ia.size - 1, m).astype(np.int64)]
            ib = ib[np.linspace(0, ib.size - 1, m).astype(np.int64)]
    iou = _box_iou(box_a[ia], box_b[ib])
    if math.isfinite(tbuff):
        iou = iou / np.maximum(np.sqrt(np.abs(ts_a[ia] - ts_b[ib]) / tbuff), 1.0)
    return float(iou.mean())


def relaxed_threshold(value: float, round_: int, kind: str) -> float | None:
    """The threshold of relaxation round ``round_`` (None: off). ``kind``: ``min`` (a lower
    bound, x0.8 per round) or ``max_iou`` (an upper bound in [0, 1], 1 - (1 - v) x 0.8)."""
    if round_ >= RELAX_ROUNDS - 1:
        return None
    factor = RELAX_FACTOR**round_
    return value * factor if kind == "min" else 1.0 - (1.0 - value) * factor


def motion_levels(motion: np.ndarray, min_motion: float) -> np.ndarray:
    """Per track, the first relaxation round whose ``min_motion`` threshold it passes (0-3),
    ``RELAX_ROUNDS - 1`` when only dropping the threshold admits it, ``NO_VALUE`` without a value."""
    motion = np.asarray(motion, dtype=np.float64)
    level = np.full(motion.shape, NO_VALUE, dtype=np.int8)
    has = np.isfinite(motion)
    level[has] = RELAX_ROUNDS - 1
    for r in range(RELAX_ROUNDS - 2, -1, -1):
        level[has & (motion >= relaxed_threshold(min_motion, r, "min"))] = r
    return level


def picks_by_level(codes: np.ndarray, ranks: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Pick position of every row in its class (-1: never) when the only constraints are
    per-track thresholds (``min_motion``): by relaxation level first, then by rank. This is what
    :func:`walk_class` does round by round, in one vectorised pass."""
    ranks = np.asarray(ranks, dtype=np.int64)
    ok = (ranks >= 0) & (level < NO_VALUE)
    key = -(level.astype(np.float64) * (ranks.size + 1) + ranks)
    return rank_within_class(codes, key, 0.0, eligible_mask=ok)


def class_groups(class_sizes: Sequence[int], row_bytes: int, budget_bytes: float) -> list[tuple[int, int]]:
    """Split consecutive classes (``class_sizes[c]`` rows each) into groups ``[first, end)`` whose
    rows take at most ``budget_bytes`` at ``row_bytes`` each; a class over the budget alone is a
    group of its own (a class is never split)."""
    groups: list[tuple[int, int]] = []
    first, held = 0, 0
    for c, size in enumerate(int(v) for v in class_sizes):
        if c > first and held + size * row_bytes > budget_bytes:
            groups.append((first, c))
            first, held = c, 0
        held += size * row_bytes
    if len(class_sizes):
        groups.append((first, len(class_sizes)))
    return groups


class ClassVectors:
    """Embeddings of the tracks ``rows``, per class, holding at most ``budget_bytes`` of vectors:
    all of them at once when they fit (the usual case), else one group of whole classes at a
    time (:func:`class_groups`), read when a class of the group is first asked for, after a
    first pass over the files that only finds which tracks have an embedding. Classes are
    asked for in ascending code order, so each group is read once per such pass."""

    def __init__(self, source: VectorSource, rows: np.ndarray, codes: np.ndarray, budget_bytes: float):
        rows = np.asarray(rows, dtype=np.int64)
        self.source = source
        self.order = rows[np.argsort(codes[rows], kind="stable")]
        order_codes = codes[self.order]
        self.dim = source.dim
        class_codes, starts = np.unique(order_codes, return_index=True)
        bounds = np.r_[starts, self.order.size].astype(np.int64)
        by_class = class_groups(np.diff(bounds), 4 * self.dim, budget_bytes)
        self.groups = [(int(bounds[a]), int(bounds[b])) for a, b in by_class]
        self.group_of = {int(code): g for g, (a, b) in enumerate(by_class) for code in class_codes[a:b]}
        self.codes = codes
        self.present = np.zeros(len(codes), dtype=bool)  # per index row
        self.slot = np.full(len(codes), -1, dtype=np.int64)  # index row -> row of the loaded group
        self._loaded: int | None = None
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self.bytes_needed = self.order.size * 4 * self.dim
        if len(self.groups) == 1:
            self._load(0)
        elif self.groups:
            found = source.load(self.order, keep_vectors=False)
            self.present[self.order[found.present]] = True
        self.report = dataclasses.replace(source.report, with_value=int(self.present[self.order].sum()),
                                          index_rows=int(self.order.size))

    def _load(self, g: int) -> None:
        lo, hi = self.groups[g]
        rows = self.order[lo:hi]
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)  # let the previous group go first
        if self._loaded is not None:
            before_lo, before_hi = self.groups[self._loaded]
            self.slot[self.order[before_lo:before_hi]] = -1
        got = self.source.load(rows)
        self.present[rows] = got.present
        self.slot[rows] = np.arange(rows.size)
        self._vectors, self._loaded = got.vectors, g

    def select_class(self, code: int) -> None:
        """Make the vectors of class ``code`` available (reads its group if it is not held)."""
        g = self.group_of.get(int(code))
        if g is not None and g != self._loaded:
            self._load(g)

    def vector(self, row: int) -> np.ndarray:
        """The embedding of ``row``, whose class is selected and which has one (``present``)."""
        return self._vectors[self.slot[row]]

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings (len(rows), D) of rows of one class that all have one; selects the class.
        Read-only: a view of the held vectors where the rows are consecutive in them."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size:
            self.select_class(int(self.codes[rows[0]]))
        slots = self.slot[rows]
        if slots.size and slots[-1] - slots[0] == slots.size - 1 and (np.diff(slots) == 1).all():
            return self._vectors[slots[0]:slots[-1] + 1]  # a view: no copy of a large class
        return self._vectors[slots]


@dataclass
class WalkInputs:
    """What the per-class walk needs for the sequential constraints."""

    constraints: SamplingConstraints
    video_codes: np.ndarray
    level: np.ndarray | None = None  # motion_levels, or None without min_motion
    vectors: ClassVectors | None = None  # embeddings, for min_nn_dist
    geometry: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None  # row -> (ts, boxes)


def walk_class(candidates: np.ndarray, nc_max: int, inputs: WalkInputs) -> tuple[list[int], list[int]]:
    """Accept up to ``nc_max`` of ``candidates`` (rows in ranking order) under the constraints,
    relaxing round by round; returns (accepted rows in acceptance order, their rounds)."""
    cons = inputs.constraints
    accepted: list[int] = []
    rounds: list[int] = []
    taken = np.zeros(len(candidates), dtype=bool)
    dim = inputs.vectors.dim if inputs.vectors is not None else 0
    chosen = np.empty((nc_max, dim), dtype=np.float64) if cons.uses_diversity else None
    same_video: dict[int, list[int]] = defaultdict(list)
    geometry: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    ious: dict[tuple[int, int], float] = {}

    def overlap(row: int, other: int) -> float:
        key = (row, other)
        if key not in ious:
            for r in key:
                if r not in geometry:
                    geometry[r] = inputs.geometry(r)
            ious[key] = spt_iou(*geometry[row], *geometry[other], tbuff=cons.iou_tbuff)
        return ious[key]

    for round_ in range(RELAX_ROUNDS):
        nn_t = relaxed_threshold(cons.min_nn_dist, round_, "min") if cons.uses_diversity else None
        iou_t = relaxed_threshold(cons.max_spt_iou, round_, "max_iou") if cons.uses_overlap else None
        for j, row in enumerate(candidates.tolist()):
            if taken[j]:
                continue
            if inputs.level is not None and inputs.level[row] > round_:
                continue
            if iou_t is not None:
                others = same_video.get(int(inputs.video_codes[row]))
                if others and max(overlap(row, o) for o in others) > iou_t:
                    continue
            if chosen is not None:
                vec = inputs.vectors.vector(row)
                k = len(accepted)
                if nn_t is not None and k and np.sqrt(((chosen[:k] - vec) ** 2).sum(axis=1).min()) < nn_t:
                    continue
                chosen[k] = vec
            taken[j] = True
            accepted.append(row)
            rounds.append(round_)
            same_video[int(inputs.video_codes[row])].append(row)
            if len(accepted) >= nc_max:
                return accepted, rounds
    return accepted, rounds


# ------------------------------------------------------------------------------ sampling


@dataclass
class SamplingOptions:
    action: str
    N: Sequence[float] = (82, 184, 259, 392)
    Nc: Sequence[int] = (100, 300, 500, 1000)
    temperatures: Sequence[float] = (0.0,)
    seed: int = 0
    constraints: SamplingConstraints = field(default_factory=SamplingConstraints)
    motion_column: str = "q90"
    embedding_column: str = "embedding"
    max_swaps: int | None = None  # sample_min_red: swaps per class (None: MIN_RED_SWAPS_PER_TRACK x Nc)
    max_embedding_gb: float | None = None  # embeddings held at once (None: half the memory available)
    dataset_name: str | None = None
    verified_yids: set[str] = field(default_factory=set)
    verified_source: str = ""
    plots: bool = True
    progress: bool = True


@dataclass
class SubsetPlan:
    """One subset to write: its name, its rows (ascending) and what the summary needs."""

    name: str
    rows: np.ndarray
    rounds: np.ndarray  # per selected row: the relaxation round that accepted it
    available: np.ndarray  # per class code: tracks the subset could draw from
    params: dict
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # extra facts for the summary line


@dataclass
class SamplingSummary:
    subsets: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # read, select, write, plots (seconds)
    exit_code: int = 0


# companion columns each action reads (tid and fn only to join metric files)
_SAMPLING_COLUMNS = ["yid", "label", "offset", "length", "crc32", "ulen"]


class _Sampler:
    """Shared state of one sampling run: the companion, eligibility, exclusions."""

    def __init__(self, base_dir: Path, table: TrackTable, opts: SamplingOptions, lines: list[str]):
        self.base_dir = base_dir
        self.table = table
        self.opts = opts
        self.lines = lines
        self.n = len(table)
        self.codes, self.class_names = table.labels
        self.video_codes, video_names = table.videos
        verified = eligible_by_video(np.asarray(video_names, dtype=object), opts.verified_yids)
        self.not_verified = verified[self.video_codes] if self.n else np.ones(0, dtype=bool)
        self.exclusions: dict[str, int] = {"verified_videos": int(self.n - self.not_verified.sum())}
        self.dataset_name = opts.dataset_name or table.meta.get("dataset_name")
        if not self.dataset_name:
            raise UsageError("the index does not record its dataset name: give --dataset_name")
        validate_name(self.dataset_name)

    def class_count(self) -> int:
        return len(self.class_names)

    def available(self, mask: np.ndarray) -> np.ndarray:
        codes = self.codes[mask]
        return np.bincount(codes[codes >= 0], minlength=self.class_count())

    # ---------------------------------------------------------------- random
    def random(self) -> list[SubsetPlan]:
        plans = []
        avail = self.available(self.not_verified)
        for n_k in self.opts.N:
            want = int(round(float(n_k) * 1000))
            rows, short = sample_random(self.n, want, seed=self.opts.seed, eligible_mask=self.not_verified)
            plan = SubsetPlan(
                name=subset_name(self.dataset_name, "random", N=n_k), rows=rows,
                rounds=np.zeros(rows.size, dtype=np.int8), available=avail,
                params={"N_thousands": float(n_k), "requested": want, "seed": self.opts.seed},
            )
            if short:
                plan.warnings.append(f"only {rows.size} eligible tracks for {want} requested")
            plans.append(plan)
        return plans

    # ---------------------------------------------------------------- class-balanced
    def _metric_report(self, line: str) -> None:
        self.lines.append("  " + line)

    def class_balanced(self) -> list[SubsetPlan]:
        opts, cons = self.opts, self.opts.constraints
        # The ranking sees every track with a class outside the verified videos, constraints or
        # not, so that a constrained subset follows the same order as its unconstrained twin.
        ranked = self.not_verified & (self.codes >= 0)
        self.exclusions["no_class"] = int((self.not_verified & (self.codes < 0)).sum())
        usable = ranked.copy()  # ... and only tracks with the metric values a constraint needs are picked
        score = self.table.numpy("score")
        if cons.uses_motion or cons.uses_diversity:
            tids, fns = self.table.strings("tid"), self.table.strings("fn")
        level = None
        if cons.uses_motion:
            metric = load_metric_columns(self.base_dir, self.dataset_name, MOTION, [opts.motion_column], tids, fns)
            self._metric_report(metric.report.line())
            level = motion_levels(metric.values[opts.motion_column], cons.min_motion)
            self.exclusions["no_motion_value"] = int((usable & (level == NO_VALUE)).sum())
            usable &= level != NO_VALUE
        inputs = WalkInputs(constraints=cons, video_codes=self.video_codes, level=level)
        if cons.uses_diversity:
            need = np.flatnonzero(usable)
            vectors = self._class_vectors(need, tids, fns)
            self.exclusions["no_embedding"] = int(need.size - vectors.present[need].sum())
            usable[need[~vectors.present[need]]] = False
            inputs.vectors = vectors
        sequential = cons.uses_diversity or cons.uses_overlap
        nc_max = max(int(nc) for nc in opts.Nc)
        plans = []
        with contextlib.ExitStack() as stack:
            if cons.uses_overlap:
                reader = stack.enter_context(IndexReader(self.table))

                def geometry(row: int) -> tuple[np.ndarray, np.ndarray]:
                    rec = reader.record(row)
                    return np.asarray(rec.track_ts, np.float64), np.asarray(rec.track_bbox, np.float64)

                inputs.geometry = geometry
            for temperature in opts.temperatures:
                eligible = ranked
                if not math.isinf(temperature):
                    eligible = ranked & np.isfinite(score)
                    self.exclusions["no_score"] = int((ranked & ~np.isfinite(score)).sum())
                ranks = rank_within_class(self.codes, None if math.isinf(temperature) else np.nan_to_num(score),
                                          temperature, seed=opts.seed, eligible_mask=eligible)
                ranks[~usable] = -1
                if sequential:
                    pick, rounds = self._walk(ranks, nc_max, inputs, temperature)
                elif level is not None:
                    pick, rounds = picks_by_level(self.codes, ranks, level), level
                else:
                    pick, rounds = ranks, np.zeros(self.n, dtype=np.int8)
                avail = self.available(eligible & usable)
                for nc in opts.Nc:
                    rows = np.flatnonzero((pick >= 0) & (pick < int(nc)))
                    name = subset_name(self.dataset_name, "class_balanced", Nc=int(nc), total=rows.size,
                                       temperature=temperature, constraints=cons)
                    plans.append(SubsetPlan(
                        name=name, rows=rows, rounds=np.asarray(rounds[rows], dtype=np.int8), available=avail,
                        params={"Nc": int(nc), "temperature": format_number(temperature), "seed": opts.seed,
                                "constraints": _constraints_dict(cons, opts)},
                    ))
        return plans

    # ---------------------------------------------------------------- by a metric, per class
    def _classified(self) -> np.ndarray:
        """Tracks outside the verified videos that have a class (counts those without one)."""
        self.exclusions["no_class"] = int((self.not_verified & (self.codes < 0)).sum())
        return self.not_verified & (self.codes >= 0)

    def _progress(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="class", disable=not self.opts.progress, dynamic_ncols=True,
                    mininterval=_progress_interval(), file=sys.stderr)

    def max_motion(self) -> list[SubsetPlan]:
        opts = self.opts
        candidates = self._classified()
        tids, fns = self.table.strings("tid"), self.table.strings("fn")
        metric = load_metric_columns(self.base_dir, self.dataset_name, MOTION, [opts.motion_column], tids, fns)
        self._metric_report(metric.report.line())
        motion = metric.values[opts.motion_column]
        usable = candidates & np.isfinite(motion)
        self.exclusions["no_motion_value"] = int((candidates & ~usable).sum())
        ranks = rank_within_class(self.codes, np.where(usable, motion, 0.0), 0.0, eligible_mask=usable)
        avail = self.available(usable)
        plans = []
        for nc in opts.Nc:
            rows = np.flatnonzero((ranks >= 0) & (ranks < int(nc)))
            picked = motion[rows]
            stats = {"min": float(picked.min()), "median": float(np.median(picked))} if rows.size else {}
            plans.append(SubsetPlan(
                name=subset_name(self.dataset_name, "max_motion", Nc=int(nc), total=rows.size,
                                 motion_column=opts.motion_column),
                rows=rows, rounds=np.zeros(rows.size, dtype=np.int8), available=avail,
                params={"Nc": int(nc), "motion_column": opts.motion_column, "selected_motion": stats},
                notes=[f"{opts.motion_column} of the selected tracks: lowest {stats['min']:.3g}, "
                       f"median {stats['median']:.3g}"] if stats else [],
            ))
        return plans

    def _class_vectors(self, rows: np.ndarray, tids: pa.Array, fns: pa.Array) -> ClassVectors:
        """Embeddings of ``rows`` within ``--max_embedding_gb`` (default: half the memory free now)."""
        opts = self.opts
        source = VectorSource(self.base_dir, self.dataset_name, EMBEDDINGS, opts.embedding_column, tids, fns)
        budget = opts.max_embedding_gb * 2**30 if opts.max_embedding_gb else (available_memory_bytes() or 2**34) / 2
        vectors = ClassVectors(source, rows, self.codes, budget)
        self._metric_report(vectors.report.line())
        if len(vectors.groups) > 1:
            self._metric_report(
                f"embeddings: {vectors.order.size} tracks x {vectors.dim} floats = {vectors.bytes_needed / 2**30:.1f} GiB "
                f"> {budget / 2**30:.1f} GiB (--max_embedding_gb): read in {len(vectors.groups)} groups of classes")
        return vectors

    def min_red(self) -> list[SubsetPlan]:
        opts = self.opts
        ranked = self._classified()
        score = self.table.numpy("score")
        self.exclusions["no_score"] = int((ranked & ~np.isfinite(score)).sum())
        ranked &= np.isfinite(score)
        ranks = rank_within_class(self.codes, np.nan_to_num(score), 0.0, eligible_mask=ranked)
        rows = np.flatnonzero(ranks >= 0)
        order = rows[np.lexsort((ranks[rows], self.codes[rows]))]  # by class, best score first
        vectors = self._class_vectors(order, self.table.strings("tid"), self.table.strings("fn"))
        present = vectors.present[order]
        self.exclusions["no_embedding"] = int(order.size - present.sum())
        avail = self.available(vectors.present)
        codes = self.codes[order]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True]) if order.size else np.zeros(1, np.int64)
        nc_values = [int(v) for v in opts.Nc]
        picked: dict[int, list[np.ndarray]] = {nc: [] for nc in nc_values}
        per_class: dict[int, list[dict]] = {nc: [] for nc in nc_values}
        bar = self._progress(bounds.size - 1, "min-red")
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            candidates = order[lo:hi][present[lo:hi]]
            block = vectors.vectors(candidates) if candidates.size > min(nc_values) else None
            for nc in nc_values:
                if candidates.size <= nc:
                    picked[nc].append(candidates)
                    continue
                result = min_redundancy(block, nc, max_swaps=opts.max_swaps)
                picked[nc].append(candidates[result.selected])
                per_class[nc].append({
                    "label": self.class_names[int(codes[lo])], "candidates": int(candidates.size),
                    "start_min_dist": round(result.start_min_dist, 6), "min_dist": round(result.min_dist, 6),
                    "swaps": result.swaps, "converged": result.converged,
                })
            bar.update(1)
        bar.close()
        plans = []
        for nc in nc_values:
            chosen = np.sort(np.concatenate(picked[nc])) if picked[nc] else np.empty(0, dtype=np.int64)
            plans.append(self._min_red_plan(nc, chosen, avail, per_class[nc]))
        return plans

    def _min_red_plan(self, nc: int, rows: np.ndarray, avail: np.ndarray, per_class: list[dict]) -> SubsetPlan:
        cap = self.opts.max_swaps if self.opts.max_swaps is not None else MIN_RED_SWAPS_PER_TRACK * nc
        start = np.array([c["start_min_dist"] for c in per_class])
        final = np.array([c["min_dist"] for c in per_class])
        summary = {
            "classes_swapped": len(per_class), "swaps": int(sum(c["swaps"] for c in per_class)),
            "classes_at_swap_cap": int(sum(not c["converged"] for c in per_class)), "max_swaps": cap,
            "median_start_min_dist": round(float(np.median(start)), 6) if per_class else None,
            "median_min_dist": round(float(np.median(final)), 6) if per_class else None,
        }
        notes = [f"{summary['classes_swapped']} classes had more than {nc} candidates"]
        if per_class:
            notes[0] += (f": {summary['swaps']} swaps, median per-class minimum pairwise distance "
                         f"{summary['median_start_min_dist']:.4g} -> {summary['median_min_dist']:.4g}, "
                         f"{summary['classes_at_swap_cap']} stopped at the swap cap ({cap})")
        return SubsetPlan(
            name=subset_name(self.dataset_name, "min_red", Nc=nc, total=rows.size), rows=rows,
            rounds=np.zeros(rows.size, dtype=np.int8), available=avail, notes=notes,
            params={"Nc": nc, "embedding_column": self.opts.embedding_column, "min_red": summary,
                    "min_red_classes": per_class},
        )

    def _walk(self, ranks: np.ndarray, nc_max: int, inputs: WalkInputs, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(ranks >= 0)
        order = rows[np.lexsort((ranks[rows], self.codes[rows]))]
        codes = self.codes[order]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
        pick = np.full(self.n, -1, dtype=np.int64)
        rounds = np.zeros(self.n, dtype=np.int8)
        classes = range(bounds.size - 1)
        for c in tqdm(classes, desc=f"constraints T={format_number(temperature)}", unit="class",
                      disable=not self.opts.progress, dynamic_ncols=True, mininterval=_progress_interval(),
                      file=sys.stderr):
            if inputs.vectors is not None and bounds[c] < codes.size:
                inputs.vectors.select_class(int(codes[bounds[c]]))
            accepted, acc_rounds = walk_class(order[bounds[c]:bounds[c + 1]], nc_max, inputs)
            pick[accepted] = np.arange(len(accepted))
            rounds[accepted] = acc_rounds
        return pick, rounds


def _constraints_dict(cons: SamplingConstraints, opts: SamplingOptions) -> dict:
    out: dict[str, Any] = {}
    if cons.uses_motion:
        out["min_motion"] = cons.min_motion
        out["motion_column"] = opts.motion_column
    if cons.uses_diversity:
        out["min_nn_dist"] = cons.min_nn_dist
        out["embedding_column"] = opts.embedding_column
    if cons.uses_overlap:
        out["max_spt_iou"] = cons.max_spt_iou
        out["iou_tbuff"] = format_number(cons.iou_tbuff)
    return out


ROUND_NAMES = {r: f"x{format_number(round(RELAX_FACTOR**r, 6))}" for r in range(1, RELAX_ROUNDS - 1)}
ROUND_NAMES[RELAX_ROUNDS - 1] = "off"


def _class_rows(plan: SubsetPlan, codes: np.ndarray, names: list[str]) -> list[tuple[str, int, int, int]]:
    """(label, count, available, relax_round) per class in the subset, most tracks first."""
    sel = codes[plan.rows]
    n_classes = len(names)
    counts = np.bincount(sel + 1, minlength=n_classes + 1)
    relax = np.zeros(n_classes + 1, dtype=np.int64)
    if plan.rows.size:
        np.maximum.at(relax, sel + 1, plan.rounds.astype(np.int64))
    out = []
    for code in np.flatnonzero(counts):
        label = names[code - 1] if code else "(no label)"
        available = int(plan.available[code - 1]) if code else 0
        out.append((label, int(counts[code]), available, int(relax[code])))
    out.sort(key=lambda r: (-r[1], r[0]))
    return out


def write_class_table(path: Path, rows: list[tuple[str, int, int, int]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "count", "available", "relax_round"])
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_class_distribution(path: Path, rows: list[tuple[str, int, int, int]], title: str) -> bool:
    """Tracks per class, most first (relaxed classes in orange); False when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no class-distribution plot for %s", path.name)
        return False
    counts = np.array([r[1] for r in rows], dtype=np.float64)
    relaxed = np.array([r[3] > 0 for r in rows], dtype=bool)
    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax = fig.add_subplot()
    if len(rows) <= 40:
        x = np.arange(len(rows))
        ax.bar(x, counts, color=np.where(relaxed, "#e07b39", "#3b75af").tolist())
        ax.set_xticks(x, [r[0] for r in rows], rotation=60, ha="right", fontsize=8)
    else:  # one artist per colour: a thousand bars would take seconds
        ax.stairs(counts, fill=True, color="#3b75af", label="within constraints")
        if relaxed.any():
            ax.stairs(np.where(relaxed, counts, 0), fill=True, color="#e07b39", label="relaxed")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("classes, most tracks first")
        ax.set_xlim(0, len(rows))
    if counts.size and counts.max() > 20 * max(counts.min(), 1):
        ax.set_yscale("log")
    ax.set_ylabel("tracks")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(bottom=0.3 if len(rows) <= 40 else 0.12, left=0.07, right=0.98)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def write_subset(reader: IndexReader, sampler: _Sampler, plan: SubsetPlan, source: dict,
                 timings: dict[str, float] | None = None) -> dict:
    """The subset file, its class table, plot and report; returns the report (``timings``
    accumulates the seconds spent writing and plotting)."""
    timings = {} if timings is None else timings
    started = time.perf_counter()
    layout = DatasetLayout(sampler.base_dir)
    target = layout.subset_file(plan.name)
    if target.resolve() == sampler.table.index_path.resolve():
        raise UsageError(f"subset {target} would overwrite the index")
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        size = reader.copy_rows(plan.rows, out)
    rows = _class_rows(plan, sampler.codes, sampler.class_names)
    write_class_table(class_table_path(target), rows)
    per_round = np.bincount([row[3] for row in rows], minlength=RELAX_ROUNDS)
    relaxed = {ROUND_NAMES[r]: int(per_round[r]) for r in range(1, RELAX_ROUNDS) if per_round[r]}
    nc = plan.params.get("Nc")
    short = int(((plan.available > 0) & (plan.available < nc)).sum()) if nc else 0
    plotted = False
    timings["write"] = timings.get("write", 0.0) + time.perf_counter() - started
    if sampler.opts.plots:
        started = time.perf_counter()
        title = f"{plan.name.removesuffix(SUBSET_EXT)}: {plan.rows.size} tracks, {len(rows)} classes"
        plotted = plot_class_distribution(class_plot_path(target), rows, title)
        timings["plots"] = timings.get("plots", 0.0) + time.perf_counter() - started
    report = {
        "subset": plan.name, "file": str(target), "bytes": size, "tracks": int(plan.rows.size),
        "classes": len(rows), "relaxed_classes": dict(relaxed), "classes_short": short,
        "action": sampler.opts.action, "dataset_name": sampler.dataset_name, **plan.params,
        "exclusions": dict(sampler.exclusions), "warnings": plan.warnings, "notes": plan.notes, **source,
        "class_table": str(class_table_path(target)), "plot": str(class_plot_path(target)) if plotted else None,
    }
    atomic_write_json(report_path(target), report)
    return report


def _subset_line(report: dict) -> str:
    text = f"  {report['subset']}: {report['tracks']} tracks, {report['classes']} classes"
    if report["relaxed_classes"]:
        parts = ", ".join(f"{k}: {v}" for k, v in report["relaxed_classes"].items())
        text += f"; {sum(report['relaxed_classes'].values())} classes relaxed ({parts})"
    if report.get("Nc"):
        text += f"; {report['classes_short']} classes have fewer than {report['Nc']} eligible tracks"
    for note in report.get("notes", []):
        text += f"; {note}"
    for warning in report["warnings"]:
        text += f"; WARNING: {warning}"
    return text


def run_sampling(base_dir: str | os.PathLike, index_path: str | os.PathLike, opts: SamplingOptions) -> SamplingSummary:
    """Select and write the subsets of ``opts.action``."""
    started = time.perf_counter()
    base_dir = Path(base_dir)
    summary = SamplingSummary()
    timings = summary.timings
    columns = list(_SAMPLING_COLUMNS)
    if opts.action == "sample_class_balanced":
        columns.append("score")
        if opts.constraints.uses_motion or opts.constraints.uses_diversity:
            columns += ["tid", "fn"]
    elif opts.action == "sample_max_motion":
        columns += ["tid", "fn"]
    elif opts.action == "sample_min_red":
        columns += ["score", "tid", "fn"]
    table = load_track_table(index_path, columns=columns)
    sampler = _Sampler(base_dir, table, opts, summary.lines)
    timings["read"] = time.perf_counter() - started
    summary.lines.insert(0, f"{opts.action}: {len(table)} indexed tracks, {sampler.class_count()} classes")
    try:
        if opts.action == "sample_random":
            plans = sampler.random()
        elif opts.action == "sample_class_balanced":
            plans = sampler.class_balanced()
        elif opts.action == "sample_max_motion":
            plans = sampler.max_motion()
        elif opts.action == "sample_min_red":
            plans = sampler.min_red()
        else:
            raise UsageError(f"unknown sampling action {opts.action!r}")
    except MetricsError as exc:
        raise UsageError(str(exc)) from exc
    timings["select"] = time.perf_counter() - started - timings["read"]
    excl = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sampler.exclusions.items())
    summary.lines.append(f"  excluded: {excl} (verified list: {opts.verified_source}, "
                         f"{len(opts.verified_yids)} videos)")
    source = {"index_file": str(table.index_path), "verified_list": opts.verified_source}
    with IndexReader(table) as reader:
        for plan in plans:
            report = write_subset(reader, sampler, plan, source, timings)
            summary.subsets.append(report)
            summary.lines.append(_subset_line(report))
    summary.seconds = round(time.perf_counter() - started, 3)
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    summary.lines.append(f"  {len(plans)} subsets in {DatasetLayout(base_dir).subsets_dir()} in {summary.seconds:.1f} s "
                         f"({phases}); peak memory {peak_memory_gb():.2f} GB")
    return summary
