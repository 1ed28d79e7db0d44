"""The pipelined parse path (``--decode_workers N``, utils/detect/pipeline.py) against the plain
one: the same records for the same detector and inputs, batches that fill across segment and
video boundaries while every segment keeps its own tracker, and decode workers whose failures
stay the failure of their video (no hang, no stuck or orphaned process)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, cut_in_data
from tests.tiny_models import GROUND_TRUTH_ENV, FixtureDetector, save_tiny_owlv2, write_ground_truth
from utils.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, EXIT_USAGE, ItemError
from utils.core.layout import DatasetLayout
from utils.detect.parse import ParseConfig, parse_video
from utils.detect.pipeline import ParsePipeline
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.runner.cli import main
from utils.runner.journal import read_journals
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video

NAMES = ["cat", "cup", "rocket", "person", "table"]
FIXTURE = "tests.tiny_models:FixtureDetector"
YIDS = ["pipeVideo01", "pipeVideo02", "pipeVideo03"]


class RecordingDetector(FixtureDetector):
    """The fixture detector, remembering the timestamps of every batch it was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[float]] = []

    def detect(self, frames, timestamps=None):
        self.batches.append([float(t) for t in timestamps])
        return super().detect(frames, timestamps)


def segment_lists(video) -> list[list[tuple[float, float]]]:
    """Each test video's segments: the scenes; a scene split in two (a cut inside a track); and
    scenes with a segment past the video's end (no frames at all)."""
    spans = video.scene_spans()
    (a, b), rest = spans[0], spans[1:]
    return [spans, [(a, 2.5), (2.5, b), *rest], [*spans, (video.duration + 1.0, video.duration + 3.0)]]


def crossing_batches(batches: list[list[float]], cuts: list[float]) -> int:
    """Batches holding frames of two segments (times on both sides of a cut) or two videos
    (times going back)."""
    def crosses(times: list[float]) -> bool:
        back = any(b < a for a, b in zip(times, times[1:], strict=False))
        return back or any(min(times) < cut <= max(times) for cut in cuts)
    return sum(crosses(times) for times in batches)


def test_pipeline_records_match_the_plain_path_with_batches_across_cuts(tmp_path, synthetic_video):
    truth = write_ground_truth(synthetic_video, tmp_path / "truth.json")
    config = ParseConfig(batch_size=7, min_track_len=1.0, min_track_area=0.0)  # odd: batches straddle cuts
    plain = [parse_video(synthetic_video.path, yid, segments, FixtureDetector(NAMES, truth), NAMES, config, "vh")
             for yid, segments in zip(YIDS, segment_lists(synthetic_video), strict=True)]
    detector = RecordingDetector(NAMES, truth)
    with ParsePipeline(detector, NAMES, config, vocab_hash="vh", workers=2) as pipeline:
        for yid, segments in zip(YIDS, segment_lists(synthetic_video), strict=True):
            pipeline.submit(yid, synthetic_video.path, segments)
        piped = [pipeline.result(yid) for yid in YIDS]
    for a, b in zip(plain, piped, strict=True):
        assert a.records, "the fixture video has tracks"
        assert [r.to_json() for r in a.records] == [r.to_json() for r in b.records]
        assert len(a.embeddings) == len(b.embeddings)
        for x, y in zip(a.embeddings, b.embeddings, strict=True):
            assert (x is None and y is None) or np.array_equal(x, y)
        assert (a.video_size, a.video_seconds, a.frames, a.tracks_before_filter) == \
            (b.video_size, b.video_seconds, b.frames, b.tracks_before_filter)
    # no tracker crossed a cut: every track lies in its segment, and the first scene split at
    # 2.5 s splits its tracks
    assert all(r.segment[0] <= r.track_ts[0] and r.track_ts[-1] < r.segment[1] for v in piped for r in v.records)
    assert len(piped[1].records) > len(piped[0].records)
    assert any(r.segment == (0.0, 2.5) or list(r.segment) == [0.0, 2.5] for r in piped[1].records)
    cuts = sorted({s for segments in segment_lists(synthetic_video) for s, _ in segments if s > 0})
    assert crossing_batches(detector.batches, cuts) >= 2
    assert all(len(times) == 7 for times in detector.batches[:-1]), "batches are full but for the last"


