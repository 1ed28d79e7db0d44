"""Scene segments: pure planning rules, the segment file, and detection on real and synthetic video."""

from __future__ import annotations

import json

import pytest

from tests.helpers import shared_video
from utils.ingest.scenes import BACKENDS, SegmentationError, detect_scenes, plan_segments, segment_video
from utils.records.segments import format_segments, parse_segments, read_segments, write_segments
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video

MEGAMIND_CUTS = (4.13, 6.46, 8.38)


# ------------------------------------------------------------------------ pure logic


def test_no_cut_is_one_segment_spanning_the_video():
    [only] = plan_segments([], 0.0, 42.0)
    assert (only.start, only.end, only.kept) == (0.0, 42.0, True)


def test_long_segments_are_trimmed_and_short_ones_dropped():
    scenes = [(0.0, 2.9), (2.9, 5.9), (5.9, 1000.0), (1000.0, 1001.0)]
    plan = plan_segments(scenes, 0.0, 1001.0, max_len=600, min_len=3)
    assert [(c.start, c.end, c.reason) for c in plan] == [
        (0.0, 2.9, "too_short"),
        (2.9, 5.9, None),  # exactly 3 s: kept
        (5.9, 605.9, None),  # trimmed to its first 600 s
        (1000.0, 1001.0, "too_short"),
    ]
    assert plan[2].trimmed and plan[2].scene_end == 1000.0
    assert not plan[1].trimmed


def test_flags_change_the_limits():
    plan = plan_segments([(0, 10), (10, 12)], 0, 12, max_len=5, min_len=2.5)
    assert [(c.start, c.end, c.kept) for c in plan] == [(0, 5, True), (10, 12, False)]
    with pytest.raises(ValueError):
        plan_segments([], 0, 1, max_len=0)


def test_segment_file_round_trip_and_empty_file_means_segmented(tmp_path):
    path = tmp_path / "ab" / "abcdefghijk.txt"
    write_segments(path, [(0.0, 4.0), (4.041708, 10.5)])
    assert path.read_text() == "0.000,4.000\n4.042,10.500\n"
    assert read_segments(path) == [(0.0, 4.0), (4.042, 10.5)]
    write_segments(path, [])  # nothing kept: the file exists and is empty
    assert path.exists() and path.read_text() == "" and read_segments(path) == []
    assert [p.name for p in path.parent.iterdir()] == ["abcdefghijk.txt"]  # no temporaries


def test_parse_accepts_the_originals_files_and_rejects_garbage():
    assert parse_segments("0.0,4.129129\n4.129129,11.26") == [(0.0, 4.129129), (4.129129, 11.26)]
    assert format_segments([(1.0, 2.5)]) == "1.000,2.500\n"
    for bad in ("1.0;2.0", "3.0,2.0", "a,b"):
        with pytest.raises(ValueError):
            parse_segments(bad)


# ------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("backend", BACKENDS)
def test_synthetic_cuts_found_within_a_tenth_of_a_second(synthetic_video, backend):
    found = detect_scenes(synthetic_video.path, backend=backend)
    cuts = [start for start, _ in found.scenes[1:]]
    assert len(cuts) == len(synthetic_video.cut_times)
    for cut, truth in zip(cuts, synthetic_video.cut_times, strict=True):
        assert abs(cut - truth) <= 0.1
    assert found.frames == synthetic_video.num_frames
    assert abs(found.end - synthetic_video.duration) <= 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_megamind_three_cuts_four_scenes_short_ones_dropped(backend):
    found = detect_scenes(shared_video("Megamind.avi"), backend=backend)
    assert len(found.scenes) == 4
    for (start, _), truth in zip(found.scenes[1:], MEGAMIND_CUTS, strict=True):
        assert abs(start - truth) <= 0.1
    plan = plan_segments(found.scenes, found.start, found.end)
    lengths = [c.scene_end - c.scene_start for c in plan]
    assert [c.kept for c in plan] == [length >= 3.0 for length in lengths]
    assert sum(c.kept for c in plan) == 1  # only the first scene (about 4.1 s) lasts 3 s or more


def test_video_without_cuts_gives_one_segment(tmp_path):
    video = make_synthetic_video(tmp_path / "one.mp4", [SceneSpec(5.0, (ObjectSpec("cat", (60, 40), (0, 0), (200, 150)),))])
    found = detect_scenes(video.path)
    assert len(found.scenes) == 1
    result = segment_video(video.path, tmp_path / "one.txt")
    assert result.segments == [(0.0, 5.0)]
    assert read_segments(tmp_path / "one.txt") == [(0.0, 5.0)]


def test_real_video_without_cuts():
    found = detect_scenes(shared_video("cup.mp4"))
    plan = plan_segments(found.scenes, found.start, found.end)
    assert len(plan) == 1 and plan[0].kept and abs(plan[0].end - 8.1) < 0.1


def test_segment_video_writes_sidecar_then_segments(synthetic_video, tmp_path):
    seg, side = tmp_path / "s.txt", tmp_path / "s.segm-scores.json"
    result = segment_video(synthetic_video.path, seg, side, min_len=3.6)
    record = json.loads(side.read_text())
    assert [s["reason"] for s in record["segments"]] == [None, "too_short", None]  # 4.0, 3.52, 4.48 s
    assert record["kept"] == 2 and record["min_segment_len"] == 3.6
    assert record["filters"] == {"cartoon": False, "aesthetics": False}
    assert read_segments(seg) == result.segments == [(0.0, 4.0), (7.52, 12.0)]


def test_corrupt_or_truncated_video_is_a_segmentation_error(synthetic_video, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 1000)
    with pytest.raises(SegmentationError):
        detect_scenes(garbage)
    data = synthetic_video.path.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])  # moov at the end: cannot even open
    with pytest.raises(SegmentationError):
        detect_scenes(truncated)
    with pytest.raises(SegmentationError, match="missing or empty"):
        detect_scenes(tmp_path / "absent.mp4")


@pytest.mark.parametrize("fault, exit_code", [(MemoryError(), 3), (TypeError("a library bug"), 1)])
def test_scene_detection_faults_that_are_not_the_videos_keep_the_video(synthetic_video, tmp_path, monkeypatch,
                                                                         fault, exit_code):
    """Only a decoder's error makes a video "corrupt" (and deleted for a fresh download). Running
    out of memory stops the rank; a bug fails the item; the good video stays either way."""
    import shutil

    import scenedetect

    from utils.core.layout import DatasetLayout
    from utils.ingest.stage import DOWNLOAD_VIDEOS_STAGE
    from utils.runner.cli import main

    yid = "segmfault01"
    base = tmp_path / "db"
    video = DatasetLayout(base).video_mp4(yid)
    video.parent.mkdir(parents=True)
    shutil.copy(synthetic_video.path, video)
    (tmp_path / "ids.txt").write_text(yid + "\n")

    def failing(self, *args, **kwargs):
        raise fault

    monkeypatch.setattr(scenedetect.SceneManager, "detect_scenes", failing)
    argv = ["--base_dir", str(base), "--yid_index_fn", str(tmp_path / "ids.txt"), "--url_template",
            "http://127.0.0.1:9/{yid}.mp4", "--skip_cartoon_filter", "--skip_aesthetics_filter"]
    assert main(DOWNLOAD_VIDEOS_STAGE, argv) == exit_code
    assert video.exists() and video.stat().st_size == synthetic_video.path.stat().st_size
    assert not DatasetLayout(base).video_segments(yid).exists()
