"""Per-track metrics (what visual_metrics.py computes) as Parquet files, and their reader.

This module is the contract between visual_metrics.py (the writer) and curate_db.py (the
reader). The format, exactly:

Folder
    ``<base_dir>/tracks_metrics/<dataset_name>/<metric>/`` (``DatasetLayout.tracks_metrics_dir``),
    ``<metric>`` being visual_metrics.py's ``--metric``: ``motion`` or ``embeddings``.
Files
    Every ``*.parquet`` directly in that folder whose name does not start with ``.`` (the
    temporaries of ``utils.core.io.atomic_path`` do). Names are free; the convention is
    ``rank-RRRRR-of-NNNNN[-partPPPPP].parquet`` so that no two ranks ever write the same file.
    Each file is written whole and atomically (``write_metric_file`` does both) and never
    appended to in place: a rank that wants to save progress writes a new part. Row groups of
    at most 4096 rows (what ``write_metric_file`` writes) let readers stream embeddings a row
    group at a time; larger ones work, at the cost of holding a whole group while it is read.
Columns
    ``tid``   string, not null: the track's ``tid`` in the index (the join key).
    ``fn``    string, not null: the track's ``fn``. A row whose ``fn`` differs from the index's
              ``fn`` for that ``tid`` belongs to another index or dataset: it is ignored and
              counted (``fn_mismatch``).
    then the metric's own columns:

    ``motion``
        ``q50``, ``q75``, ``q90`` (float32 or float64; more columns are allowed, e.g. ``q0``,
        ``q10``, ``q25``, ``q100``, ``num_pairs``): per frame pair, the quantile of the
        optical-flow magnitude over the pixels; per track, the mean of that quantile over the
        track's frame pairs; in pixels of the frames the flow was computed on. curate_db.py's
        ``--min_motion`` reads ``q90`` (``--motion_column``).
    ``embeddings``
        ``embedding``: ``fixed_size_list<float32>[D]`` or ``list<float32>``, one length ``D`` in
        every row of every file. Distances are Euclidean on the stored vectors; store them
        L2-normalised so that ``--min_nn_dist`` lives in [0, 2].
Values
    NaN or null means "computed but undefined" (e.g. a track too short for optical flow) and is
    treated exactly like a missing row: the track has no value. The reader never invents one
    (the original filled missing embeddings with random noise); callers decide what a missing
    value means and say how many there are (curation: such tracks are never selected by a
    constraint that needs the value).
Rows
    One per track. A track found in several rows (a re-run, an overlapping re-shard) takes the
    row that comes last in (sorted file path, row) order; repeats are counted (``duplicates``)
    and so are repeats whose values differ (``conflicting``, scalar columns only).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import ArrayLike

from utils.core.io import atomic_path
from utils.core.layout import DatasetLayout

__all__ = [
    "EMBEDDINGS",
    "MOTION",
    "MetricColumns",
    "MetricReport",
    "MetricVectors",
    "MetricsError",
    "VectorSource",
    "load_metric_columns",
    "match_file_keys",
    "metric_dir",
    "metric_files",
    "write_metric_file",
]

MOTION = "motion"
EMBEDDINGS = "embeddings"
KEY_COLUMNS = ("tid", "fn")
#: rows per Parquet row group, and rows of a vector file converted at a time (2048-d float32:
#: 32 MB), so that reading embeddings costs little memory beyond the vectors kept
VECTOR_BATCH_ROWS = 4096


class MetricsError(ValueError):
    """Metric files that are absent or break the format above (the message names the file)."""


def metric_dir(base_dir: str | os.PathLike, dataset_name: str, metric: str) -> Path:
    """``<base_dir>/tracks_metrics/<dataset_name>/<metric>``."""
    return DatasetLayout(Path(base_dir)).tracks_metrics_dir(dataset_name, metric)


def metric_files(folder: str | os.PathLike) -> list[Path]:
    """The metric files of a folder, sorted by name (temporaries and hidden files left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if p.is_file() and not p.name.startswith("."))


