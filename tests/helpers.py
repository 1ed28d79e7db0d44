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
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import curate_db
from tests.http_server import FaultServer
from utils.clips.released import DOWNLOAD_TRACKS_STAGE
from utils.clips.stage import EXTRACT_TRACKS_STAGE
from utils.core.io import atomic_write_bytes
from utils.core.layout import DatasetLayout
from utils.core.video import read_frames
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.detect.tracking import iou_matrix
from utils.export.stage import EXPORT_TRACKS_STAGE
from utils.ingest.stage import BLUR_FACES_STAGE, DOWNLOAD_VIDEOS_STAGE
from utils.metrics.stage import VISUAL_METRICS_STAGE
from utils.records.track_files import read_records, records_to_jsonl_gz_bytes
from utils.records.tracks import TrackRecord, compute_tid, track_filename
from utils.relabel.stage import RELABEL_TRACKS_STAGE
from utils.runner.cli import main
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
# Small lists with the assets' shape, written for the tests (tests/data/asset-stand-ins/README.md).
ASSET_STAND_INS = REPO / "tests" / "data" / "asset-stand-ins"


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


class Stopwatch:
    """The seconds the calling thread spent blocked (waiting on the network, in sleeps, back-offs
    and timeouts) since it was made: wall-clock time minus the time it ran on a CPU or waited in
    the run queue for one (Linux ``/proc``). What a "fails within seconds, not minutes" promise is
    about, whatever the machine's load: CPU work stretches on a loaded machine and is not counted.
    As a context manager, ``waited`` is frozen when the block ends. For a command, see
    :func:`run_cli_blocked`."""

    def __init__(self) -> None:
        self._path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._start = self._now()
        self._frozen: float | None = None

    def _now(self) -> float:
        from tests.blocked_time import schedstat

        ran, queued = schedstat(self._path)
        return time.monotonic() - ran - queued

    @property
    def waited(self) -> float:
        return self._frozen if self._frozen is not None else max(0.0, self._now() - self._start)

    def __enter__(self) -> Stopwatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._frozen = self.waited


def run_cli_blocked(*args: str | os.PathLike, **kw) -> tuple[subprocess.CompletedProcess, float]:
    """:func:`run_cli`, and the seconds the command's main thread spent blocked
    (tests/blocked_time.py; infinite when it did not say)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "blocked"
        proc = run_cli("-m", "tests.blocked_time", report, *args, **kw)
        return proc, float(report.read_text()) if report.is_file() else float("inf")


def journal(db: Path, job_key: str, event: str | None = None) -> list[dict]:
    """Records of a stage's journals (``logs/<job_key>``, e.g. ``extract_tracks-<dataset>``), of one event or all."""
    return [r for r in read_journals(db / "logs" / job_key) if event is None or r["event"] == event]


# ------------------------------------------------------------- a video with track metadata


def track_record(yid: str, label: str, ts, boxes_xywh, video_size=(240, 320),
                 label_id: int | None = None) -> TrackRecord:
    """A record of ``label`` (with ``top10_lbl``/``top10_desc`` when ``label_id`` is given)."""
    track_ts = [round(float(t), 4) for t in ts]
    track_bbox = [[round(float(v), 2) for v in b] for b in boxes_xywh]
    tid = compute_tid(yid, track_ts, track_bbox)
    labels = {} if label_id is None else {"top10_desc": [label], "top10_lbl": [label_id]}
    return TrackRecord(yid=yid, tid=tid, fn=track_filename(yid, label, tid), track_ts=track_ts,
                       track_bbox=track_bbox, video_size=list(video_size), **labels)


def gt_records(video: SyntheticVideo, yid: str, every: int = 2,
               label_ids: dict[str, int] | None = None) -> list[TrackRecord]:
    """One record per ground-truth object, sampled every ``every`` frames (as a tracker would);
    with ``label_ids``, labelled with the object's class id."""
    out = []
    for boxes in video.identities().values():
        boxes = boxes[::every]
        name = boxes[0].class_name
        out.append(track_record(yid, name, [b.time for b in boxes],
                                [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in (b.xyxy for b in boxes)],
                                (video.height, video.width), None if label_ids is None else label_ids[name]))
    return out


def write_meta(db: Path, yid: str, records: list, dataset: str) -> None:
    """``records`` may hold raw dicts (records the schema would refuse)."""
    meta = DatasetLayout(db).tracks_meta(dataset, yid)
    if all(isinstance(r, TrackRecord) for r in records):
        atomic_write_bytes(meta, records_to_jsonl_gz_bytes(records))
    else:
        lines = [(r.to_json() if isinstance(r, TrackRecord) else json.dumps(r)) + "\n" for r in records]
        atomic_write_bytes(meta, gzip.compress("".join(lines).encode()))


