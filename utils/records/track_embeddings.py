"""Each kept track's embedding, one columnar file per video beside its metadata: what
relabel_tracks.py and search_tracks.py score against text, without re-running the detector.

Format, exactly:

File
    ``tracks_meta/<dataset_name>/<yid[:2]>/<yid>-emb.parquet``, beside ``<yid>-meta.jsonl.gzip``
    (:func:`embeddings_path`), one per metadata file, written by parse_tracks.py and
    relabel_tracks.py with :func:`write_video_tracks`.
Columns (those of :mod:`utils.records.metrics_store`, so its readers join them to an index)
    ``tid``, ``fn``: strings, one row per record of the metadata file, in its order;
    ``embedding``: ``fixed_size_list<float16>[D]`` (``list<float16>`` in a file without tracks),
    null for a track whose detections had no embedding. The L2-normalised mean of the track's
    detection embeddings (the detector's class-embedding space, where its text embeddings live),
    rounded to float16 (relative error under 1e-3: cosine scores move by less than that).
Schema metadata ``trackverse.embeddings`` (JSON)
    ``format``, ``dim``, ``records_sha256`` (the sha256 of the decompressed JSON lines of the
    metadata file it belongs to: its records, whatever its gzip framing or header), ``tracks``,
    and what the caller adds (``detector``, ``detector_spec``, ``weights``, a relabelled file's
    ``source_meta_sha256``).

Done rule: a metadata file counts only with an embeddings file whose ``records_sha256`` is that
of the metadata file's records (:func:`embeddings_problem`). :func:`write_video_tracks` writes the
embeddings file first (atomically) and the metadata file second, so after a kill at any instant
there is either no metadata file (not done), an old metadata file whose records the new
embeddings file does not describe (not done), or both, matching. Checking reads the Parquet
footer and decompresses and hashes the metadata file (a few hundred kB per video, ~1 ms).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from utils.core.io import GZIP_STREAM_ERRORS, atomic_path, atomic_write_bytes
from utils.core.layout import META_SUFFIX, DatasetLayout
from utils.records.metrics_store import VectorSource
from utils.records.provenance import Provenance
from utils.records.released import record_line
from utils.records.track_files import jsonl_to_gz_bytes, records_to_jsonl_bytes
from utils.records.tracks import TrackRecord

__all__ = [
    "EMBEDDINGS_COLUMN",
    "EMBEDDINGS_SUFFIX",
    "EmbeddingsError",
    "VideoEmbeddings",
    "embeddings_info",
    "embeddings_path",
    "embeddings_problem",
    "index_embedding_source",
    "read_video_embeddings",
    "write_video_tracks",
]

EMBEDDINGS_FORMAT = 1
EMBEDDINGS_COLUMN = "embedding"
EMBEDDINGS_SUFFIX = "-emb.parquet"
_METADATA_KEY = b"trackverse.embeddings"


class EmbeddingsError(ValueError):
    """An embeddings file that is absent, unreadable or not the one of its metadata file."""


def embeddings_path(meta_path: str | os.PathLike) -> Path:
    """``<yid>-emb.parquet`` beside ``<yid>-meta.jsonl.gzip``."""
    meta_path = Path(meta_path)
    if not meta_path.name.endswith(META_SUFFIX):
        raise ValueError(f"{meta_path} is not a per-video metadata file (*{META_SUFFIX})")
    return meta_path.with_name(meta_path.name[: -len(META_SUFFIX)] + EMBEDDINGS_SUFFIX)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stack(embeddings: Sequence[np.ndarray | None], n: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(float16 (n, D) with zeros where missing, which rows have one, D or None)."""
    if len(embeddings) != n:
        raise ValueError(f"{len(embeddings)} embeddings for {n} records")
    dims = {int(np.asarray(e).reshape(-1).size) for e in embeddings if e is not None}
    if len(dims) > 1:
        raise ValueError(f"embeddings of several lengths {sorted(dims)} in one video")
    dim = dims.pop() if dims else None
    present = np.array([e is not None for e in embeddings], dtype=bool)
    out = np.zeros((n, dim or 0), dtype=np.float16)
    for i, e in enumerate(embeddings):
        if e is not None:
            v = np.asarray(e, dtype=np.float32).reshape(-1)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"embedding of record {i} has NaN or infinite values")
            out[i] = v
    return out, present, dim


def _table(records: Sequence[TrackRecord], vectors: np.ndarray, present: np.ndarray, dim: int | None,
           info: Mapping[str, Any]) -> pa.Table:
    if dim:
        flat = pa.array(vectors.reshape(-1), pa.float16())
        column: pa.Array = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~present))
    else:
        column = pa.array([None] * len(records), pa.list_(pa.float16()))
    schema = pa.schema([("tid", pa.string()), ("fn", pa.string()), (EMBEDDINGS_COLUMN, column.type)],
                       metadata={_METADATA_KEY: json.dumps(dict(info), sort_keys=True).encode("utf-8")})
    return pa.table([pa.array([r.tid for r in records], pa.string()), pa.array([r.fn for r in records], pa.string()),
                     column], schema=schema)


