"""gdpr_blur_faces: a real face (skimage's astronaut) is blurred in place, atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from tests.helpers import REPO
from utils.core.io import file_sha256
from utils.core.layout import DatasetLayout
from utils.core.video import VideoWriter, read_frames
from utils.ingest.anonymize import FaceBlurrer

YID = "facevideo01"


def make_face_video(path: Path, seconds: float = 2.0, fps: float = 15.0) -> None:
    """The astronaut photo (a real face) drifting over a textured background."""
    rng = np.random.default_rng(0)
    background = cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (320, 240),
                            interpolation=cv2.INTER_NEAREST)
    face = cv2.resize(skimage.data.astronaut(), (200, 200), interpolation=cv2.INTER_AREA)
    with VideoWriter(path, 320, 240, fps, keyframe_interval=1.0, crf=16) as writer:
        for i in range(int(seconds * fps)):
            frame = background.copy()
            x = 100 + int(10 * np.sin(i / 5))
            frame[20:220, x:x + 200] = face
            writer.write(frame)


def laplacian_var(image: np.ndarray, box) -> float:
    x0, y0, x1, y1 = (int(v) for v in box)
    gray = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def run_blur(base_dir: Path, *args: str, wait: bool = True):
    env = dict(os.environ, PYTHON=sys.executable, TRACKVERSE_DB=str(base_dir))
    env.pop("SLURM_ARRAY_TASK_ID", None)
    cmd = [str(REPO / "gdpr_blur_faces.sh"), "--execution_provider", "cpu", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def face_db(tmp_path):
    base = tmp_path / "my db's \"quoted\" dir"  # quoting-safe for any file name
    video = DatasetLayout(base).video_mp4(YID)
    video.parent.mkdir(parents=True)
    make_face_video(video)
    return base


def test_faces_are_blurred_in_place_and_recorded(face_db):
    layout = DatasetLayout(face_db)
    video = layout.video_mp4(YID)
    before = [f.image for f in read_frames(video)]
    blurrer = FaceBlurrer("cpu")
    face_boxes = [blurrer.detect(img) for img in before]
    assert all(len(b) == 1 for b in face_boxes)  # CenterFace sees the astronaut in every frame

    proc = run_blur(face_db)
    assert proc.returncode == 0, proc.stderr
    assert "CPUExecutionProvider" in proc.stderr  # the provider is stated

    record = json.loads(layout.video_sidecar(YID, "blurred").read_text())
    assert record["frames"] == len(before) == 30
    assert record["frames_with_faces"] == 30 and record["provider"] == "CPUExecutionProvider"

    after = [f.image for f in read_frames(video)]
    assert len(after) == len(before)
    control = (0, 225, 90, 240)  # a strip of background the face never covers
    for img_before, img_after, boxes in zip(before, after, face_boxes, strict=True):
        face = boxes[0][:4]
        assert laplacian_var(img_after, face) * 10 <= laplacian_var(img_before, face)
        assert laplacian_var(img_after, control) == pytest.approx(laplacian_var(img_before, control), rel=0.05)
        assert len(blurrer.detect(img_after)) == 0  # no face found any more

    again = run_blur(face_db)
    assert again.returncode == 0
    assert "0 done, 1 skipped" in again.stderr
    assert file_sha256(video) == record["sha256"]


def test_kill_mid_video_keeps_the_original_and_rerun_completes(tmp_path):
    base = tmp_path / "db"
    video = DatasetLayout(base).video_mp4(YID)
    video.parent.mkdir(parents=True)
    make_face_video(video, seconds=20)
    original = file_sha256(video)

    proc = run_blur(base, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(f".{YID}.mp4.tmp-") for p in video.parent.iterdir()):
        time.sleep(0.01)
    time.sleep(0.5)  # well inside the video
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert file_sha256(video) == original
    assert not DatasetLayout(base).video_sidecar(YID, "blurred").exists()

    rerun = run_blur(base)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 done" in rerun.stderr
    assert file_sha256(video) != original
    assert sorted(p.name for p in video.parent.iterdir()) == [f"{YID}.blurred.json", f"{YID}.mp4"]


def test_keep_original_and_corrupt_video(tmp_path):
    base = tmp_path / "db"
    layout = DatasetLayout(base)
    good = layout.video_mp4(YID)
    good.parent.mkdir(parents=True)
    make_face_video(good, seconds=0.5)
    bad = layout.video_mp4("corrupt0001")
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x00" * 1000)
    proc = run_blur(base, "--keep_original")
    assert proc.returncode == 1  # one item failed, the other done
    assert "corrupt0001" in proc.stderr
    assert good.with_name(f"{YID}.orig.mp4").exists()
    assert layout.video_sidecar(YID, "blurred").exists()


def test_done_check_reads_no_video_content_unless_verifying(face_db, monkeypatch):
    """A re-run (or a --slurm submission) decides "already blurred" from the size, time and inode
    recorded at commit: no video is read. A copied file (same size, new inode) or --verify is
    checked by its hash; a changed file is never taken as done."""
    import shutil

    import utils.ingest.anonymize as anonymize

    assert run_blur(face_db).returncode == 0
    layout = DatasetLayout(face_db)
    video, sidecar = layout.video_mp4(YID), layout.video_sidecar(YID, "blurred")
    hashed = []
    real_hash = anonymize.file_sha256
    monkeypatch.setattr(anonymize, "file_sha256", lambda path: hashed.append(path) or real_hash(path))

    assert anonymize.is_blurred(video, sidecar) and hashed == []
    assert anonymize.is_blurred(video, sidecar, verify=True) and len(hashed) == 1

    copy = video.with_name("copy.mp4")
    shutil.copy(video, copy)
    os.replace(copy, video)  # same bytes, new inode and time: verified by hash, still done
    assert anonymize.is_blurred(video, sidecar) and len(hashed) == 2

    data = bytearray(video.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    video.write_bytes(bytes(data))
    assert not anonymize.is_blurred(video, sidecar)


# ---------------------------------------------------------------------------- --keep_original

KILLED_MID_COPY = r"""
import os, shutil, signal, sys