def setup_db(db: Path, video: Path, records: list, yid: str, dataset: str) -> Path:
    """Put the video and its metadata where download_videos / parse_tracks would; returns the id list."""
    target = DatasetLayout(db).video_mp4(yid)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(video, target)
    write_meta(db, yid, records, dataset)
    ids = db.parent / f"{db.name}-yids.txt"
    ids.write_text(yid + "\n")
    return ids



def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of the luma of two RGB images. Luma, as usual for video: H.264 clips are
    yuv420p, whose halved chroma alone caps RGB PSNR near 25 dB on the fixture's saturated
    stripes, whatever the cutting."""
    ya, yb = (cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2YUV)[..., 0].astype(np.float64) for x in (a, b))
    mse = np.mean((ya - yb) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def decoded(path: Path) -> list[np.ndarray]:
    """Every frame of a video, RGB."""
    return [f.image for f in read_frames(path)]


# ------------------------------------------------------------- a curation dataset (curate_db.py)

CURATE_DS = "TestDS"
CURATE_INDEX = f"tracks_subsets/{CURATE_DS}/{CURATE_DS}-Full.jsonl.gzip"
CURATE_CLASSES = ["cat", "dog", "horse", "aerosol can", "bird", "zebra"]


def yid_of(i: int) -> str:
    return f"v{i:05d}_xy-Z"  # 11 characters


def curation_record(yid: str, cls: int, score: float, k: int, *, t0: float = 0.0, n: int = 6,
                box: tuple[float, float, float, float] | None = None) -> TrackRecord:
    """A valid record of class ``CURATE_CLASSES[cls]`` with top-1 weighted logit ``score``."""
    ts = [round(t0 + i / 16, 4) for i in range(n)]
    x, y, w, h = box or (10.0 * (k % 7), 5.0 * (k % 5), 40.0 + k % 3, 30.0)
    bbox = [[round(x + i * 0.5, 2), y, w, h] for i in range(n)]
    tid = compute_tid(yid, ts, bbox)
    others = [(cls + d) % len(CURATE_CLASSES) for d in (1, 2)]
    return TrackRecord(
        yid=yid, tid=tid, fn=track_filename(yid, CURATE_CLASSES[cls], tid), track_ts=ts, track_bbox=bbox,
        video_size=[360, 640], top10_lbl=[cls, *others], top10_desc=[CURATE_CLASSES[c] for c in (cls, *others)],
        top10_logit_mu=[round(score + 1, 5), 0.0, -1.0], top10_logit_std=[0.1, 0.1, 0.1],
        top10_wlogit_mu=[round(score, 5), -2.0, -3.0], top10_wlogit_std=[0.1, 0.1, 0.1],
        scores=[0.9] * n, detector="test",
    )


def build_curation_db(base: Path, videos: int = 40, per_video: int = 6, seed: int = 0) -> list[TrackRecord]:
    """Clean metadata: ``videos`` videos, class sizes differ (class c has about c+1 shares)."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, len(CURATE_CLASSES) + 1, dtype=float)
    records = []
    for v in range(videos):
        yid = yid_of(v)
        recs = [curation_record(yid, int(rng.choice(len(CURATE_CLASSES), p=weights / weights.sum())),
                            float(np.round(rng.normal(), 4)), v * per_video + k, t0=k * 2.0)
                for k in range(per_video)]
        write_meta(base, yid, recs, CURATE_DS)
        records.extend(recs)
    return records


def curate(*args: str | os.PathLike) -> int:
    """curate_db.py in this process."""
    return curate_db.main([*map(str, args)])


def index_curation_db(base: Path, *extra: str) -> int:
    return curate("--action", "index", "--base_dir", base, "--dataset_name", CURATE_DS, "--index_file", CURATE_INDEX,
               "--num_workers", "1", *extra)


def sample_subsets(base: Path, action: str, verified: Path, *extra: str) -> int:
    return curate("--action", action, "--base_dir", base, "--index_file", CURATE_INDEX, "--verified_list", verified,
               "--no_plots", *extra)


def subset_records(base: Path, name: str) -> list[TrackRecord]:
    return list(read_records(DatasetLayout(base).subset_file(name)))


# every sharded stage
STAGES = [DOWNLOAD_VIDEOS_STAGE, BLUR_FACES_STAGE, PARSE_TRACKS_STAGE, EXTRACT_TRACKS_STAGE, VISUAL_METRICS_STAGE,
          DOWNLOAD_TRACKS_STAGE, EXPORT_TRACKS_STAGE, RELABEL_TRACKS_STAGE]


# ------------------------------------------------------------- damaged videos


def faststart_copy(source: Path, target: Path) -> Path:
    """``source`` remuxed (no re-encoding) as a faststart mp4: the index (moov) before the data."""
    with av.open(str(source)) as src, av.open(str(target), "w", format="mp4",
                                              options={"movflags": "faststart"}) as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            packet.stream = out
            dst.mux(packet)
    return target


