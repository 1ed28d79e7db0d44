"""Ctrl-C and SIGTERM end a run with one line and the shell's exit code (130 / 143), finished work
kept, nothing half-written left, the journal saying the run was interrupted; the same command run
again finishes the rest. Checked on real subprocesses of two stages: extract_tracks.py interrupted by
SIGINT sent to its whole process group (as a terminal's Ctrl-C is, its clip workers included), and
download_videos.py by SIGTERM sent to the process alone (as `kill` or a scheduler does), in the middle
of a download."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO, gt_records, journal, run_cli, setup_db
from tests.http_server import Fault, FaultServer
from utils.core.errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM
from utils.core.io import is_temp_file
from utils.core.layout import DatasetLayout
from utils.core.video import probe_video

DATASET = "Interrupts"
YID = "interrupt01"


def start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """The command in its own session (a signal to its group reaches nothing else); stderr to a file."""
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=f,
                                start_new_session=True)
    return proc, err


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp_file(p)]


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line names ``text`` (a worker left behind would)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def assert_one_line_interruption(err: Path, signal_name: str) -> str:
    lines = [line for line in err.read_text().splitlines() if line.strip()]
    assert "Traceback" not in err.read_text(), err.read_text()
    last = lines[-1]
    assert last.startswith(f"interrupted by {signal_name}: ["), last
    assert last.endswith("re-run the same command to resume"), last
    return last


def test_ctrl_c_in_extract_tracks_then_rerun_finishes(tmp_path, long_video):
    db = tmp_path / "db"
    records = gt_records(long_video, YID)
    ids = setup_db(db, long_video.path, records, YID, DATASET)
    args = ["extract_tracks.py", "--base_dir", str(db), "--yid_index_fn", str(ids), "--dataset_name", DATASET,
            "--num_workers", "2"]
    clips_dir = DatasetLayout(db).track_mp4(DATASET, f"{YID[:2]}/x.mp4").parent

    def first_clip() -> bool:
        names = os.listdir(clips_dir) if clips_dir.is_dir() else []
        return any(n.endswith(".mp4") and not n.startswith(".") for n in names)

    proc, err = start(args, tmp_path)
    try:
        wait_until(first_clip, proc, "first clip")
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert proc.wait(timeout=60) == EXIT_SIGINT, err.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    last = assert_one_line_interruption(err, "SIGINT")
    assert f"[extract_tracks-{DATASET} rank 0/1] 1 items: 0 done" in last
    assert not temporaries(db) and not processes_mentioning(str(db))
    finals = [p for p in clips_dir.iterdir() if p.suffix == ".mp4"]
    assert 0 < len(finals) < len(records)
    assert all(probe_video(p).num_frames > 0 for p in finals)  # every clip kept is whole
    assert not DatasetLayout(db).tracks_done_marker(DATASET, YID).exists()
    events = [r["event"] for r in journal(db, f"extract_tracks-{DATASET}")]
    assert events[-2:] == ["interrupted", "summary"] and "failed" not in events

    again = run_cli(*args)
    assert again.returncode == EXIT_OK, again.stderr
    assert "1 done" in again.stderr
    assert sorted(p.name for p in clips_dir.iterdir()) == sorted(
        [Path(r.fn).name for r in records] + [f"{YID}.done.json"])


def test_sigterm_mid_download_then_rerun_finishes(tmp_path, synthetic_video, long_video):
    first, second = "interrupt01", "interrupt02"
    (tmp_path / "ids.txt").write_text(f"{first}\n{second}\n")
    db = tmp_path / "db"
    with FaultServer() as server:
        server.add(f"/v/{first}.mp4", synthetic_video.path)
        server.add(f"/v/{second}.mp4", long_video.path)
        server.fail(f"/v/{second}.mp4", Fault.stall(600, after=64 * 1024, times=None))  # hangs mid-body until interrupted
        args = ["download_videos.py", "--base_dir", str(db), "--yid_index_fn", str(tmp_path / "ids.txt"),
                "--url_template", server.url_template("/v/{yid}.mp4"), "--skip_cartoon_filter",
                "--skip_aesthetics_filter", "--socket_timeout", "600"]
        layout = DatasetLayout(db)
        proc, err = start(args, tmp_path)
        try:
            wait_until(lambda: bool(server.requests_for(f"/v/{second}.mp4")) and bool(temporaries(db)), proc,
                       "second download under way")
            proc.send_signal(signal.SIGTERM)  # the process alone, as kill(1) or a scheduler
            assert proc.wait(timeout=60) == EXIT_SIGTERM, err.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        last = assert_one_line_interruption(err, "SIGTERM")
        assert "[download_videos rank 0/1] 2 items: 1 done, 0 skipped (already done), 0 failed" in last
        assert layout.video_mp4(first).exists() and not layout.video_mp4(second).exists()
        assert not temporaries(db)
        events = [r["event"] for r in journal(db, "download_videos")]
        assert events[-2:] == ["interrupted", "summary"] and "failed" not in events

        server.clear_faults(f"/v/{second}.mp4")
        again = run_cli(*args)
    assert again.returncode == EXIT_OK, again.stderr
    assert "1 done, 1 skipped (already done), 0 failed" in again.stderr
    assert layout.video_mp4(second).read_bytes() == long_video.path.read_bytes()
    assert not temporaries(db)
