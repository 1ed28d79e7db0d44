"""extract_tracks.py's worker processes (utils.clips.encode): clips are resized and encoded on
worker processes; killing the parent, a worker dying, or the parent failing mid-video leaves no
process and no temporary file behind, and never a partial clip under a final name.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import utils.clips.cut as clips
from tests.helpers import REPO, decoded, gt_records, setup_db
from utils.clips.encode import ClipSpec, ClipWorkerError, ClipWorkers
from utils.clips.geometry import plan_clip
from utils.core.io import is_temp_file
from utils.core.layout import DatasetLayout
from utils.core.video import ColorTags, Yuv420Image, probe_video
from utils.testing.synthetic import ObjectSpec, SceneSpec, SyntheticVideo, make_synthetic_video

YID = "synthVideo1"
DATASET = "TestSet"


@pytest.fixture(scope="module")
def busy_video(tmp_path_factory) -> SyntheticVideo:
    """30 s, 640x360, 6 large objects on screen the whole time: long enough to kill mid-way."""
    objects = tuple(
        ObjectSpec(name, (180 + 10 * k, 150 + 8 * k), (10 + 40 * k, 10 + 15 * k), (400 - 50 * k, 180 - 20 * k))
        for k, name in enumerate(["cat", "cup", "rocket", "person", "dog", "car"])
    )
    return make_synthetic_video(tmp_path_factory.mktemp("busy") / "busy.mp4", [SceneSpec(30.0, objects)],
                                width=640, height=360, fps=25.0)


def processes_with(token: str) -> list[int]:
    """Pids of the live processes whose environment holds ``token`` (a run and everything it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "environ").read_bytes():
                    status = (entry / "status").read_text()
                    if "State:\tZ" not in status:  # a zombie is gone, waiting for its parent to reap it
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_temp_file(p)) if folder.is_dir() else []


def test_sigkill_of_the_parent_leaves_no_worker_and_no_temporary(tmp_path, busy_video):
    """Killed (SIGKILL) while its workers encode, the run leaves no process behind (workers,
    fork server) and no temporary file: each worker sees its pipe close, drops its open clips
    and exits. Clips on disk are whole."""
    records = gt_records(busy_video, YID, every=1)
    db = tmp_path / "db"
    ids = setup_db(db, busy_video.path, records, YID, DATASET)
    token = f"EXTRACT_TEST_{uuid.uuid4().hex}"
    args = ["extract_tracks.py", "--base_dir", str(db), "--yid_index_fn", str(ids), "--dataset_name", DATASET,
            "--num_workers", "2"]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, token: "1"})
    clips_dir = DatasetLayout(db).track_mp4(DATASET, f"{YID[:2]}/x.mp4").parent
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None and not temporaries(clips_dir):
            time.sleep(0.005)
        assert proc.poll() is None, "the extraction finished before it could be killed"
        time.sleep(0.3)  # well inside the clips: every worker busy encoding
        assert len(processes_with(token)) >= 3  # the parent, its fork server, the workers
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and processes_with(token):
        time.sleep(0.05)
    assert processes_with(token) == [], "processes outlived the killed run"
    assert temporaries(clips_dir) == []
    for path in clips_dir.iterdir():  # finished clips are whole
        assert probe_video(path).num_frames == len(decoded(path)) > 0
    assert not DatasetLayout(db).tracks_done_marker(DATASET, YID).exists()


def test_a_failing_parent_stops_its_workers_and_drops_the_open_clips(tmp_path, busy_video):
    """An exception in the decoding process (here from the progress callback) drops every
    open clip, stops the workers and propagates."""
    records = gt_records(busy_video, YID)
    info = probe_video(busy_video.path)
    selection = clips.select_tracks(records, lambda r: tmp_path / r.fn)
    planned = clips.plan_tasks(selection.tracks, (info.height, info.width), info.duration)

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        clips.extract_clips(busy_video.path, planned.tasks, info.fps, workers=2, on_frames=stop)
    assert multiprocessing.active_children() == []
    folder = (tmp_path / records[0].fn).parent
    assert list(folder.iterdir()) == []  # every clip was open: none finished, no temporary left


def test_a_dead_worker_fails_the_video_with_a_clear_error(tmp_path, busy_video):
    """A worker killed from outside (the kernel's OOM killer) fails the video with a clear error,
    not a hang; the parent removes its temporaries, the other worker drops its own and stops."""
    info = probe_video(busy_video.path)
    rec = gt_records(busy_video, YID)[0]
    plan = plan_clip(rec.track_ts, rec.track_bbox, (info.height, info.width))
    frame_hw = (info.height, info.width)
    workers = ClipWorkers(2, frame_hw)
    image = Yuv420Image(np.zeros(frame_hw, np.uint8), *(np.zeros((frame_hw[0] // 2, frame_hw[1] // 2), np.uint8),) * 2)
    box = plan.box_at(plan.t_start)
    try:
        for key in (0, 1):
            workers.open(key, ClipSpec(tmp_path / f"{key}.mp4", plan.out_size, info.fps, ColorTags(), {}), (1.0, 10.0), 0.0)
        workers.add_frame(image, [(0, box), (1, box)])
        deadline = time.time() + 10
        while len([p for p in tmp_path.iterdir() if is_temp_file(p)]) < 2 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(workers.pids[0], signal.SIGKILL)
        with pytest.raises(ClipWorkerError, match=r"a clip worker process stopped \(killed by signal 9"):
            for _ in range(20):  # the ring fills up: waiting for the dead worker finds its pipe closed
                workers.add_frame(image, [(0, box), (1, box)])
        workers.abort()
    finally:
        workers.shutdown()
    assert list(tmp_path.iterdir()) == []