def cut_in_data(source: Path, target: Path, keep: float = 0.5) -> Path:
    """A faststart copy of ``source`` holding only the first ``keep`` of its frames' packets, cut
    where the next packet starts: the index is intact, what follows is missing. (A cut inside a
    packet reads the same with the threaded decoding the readers use.)"""
    whole = faststart_copy(source, target.with_name(target.stem + ".whole.mp4"))
    with av.open(str(whole)) as container:
        starts = [p.pos for p in container.demux(container.streams.video[0]) if p.dts is not None]
    data = whole.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat") < starts[0], "the index must come first"
    target.write_bytes(data[: starts[int(len(starts) * keep)]])
    return target


# ------------------------------------------------------------- a parse dataset (parse_tracks.py)

PARSE_YID = "synthVideo1"
PARSE_JOB = "parse_tracks-TrackVerseLVIS"
FIXTURE = "tests.tiny_models:FixtureDetector"
PARSE_PROMPTS = [
    "cat (also known as kitty)",
    "cup",
    "rocket",
    "person (also known as human, people)",
    "table",
]


def add_video(db: Path, yid: str, video: Path | None, segments: list[tuple[float, float]] | None) -> None:
    """Put a video and its segment file (None: no file) where download_videos.py would."""
    layout = DatasetLayout(db)
    if video is not None:
        target = layout.video_mp4(yid)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, target)
    if segments is not None:
        segm = layout.video_segments(yid)
        segm.parent.mkdir(parents=True, exist_ok=True)
        segm.write_text("".join(f"{a},{b}\n" for a, b in segments))


def item_list(tmp_path: Path, yids: list[str]) -> Path:
    path = tmp_path / "yids.txt"
    path.write_text("\n".join(yids) + "\n")
    return path


def parse_args(db: Path, yids: Path, prompts: Path, *extra: str, detector: str = FIXTURE) -> list[str]:
    return [
        "--base_dir", str(db), "--yid_index_fn", str(yids), "--class_prompts", str(prompts),
        "--detector", detector, *extra,
    ]


def meta_path(db: Path, yid: str = PARSE_YID) -> Path:
    return DatasetLayout(db).tracks_meta("TrackVerseLVIS", yid)


def match_to_ground_truth(record: TrackRecord, video: SyntheticVideo) -> tuple[int, float]:
    """(identity most boxes of the record match, mean IoU with that identity's boxes)."""
    votes: dict[int, list[float]] = {}
    for t, box in zip(record.track_ts, record.bboxes_xyxy(), strict=True):
        truth = video.boxes_at(t)
        assert truth, f"track box at {t} s where the video has no object"
        ious = iou_matrix(box[None], np.array([b.xyxy for b in truth]))[0]
        best = int(np.argmax(ious))
        votes.setdefault(truth[best].identity, []).append(float(ious[best]))
    identity = max(votes, key=lambda k: len(votes[k]))
    per_frame = votes[identity] + [0.0] * sum(len(v) for k, v in votes.items() if k != identity)
    return identity, float(np.mean(per_frame))


# ------------------------------------------------------------- exports (export_tracks.py)


def write_records_file(db: Path, video: Path, lines: list, yid: str) -> Path:
    """The source video in place and a records file (gzip JSON lines; raw strings are written as they are)."""
    target = DatasetLayout(db).video_mp4(yid)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(video, target)
    path = db / "tracks_subsets" / "subset.jsonl.gzip"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((x.to_json() if isinstance(x, TrackRecord) else x if isinstance(x, str) else json.dumps(x)) + "\n"
                   for x in lines)
    path.write_bytes(gzip.compress(text.encode()))
    return path


def export(db: Path, records: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(EXPORT_TRACKS_STAGE, ["--base_dir", str(db), "--records", str(records), "--format", fmt,
                                      "--out_dir", str(out), *extra])


# ------------------------------------------------------------- released subsets (download_tracks.py)

REBUILD_FAST = ["--backoff_base", "0.02", "--backoff_max", "0.1", "--socket_timeout", "5", "--download_retries", "1"]
REBUILD_TEMPLATE = "/v/{yid}.mp4"
RELEASED_SUBSET = "TrackVerse-Test.jsonl.gzip"


def rebuild_subset(tmp_path: Path, server: FaultServer, *args: str, subset: Path | None = None, cli: bool = False):
    """download_tracks.py over ``subset`` (default <tmp_path>/RELEASED_SUBSET), videos from ``server``."""
    argv = ["--base_dir", str(tmp_path / "db"), "--db_meta_file", str(subset or tmp_path / RELEASED_SUBSET),
            "--url_template", server.url_template(REBUILD_TEMPLATE), *REBUILD_FAST, *args]
    if cli:
        return run_cli("download_tracks.py", *argv)
    return main(DOWNLOAD_TRACKS_STAGE, argv)


def rebuilt_clip(tmp_path: Path, fn: str) -> Path:
    return DatasetLayout(tmp_path / "db").track_mp4(None, fn)
