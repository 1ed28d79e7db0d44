"""parse_tracks.py (stage 4): detection + tracking over scene segments -> per-video metadata.

End to end on the synthetic fixture video through a detector fed by its ground truth
(``tests.tiny_models:FixtureDetector``, built through the registry's ``module:callable``
path), the OWLv2 backend with a tiny random-weight model, and the stage's contract: not-ready
videos, corrupt videos, systemic model failures, resume after SIGKILL.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    FIXTURE,
    PARSE_JOB,
    REPO,
    add_video,
    item_list,
    journal,
    match_to_ground_truth,
    meta_path,
    run_cli,
)
from tests.helpers import PARSE_PROMPTS as PROMPTS
from tests.helpers import PARSE_YID as YID
from tests.helpers import parse_args as stage_args
from tests.tiny_models import GROUND_TRUTH_ENV, FixtureDetector, save_tiny_owlv2, write_ground_truth
from utils.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, EXIT_SYSTEMIC, EXIT_USAGE, UsageError
from utils.core.layout import DatasetLayout
from utils.core.video import VideoError
from utils.detect.detectors import DetectorError
from utils.detect.parse import ParseConfig, keep_track
from utils.detect.stage import PARSE_TRACKS_STAGE, detector_options
from utils.detect.tracking import TrackHistory
from utils.records.prompts import read_prompts
from utils.records.track_files import read_records
from utils.records.tracks import TrackRecord
from utils.runner.cli import main, parse_config
from utils.testing.synthetic import ObjectSpec, SceneSpec, SyntheticVideo, make_synthetic_video


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture
def ground_truth(tmp_path: Path, synthetic_video: SyntheticVideo, monkeypatch) -> Path:
    path = write_ground_truth(synthetic_video, tmp_path / "ground-truth.json")
    monkeypatch.setenv(GROUND_TRUTH_ENV, str(path))
    return path


def long_identities(video: SyntheticVideo, min_seconds: float) -> dict[int, str]:
    """identity -> class of the objects on screen for at least ``min_seconds``."""
    out = {}
    for identity, boxes in video.identities().items():
        if boxes[-1].time - boxes[0].time + 1.0 / video.fps >= min_seconds:
            out[identity] = boxes[0].class_name
    return out


def check_records(records: list[TrackRecord], video: SyntheticVideo, prompts: Path) -> None:
    """Every object of >= 3 s is exactly one track with the right boxes, label and scene."""
    wanted = long_identities(video, 3.0)
    assert len(wanted) == 4  # cat, cup, rocket, person; the 1 s cup is not
    spans = video.scene_spans()
    vocab = read_prompts(prompts)
    matched = []
    for rec in records:
        identity, mean_iou = match_to_ground_truth(rec, video)
        matched.append(identity)
        assert mean_iou >= 0.8, (rec.fn, mean_iou)
        assert rec.label == wanted[identity] and rec.top10_desc[0] == wanted[identity]
        assert f"-{wanted[identity]}-{rec.tid}.mp4" in rec.fn and rec.fn.startswith(f"{YID[:2]}/{YID}-")
        scene = [s for s in spans if s[0] <= rec.track_ts[0] < s[1]]
        assert len(scene) == 1 and rec.track_ts[-1] < scene[0][1], "track crosses a scene cut"
        assert rec.segment == pytest.approx(list(scene[0]))
        assert rec.duration >= 3.0
        assert rec.video_size == [video.height, video.width]
        assert rec.detector == "fixture_ground_truth" and rec.vocab_hash == vocab.hash
        assert "weights" in rec.extra
        assert rec.expected_tid() == rec.tid
        assert TrackRecord.from_json(rec.to_json()) == rec
        assert len(rec.top10_lbl) == len(PROMPTS)  # fewer than 10 classes: all of them, ranked
    assert sorted(matched) == sorted(wanted), "each long object must be exactly one track"


# ---------------------------------------------------------------------------- end to end


def test_cli_end_to_end_on_ground_truth(tmp_path, synthetic_video, prompts_file, ground_truth):
    """The real command line, frames downscaled (160 px) so boxes must be scaled back."""
    db = tmp_path / "db"
    add_video(db, YID, synthetic_video.path, synthetic_video.scene_spans())
    proc = run_cli(
        "parse_tracks.py", *stage_args(db, item_list(tmp_path, [YID]), prompts_file,
                                       "--max_side", "160", "--min_track_area", "0.02"),
        env={GROUND_TRUTH_ENV: str(ground_truth)},
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "1 done" in proc.stderr and "video_s/s" in proc.stderr
    records = read_records(meta_path(db))
    check_records(records, synthetic_video, prompts_file)
    (done,) = journal(db, PARSE_JOB, "done")
    assert done["stats"]["video_s"] == pytest.approx(synthetic_video.duration)
    assert done["stats"]["tracks"] == 4

    # In process, at source size and other batch sizes: the same file, byte for byte.
    for i, extra in enumerate((["--max_side", "0", "--batch_size", "1"], ["--batch_size", "5"])):
        other = tmp_path / f"db{i}"
        add_video(other, YID, synthetic_video.path, synthetic_video.scene_spans())
        argv = stage_args(other, item_list(tmp_path, [YID]), prompts_file, "--min_track_area", "0.02", *extra)
        assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
        assert meta_path(other).read_bytes() == meta_path(db).read_bytes()


@pytest.mark.parametrize(
    ("flags", "kept"),
    [
        ([], ["person"]),  # default 10% of the frame: only the person (70x110 of 320x240) is big enough
        (["--min_track_area", "0.02", "--min_track_len", "4"], ["person"]),  # the 4.0 s scene samples 3.94 s
        (["--min_track_area", "0.02", "--min_track_len", "0.5"], ["cat", "cup", "cup", "person", "rocket"]),
    ],
)
def test_length_and_area_filters(tmp_path, synthetic_video, prompts_file, ground_truth, flags, kept):
    db = tmp_path / "db"
    add_video(db, YID, synthetic_video.path, synthetic_video.scene_spans())
    assert main(PARSE_TRACKS_STAGE, stage_args(db, item_list(tmp_path, [YID]), prompts_file, *flags)) == EXIT_OK
    assert sorted(r.label for r in read_records(meta_path(db))) == kept


def test_segments_restrict_and_split_tracks(tmp_path, synthetic_video, prompts_file, ground_truth):
    """Only listed segments are parsed; a segment boundary inside a scene ends its tracks."""
    db = tmp_path / "db"
    add_video(db, YID, synthetic_video.path, [(7.52, 9.52), (9.52, 12.0)])
    argv = stage_args(db, item_list(tmp_path, [YID]), prompts_file, "--min_track_area", "0.02",
                      "--min_track_len", "1.5")
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
    records = read_records(meta_path(db))
    assert [r.label for r in records] == ["person", "person"]
    assert [r.segment for r in records] == [[7.52, 9.52], [9.52, 12.0]]
    assert records[0].track_ts[-1] < 9.52 <= records[1].track_ts[0]


def test_default_vocabulary_is_the_pinned_lvis_asset(tmp_path, monkeypatch, capsys, stand_in_assets):
    """No --class_prompts: the pinned lvis-prompts.txt (here its small stand-in, pinned by its
    sha256), fetched from a mirror; offline with nothing cached is a usage error that says what to do."""
    scenes = [
        SceneSpec(3.5, (ObjectSpec("cat", (70, 60), (5, 5), (80, 50)),)),
        SceneSpec(3.5, (ObjectSpec("person", (50, 90), (100, 10), (20, 20)),)),
    ]
    video = make_synthetic_video(tmp_path / "lvis.mp4", scenes, width=160, height=120)
    monkeypatch.setenv(GROUND_TRUTH_ENV, str(write_ground_truth(video, tmp_path / "gt.json")))
    db = tmp_path / "db"
    add_video(db, YID, video.path, video.scene_spans())
    argv = ["--base_dir", str(db), "--yid_index_fn", str(item_list(tmp_path, [YID])), "--detector", FIXTURE]

    monkeypatch.setenv("TRACKVERSE_ASSETS_URL", "file:///nonexistent-mirror/")
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--class_prompts" in err and "lvis-prompts.txt" in err and "Offline?" in err

    monkeypatch.setenv("TRACKVERSE_ASSETS_URL", stand_in_assets.as_uri() + "/")
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
    records = read_records(meta_path(db))
    vocab = read_prompts(stand_in_assets / "lvis-prompts.txt")
    assert [r.label for r in records] == ["cat", "person"]
    assert all(r.vocab_hash == vocab.hash and len(r.top10_lbl) == 10 for r in records)
    assert records[1].top10_lbl[0] == vocab.index_of("person") and "person" in records[1].fn


# ---------------------------------------------------------------------------- OWLv2, tiny model


@pytest.fixture(scope="module")
def tiny_owlv2_dir(tmp_path_factory) -> Path:
    return save_tiny_owlv2(tmp_path_factory.mktemp("tiny-owlv2"))


def test_owlv2_end_to_end_with_tiny_model(tmp_path, tiny_owlv2_dir, prompts_file, monkeypatch):
    """The default backend for real (random weights, loaded with --model from a folder)."""
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    scenes = [
        SceneSpec(1.5, (ObjectSpec("cat", (60, 50), (10, 10), (80, 50)),)),
        SceneSpec(1.0, (ObjectSpec("rocket", (40, 60), (100, 10), (20, 40)),)),
    ]
    video = make_synthetic_video(tmp_path / "short.mp4", scenes, width=192, height=112)
    db = tmp_path / "db"
    add_video(db, YID, video.path, video.scene_spans())
    argv = stage_args(
        db, item_list(tmp_path, [YID]), prompts_file, "--model", str(tiny_owlv2_dir), "--device", "cpu",
        "--batch_size", "4", "--max_side", "128", "--track_thresh", "0.1", "--low_thresh", "0.05",
        "--min_track_len", "0.3", "--min_track_area", "0", detector="owlv2",
    )
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
    records = read_records(meta_path(db))
    assert records, "the tiny model's boxes should form at least one track with these thresholds"
    for rec in records:
        assert rec.detector == "owlv2" and rec.extra["weights"] == str(tiny_owlv2_dir)
        assert rec.video_size == [112, 192]
        xyxy = rec.bboxes_xyxy()
        assert xyxy.min() >= 0 and np.all(xyxy[:, [0, 2]] <= 192) and np.all(xyxy[:, [1, 3]] <= 112)
        assert any(s[0] <= rec.track_ts[0] and rec.track_ts[-1] < s[1] for s in video.scene_spans())
        assert rec.label in read_prompts(prompts_file).labels
    assert list((tmp_path / "cache" / "owlv2-text").glob("*.npy")), "prompt embeddings are cached"


def test_model_loading_failure_stops_with_a_clear_message(tmp_path, synthetic_video, prompts_file, capsys):
    db = tmp_path / "db"
    add_video(db, YID, synthetic_video.path, synthetic_video.scene_spans())
    missing = tmp_path / "no-such-owlv2"
    argv = stage_args(db, item_list(tmp_path, [YID]), prompts_file, "--model", str(missing), "--device", "cpu",
                      detector="owlv2")
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_SYSTEMIC
    err = capsys.readouterr().err
    assert "STOPPED" in err and "cannot build detector 'owlv2'" in err and "no-such-owlv2" in err
    assert not meta_path(db).exists()
    assert journal(db, PARSE_JOB, "systemic")


def test_bad_flags_are_usage_errors(tmp_path, prompts_file, capsys):
    yids = item_list(tmp_path, [YID])
    db = tmp_path / "db"
    assert main(PARSE_TRACKS_STAGE, stage_args(db, yids, prompts_file, detector="no_such_detector")) == EXIT_USAGE
    assert "unknown detector" in capsys.readouterr().err
    assert main(PARSE_TRACKS_STAGE, stage_args(db, yids, tmp_path / "missing.txt")) == EXIT_USAGE
    assert "--class_prompts" in capsys.readouterr().err
    assert main(PARSE_TRACKS_STAGE, stage_args(db, yids, prompts_file, "--min_track_area", "1.5")) == EXIT_USAGE
    assert main(PARSE_TRACKS_STAGE, stage_args(db, yids, prompts_file, "--dataset_name", "../x")) == EXIT_USAGE


# ---------------------------------------------------------------------------- the stage's contract


def test_not_ready_empty_and_resumed(tmp_path, synthetic_video, prompts_file, ground_truth, capsys):
    """No segment file: not ready (not failed); an empty one: an empty metadata file."""
    db = tmp_path / "db"
    waiting, empty = "waitingVid1", "emptySegm01"
    add_video(db, waiting, synthetic_video.path, None)
    add_video(db, empty, None, [])
    argv = stage_args(db, item_list(tmp_path, [waiting, empty]), prompts_file, "--min_track_area", "0.02")
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
    err = capsys.readouterr().err
    assert "1 done" in err and "0 failed" in err and "1 not ready" in err
    assert not meta_path(db, waiting).exists()
    assert read_records(meta_path(db, empty)) == []
    (event,) = journal(db, PARSE_JOB, "not_ready")
    assert event["item"] == waiting and "no segment file" in event["reason"]
    assert not journal(db, PARSE_JOB, "failed")

    # download_videos.py catches up: a plain re-run finishes the waiting video.
    add_video(db, waiting, None, synthetic_video.scene_spans())
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
    assert "1 done, 1 skipped" in capsys.readouterr().err
    assert len(read_records(meta_path(db, waiting))) == 4


def test_bad_videos_are_journaled_and_the_shard_goes_on(tmp_path, synthetic_video, prompts_file, ground_truth):
    db = tmp_path / "db"
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(synthetic_video.path.read_bytes()[: synthetic_video.path.stat().st_size // 2])
    spans = synthetic_video.scene_spans()
    add_video(db, "corruptVid1", garbage, spans)
    add_video(db, "truncVideo1", truncated, spans)
    add_video(db, "missingVid1", None, spans)
    add_video(db, "badSegments", synthetic_video.path, [(0.0, 4.0)])
    DatasetLayout(db).video_segments("badSegments").write_text("0.0,4.0\nnot a segment\n")
    add_video(db, YID, synthetic_video.path, spans)
    yids = ["corruptVid1", "truncVideo1", "missingVid1", "badSegments", YID]
    argv = stage_args(db, item_list(tmp_path, yids), prompts_file, "--min_track_area", "0.02")
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_ITEMS_FAILED
    failed = {r["item"]: r for r in journal(db, PARSE_JOB, "failed")}
    assert failed["corruptVid1"]["category"] == failed["truncVideo1"]["category"] == "corrupt_video"
    assert "corruptVid1.mp4" in failed["corruptVid1"]["reason"] and "truncVideo1.mp4" in failed["truncVideo1"]["reason"]
    assert failed["missingVid1"]["category"] == "missing_video"
    assert failed["badSegments"]["category"] == "bad_segments" and "line 2" in failed["badSegments"]["reason"]
    assert not any(r["transient"] for r in failed.values())
    assert len(read_records(meta_path(db))) == 4
    for yid in yids[:-1]:
        assert not meta_path(db, yid).exists()


def test_decoding_error_mid_video_fails_the_item(tmp_path, synthetic_video, prompts_file, ground_truth, monkeypatch):
    """A video that breaks inside a segment: the item fails naming it, nothing is written,
    and the background decoding thread is gone."""
    import utils.detect.parse

    real = utils.detect.parse.read_frames

    def breaking(path, *args, **kwargs):
        for i, frame in enumerate(real(path, *args, **kwargs)):
            if frame.time >= 5.0:
                raise VideoError(f"{path}: decoding failed (simulated, frame {i})")
            yield frame

    monkeypatch.setattr(utils.detect.parse, "read_frames", breaking)
    threads = threading.active_count()
    db = tmp_path / "db"
    add_video(db, YID, synthetic_video.path, synthetic_video.scene_spans())
    assert main(PARSE_TRACKS_STAGE, stage_args(db, item_list(tmp_path, [YID]), prompts_file)) == EXIT_ITEMS_FAILED
    (failed,) = journal(db, PARSE_JOB, "failed")
    assert failed["category"] == "corrupt_video" and f"{YID}.mp4" in failed["reason"] and "simulated" in failed["reason"]
    assert not meta_path(db).exists()
    assert threading.active_count() == threads


def test_detector_fault_mid_video_is_systemic(tmp_path, synthetic_video, prompts_file, ground_truth, monkeypatch):
    import utils.detect.stage

    class Failing(FixtureDetector):
        def detect(self, frames, timestamps=None):
            if self.calls >= 3:
                raise DetectorError("OWLv2 ran out of GPU memory on a single frame (simulated)")
            return super().detect(frames, timestamps)

    monkeypatch.setattr(utils.detect.stage, "make_detector", lambda spec, names, **kw: Failing(names))
    threads = threading.active_count()
    db = tmp_path / "db"
    add_video(db, YID, synthetic_video.path, synthetic_video.scene_spans())
    assert main(PARSE_TRACKS_STAGE, stage_args(db, item_list(tmp_path, [YID]), prompts_file)) == EXIT_SYSTEMIC
    (event,) = journal(db, PARSE_JOB, "systemic")
    assert "out of GPU memory" in event["error"] and YID in event["error"]
    assert not meta_path(db).exists() and not journal(db, PARSE_JOB, "failed")
    assert threading.active_count() == threads


def test_sigkill_mid_video_then_rerun_is_byte_identical(tmp_path, synthetic_video, prompts_file, monkeypatch):
    """Kill the real command while it is inside the video; the re-run's file equals an
    uninterrupted run's, and the kill left no metadata file behind."""
    marker = tmp_path / "detect-calls"
    slow = write_ground_truth(synthetic_video, tmp_path / "slow.json", delay_s=0.15, marker=marker)
    fast = write_ground_truth(synthetic_video, tmp_path / "fast.json")
    yids = item_list(tmp_path, [YID])
    flags = ("--min_track_area", "0.02", "--batch_size", "4")

    reference = tmp_path / "reference"
    add_video(reference, YID, synthetic_video.path, synthetic_video.scene_spans())
    monkeypatch.setenv(GROUND_TRUTH_ENV, str(fast))
    assert main(PARSE_TRACKS_STAGE, stage_args(reference, yids, prompts_file, *flags)) == EXIT_OK

    db = tmp_path / "db"
    add_video(db, YID, synthetic_video.path, synthetic_video.scene_spans())
    env = dict(os.environ, **{GROUND_TRUTH_ENV: str(slow)})
    env.pop("SLURM_ARRAY_TASK_ID", None)
    proc = subprocess.Popen(
        [sys.executable, "parse_tracks.py", *stage_args(db, yids, prompts_file, *flags)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while not (marker.exists() and marker.read_text().strip() not in ("", "1", "2")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the run never reached the video"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert int(marker.read_text()) < 48  # killed mid-video (192 frames = 48 calls)
    assert not meta_path(db).exists()

    proc = run_cli("parse_tracks.py", *stage_args(db, yids, prompts_file, *flags),
                   env={GROUND_TRUTH_ENV: str(fast)})
    assert proc.returncode == EXIT_OK, proc.stderr
    assert meta_path(db).read_bytes() == meta_path(reference).read_bytes()
    assert not [p for p in meta_path(db).parent.iterdir() if p.name.startswith(".")]  # no temporaries
    with gzip.open(meta_path(db), "rt") as f:
        assert len(f.read().splitlines()) == 4


# ---------------------------------------------------------------------------- pieces


def test_keep_track():
    def history(times, box):
        times = np.asarray(times, dtype=np.float64)
        return TrackHistory(1, times, np.tile(np.asarray(box, np.float64), (len(times), 1)),
                            np.ones(len(times)), None, None, True)

    area = 100.0 * 100.0
    assert keep_track(history([0.0, 3.0], [0, 0, 40, 25]), 3.0, 0.1, area)  # exactly 3 s, exactly 10%
    assert not keep_track(history([0.0, 2.99], [0, 0, 40, 25]), 3.0, 0.1, area)
    assert not keep_track(history([0.0, 3.0], [0, 0, 40, 24]), 3.0, 0.1, area)


def test_detector_options(prompts_file):
    vocab = read_prompts(prompts_file)

    def parse(*flags: str):
        return parse_config(PARSE_TRACKS_STAGE, ["--yid_index_fn", "x", *flags])[0]

    owl = detector_options(parse("--model", "/models/owl", "--nms_threshold", "0.3"), vocab)
    assert owl == {"prompts": PROMPTS, "device": "auto", "batch_size": 8, "nms_threshold": 0.3,
                   "model_id": "/models/owl"}
    detic = detector_options(parse("--detector", "detic", "--model", "w.pth"), vocab)
    assert detic["weights"] == "w.pth" and "model_id" not in detic
    fixture = detector_options(parse("--detector", FIXTURE, "--device", "cpu"), vocab)
    assert fixture["device"] == "cpu" and fixture["batch_size"] == 8  # **options takes everything
    # a factory without those parameters gets only what it accepts; --model it cannot take is refused
    assert detector_options(parse("--detector", "utils.testing.ground_truth:GroundTruthDetector"), vocab) == {}
    with pytest.raises(UsageError, match="--model"):
        detector_options(parse("--detector", "ground_truth", "--model", "m"), vocab)


def test_config_from_flags():
    config = parse_config(PARSE_TRACKS_STAGE, ["--yid_index_fn", "x"])[0].parse
    assert config == ParseConfig()  # flag defaults and library defaults agree
    assert parse_config(PARSE_TRACKS_STAGE, ["--yid_index_fn", "x", "--max_side", "0"])[0].parse.max_side is None
    tracker = config.make_tracker()
    assert (tracker.track_thresh, tracker.low_thresh, tracker.match_thresh, tracker.motion_weight) == (
        0.55, 0.1, 0.45, 0.4)
    assert tracker.max_time_lost == int(16 / 30 * 24)
