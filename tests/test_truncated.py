"""Truncated videos (issue 14, item 4): a file cut after an intact index decodes short without
an error. Every reader compares what it decoded with what the container announces and raises
``TruncatedVideoError`` (category ``truncated``); every stage that decodes fails the item with
that category and writes nothing from the short version.

The truncated files are made here: a faststart mp4 (index first) cut in the middle of its frame
data, the way an interrupted download or copy leaves it.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from tests.helpers import cut_in_data, faststart_copy, gt_records, journal, setup_db, shared_video
from utils.core.io import file_sha256
from utils.core.layout import DatasetLayout
from utils.core.video import (
    TruncatedVideoError,
    VideoError,
    VideoWriter,
    decode_span,
    probe_video,
    read_frames,
    read_frames_at,
)
from utils.runner.cli import main

# ---------------------------------------------------------------------------- making them


def make_video(path: Path, frames: int = 75, fps: float = 15.0, size: tuple[int, int] = (160, 120)) -> Path:
    """A deterministic textured video (5 s of 75 frames by default)."""
    rng = np.random.default_rng(7)
    w, h = size
    texture = np.kron(rng.integers(0, 256, (h // 8, w // 8 + frames, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    with VideoWriter(path, w, h, fps, keyframe_interval=0.5, crf=20) as writer:
        for k in range(frames):
            writer.write(np.ascontiguousarray(texture[:, k:k + w // 8 * 8][:, :w]))
    return path


def raw_decode(path: Path) -> tuple[int, int]:
    """(frames PyAV decodes, frames the container announces), raising nothing of its own."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), stream.frames


@pytest.fixture(scope="module")
def short_video(tmp_path_factory) -> tuple[Path, Path]:
    """(complete 75-frame faststart video, the same with its first 40 frames only)."""
    folder = tmp_path_factory.mktemp("truncated")
    source = make_video(folder / "source.mp4")
    return faststart_copy(source, folder / "complete.mp4"), cut_in_data(source, folder / "cut.mp4", keep=40 / 75)


# ---------------------------------------------------------------------------- the readers


def test_a_faststart_mp4_cut_in_its_data_decodes_short_without_an_error(short_video):
    """The premise (the issue's 40 of 75 frames): PyAV (FFmpeg) opens, probes and decodes the cut
    file without complaint."""
    complete, cut = short_video
    assert raw_decode(complete) == (75, 75)
    assert raw_decode(cut) == (40, 75)
    info = probe_video(cut)  # the index is intact: probing cannot tell
    assert info.num_frames == 75 and info.duration == pytest.approx(5.0, abs=0.1)


def test_every_reader_raises_truncated_at_the_missing_end(short_video):
    complete, cut = short_video
    readers = {
        "read_frames": lambda p: list(read_frames(p)),
        "read_frames fps": lambda p: list(read_frames(p, fps=4, max_side=64)),
        "read_frames seek": lambda p: list(read_frames(p, fps=4, start=2.0, end=4.5)),
        "decode_span": lambda p: list(decode_span(p, 3.0, 5.0)),
        "read_frames_at": lambda p: read_frames_at(p, [0.5, 4.8], size=(32, 32)),
    }
    for name, read in readers.items():
        assert read(complete), name  # the complete file reads without an error
        with pytest.raises(TruncatedVideoError, match=r"cut\.mp4: truncated video") as caught:
            read(cut)
        assert isinstance(caught.value, VideoError) and caught.value.category == "truncated", name
    with pytest.raises(TruncatedVideoError, match=r"40 of its 75 frames decode \(the stream ends at 2\.67 s of 5\.00 s"):
        list(read_frames(cut))
    # what is there reads fine: a reader that stops before the missing part does not notice it
    assert len(list(read_frames(cut, end=1.0))) == 15
    assert len(read_frames_at(cut, [0.2, 0.6])) == 2
    assert VideoError("x").category == "corrupt_video"


@pytest.mark.parametrize("name", ["box.mp4", "cup.mp4", "vtest.avi", "Megamind.avi"])
def test_real_videos_are_not_taken_for_truncated(name):
    """Real files whose stream is a frame shorter than announced (box.mp4: 455 of 456), or whose
    first frame is late (Megamind.avi), are within the tolerance."""
    path = shared_video(name)
    info = probe_video(path)
    assert len(list(read_frames(path))) >= info.num_frames - 1
    assert list(read_frames(path, fps=4, start=info.duration - 2.0))
    assert len(read_frames_at(path, [info.duration / 2, info.duration])) == 2
    assert list(decode_span(path, info.duration - 1.0, info.duration + 1.0))


# ---------------------------------------------------------------------------- the stages