# ---------------------------------------------------------------------------- the stage


def add_videos(db: Path, video: Path, segment_lists: list[list[tuple[float, float]]], yids: list[str]) -> None:
    layout = DatasetLayout(db)
    for yid, segments in zip(yids, segment_lists, strict=True):
        target = layout.video_mp4(yid)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(video, target)
        layout.video_segments(yid).parent.mkdir(parents=True, exist_ok=True)
        layout.video_segments(yid).write_text("".join(f"{a},{b}\n" for a, b in segments))


def run_stage(tmp_path: Path, db: Path, yids: list[str], *flags: str, detector: str = FIXTURE) -> int:
    (tmp_path / "yids.txt").write_text("\n".join(yids) + "\n")
    (tmp_path / "prompts.txt").write_text("\n".join(NAMES) + "\n")
    return main(PARSE_TRACKS_STAGE, ["--base_dir", str(db), "--yid_index_fn", str(tmp_path / "yids.txt"),
                                     "--class_prompts", str(tmp_path / "prompts.txt"), "--detector", detector,
                                     "--log_level", "WARNING", *flags])


def outputs(db: Path) -> dict[str, bytes]:
    """Every file the stage wrote next to the metadata (metadata, embeddings), by path."""
    root = db / "tracks_meta"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stage_outputs_are_byte_identical_with_decode_workers(tmp_path, synthetic_video, monkeypatch):
    monkeypatch.setenv(GROUND_TRUTH_ENV, str(write_ground_truth(synthetic_video, tmp_path / "truth.json")))
    runs = {}
    for name, flags in (("plain", ()), ("piped", ("--decode_workers", "2"))):
        db = tmp_path / name
        add_videos(db, synthetic_video.path, segment_lists(synthetic_video), YIDS)
        assert run_stage(tmp_path, db, YIDS, "--batch_size", "5", *flags) == EXIT_OK
        runs[name] = outputs(db)
    assert len(runs["plain"]) >= len(YIDS) and runs["piped"] == runs["plain"]


@pytest.fixture(scope="module")
def tiny_owlv2_dir(tmp_path_factory) -> Path:
    return save_tiny_owlv2(tmp_path_factory.mktemp("tiny-owlv2"))


OWL_FLAGS = ("--device", "cpu", "--max_side", "128", "--track_thresh", "0.1", "--low_thresh", "0.05",
             "--min_track_len", "0.3", "--min_track_area", "0")


def test_stage_with_tiny_owlv2_is_byte_identical_when_batches_align(tmp_path, tiny_owlv2_dir, monkeypatch):
    """The real OWLv2 code path. Its float32 matmuls on CPU round differently by batch size
    (about 1e-6), so bytes can only match for the same batches: segments of 32 frames at
    16 fps, batches of 8, one worker."""
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    scenes = [SceneSpec(2.0, (ObjectSpec("cat", (60, 50), (10, 10), (80, 50)),)),
              SceneSpec(2.0, (ObjectSpec("rocket", (40, 60), (100, 10), (20, 40)),))]
    video = make_synthetic_video(tmp_path / "short.mp4", scenes, width=192, height=112)
    runs = {}
    for name, flags in (("plain", ()), ("piped", ("--decode_workers", "1"))):
        db = tmp_path / name
        add_videos(db, video.path, [video.scene_spans()] * 2, YIDS[:2])
        assert run_stage(tmp_path, db, YIDS[:2], "--model", str(tiny_owlv2_dir), "--batch_size", "8",
                         *OWL_FLAGS, *flags, detector="owlv2") == EXIT_OK
        runs[name] = outputs(db)
    assert runs["piped"] == runs["plain"]
    from utils.records.track_files import read_records

    assert read_records(DatasetLayout(tmp_path / "piped").tracks_meta("TrackVerseLVIS", YIDS[0]))


