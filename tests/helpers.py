"""What tests share that is not a fixture: where the repository and the real sample data are, running a
script as a user would, reading a stage's journal, and putting a video with its track metadata where the
stages find them. Test modules import from here, never from one another or from conftest."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from utils.core.io import atomic_write_bytes
from utils.core.layout import DatasetLayout
from utils.records.track_files import records_to_jsonl_gz_bytes
from utils.records.tracks import TrackRecord, compute_tid, track_filename
from utils.runner.journal import read_journals
from utils.testing.synthetic import SyntheticVideo

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The real sample data: beside the project (../shared, every developer and CI), else what
# tests/data/fetch_samples.sh fetched into tests/data/samples (a fresh clone; git-ignored).
FETCH_SAMPLES = "tests/data/fetch_samples.sh"
SAMPLES = REPO / "tests" / "data" / "samples"
VIDEO_FOLDERS = (SHARED / "data" / "videos", SAMPLES / "videos")
ASSET_FOLDERS = (SHARED / "trackverse-assets", SAMPLES / "trackverse-assets")


def _holding(folders: tuple[Path, ...], names: tuple[str, ...]) -> Path:
    """The first folder that holds every one of ``names`` (else the first that holds any, else
    the first folder): what tests that read a whole folder use."""
    for test in (all, any):
        for folder in folders:
            if test((folder / name).is_file() for name in names):
                return folder
    return folders[0]


SHARED_VIDEOS = _holding(VIDEO_FOLDERS, ("vtest.avi", "Megamind.avi", "box.mp4", "cup.mp4"))
SHARED_ASSETS = _holding(ASSET_FOLDERS, ("lvis-prompts.txt", "trackverse-yids-all.txt",
                                         "trackverse-verified-6perclass.txt"))


def _sample(folders: tuple[Path, ...], name: str, what: str) -> Path:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    where = " or ".join(os.path.relpath(folder, REPO) for folder in folders)
    pytest.skip(f"{what} {name} is absent (looked in {where}): run {FETCH_SAMPLES} to fetch it")


def shared_video(name: str) -> Path:
    """A real sample video (Debian's opencv-doc examples), or skip naming the fetch script."""
    return _sample(VIDEO_FOLDERS, name, "real sample video")


def shared_asset(name: str) -> Path:
    """A TrackVerse asset list, or skip naming the fetch script."""
    return _sample(ASSET_FOLDERS, name, "TrackVerse asset")


def run_cli(*args: str | os.PathLike, timeout: float = 300, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repository root, as a user would."""
    full_env = dict(os.environ)
    full_env.pop("SLURM_ARRAY_TASK_ID", None)
    full_env.update(env or {})
    # Files, not pipes: jobs started by the local submitit backend inherit the descriptors
    # and outlive the command; with pipes, the call would wait for them too.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(
            [sys.executable, *map(str, args)], cwd=REPO, stdout=out, stderr=err,
            timeout=timeout, env=full_env, check=False,
        ).returncode
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(args, code, out.read(), err.read())
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def journal(db: Path, job_key: str, event: str | None = None) -> list[dict]:
    """Records of a stage's journals (``logs/<job_key>``, e.g. ``extract_tracks-<dataset>``), of one event or all."""
    return [r for r in read_journals(db / "logs" / job_key) if event is None or r["event"] == event]


# ------------------------------------------------------------- a video with track metadata


def track_record(yid: str, label: str, ts, boxes_xywh, video_size=(240, 320)) -> TrackRecord:
    track_ts = [round(float(t), 4) for t in ts]
    track_bbox = [[round(float(v), 2) for v in b] for b in boxes_xywh]
    tid = compute_tid(yid, track_ts, track_bbox)
    return TrackRecord(yid=yid, tid=tid, fn=track_filename(yid, label, tid), track_ts=track_ts,
                       track_bbox=track_bbox, video_size=list(video_size))


def gt_records(video: SyntheticVideo, yid: str, every: int = 2) -> list[TrackRecord]:
    """One record per ground-truth object, sampled every ``every`` frames (as a tracker would)."""
    out = []
    for boxes in video.identities().values():
        boxes = boxes[::every]
        out.append(track_record(yid, boxes[0].class_name, [b.time for b in boxes],
                                [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in (b.xyxy for b in boxes)],
                                (video.height, video.width)))
    return out


def write_meta(db: Path, dataset: str, yid: str, records: list) -> None:
    """``records`` may hold raw dicts (records the schema would refuse)."""
    meta = DatasetLayout(db).tracks_meta(dataset, yid)
    if all(isinstance(r, TrackRecord) for r in records):
        atomic_write_bytes(meta, records_to_jsonl_gz_bytes(records))
    else:
        lines = [(r.to_json() if isinstance(r, TrackRecord) else json.dumps(r)) + "\n" for r in records]
        atomic_write_bytes(meta, gzip.compress("".join(lines).encode()))


def setup_db(db: Path, dataset: str, video: Path, records: list, yid: str) -> Path:
    """Put the video and its metadata where download_videos / parse_tracks would; returns the id list."""
    target = DatasetLayout(db).video_mp4(yid)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(video, target)
    write_meta(db, dataset, yid, records)
    ids = db.parent / f"{db.name}-yids.txt"
    ids.write_text(yid + "\n")
    return ids
