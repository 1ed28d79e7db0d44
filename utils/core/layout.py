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

from utils.core.errors import InvalidItemError, UsageError

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

# ------------------------------------------------------------------- what a root holds

#: the top-level folders the stages make under a dataset root
ROOT_FOLDERS = ("videos_mp4", "videos_segm", "tracks_meta", "tracks_mp4", "tracks_subsets", "tracks_metrics",
                "logs", "qa")
#: the folders that hold one subfolder per dataset (``tracks_meta/<dataset_name>/`` ...)
DATASET_FOLDERS = ("tracks_meta", "tracks_mp4", "tracks_metrics")
_CONTENT = {"tracks_meta": "track metadata", "tracks_mp4": "track clips", "tracks_metrics": "track metrics"}
#: the step that makes each folder, named when it is missing
MADE_BY = {"videos_mp4": "download_videos.py", "videos_segm": "download_videos.py", "tracks_meta": "parse_tracks.py",
           "tracks_mp4": "extract_tracks.py", "tracks_metrics": "visual_metrics.py", "tracks_subsets": "curate_db.py"}


def _made_by(folders: tuple[str, ...] | list[str]) -> str:
    steps = list(dict.fromkeys(f"{name}/ by {MADE_BY[name]}" for name in folders if name in MADE_BY))
    return f" ({', '.join(steps)})" if steps else ""


def datasets_in(base_dir: str | os.PathLike, folders: tuple[str, ...] = DATASET_FOLDERS) -> list[str]:
    """The dataset names that have a folder under any of ``folders`` of the root, sorted."""
    names: set[str] = set()
    for folder in folders:
        parent = Path(base_dir) / folder
        if parent.is_dir():
            names.update(p.name for p in parent.iterdir() if p.is_dir() and DATASET_NAME_PATTERN.match(p.name))
    return sorted(names)


def describe_datasets(base_dir: str | os.PathLike) -> str:
    """``datasets there: A, B`` (or that there is none yet), for messages."""
    names = datasets_in(base_dir)
    if not names:
        return f"no dataset under {base_dir} yet"
    return f"datasets under {base_dir}: {', '.join(names)}"


def require_dataset_root(base_dir: str | os.PathLike, needs: tuple[str, ...] = (), flag: str = "--base_dir") -> None:
    """UsageError unless ``base_dir`` is an existing folder holding at least one of the layout's
    folders (:data:`ROOT_FOLDERS`) and every folder of ``needs``. For stages that only read
    what earlier stages wrote: a mistyped root is refused, never created. Touches nothing."""
    path = Path(base_dir)
    if not path.is_dir():
        raise UsageError(f"{flag} {path} {'is a file, not a folder' if path.exists() else 'does not exist'}")
    present = [name for name in ROOT_FOLDERS if (path / name).is_dir()]
    if not present:
        made = f"; it needs {_made_by(needs)[2:-1]}" if needs else ""
        raise UsageError(f"{flag} {path} is not a dataset root: it has none of "
                         f"{', '.join(f'{name}/' for name in ROOT_FOLDERS)} (a typo? this step only reads "
                         f"what earlier steps made, and creates no root{made})")
    missing = [name for name in needs if not (path / name).is_dir()]
    if missing:
        raise UsageError(f"{flag} {path} has no {' and no '.join(f'{name}/' for name in missing)}{_made_by(missing)}: "
                         f"nothing for this step to read yet (it has {', '.join(f'{name}/' for name in present)})")


def require_dataset(base_dir: str | os.PathLike, dataset_name: str, folders: tuple[str, ...],
                    producers: tuple[str, ...] = (), flag: str = "--dataset_name") -> None:
    """UsageError unless dataset ``dataset_name`` has one of ``folders`` under the root
    (``tracks_meta/<dataset_name>/`` ...), or a stage of ``producers`` that makes them has a
    journal for it (``logs/<producer>-<dataset_name>``: it ran or runs, so what is missing is
    "not ready", not a wrong name). The message names the datasets that are there."""
    validate_name(dataset_name)
    base = Path(base_dir)
    if any((base / folder / dataset_name).is_dir() for folder in folders):
        return
    logs = base / "logs"
    if producers and logs.is_dir():
        for entry in logs.iterdir():
            if entry.is_dir() and entry.name.endswith(f"-{dataset_name}") and entry.name.startswith(producers):
                return
    what = " or ".join(_CONTENT.get(folder, folder) for folder in folders)
    wanted = " or ".join(f"{folder}/{dataset_name}/" for folder in folders)
    raise UsageError(f"{flag} {dataset_name}: no {what} of that dataset under {base} (no {wanted}; "
                     f"{', '.join(MADE_BY[f] for f in folders if f in MADE_BY)} makes it); {describe_datasets(base)}")


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
