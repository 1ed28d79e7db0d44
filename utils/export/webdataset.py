"""``--format webdataset``: tar shards of at most ``--shard_size`` samples, each sample a track's
clip (``<key>.mp4``) and its record (``<key>.json``), readable by the ``webdataset`` library's
standard pipeline (``wds.WebDataset(urls).decode()``; keys have no dots).

Shards are planned from the records file alone: the valid track records in file order, cut
into runs of ``--shard_size`` (shorter when that makes at least ``--min_shards`` shards: a
DataLoader worker that gets no shard makes webdataset fail), so every rank agrees on which
track goes where. A shard is
written under a temporary name and renamed into place; it counts as done only when its
members are exactly the planned ones. ``<out_dir>/shards.json`` (shard, samples, bytes) is
rewritten from the shards present at the end of every rank.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from utils.core.io import atomic_path, atomic_write_json
from utils.export.inputs import ExportSequence
from utils.records.released import record_dict

SHARD_PREFIX = "shard-"
INDEX_NAME = "shards.json"


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:06d}"


def plan_shards(sequences: list[ExportSequence], shard_size: int,
                min_shards: int = 1) -> dict[str, list[ExportSequence]]:
    """Runs of the valid tracks in file order: at most ``shard_size`` each, and smaller when
    that gives at least ``min_shards`` shards (webdataset fails in a DataLoader worker that
    gets no shard, so there should be at least as many shards as workers)."""
    tracks = [s for s in sequences if s.error is None and s.record is not None]
    size = max(1, min(shard_size, len(tracks) // max(min_shards, 1)))
    return {shard_name(i // size): tracks[i:i + size] for i in range(0, len(tracks), size)}


def sample_json(seq: ExportSequence, key_style: str = "compact") -> bytes:
    record = seq.record
    assert record is not None
    data = {"seq_id": seq.seq_id, "label": seq.label, **record_dict(record, key_style)}
    return json.dumps(data, sort_keys=True).encode("utf-8")


def shard_members(path: Path) -> list[str] | None:
    """Member names of a shard, None when it is not a readable tar."""
    try:
        with tarfile.open(path, "r:") as tar:
            return tar.getnames()
    except (OSError, tarfile.TarError, EOFError):
        return None


def expected_members(samples: list[ExportSequence]) -> list[str]:
    return [name for s in samples for name in (f"{s.seq_id}.json", f"{s.seq_id}.mp4")]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[tuple[ExportSequence, Path]], key_style: str = "compact") -> dict[str, Any]:
    """Write the shard (deterministic bytes for the same clips and records) atomically."""
    total = 0
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for seq, clip in samples:
                clip_bytes = clip.read_bytes()
                total += len(clip_bytes)
                _add(tar, f"{seq.seq_id}.json", sample_json(seq, key_style))
                _add(tar, f"{seq.seq_id}.mp4", clip_bytes)
    return {"samples": float(len(samples)), "clip_bytes": float(total)}


def write_index(out_dir: Path) -> int:
    """``shards.json`` from the shards present: ``[{shard, samples, bytes}]`` by name."""
    shards = []
    for path in sorted(out_dir.glob(f"{SHARD_PREFIX}*.tar")):
        members = shard_members(path)
        if members is None:
            continue
        keys = {m.split(".", 1)[0] for m in members}
        shards.append({"shard": path.name, "samples": len(keys), "bytes": os.path.getsize(path)})
    atomic_write_json(out_dir / INDEX_NAME, {"shards": shards, "samples": sum(s["samples"] for s in shards)})
    return len(shards)