def test_tiny_owlv2_across_cuts_matches_up_to_float_rounding(tmp_path, tiny_owlv2_dir, synthetic_video):
    from utils.detect.detectors.owlv2 import OwlV2Detector

    detector = OwlV2Detector(NAMES, str(tiny_owlv2_dir), device="cpu", cache_dir=tmp_path)
    config = ParseConfig(batch_size=6, max_side=128, track_thresh=0.1, low_thresh=0.05, min_track_len=0.3,
                         min_track_area=0.0)
    spans = synthetic_video.scene_spans()
    plain = parse_video(synthetic_video.path, YIDS[0], spans, detector, NAMES, config)
    with ParsePipeline(detector, NAMES, config, workers=2) as pipeline:
        piped = pipeline.parse(YIDS[0], synthetic_video.path, spans)
    assert plain.records and len(piped.records) == len(plain.records)
    for a, b in zip(plain.records, piped.records, strict=True):
        assert (a.track_ts, a.top10_lbl, a.segment) == (b.track_ts, b.top10_lbl, b.segment)
        np.testing.assert_allclose(a.track_bbox, b.track_bbox, atol=0.01)
        np.testing.assert_allclose(a.top10_logit_mu, b.top10_logit_mu, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- failures


def run_in_thread(target, timeout: float = 180.0):
    """``target()`` in a thread (its value, or its exception raised here); fails the test
    instead of hanging it."""
    out: dict = {}

    def body() -> None:
        try:
            out["value"] = target()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s: the pipeline hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_truncated_video_fails_its_item_and_the_rest_is_parsed(tmp_path, synthetic_video, monkeypatch):
    monkeypatch.setenv(GROUND_TRUTH_ENV, str(write_ground_truth(synthetic_video, tmp_path / "truth.json")))
    yids = ["goodVideo01", "cutVideo001", "goodVideo02"]
    spans = synthetic_video.scene_spans()
    db = tmp_path / "db"
    add_videos(db, synthetic_video.path, [spans] * 3, yids)
    cut = DatasetLayout(db).video_mp4(yids[1])
    cut.unlink()
    cut_in_data(synthetic_video.path, cut, keep=0.6)
    code = run_in_thread(lambda: run_stage(tmp_path, db, yids, "--decode_workers", "2", "--batch_size", "7"))
    assert code == EXIT_ITEMS_FAILED
    events = list(read_journals(db / "logs" / "parse_tracks-TrackVerseLVIS"))
    (failed,) = [e for e in events if e["event"] == "failed"]
    assert failed["item"] == yids[1] and failed["category"] == "truncated" and "truncated" in failed["reason"]
    assert sorted(e["item"] for e in events if e["event"] == "done") == [yids[0], yids[2]]
    assert not DatasetLayout(db).tracks_meta("TrackVerseLVIS", yids[1]).exists()


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_decode_worker_fails_its_video_and_is_replaced(tmp_path, synthetic_video):
    truth = write_ground_truth(synthetic_video, tmp_path / "truth.json", delay_s=0.2)  # a slow detector
    config = ParseConfig(batch_size=4)
    spans = synthetic_video.scene_spans()
    detector = FixtureDetector(NAMES, truth)
    with ParsePipeline(detector, NAMES, config, workers=2) as pipeline:
        first = pipeline.worker_pids()
        pipeline.submit(YIDS[0], synthetic_video.path, spans)
        deadline = time.time() + 60
        while detector.calls < 1 and time.time() < deadline:  # frames flow: the workers are mid-segment,
            time.sleep(0.05)                                  # held back by the slow detector
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ItemError, match="decode worker died") as caught:
            run_in_thread(lambda: pipeline.result(YIDS[0]), timeout=60)
        assert caught.value.category == "decode_crash" and str(synthetic_video.path) in str(caught.value)
        deadline = time.time() + 30
        while not set(pipeline.worker_pids()).isdisjoint(first) and time.time() < deadline:
            time.sleep(0.1)
        replaced = pipeline.worker_pids()
        assert set(replaced).isdisjoint(first) and len(replaced) == 2
        # the replacements work: another video parses in the same pipeline
        result = run_in_thread(lambda: pipeline.parse(YIDS[1], synthetic_video.path, spans[:1]), timeout=60)
        assert result.frames > 0
    assert _gone_soon(replaced), "close() leaves no decode worker behind"


def _gone_soon(pids: list[int], seconds: float = 60.0) -> bool:  # returns as soon as they are gone
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