def write_video_tracks(meta_path: str | os.PathLike, records: Sequence[TrackRecord],
                       embeddings: Sequence[np.ndarray | None], provenance: Provenance | None = None,
                       info: Mapping[str, Any] | None = None, key_style: str = "compact") -> None:
    """Write one video's metadata file and its embeddings file (``embeddings[i]`` is
    ``records[i]``'s), each atomically, embeddings first (see the module docstring); ``info``
    is added to the embeddings file's metadata. ``key_style``: the records' spelling
    (:mod:`utils.records.released`)."""
    meta_path = Path(meta_path)
    lines = records_to_jsonl_bytes(records) if key_style == "compact" else \
        b"".join(record_line(r, key_style) for r in records)
    vectors, present, dim = _stack(embeddings, len(records))
    meta = {**(info or {}), "format": EMBEDDINGS_FORMAT, "dim": dim, "records_sha256": _sha256(lines),
            "tracks": len(records)}
    if provenance is not None:
        meta.setdefault("detector", provenance.detector)
        meta.setdefault("weights", provenance.weights)
        meta.setdefault("detector_spec", provenance.detector_spec)
    table = _table(records, vectors, present, dim, meta)
    with atomic_path(embeddings_path(meta_path)) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    atomic_write_bytes(meta_path, jsonl_to_gz_bytes(lines, provenance))


def embeddings_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``trackverse.embeddings`` metadata of an embeddings file (its footer only)."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise EmbeddingsError(f"{path}: no embeddings file") from None
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingsError(f"{path}: not a readable embeddings file: {exc}") from None
    raw = (schema.metadata or {}).get(_METADATA_KEY)
    try:
        info = json.loads(raw) if raw else None
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("format") != EMBEDDINGS_FORMAT:
        raise EmbeddingsError(f"{path}: not a track embeddings file of format {EMBEDDINGS_FORMAT}")
    return info


def embeddings_problem(meta_path: str | os.PathLike) -> str | None:
    """None when ``meta_path`` has its embeddings file (the one written with it); else why not."""
    meta_path = Path(meta_path)
    try:
        info = embeddings_info(embeddings_path(meta_path))
        if info.get("records_sha256") != _sha256(gzip.decompress(meta_path.read_bytes())):
            return f"{embeddings_path(meta_path)} belongs to another version of {meta_path.name}"
    except EmbeddingsError as exc:
        return str(exc)
    except GZIP_STREAM_ERRORS as exc:
        return f"{meta_path}: damaged metadata file: {exc}"
    except FileNotFoundError:
        return f"{meta_path}: no metadata file"
    return None


@dataclass
class VideoEmbeddings:
    """One video's track embeddings: ``vectors[i]`` (float32, (n, D)) is ``tids[i]``'s, valid
    where ``present[i]``."""

    tids: list[str]
    fns: list[str]
    vectors: np.ndarray
    present: np.ndarray
    info: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def read_video_embeddings(meta_path: str | os.PathLike, check: bool = True) -> VideoEmbeddings:
    """The embeddings file of a metadata file; with ``check``, :class:`EmbeddingsError` unless
    it is the one written with the metadata file as it is now."""
    meta_path = Path(meta_path)
    if check:
        problem = embeddings_problem(meta_path)
        if problem:
            raise EmbeddingsError(problem)
    path = embeddings_path(meta_path)
    info = embeddings_info(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingsError(f"{path}: cannot read: {exc}") from None
    col = table.column(EMBEDDINGS_COLUMN).combine_chunks()
    n = table.num_rows
    present = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool) if n else np.zeros(0, bool)
    dim = int(info.get("dim") or 0)
    vectors = np.zeros((n, dim), dtype=np.float32)
    if dim and present.any():
        values = col.filter(pa.array(present)).flatten().cast(pa.float32()).to_numpy()
        vectors[present] = values.reshape(-1, dim)
    return VideoEmbeddings(table.column("tid").to_pylist(), table.column("fn").to_pylist(), vectors, present, info)


def index_embedding_source(base_dir: str | os.PathLike, dataset_name: str, yids: Sequence[str],
                           index_tids: pa.Array, index_fns: pa.Array) -> tuple[VectorSource, list[str]]:
    """The track embeddings of an index's rows (``yids``: its videos), as a
    :class:`~utils.records.metrics_store.VectorSource` keyed to the index rows, and the problems
    of the videos left out (no embeddings file, or one that does not belong to the metadata)."""
    layout = DatasetLayout(Path(base_dir))
    files, problems = [], []
    for yid in dict.fromkeys(yids):
        meta = layout.tracks_meta(dataset_name, yid)
        problem = embeddings_problem(meta)
        if problem:
            problems.append(problem)
        else:
            files.append(embeddings_path(meta))
    where = f"{layout.tracks_meta_dir(dataset_name)}/*/*{EMBEDDINGS_SUFFIX}"
    return VectorSource.from_files(files, "track embeddings", EMBEDDINGS_COLUMN, where, index_tids, index_fns), problems