def write_metric_file(
    path: str | os.PathLike, tids: Sequence[str], fns: Sequence[str], columns: Mapping[str, ArrayLike]
) -> None:
    """Write one metric file atomically. 1-D columns become float64 (NaN allowed), 2-D ``(n, D)``
    columns ``fixed_size_list<float32>[D]`` (e.g. ``{"embedding": array}``)."""
    n = len(tids)
    if len(fns) != n:
        raise ValueError(f"{len(tids)} tids but {len(fns)} fns")
    arrays: dict[str, pa.Array] = {"tid": pa.array(list(tids), pa.string()), "fn": pa.array(list(fns), pa.string())}
    for name, values in columns.items():
        if name in KEY_COLUMNS:
            raise ValueError(f"column name {name!r} is reserved")
        arr = np.asarray(values)
        if arr.shape[:1] != (n,):
            raise ValueError(f"column {name!r} has {arr.shape[:1]} rows, expected {n}")
        if arr.ndim == 1:
            arrays[name] = pa.array(arr.astype(np.float64))
        elif arr.ndim == 2:
            flat = pa.array(np.ascontiguousarray(arr, dtype=np.float32).reshape(-1))
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])
        else:
            raise ValueError(f"column {name!r} must be 1-D or 2-D, got shape {arr.shape}")
    table = pa.table(arrays)
    with atomic_path(path) as tmp:
        # row groups of VECTOR_BATCH_ROWS: a reader holds one group's vectors at a time, not the file's
        pq.write_table(table, tmp, compression="zstd", row_group_size=VECTOR_BATCH_ROWS)


# ---------------------------------------------------------------------------------- reading


@dataclass
class MetricReport:
    """What the reader found, for the run's summary."""

    metric: str
    folder: str
    files: int = 0
    rows: int = 0
    matched: int = 0
    unknown_tid: int = 0
    fn_mismatch: int = 0
    duplicates: int = 0
    conflicting: int = 0
    with_value: int = 0
    index_rows: int = 0

    @property
    def missing(self) -> int:
        """Index rows without a usable value."""
        return self.index_rows - self.with_value

    def line(self) -> str:
        text = (
            f"metric {self.metric}: {self.files} file(s), {self.rows} rows; {self.with_value} of "
            f"{self.index_rows} indexed tracks have a value, {self.missing} have none"
        )
        extras = [
            f"{value} {name}" for name, value in (
                ("rows with a tid not in the index", self.unknown_tid),
                ("rows whose fn disagrees with the index (ignored)", self.fn_mismatch),
                ("repeated rows (last one kept)", self.duplicates),
                ("repeats with different values", self.conflicting),
            ) if value
        ]
        return text + (" (" + "; ".join(extras) + ")" if extras else "")


@dataclass
class MetricColumns:
    """Scalar metric columns aligned with the index: ``values[name][row]`` (float64, NaN where
    the track has no value) and ``present[row]`` (every requested column has a finite value)."""

    values: dict[str, np.ndarray]
    present: np.ndarray
    report: MetricReport


@dataclass
class MetricVectors:
    """Vectors of the requested index ``rows``: ``vectors[i]`` belongs to ``rows[i]`` and is
    valid where ``present[i]`` (rows without a value hold zeros)."""

    rows: np.ndarray
    vectors: np.ndarray
    present: np.ndarray
    report: MetricReport = field(repr=False)


@dataclass
class _Keys:
    files: list[Path]
    starts: np.ndarray  # first row of each file in the concatenation (len(files) + 1)
    pos: np.ndarray  # index row of every metric row, -1 when unknown or mismatched
    keep: np.ndarray  # the row that wins for its index row


def _check_columns(path: Path, columns: Sequence[str]) -> None:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise MetricsError(f"{path}: not a readable Parquet file: {exc}") from exc
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise MetricsError(f"{path}: missing column(s) {missing} (has {schema.names})")


def _read(path: Path, columns: Sequence[str]) -> pa.Table:
    _check_columns(path, columns)
    try:
        return pq.read_table(path, columns=list(columns))
    except (OSError, pa.ArrowException) as exc:
        raise MetricsError(f"{path}: cannot read {list(columns)}: {exc}") from exc


def _as_strings(column: pa.ChunkedArray, path: Path, name: str) -> pa.Array:
    arr = column.combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise MetricsError(f"{path}: column {name!r} must be strings, got {arr.type}")
    if arr.null_count:
        raise MetricsError(f"{path}: column {name!r} has {arr.null_count} null(s)")
    return arr.cast(pa.string())


def _match_keys(folder: Path, metric: str, index_tids: pa.Array, index_fns: pa.Array) -> tuple[_Keys, MetricReport]:
    files = metric_files(folder)
    if not files:
        raise MetricsError(
            f"no {metric} metric files (*.parquet) in {folder}: run visual_metrics.py --metric {metric} first"
        )
    return match_file_keys(files, metric, str(folder), index_tids, index_fns)