def test_blur_keeps_a_truncated_video_and_fails_it(tmp_path, short_video):
    """gdpr_blur_faces replaced a truncated video by its blurred short version and called it done."""
    from utils.ingest.stage import BLUR_FACES_STAGE

    _, cut = short_video
    base = tmp_path / "db"
    layout = DatasetLayout(base)
    video = layout.video_mp4("cutVideo001")
    video.parent.mkdir(parents=True)
    video.write_bytes(cut.read_bytes())
    before = file_sha256(video)
    status = main(BLUR_FACES_STAGE, ["--base_dir", str(base), "--execution_provider", "cpu", "--keep_original"])
    assert status == 1
    (failed,) = journal(base, "gdpr_blur_faces", "failed")
    assert failed["item"] == "cutVideo001" and failed["category"] == "truncated" and not failed["transient"]
    assert "truncated video" in failed["reason"] and "40 of its 75 frames decode" in failed["reason"]
    assert file_sha256(video) == before  # never replaced by the short version
    assert sorted(p.name for p in video.parent.iterdir()) == ["cutVideo001.mp4"]  # no sidecar, no .orig, no temp


def test_parse_fails_a_truncated_video_and_writes_no_metadata(tmp_path, synthetic_video, monkeypatch):
    """parse_tracks marked a truncated video done with what it could decode."""
    from tests.tiny_models import GROUND_TRUTH_ENV, write_ground_truth
    from utils.detect.stage import PARSE_TRACKS_STAGE

    monkeypatch.setenv(GROUND_TRUTH_ENV, str(write_ground_truth(synthetic_video, tmp_path / "truth.json")))
    yid = "cutVideo002"
    base = tmp_path / "db"
    layout = DatasetLayout(base)
    layout.video_mp4(yid).parent.mkdir(parents=True)
    cut_in_data(synthetic_video.path, layout.video_mp4(yid), keep=0.6)
    layout.video_segments(yid).parent.mkdir(parents=True, exist_ok=True)
    layout.video_segments(yid).write_text("".join(f"{a},{b}\n" for a, b in synthetic_video.scene_spans()))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("cat\ncup\nrocket\nperson\ntable\n")
    ids = tmp_path / "ids.txt"
    ids.write_text(yid + "\n")
    status = main(PARSE_TRACKS_STAGE, ["--base_dir", str(base), "--yid_index_fn", str(ids), "--class_prompts",
                                       str(prompts), "--detector", "tests.tiny_models:FixtureDetector"])
    assert status == 1
    (failed,) = journal(base, "parse_tracks-TrackVerseLVIS", "failed")
    assert failed["category"] == "truncated" and f"{yid}.mp4" in failed["reason"] and "truncated" in failed["reason"]
    assert not layout.tracks_meta("TrackVerseLVIS", yid).exists()


def test_extract_fails_a_truncated_video_without_a_done_marker(tmp_path, synthetic_video):
    from utils.clips.stage import EXTRACT_TRACKS_STAGE

    yid, dataset = "cutVideo003", "TestSet"
    cut = cut_in_data(synthetic_video.path, tmp_path / "cut.mp4", keep=0.5)
    base = tmp_path / "db"
    ids = setup_db(base, cut, gt_records(synthetic_video, yid), yid, dataset)
    assert main(EXTRACT_TRACKS_STAGE, ["--base_dir", str(base), "--yid_index_fn", str(ids),
                                       "--dataset_name", dataset]) == 1
    (failed,) = journal(base, f"extract_tracks-{dataset}", "failed")
    assert failed["category"] == "truncated" and "truncated video" in failed["reason"]
    assert not DatasetLayout(base).tracks_done_marker(dataset, yid).exists()


def test_visual_metrics_counts_truncated_clips(tmp_path, short_video):
    """A truncated clip has no value and is counted as such; a chunk of only truncated clips
    fails with category truncated."""
    from utils.metrics.stage import VISUAL_METRICS_STAGE
    from utils.records.track_files import records_to_jsonl_gz_bytes
    from utils.records.tracks import TrackRecord

    complete, cut = short_video
    base = tmp_path / "db"
    records = []
    for yid, source in (("goodClip001", complete), ("cutClip0001", cut), ("cutClip0002", cut)):
        ts = [i / 15 for i in range(60)]
        record = TrackRecord(yid=yid, tid="x", fn="x.mp4", track_ts=ts, track_bbox=[[0.0, 0.0, 10.0, 10.0]] * 60,
                             top10_lbl=[0], top10_desc=["thing"])
        record.tid = record.expected_tid()
        record.fn = f"{yid[:2]}/{yid}-thing-{record.tid}.mp4"
        clip = base / "tracks_mp4" / "Synth" / record.fn
        clip.parent.mkdir(parents=True, exist_ok=True)
        clip.write_bytes(source.read_bytes())
        records.append(record)
    index = base / "tracks_subsets" / "Synth-Full.jsonl.gzip"
    index.parent.mkdir(parents=True)
    index.write_bytes(records_to_jsonl_gz_bytes(records))
    status = main(VISUAL_METRICS_STAGE, ["--base_dir", str(base), "--dataset_name", "Synth", "--index_file", str(index),
                                         "--metric", "motion", "--flow", "dis", "--chunk_size", "2"])
    assert status == 1
    job = "visual_metrics-motion-Synth"
    (done,) = journal(base, job, "done")
    assert done["stats"]["clips"] == 1 and done["stats"]["truncated_clips"] == 1
    (failed,) = journal(base, job, "failed")
    assert failed["category"] == "truncated" and "cutClip0002" in failed["reason"]