ORPHAN_SCRIPT = """
import os, sys, time
from tests.tiny_models import FixtureDetector
from utils.detect.parse import ParseConfig
from utils.detect.pipeline import ParsePipeline

if __name__ == "__main__":
    pipeline = ParsePipeline(FixtureDetector(["cat"], sys.argv[1]), ["cat"], ParseConfig(), workers=2)
    print(" ".join(map(str, pipeline.worker_pids())), flush=True)
    time.sleep(60)
"""


def test_decode_workers_exit_when_their_parent_is_killed(tmp_path, synthetic_video):
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_SCRIPT)
    truth = write_ground_truth(synthetic_video, tmp_path / "truth.json")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    parent = subprocess.Popen([sys.executable, str(script), str(truth)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _gone_soon(pids), "decode workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_decode_workers_flag(tmp_path, synthetic_video, capsys):
    db = tmp_path / "db"
    add_videos(db, synthetic_video.path, [synthetic_video.scene_spans()], YIDS[:1])
    assert run_stage(tmp_path, db, YIDS[:1], "--decode_workers", "-1") == EXIT_USAGE
    assert "--decode_workers must be >= 0" in capsys.readouterr().err
    assert run_stage(tmp_path, db, YIDS[:1], "--precision", "bf16", detector="ground_truth") == EXIT_USAGE
    assert "--precision" in capsys.readouterr().err


def test_a_detector_fault_stops_the_pipelined_run(tmp_path, synthetic_video, monkeypatch):
    """As on the plain path: systemic, no metadata, no failed item, nothing left running."""
    import utils.detect.stage
    from utils.core.errors import EXIT_SYSTEMIC
    from utils.detect.detectors import DetectorError

    monkeypatch.setenv(GROUND_TRUTH_ENV, str(write_ground_truth(synthetic_video, tmp_path / "truth.json")))

    class Failing(FixtureDetector):
        def detect(self, frames, timestamps=None):
            if self.calls >= 3:
                raise DetectorError("OWLv2 ran out of GPU memory on a single frame (simulated)")
            return super().detect(frames, timestamps)

    monkeypatch.setattr(utils.detect.stage, "make_detector", lambda spec, names, **kw: Failing(names))
    db = tmp_path / "db"
    add_videos(db, synthetic_video.path, [synthetic_video.scene_spans()] * 2, YIDS[:2])
    code = run_in_thread(lambda: run_stage(tmp_path, db, YIDS[:2], "--decode_workers", "2"), timeout=120)
    assert code == EXIT_SYSTEMIC
    events = list(read_journals(db / "logs" / "parse_tracks-TrackVerseLVIS"))
    (event,) = [e for e in events if e["event"] == "systemic"]
    assert "out of GPU memory" in event["error"] and YIDS[0] in event["error"]
    assert not [e for e in events if e["event"] == "failed"]
    assert not (db / "tracks_meta").exists() or not any((db / "tracks_meta").rglob("*.gzip"))
    assert not [t.name for t in threading.enumerate() if t.name.startswith("parse-")]
    assert not multiprocessing.active_children(), "decode workers left running"


class SlowDetector(FixtureDetector):
    """The fixture detector at a GPU-less pace, so a video takes a few progress polls."""

    def detect(self, frames, timestamps=None):
        time.sleep(0.05)
        return super().detect(frames, timestamps)


class RecordingBar:
    """What a tqdm bar is told."""

    def __init__(self) -> None:
        self.updates: list[float] = []

    def update(self, n: float) -> None:
        self.updates.append(n)


def test_pipeline_progress_advances_while_a_video_is_parsed(tmp_path, synthetic_video):
    """The bar moves in seconds of video as frames are tracked, not once per video, and ends
    at the seconds parsed."""
    truth = write_ground_truth(synthetic_video, tmp_path / "truth.json")
    config = ParseConfig(batch_size=4, min_track_len=1.0, min_track_area=0.0)
    bar = RecordingBar()
    with ParsePipeline(SlowDetector(NAMES, truth), NAMES, config, workers=1) as pipeline:
        result = pipeline.parse(YIDS[0], synthetic_video.path, synthetic_video.scene_spans(), progress=bar)
    assert len(bar.updates) > 3 and all(n > 0 for n in bar.updates)
    assert sum(bar.updates) == pytest.approx(result.video_seconds, abs=0.02)