def match_file_keys(files: Sequence[Path], metric: str, where: str, index_tids: pa.Array,
                    index_fns: pa.Array) -> tuple[_Keys, MetricReport]:
    """Match the ``tid``/``fn`` rows of ``files`` (in this order) to the index rows: the join
    every reader of this format shares (``where`` names the files in reports)."""
    report = MetricReport(metric=metric, folder=where, index_rows=len(index_tids))
    files = list(files)
    tids, fns, sizes = [], [], []
    for path in files:
        table = _read(path, KEY_COLUMNS)
        tids.append(_as_strings(table.column("tid"), path, "tid"))
        fns.append(_as_strings(table.column("fn"), path, "fn"))
        sizes.append(table.num_rows)
    tid = pa.concat_arrays(tids) if tids else pa.array([], pa.string())
    fn = pa.concat_arrays(fns) if fns else pa.array([], pa.string())
    report.files, report.rows = len(files), len(tid)
    pos = pc.fill_null(pc.index_in(tid, value_set=index_tids.cast(pa.string())), -1).to_numpy().astype(np.int64)
    known = np.flatnonzero(pos >= 0)
    report.unknown_tid = int(len(pos) - known.size)
    if known.size:
        same_fn = pc.equal(fn.take(pa.array(known)), index_fns.cast(pa.string()).take(pa.array(pos[known])))
        bad = known[~same_fn.to_numpy(zero_copy_only=False)]
        report.fn_mismatch = int(bad.size)
        pos[bad] = -1
    valid = np.flatnonzero(pos >= 0)
    # the last row of each index row wins: first occurrence in the reversed order
    _, first_rev = np.unique(pos[valid][::-1], return_index=True)
    keep = np.zeros(len(pos), dtype=bool)
    keep[valid[valid.size - 1 - first_rev]] = True
    report.matched = int(keep.sum())
    report.duplicates = int(valid.size - report.matched)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return _Keys(files=files, starts=starts, pos=pos, keep=keep), report


def _float_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    column = table.column(name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise MetricsError(f"{path}: column {name!r} must be numbers, got {column.type}")
    return pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy()


def load_metric_columns(
    base_dir: str | os.PathLike,
    dataset_name: str,
    metric: str,
    columns: Sequence[str],
    index_tids: pa.Array,
    index_fns: pa.Array,
) -> MetricColumns:
    """Scalar columns of ``metric`` for every index row (see the module docstring for the format).

    ``index_tids`` / ``index_fns``: the index's ``tid`` and ``fn`` columns (row order).
    Raises :class:`MetricsError` when there are no files or a file breaks the format.
    """
    if not columns:
        raise ValueError("no metric columns requested")
    folder = metric_dir(base_dir, dataset_name, metric)
    keys, report = _match_keys(folder, metric, index_tids, index_fns)
    n = len(index_tids)
    values: dict[str, np.ndarray] = {}
    for name in columns:
        parts = [_float_column(_read(path, [name]), name, path) for path in keys.files]
        allv = np.concatenate(parts) if parts else np.empty(0)
        out = np.full(n, np.nan)
        out[keys.pos[keys.keep]] = allv[keys.keep]
        dup = np.flatnonzero((keys.pos >= 0) & ~keys.keep)
        if dup.size:
            kept = out[keys.pos[dup]]
            differs = ~((allv[dup] == kept) | (np.isnan(allv[dup]) & np.isnan(kept)))
            report.conflicting = max(report.conflicting, int(differs.sum()))
        values[name] = out
    present = np.ones(n, dtype=bool)
    for out in values.values():
        present &= np.isfinite(out)
    report.with_value = int(present.sum())
    return MetricColumns(values=values, present=present, report=report)


def _vector_batches(path: Path, name: str) -> Iterator[pa.Array]:
    """The column ``name`` of a vector file, ``VECTOR_BATCH_ROWS`` rows at a time, in row order."""
    _check_columns(path, [name])
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=VECTOR_BATCH_ROWS, columns=[name]):
            yield batch.column(0)
    except (OSError, pa.ArrowException) as exc:
        raise MetricsError(f"{path}: cannot read {[name]}: {exc}") from exc


