"""The track index file and its columnar companion: the format curate_db.py writes and every
later step reads.

The index is one gzip JSON-lines file in which **every line is its own gzip member**:
concatenated members are one valid gzip stream to every reader (``gzip.open``, ``zcat``), and
the companion stores each line's byte range, so a subset is written by copying members (no
decompression, no JSON) and a constraint reads only the records it looks at. Each copied
member is checked against the companion (gzip magic, CRC-32 and length), so a companion that
does not belong to its index is caught, never silently used.

The companion (``<index stem>.columns.parquet``) has one row per index line, in line order:
``row offset length crc32 ulen yid tid fn label label_id score logit duration num_frames
t_start t_end video_h video_w`` (``label``: top-1 label; ``score``: ``top10_wlogit_mu[0]``;
``logit``: ``top10_logit_mu[0]``; ``label_id``: ``top10_lbl[0]``, -1 when the record has
none). Its schema metadata (``trackverse.index``) records the format, dataset name and the
index's size.

Format versions (readers take both; the layout is the same): **2** compresses each member with
ISA-L (``isal``) at level 1, about 7x faster than zlib level 6 and ~5% bigger; its bytes may
differ between CPUs (ISA-L picks code paths by instruction set), never its lines. **1** used zlib
level 6 (``gzip.compress(line, 6, mtime=0)``).

A class is its **label id** (its line in the prompts file), not its name: the LVIS list has
names on two lines each (``bow``, ``fish``, ``octopus``, ``pan``, ``salmon``), which are
different classes. :attr:`TrackTable.classes` groups rows by id; a record without an id (metadata
that only names its class) is grouped by its name, apart from every id (see :class:`Classes`).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from isal import isal_zlib

from utils.core.errors import UsageError
from utils.core.layout import companion_path
from utils.records.tracks import TrackRecord

log = logging.getLogger("trackverse.curation")


INDEX_FORMAT = 2
READABLE_INDEX_FORMATS = (1, 2)
#: ISA-L level of the index's members (format 2)
INDEX_COMPRESSLEVEL = 1

_METADATA_KEY = b"trackverse.index"

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


class IndexMismatchError(UsageError):
    """The companion does not describe the index file next to it."""


@dataclass(frozen=True)
class Classes:
    """The classes of an index, numbered by code ``0..len-1``.

    A class is a label id: rows with the same ``label_id`` are one class whatever their names.
    Rows without an id (``label_id`` -1) but with a name form classes by name, one per name,
    never merged with an id's class (a name can belong to several ids); rows with neither have
    code -1. Codes follow ascending id, then the id-less classes by name.

    ``ids[c]``: the label id of class ``c`` (None for a class known by name only);
    ``names[c]``: its name (for an id: the name most of its rows carry, '' when none has one);
    ``several_names``: ids whose rows carry different names (a sign of mixed vocabularies), with
    those names, most frequent first; ``rows_without_id``: rows grouped by name.
    """

    codes: np.ndarray
    ids: list[int | None]
    names: list[str]
    several_names: dict[int, list[str]]
    rows_without_id: int

    def __len__(self) -> int:
        return len(self.ids)

    def display(self, code: int) -> str:
        """What a person reads: ``<id> <name>`` (``412 bow``), the name alone without an id."""
        cid, name = self.ids[code], self.names[code]
        if cid is None:
            return name
        return f"{cid} {name}" if name else str(cid)

    @property
    def by_id(self) -> bool:
        """True when no class is known by name only."""
        return self.rows_without_id == 0

    @classmethod
    def from_columns(cls, label_ids: np.ndarray | None, label_codes: np.ndarray, label_names: Sequence[str]) -> Classes:
        """Classes from per-row label ids (-1: none; None: no id column at all) and per-row
        label codes into ``label_names`` (-1: no name)."""
        label_codes = np.asarray(label_codes, dtype=np.int64)
        n = label_codes.size
        ids = np.full(n, -1, dtype=np.int64) if label_ids is None else np.asarray(label_ids, dtype=np.int64)
        has_id = ids >= 0
        codes = np.full(n, -1, dtype=np.int64)
        class_ids: list[int | None] = []
        class_names: list[str] = []
        several: dict[int, list[str]] = {}
        if has_id.any():
            top = int(ids[has_id].max())
            if top < 1 << 22:  # linear time for any real vocabulary
                present = np.bincount(ids[has_id], minlength=top + 1) > 0
                uniq = np.flatnonzero(present)
                lookup = np.cumsum(present) - 1
                codes[has_id] = lookup[ids[has_id]]
            else:
                uniq, inverse = np.unique(ids[has_id], return_inverse=True)
                codes[has_id] = inverse.reshape(-1)
            k, width = uniq.size, len(label_names) + 1  # name slot 0: no name
            key = codes[has_id] * width + (label_codes[has_id] + 1)
            if k * width <= 1 << 26:
                counts = np.bincount(key, minlength=k * width).reshape(k, width)
                pairs = np.flatnonzero(counts)
                pair_counts = counts.reshape(-1)[pairs]
            else:
                pairs, pair_counts = np.unique(key, return_counts=True)
            pair_class, pair_name = pairs // width, pairs % width - 1
            named = pair_name >= 0
            # per class, its names by count (most first), ties by first appearance in the dictionary
            order = np.lexsort((pair_name[named], -pair_counts[named], pair_class[named]))
            per_class: dict[int, list[str]] = {}
            for c, name in zip(pair_class[named][order].tolist(), pair_name[named][order].tolist(), strict=True):
                per_class.setdefault(c, []).append(label_names[name])
            for c, cid in enumerate(uniq.tolist()):
                names = per_class.get(c, [])
                class_ids.append(int(cid))
                class_names.append(names[0] if names else "")
                if len(names) > 1:
                    several[int(cid)] = names
        by_name = ~has_id & (label_codes >= 0)
        if by_name.any():
            used = np.unique(label_codes[by_name])
            ordered = sorted(used.tolist(), key=lambda code: label_names[code])
            lookup = np.full(len(label_names), -1, dtype=np.int64)
            lookup[ordered] = np.arange(len(ordered)) + len(class_ids)
            codes[by_name] = lookup[label_codes[by_name]]
            class_ids.extend([None] * len(ordered))
            class_names.extend(label_names[code] for code in ordered)
        return cls(codes=codes, ids=class_ids, names=class_names, several_names=several,
                   rows_without_id=int(by_name.sum()))


def compress_member(line: bytes) -> bytes:
    """One index line (with its newline) as its own gzip member (header without name or mtime)."""
    return isal_zlib.compress(line, level=INDEX_COMPRESSLEVEL, wbits=31)


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
    def classes(self) -> Classes:
        """The classes of the rows, by label id (:class:`Classes`; needs the ``label`` column,
        and ``label_id`` to group by id: without it every class is known by name only)."""
        label_codes, label_names = self._encoded("label")
        ids = None
        if "label_id" in self.table.column_names:
            ids = pc.fill_null(self.table.column("label_id"), -1).to_numpy().astype(np.int64)
        return Classes.from_columns(ids, label_codes, label_names)

    @property
    def labels(self) -> tuple[np.ndarray, list[str]]:
        """(class code per row, -1 without a class; ``<id> <name>`` of each class by code):
        :attr:`classes` in short."""
        classes = self.classes
        return classes.codes, [classes.display(c) for c in range(len(classes))]

    @cached_property
    def videos(self) -> tuple[np.ndarray, list[str]]:
        """(video code per row; YouTube ids by code)."""
        return self._encoded("yid")


def check_index(index_path: str | os.PathLike) -> tuple[dict, pa.Schema]:
    """Check, without reading the table, that ``index_path`` and its companion exist and belong
    together; returns the companion's metadata and schema (raises UsageError naming the file)."""
    index_path = Path(index_path)
    path = companion_path(index_path)
    if index_path.is_dir():
        raise UsageError(f"index file {index_path} is a directory: give the .jsonl.gzip file --action index wrote")
    if not index_path.is_file():
        raise UsageError(f"index file {index_path} does not exist: run curate_db.py --action index first")
    if not path.is_file():
        raise UsageError(f"{path} (the index's companion) does not exist: re-run curate_db.py --action index")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise IndexMismatchError(f"{path} is not a readable index companion ({exc}): re-run --action index") from exc
    raw = (schema.metadata or {}).get(_METADATA_KEY)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = {}
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_INDEX_FORMATS:
        raise IndexMismatchError(f"{path} is not an index companion of a format this version reads "
                                 f"({', '.join(map(str, READABLE_INDEX_FORMATS))}): re-run --action index")
    size = index_path.stat().st_size
    if meta.get("index_size") != size:
        raise IndexMismatchError(
            f"{path} describes an index of {meta.get('index_size')} bytes but {index_path} has {size}: "
            "the index changed after its companion was written; re-run --action index"
        )
    return meta, schema


def load_track_table(index_path: str | os.PathLike, columns: Sequence[str] | None = None) -> TrackTable:
    """Read the companion of ``index_path`` after checking that it describes that file
    (:func:`check_index`)."""
    index_path = Path(index_path)
    path = companion_path(index_path)
    meta, schema = check_index(index_path)
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
