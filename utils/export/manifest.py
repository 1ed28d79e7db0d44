"""What an export folder holds: the request that made it, recorded beside it.

An export is resumable: a re-run with the same request completes what is missing and skips what
is done. A re-run with another request (another ``--records`` content, ``--format``, ``--nframes``,
``--stride``, ``--image_format``, ...) into the same ``--out_dir`` would instead skip the outputs the
two share and leave the others, so the folder would hold neither request. So the first run records
its request in ``<out_dir>.export.json`` (beside the folder, as the SOT ground truth is: nothing is
added to what is handed on), and every later run compares:

- same request: resume;
- another request, or files in ``--out_dir`` with no record (an older version's, or not an export):
  refused (UsageError, exit 2) unless ``--overwrite``;
- ``--overwrite``: the files of the recorded export (its format's own layout, and the ground
  truth it wrote outside the folder) are deleted, then the new request is recorded, so the folder
  ends up exactly the new request. A file that no export writes is never deleted: its presence
  refuses the overwrite, naming it.

Concurrent ranks claim the folder under an exclusive lock on it, so the first one overwrites and
records, and the others find the request recorded and resume. A kill during an overwrite leaves the
old record in place (it is replaced last): the next ``--overwrite`` run finishes the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from utils.core.errors import UsageError
from utils.core.io import atomic_write_json, file_sha256, is_temp_file

MANIFEST_SUFFIX = ".export.json"
MANIFEST_VERSION = 1

#: the flags that shape each format's output (run-only flags such as --num_workers do not)
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "sot": ("nframes", "stride", "gt_out"),
    "frames": ("stride", "image_format"),
    "webdataset": ("shard_size", "min_shards", "dataset_name", "key_style"),
    "ava": ("frame_rate", "time_offset", "val_fraction", "image_format"),
}
#: flags that never shape an output: left out of the request of a format not listed above
RUN_FIELDS = frozenset({"base_dir", "world_size", "rank", "retry_failed", "max_consecutive_errors", "log_level",
                        "num_workers", "overwrite", "records", "out_dir"})


def manifest_path(out_dir: Path) -> Path:
    """``<out_dir>.export.json``: beside the folder, never in it."""
    return out_dir.with_name(out_dir.name + MANIFEST_SUFFIX)


def export_request(config: Any) -> dict[str, Any]:
    """The request of an export config: its format, the sha256 of its records file's content,
    and the flags that shape that format's output (as text)."""
    names = FORMAT_FIELDS.get(config.format)
    if names is None and is_dataclass(config):
        names = tuple(f.name for f in fields(config) if f.name not in RUN_FIELDS and f.name != "format")
    request: dict[str, Any] = {"format": config.format, "records_sha256": file_sha256(config.records)}
    for name in names or ():
        value = getattr(config, name)
        request[name] = None if value is None else str(value)
    return request


# ----------------------------------------------------------- the files an export writes


def _only(folder: Path, allowed: Callable[[Path], bool]) -> bool:
    return all(is_temp_file(p) or allowed(p) for p in folder.iterdir())


def _sot_entry(path: Path) -> bool:
    if path.name == "gt_requests.json" and path.is_file():
        return True
    if not path.is_dir():
        return False
    return _only(path, lambda p: (p.name == "sequence_meta.json" and p.is_file())
                 or (p.name == "frames" and p.is_dir() and _only(p, lambda f: f.is_file() and f.suffix == ".png")))


def _frames_entry(path: Path) -> bool:
    if path.name in ("annotations.csv", "label_map.csv") and path.is_file():
        return True
    if path.name == "annotations.parts" and path.is_dir():
        return _only(path, lambda p: p.is_file() and p.suffix == ".csv")
    if path.name == "frames" and path.is_dir():
        return _only(path, lambda video: video.is_dir() and _only(
            video, lambda f: f.is_file() and f.suffix in (".jpg", ".png")))
    return False


def _webdataset_entry(path: Path) -> bool:
    return path.is_file() and (path.name == "shards.json" or (path.name.startswith("shard-") and path.suffix == ".tar"))


def _ava_entry(path: Path) -> bool:
    if path.name == "ava.parts" and path.is_dir():
        return _only(path, lambda p: p.is_file() and p.suffix == ".json")
    if path.name in ("annotations", "frame_lists") and path.is_dir():
        return _only(path, lambda p: p.is_file() and p.suffix in (".csv", ".pbtxt", ".pkl"))
    if path.name == "frames" and path.is_dir():
        return _only(path, lambda video: video.is_dir() and _only(
            video, lambda f: f.is_file() and f.suffix in (".jpg", ".png")))
    return False