def _vector_block(arr: pa.Array, name: str, path: Path, dim: int | None) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(vectors of the rows that have one, which rows have one, D)."""
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise MetricsError(f"{path}: column {name!r} must be a list of floats, got {arr.type}")
    lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy().astype(np.int64)
    has = lengths >= 0
    sizes = set(np.unique(lengths[has]).tolist())
    expected = sizes if dim is None else {dim}
    if len(sizes) > 1 or (sizes and sizes != expected) or 0 in sizes:
        want = "one positive length" if dim is None else f"length {dim} as in the files before"
        raise MetricsError(f"{path}: column {name!r} holds vectors of lengths {sorted(sizes)}, expected {want}")
    if not sizes:
        return np.empty((0, 0), np.float32), has, dim
    dim = sizes.pop()
    flat = pc.fill_null(arr.filter(pa.array(has)).flatten().cast(pa.float32()), np.nan)
    return flat.to_numpy().reshape(-1, dim), has, dim


class VectorSource:
    """The vectors of one metric (e.g. embeddings) matched to the index once; the vectors of
    any set of index rows are then read on demand, ``VECTOR_BATCH_ROWS`` rows of a file at a
    time (memory: the rows asked for, plus one row group of a file)."""

    def __init__(
        self,
        base_dir: str | os.PathLike,
        dataset_name: str,
        metric: str,
        column: str,
        index_tids: pa.Array,
        index_fns: pa.Array,
    ):
        self.column = column
        self.keys, self.report = _match_keys(metric_dir(base_dir, dataset_name, metric), metric, index_tids, index_fns)
        self.n = len(index_tids)
        self._dim: int | None = None

    @classmethod
    def from_files(cls, files: Sequence[Path], metric: str, column: str, where: str, index_tids: pa.Array,
                   index_fns: pa.Array) -> VectorSource:
        """The vectors of ``column`` in ``files`` (same columns as a metric file, e.g. the
        per-video track embeddings of :mod:`utils.records.track_embeddings`), keyed to the index."""
        source = cls.__new__(cls)
        source.column = column
        source.keys, source.report = match_file_keys(files, metric, where, index_tids, index_fns)
        source.n = len(index_tids)
        source._dim = None
        return source

    @property
    def dim(self) -> int:
        """The vectors' length D (0 when no file holds one); reads files up to the first vector."""
        if self._dim is None:
            self._dim = 0
            for path in self.keys.files:
                for arr in _vector_batches(path, self.column):
                    _, has, dim = _vector_block(arr, self.column, path, None)
                    if has.any() and dim is not None:
                        self._dim = int(dim)
                        return self._dim
        return self._dim

    def load(self, rows: ArrayLike | None = None, *, keep_vectors: bool = True) -> MetricVectors:
        """Vectors of the index ``rows`` (default: every row); ``keep_vectors=False`` only finds
        which rows have one (``vectors`` is then (len(rows), 0)). A vector with a NaN counts as
        missing. Memory: ``len(rows) x D`` float32."""
        want = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        slot = np.full(self.n, -1, dtype=np.int64)
        slot[want] = np.arange(want.size)
        keys = self.keys
        dim: int | None = None
        vectors: np.ndarray | None = None
        present = np.zeros(want.size, dtype=bool)
        for i, path in enumerate(keys.files):
            lo = int(keys.starts[i])
            for arr in _vector_batches(path, self.column):
                hi = lo + len(arr)
                pos, keep = keys.pos[lo:hi], keys.keep[lo:hi]
                target_all = np.where(keep, slot[np.maximum(pos, 0)], -1)
                lo = hi
                if not (target_all >= 0).any():
                    continue  # no row of this batch is asked for: not even converted
                block, has, dim_i = _vector_block(arr, self.column, path, dim)
                if not has.any():
                    continue
                dim = dim_i
                target = target_all[has]
                use = target >= 0
                present[target[use]] = np.isfinite(block[use]).all(axis=1)
                if keep_vectors:
                    if vectors is None:
                        vectors = np.zeros((want.size, int(dim or 0)), dtype=np.float32)
                    vectors[target[use]] = block[use]
            if lo != int(keys.starts[i + 1]):
                raise MetricsError(f"{path}: changed while being read (row count differs)")
        if vectors is None:
            vectors = np.zeros((want.size, 0), dtype=np.float32)
        else:
            vectors[~present] = 0.0  # a vector with a NaN counts as missing
        report = dataclasses.replace(self.report, with_value=int(present.sum()), index_rows=int(want.size))
        return MetricVectors(rows=want, vectors=vectors, present=present, report=report)
