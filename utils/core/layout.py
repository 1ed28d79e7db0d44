"""Every path under the dataset root, in one place.

All ids are validated before they become paths, and every path is checked to stay inside
the root, so a malformed id or a hostile ``fn`` in a metadata file cannot write elsewhere.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from utils.core.errors import InvalidItemError

log = logging.getLogger("trackverse.curation")


YID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{11}$")
DATASET_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
STAGE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: what every per-video metadata file name ends with: tracks_meta/<dataset>/<yid[:2]>/<yid>-meta.jsonl.gzip
META_SUFFIX = "-meta.jsonl.gzip"


def validate_yid(yid: str) -> str:
    """Return ``yid`` if it is a YouTube id (11 chars of ``[A-Za-z0-9_-]``), else raise."""
    if not isinstance(yid, str) or not YID_PATTERN.match(yid):
        raise InvalidItemError(f"{yid!r} is not a YouTube id (11 characters of A-Z a-z 0-9 _ -)")
    return yid


def validate_name(name: str, what: str = "dataset name") -> str:
    if not isinstance(name, str) or not DATASET_NAME_PATTERN.match(name) or ".." in name:
        raise InvalidItemError(f"{name!r} is not a valid {what} (letters, digits, '_', '-', '.')")
    return name


def default_base_dir() -> Path:
    """``$TRACKVERSE_DB``, else ``./TrackVerseDB``."""
    return Path(os.environ.get("TRACKVERSE_DB") or "TrackVerseDB")


def inside(root: Path, relative: str | os.PathLike) -> Path:
    """Join ``relative`` under ``root`` and refuse anything that escapes it."""
    rel = Path(relative)
    if rel.is_absolute() or any(part == ".." for part in rel.parts) or str(relative).strip() == "":
        raise InvalidItemError(f"path {str(relative)!r} would escape {root}")
    path = root / rel
    root_resolved = root.resolve()
    resolved = path.resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise InvalidItemError(f"path {str(relative)!r} resolves outside {root}")
    return path


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one dataset root. Cheap to build; touches the disk only where it says so."""

    base_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_dir", Path(self.base_dir))

    # stage 1-3: videos and segments
    def videos_dir(self) -> Path:
        return self.base_dir / "videos_mp4"

    def video_mp4(self, yid: str) -> Path:
        validate_yid(yid)
        return self.base_dir / "videos_mp4" / yid[:2] / f"{yid}.mp4"

    def video_segments(self, yid: str) -> Path:
        validate_yid(yid)
        return self.base_dir / "videos_segm" / yid[:2] / f"{yid}.txt"

    def video_sidecar(self, yid: str, kind: str) -> Path:
        """Per-video side information (e.g. ``segm-scores``, ``blurred``), beside the video."""
        validate_name(kind, "sidecar kind")
        return self.base_dir / "videos_mp4" / yid[:2] / f"{yid}.{kind}.json"

    # stage 4: tracks
    def tracks_meta(self, dataset_name: str, yid: str) -> Path:
        validate_name(dataset_name)
        validate_yid(yid)
        return self.base_dir / "tracks_meta" / dataset_name / yid[:2] / f"{yid}{META_SUFFIX}"

    def tracks_meta_dir(self, dataset_name: str) -> Path:
        validate_name(dataset_name)
        return self.base_dir / "tracks_meta" / dataset_name

    def tracks_mp4_dir(self, dataset_name: str | None) -> Path:
        """``tracks_mp4/<dataset_name>``; without a dataset name, ``tracks_mp4`` (released subsets)."""
        root = self.base_dir / "tracks_mp4"
        return root if dataset_name is None else root / validate_name(dataset_name)

    def track_mp4(self, dataset_name: str | None, fn: str) -> Path:
        """``tracks_mp4/<dataset_name>/<fn>``; without a dataset name, ``tracks_mp4/<fn>``
        (released subsets keep their file names)."""
        root = self.tracks_mp4_dir(dataset_name)
        if not str(fn).endswith(".mp4"):
            raise InvalidItemError(f"track file name {fn!r} does not end in .mp4")
        return inside(root, fn)

    def tracks_done_marker(self, dataset_name: str | None, yid: str) -> Path:
        """``tracks_mp4[/<dataset_name>]/<yid[:2]>/<yid>.done.json``: written last, once every
        clip of the video exists (extract_tracks, download_tracks)."""
        validate_yid(yid)
        return self.tracks_mp4_dir(dataset_name) / yid[:2] / f"{yid}.done.json"

    # stage 5: subsets and index
    def subsets_dir(self) -> Path:
        return self.base_dir / "tracks_subsets"

    def subset_file(self, name: str) -> Path:
        return inside(self.subsets_dir(), validate_name(name, "subset file name"))

    def tracks_metrics_dir(self, dataset_name: str, metric: str) -> Path:
        """``tracks_metrics/<dataset_name>/<metric>/``: per-track metric files (visual_metrics.py,
        format in ``utils/records/metrics_store.py``)."""
        validate_name(dataset_name)
        validate_name(metric, "metric name")
        return self.base_dir / "tracks_metrics" / dataset_name / metric

    def relative(self, relative: str | os.PathLike) -> Path:
        """A user-given path relative to the root (e.g. ``--index_file``), kept inside it.
        Absolute paths are taken as they are: the user chose them explicitly."""
        if Path(relative).is_absolute():
            return Path(relative)
        return inside(self.base_dir, relative)

    def qa_dir(self, name: str) -> Path:
        """``qa/<name>``: QA pages of a subset or a video (qa.py)."""
        return inside(self.base_dir / "qa", validate_name(name, "QA page name"))

    # logs
    def logs_root(self) -> Path:
        return self.base_dir / "logs"

    def logs_dir(self, stage: str) -> Path:
        if not STAGE_NAME_PATTERN.match(stage) or ".." in stage:
            raise InvalidItemError(f"{stage!r} is not a valid stage name")
        return self.logs_root() / stage

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


SUBSET_EXT = ".jsonl.gzip"