from utils.ingest.stage import BLUR_FACES_STAGE
from utils.runner.cli import main


def killed_halfway(src, dst, *args, **kwargs):  # SIGKILL with half of the original copied
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


shutil.copy2 = shutil.copyfile = shutil.copy = killed_halfway
sys.exit(main(BLUR_FACES_STAGE, sys.argv[1:]))
"""


def blur_in_process(base: Path, *args: str) -> int:
    from utils.ingest.stage import BLUR_FACES_STAGE
    from utils.runner.cli import main

    return main(BLUR_FACES_STAGE, ["--base_dir", str(base), "--execution_provider", "cpu", *args])


def test_keep_original_copy_killed_midway_leaves_no_torn_original(tmp_path):
    """Issue 14, item 7: the copy of the original was not atomic, so a kill during it left a
    torn ``.orig.mp4`` that every later run kept. Now nothing lands under that name until the
    copy is whole, and the next run makes it."""
    base = tmp_path / "db"
    video = DatasetLayout(base).video_mp4(YID)
    video.parent.mkdir(parents=True)
    make_face_video(video, seconds=0.5)
    original = file_sha256(video)
    kept = video.with_name(f"{YID}.orig.mp4")

    proc = subprocess.run([sys.executable, "-c", KILLED_MID_COPY, "--base_dir", str(base), "--execution_provider",
                           "cpu", "--keep_original"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not kept.exists()  # at most a temporary, never the final name
    assert file_sha256(video) == original and not DatasetLayout(base).video_sidecar(YID, "blurred").exists()

    assert blur_in_process(base, "--keep_original") == 0
    assert file_sha256(kept) == original and file_sha256(video) != original
    assert sorted(p.name for p in video.parent.iterdir()) == [f"{YID}.blurred.json", f"{YID}.mp4", f"{YID}.orig.mp4"]


def test_a_torn_original_from_an_older_run_is_copied_again_and_a_whole_one_kept(tmp_path):
    """A partial ``.orig.mp4`` (a prefix of the video, what a killed non-atomic copy left) is
    made again; a whole one is never overwritten, even when the video is blurred a second time."""
    base = tmp_path / "db"
    layout = DatasetLayout(base)
    video = layout.video_mp4(YID)
    video.parent.mkdir(parents=True)
    make_face_video(video, seconds=0.5)
    original = file_sha256(video)
    kept = video.with_name(f"{YID}.orig.mp4")
    kept.write_bytes(video.read_bytes()[:1000])

    assert blur_in_process(base, "--keep_original") == 0
    assert file_sha256(kept) == original

    layout.video_sidecar(YID, "blurred").unlink()  # blurred again: the .orig stays the original
    assert blur_in_process(base, "--keep_original") == 0
    assert file_sha256(kept) == original and file_sha256(video) != original


# ------------------------------------------------------- the shell wrapper finds its interpreter


def _bin_with(tmp_path: Path, **scripts: str) -> Path:
    """A PATH folder holding bash (for the wrapper's shebang) and the given scripts, no python."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    bash = Path("/bin/bash") if Path("/bin/bash").exists() else Path("/usr/bin/bash")
    (folder / "bash").symlink_to(bash)
    for name, text in scripts.items():
        (folder / name).write_text(f"#!{bash}\n{text}\n")
        (folder / name).chmod(0o755)
    return folder


def test_wrapper_runs_with_no_python_on_path_and_no_active_venv(tmp_path):
    """./gdpr_blur_faces.sh as a fresh shell runs it: the venv not activated, no `python`."""
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv beside the project: the README's install makes it "
                    "(`python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt`)")
    env = {"PATH": str(_bin_with(tmp_path)), "HOME": str(tmp_path)}
    proc = subprocess.run([str(REPO / "gdpr_blur_faces.sh"), "--help"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--execution_provider" in proc.stdout
    (tmp_path / "db" / "videos_mp4").mkdir(parents=True)
    ranked = subprocess.run([str(REPO / "gdpr_blur_faces.sh"), "--base_dir", str(tmp_path / "db")],
                            env={**env, "WORLD_SIZE": "2", "RANK": "5"}, capture_output=True, text=True,
                            timeout=120, check=False)
    assert ranked.returncode == 2 and "--rank 5 is outside [0, --world_size 2)" in ranked.stderr  # read in Python


def test_wrapper_prefers_the_project_venv_then_PYTHON_then_python3(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    wrapper = project / "gdpr_blur_faces.sh"
    wrapper.write_bytes((REPO / "gdpr_blur_faces.sh").read_bytes())
    wrapper.chmod(0o755)
    (project / "gdpr_blur_faces.py").write_text("import sys\nprint('ENTRY', sys.argv[1:])\n")
    path = _bin_with(tmp_path, python3=f'echo "python3 $*"; exec {sys.executable} "$@"')

    def run(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(wrapper), "--x", "a b"], env={"PATH": str(path), **env}, capture_output=True,
                              text=True, timeout=60, check=False)

    fallback = run()
    assert fallback.returncode == 0 and fallback.stdout.startswith(f"python3 {project}/gdpr_blur_faces.py --x a b")
    assert "ENTRY ['--x', 'a b']" in fallback.stdout
    chosen = run(PYTHON=sys.executable)
    assert chosen.returncode == 0 and chosen.stdout.startswith("ENTRY") and "python3" not in chosen.stdout
    venv_python = project / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    (path / "python3").unlink()
    assert run(PYTHON="/nonexistent/python").stdout.startswith("ENTRY")  # the project's venv first
    venv_python.unlink()
    missing = run()
    assert missing.returncode == 2 and "no Python interpreter" in missing.stderr and "set PYTHON" in missing.stderr


def test_entry_reads_world_size_and_rank_from_the_environment_unless_flags_are_given(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gdpr_entry", REPO / "gdpr_blur_faces.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert entry.rank_from_environment([]) == ["--world_size", "4", "--rank", "3"]
    assert entry.rank_from_environment(["--rank=1"]) == ["--world_size", "4"]
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert entry.rank_from_environment(["--verify"]) == []