#: per format, whether a top-level entry of ``--out_dir`` is that format's own (what --overwrite may delete)
OWN_ENTRIES: dict[str, Callable[[Path], bool]] = {
    "sot": _sot_entry,
    "frames": _frames_entry,
    "webdataset": _webdataset_entry,
    "ava": _ava_entry,
}


def _is_own(path: Path, formats: list[str]) -> bool:
    return is_temp_file(path) or any(OWN_ENTRIES[f](path) for f in formats if f in OWN_ENTRIES)


def _ground_truth_paths(request: dict[str, Any] | None) -> list[Path]:
    """The SOT ground truth a request wrote outside its folder: ``<gt_out>`` and ``<gt_out>.parts/``."""
    if not request or request.get("format") != "sot" or not request.get("gt_out"):
        return []
    gt = Path(request["gt_out"])
    return [gt, gt.with_name(gt.name + ".parts")]


def _used(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ------------------------------------------------------------------------------ claim


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself (no lock file left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The recorded request of ``out_dir``, None when there is none (an unreadable record is a
    UsageError: what made the folder cannot be told)."""
    path = manifest_path(out_dir)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path} (what --out_dir {out_dir} was exported from) is unreadable ({exc}): give another "
                         "--out_dir, or --overwrite to export this request there") from None
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        raise UsageError(f"{path} is not an export record: give another --out_dir, or --overwrite")
    return data


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "records_sha256":
            out.append("another --records content")
        elif key == "format":
            out.append(f"--format {old.get(key)} (this run: {new.get(key)})")
        else:
            out.append(f"--{key} {old.get(key)} (this run: {new.get(key)})")
    return ", ".join(out)


def _listing(paths: list[Path], limit: int = 5) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths[:limit]]
    return ", ".join(names) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def claim(out_dir: Path, request: dict[str, Any], records: Path, overwrite: bool) -> None:
    """Make ``out_dir`` this request's folder: resume a recorded equal request, record a new one in
    an unused folder, refuse anything else unless ``overwrite`` (then delete the earlier export's
    own files first). Creates ``out_dir`` when it does not exist."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        try:
            recorded = read_manifest(out_dir)
        except UsageError:
            if not overwrite:
                raise
            recorded = None  # unreadable: judged by the files alone
        old = recorded["request"] if recorded else None
        if old == request:
            return
        entries = sorted(out_dir.iterdir())
        ground_truth = [p for p in dict.fromkeys(_ground_truth_paths(old) + _ground_truth_paths(request)) if _used(p)]
        if old is None and not entries and not ground_truth:
            _record(out_dir, request, records)
            return
        if not overwrite:
            if old is not None:
                what = (f"holds the export of another request ({_differences(old, request)}; recorded in "
                        f"{manifest_path(out_dir)})")
            elif entries:
                what = f"already holds files ({_listing(entries)}) and no record of what export made them"
            else:
                what = f"is new, but the ground truth of an earlier export is beside it ({_listing(ground_truth)})"
            raise UsageError(f"--out_dir {out_dir} {what}: exporting there would mix two exports (what both "
                             "share would be skipped as done, the rest left). Give another --out_dir, or "
                             "--overwrite to replace the folder with this request")
        formats = [old["format"]] if old is not None and old.get("format") in OWN_ENTRIES else list(OWN_ENTRIES)
        foreign = [p for p in entries if not _is_own(p, formats)]
        foreign += [p for p in ground_truth if not _is_ground_truth(p)]
        if foreign:
            raise UsageError(f"--overwrite: {_listing(foreign)} (in or beside --out_dir {out_dir}) is not what a "
                             f"{'/'.join(formats)} export writes: not deleting it. Move it, or give another --out_dir")
        for path in entries + ground_truth:
            _remove(path)
        _record(out_dir, request, records)


def _is_ground_truth(path: Path) -> bool:
    """The merged ground truth (a file) or its parts folder (per-sequence JSON files only)."""
    if path.name.endswith(".parts"):
        return path.is_dir() and _only(path, lambda p: p.is_file() and p.suffix == ".json")
    return path.is_file()


def _record(out_dir: Path, request: dict[str, Any], records: Path) -> None:
    atomic_write_json(manifest_path(out_dir), {"version": MANIFEST_VERSION, "request": request,
                                               "records": str(records)})
