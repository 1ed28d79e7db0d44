"""extract_tracks.py (step 4a): every track of a video as its own mp4, from one decoding pass.

Content is checked against the synthetic fixture's ground truth: each clip's frames are the
crops of the decoded source at the interpolated boxes, with the right duration, frame count
and keyframe interval. Then the stage's contract: duplicates cut once, bad tracks journaled
while the rest are cut, done markers, resume after SIGKILL.
"""

from __future__ import annotations

import gzip
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

import utils.clips.cut as clips
import utils.clips.encode as encode
from tests.helpers import REPO, decoded, gt_records, journal, psnr, run_cli, setup_db, write_meta
from tests.helpers import track_record as record
from utils.clips.cut import ClipTask, decode_spans, plan_tasks, select_tracks
from utils.clips.geometry import plan_clip
from utils.clips.stage import EXTRACT_TRACKS_STAGE
from utils.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, EXIT_USAGE
from utils.core.io import atomic_write_bytes
from utils.core.layout import DatasetLayout
from utils.core.video import ColorTags, Yuv420Image, keyframe_times, probe_video, read_frames
from utils.records.tracks import TrackRecord
from utils.runner.cli import main

YID = "synthVideo1"
DATASET = "TestSet"
JOB = f"extract_tracks-{DATASET}"


# ---------------------------------------------------------------------------- helpers


def extract(db: Path, ids: Path, *extra: str) -> int:
    return main(EXTRACT_TRACKS_STAGE, ["--base_dir", str(db), "--yid_index_fn", str(ids), "--dataset_name", DATASET, *extra])


def clip_path(db: Path, rec: TrackRecord) -> Path:
    return DatasetLayout(db).track_mp4(DATASET, rec.fn)


@pytest.fixture(scope="module")
def source_frames(synthetic_video) -> list:
    return list(read_frames(synthetic_video.path))


# ---------------------------------------------------------------------------- content


def test_clips_are_the_crops_of_the_source_at_the_interpolated_boxes(tmp_path, synthetic_video, source_frames):
    db = tmp_path / "db"
    records = gt_records(synthetic_video, YID)
    ids = setup_db(db, synthetic_video.path, records, YID, DATASET)
    assert extract(db, ids) == EXIT_OK
    fps = synthetic_video.fps
    for rec in records:
        path = clip_path(db, rec)
        plan = plan_clip(rec.track_ts, rec.track_bbox, (synthetic_video.height, synthetic_video.width))
        # every source frame in [t_start, t_end], in order
        expected = [f for f in source_frames if plan.t_start - 1e-3 <= f.time <= plan.t_end + 1e-3]
        frames = decoded(path)
        info = probe_video(path)
        assert (info.width, info.height) == plan.out_size
        assert len(frames) == len(expected) == round((plan.t_end - plan.t_start) * fps) + 1
        assert info.fps == pytest.approx(fps)
        assert info.duration == pytest.approx(len(expected) / fps, abs=1e-3)
        # a keyframe every half second (the nearest whole number of frames)
        gop = round(fps * 0.5) / fps
        assert np.allclose(np.diff(keyframe_times(path)), gop, atol=1e-3)
        assert abs(gop - 0.5) <= 0.5 / fps + 1e-9
        # content: crops of the decoded source at the interpolated integer boxes, resized
        # independently (OpenCV bicubic) of the extractor's Pillow resize
        refs = []
        for src in expected:
            x0, y0, x1, y1 = plan.box_at(src.time)
            refs.append(cv2.resize(src.image[y0:y1, x0:x1], plan.out_size, interpolation=cv2.INTER_CUBIC))
        scores = [psnr(clip_frame, ref) for clip_frame, ref in zip(frames, refs, strict=True)]
        assert min(scores) >= 30.0, (rec.fn, min(scores))
        # and the check can tell: one frame off in time is clearly worse (the objects move)
        shifted = [psnr(clip_frame, ref) for clip_frame, ref in zip(frames[1:], refs, strict=False)]
        assert np.mean(shifted) < np.mean(scores) - 3, (rec.fn, np.mean(shifted), np.mean(scores))
    # done marker written last; a second run skips the video
    marker = json.loads(DatasetLayout(db).tracks_done_marker(DATASET, YID).read_text())
    assert sorted(marker["clips"]) == sorted(r.fn for r in records)
    assert extract(db, ids) == EXIT_OK
    assert journal(db, JOB, "summary")[-1]["skipped"] == 1


def test_overlapping_duplicates_give_one_clip(tmp_path, synthetic_video):
    db = tmp_path / "db"
    cat = gt_records(synthetic_video, YID)[0]
    nudged = record(YID, "kitten", cat.track_ts, [[x + 1, y + 1, w, h] for x, y, w, h in cat.track_bbox])
    half = len(cat.track_ts) // 2  # the same object for half the time: overlap about 0.5
    partial = record(YID, "cat", cat.track_ts[:half], cat.track_bbox[:half])
    ids = setup_db(db, synthetic_video.path, [cat, nudged, partial], YID, DATASET)
    assert extract(db, ids) == EXIT_OK
    assert clip_path(db, cat).exists() and clip_path(db, partial).exists()
    assert not clip_path(db, nudged).exists()
    marker = json.loads(DatasetLayout(db).tracks_done_marker(DATASET, YID).read_text())
    assert marker["duplicates"] == {nudged.fn: cat.fn}
    done = journal(db, JOB, "done")[-1]
    assert nudged.fn in done["notes"]["duplicates_not_cut"] and done["stats"]["clips"] == 2


def test_bad_tracks_are_journaled_and_the_rest_are_cut(tmp_path, synthetic_video):
    db = tmp_path / "db"
    good = gt_records(synthetic_video, YID)[0]
    after_end = record(YID, "ghost", [100.0, 100.5, 101.0], [[10, 10, 50, 50]] * 3)
    zero = record(YID, "flat", [1.0, 1.5, 2.0], [[10, 10, 0, 0]] * 3)
    single = record(YID, "blink", [2.0], [[20, 30, 60, 40]])
    outside = record(YID, "edge", [1.0, 2.0, 3.0], [[-30, -20, 80, 60], [280, 200, 80, 60], [100, 100, 80, 60]])
    escaping = {**record(YID, "evil", [1.0, 2.0], [[10, 10, 40, 40]] * 2).to_dict(), "fn": "../../../escape.mp4"}
    negative = {**record(YID, "neg", [1.0, 2.0], [[10, 10, 40, 40]] * 2).to_dict(),
                "track_bbox": [[10, 10, -5, 40], [10, 10, 40, 40]]}
    ids = setup_db(db, synthetic_video.path, [good, after_end, zero, single, outside, escaping, negative], YID, DATASET)
    assert extract(db, ids) == EXIT_ITEMS_FAILED
    failed = journal(db, JOB, "failed")[-1]
    assert failed["category"] == "bad_tracks" and not failed["transient"]
    for name in (after_end.fn, zero.fn, "../../../escape.mp4", negative["fn"]):
        assert name in failed["reason"]
    assert "after the video ends" in failed["reason"] and "zero width or height" in failed["reason"]
    assert "escape" in failed["reason"] and "negative width" in failed["reason"]
    # the others were cut: a single timestamp gives one frame, boxes outside are shifted in
    assert len(decoded(clip_path(db, single))) == 1
    assert len(decoded(clip_path(db, outside))) == 51 and len(decoded(clip_path(db, good))) > 90
    assert not (tmp_path / "escape.mp4").exists() and not list(tmp_path.rglob("*escape*"))
    assert not DatasetLayout(db).tracks_done_marker(DATASET, YID).exists()
    # a plain re-run leaves the permanent failure alone; --retry_failed re-checks without re-cutting
    before = {p: p.stat().st_mtime_ns for p in (db / "tracks_mp4").rglob("*.mp4")}
    assert extract(db, ids) == EXIT_OK
    assert journal(db, JOB, "summary")[-1]["previously_failed"] == 1
    assert extract(db, ids, "--retry_failed") == EXIT_ITEMS_FAILED
    assert {p: p.stat().st_mtime_ns for p in (db / "tracks_mp4").rglob("*.mp4")} == before
    assert journal(db, JOB, "failed")[-1]["reason"] == failed["reason"]



def test_a_record_missing_a_key_fails_only_its_own_track(tmp_path, synthetic_video):
    """Issue 14, item 8: one record without ``track_bbox`` made the whole metadata file
    unreadable, so no track of the video was cut. It is now a bad track like the others: the
    other clips are cut, the video fails (bad_tracks) naming it, and a line that is not JSON is
    one more bad record."""
    db = tmp_path / "db"
    good = gt_records(synthetic_video, YID)[:3]
    no_boxes = {k: v for k, v in record(YID, "nobox", [1.0, 2.0], [[10, 10, 40, 40]] * 2).to_dict().items()
                if k != "track_bbox"}
    no_yid = {k: v for k, v in record(YID, "noyid", [1.0, 2.0], [[10, 10, 40, 40]] * 2).to_dict().items()
              if k != "yid"}
    ids = setup_db(db, synthetic_video.path, [good[0], no_boxes, good[1], no_yid, good[2]], YID, DATASET)
    assert extract(db, ids) == EXIT_ITEMS_FAILED
    failed = journal(db, JOB, "failed")[-1]
    assert failed["category"] == "bad_tracks" and not failed["transient"]
    assert "2 of 5 tracks cannot be cut (bad_record)" in failed["reason"]
    assert no_boxes["fn"] in failed["reason"] and no_yid["fn"] in failed["reason"]
    assert "track_bbox" in failed["reason"] and "'yid'" in failed["reason"]
    assert all(len(decoded(clip_path(db, r))) > 10 for r in good)
    assert not DatasetLayout(db).tracks_done_marker(DATASET, YID).exists()
    # a line that is not JSON at all is a bad record too; a torn file is still unreadable
    meta = DatasetLayout(db).tracks_meta(DATASET, YID)
    lines = gzip.decompress(meta.read_bytes()).decode().splitlines(keepends=True)
    atomic_write_bytes(meta, gzip.compress("".join([lines[0], "{not json\n", *lines[1:]]).encode()))
    assert extract(db, ids, "--retry_failed") == EXIT_ITEMS_FAILED
    failed = journal(db, JOB, "failed")[-1]
    assert "3 of 6 tracks" in failed["reason"] and f"{meta.name}: line 2: not a JSON line" in failed["reason"]
    atomic_write_bytes(meta, gzip.compress("".join([*lines, '{"yid": "synthVid']).encode()))
    assert extract(db, ids, "--retry_failed") == EXIT_ITEMS_FAILED
    assert journal(db, JOB, "failed")[-1]["category"] == "bad_metadata"

def test_repairs_are_noted_in_the_journal(tmp_path, synthetic_video):
    db = tmp_path / "db"
    single = record(YID, "blink", [2.0], [[20, 30, 60, 40]])
    outside = record(YID, "edge", [1.0, 2.0, 3.0], [[-30, -20, 80, 60], [280, 200, 80, 60], [100, 100, 80, 60]])
    holes = record(YID, "holes", [1.0, 1.5, 2.0, 2.5], [[10, 10, 60, 60], [0, 0, 0, 0], [14, 10, 60, 60], [16, 10, 60, 60]])
    ids = setup_db(db, synthetic_video.path, [single, outside, holes], YID, DATASET)
    assert extract(db, ids, "--max_track_len", "1.0") == EXIT_OK
    notes = journal(db, JOB, "done")[-1]["notes"]
    assert notes["single_timestamp_one_frame"] == single.fn
    assert notes["boxes_outside_frame_shifted_in"] == outside.fn
    assert notes["zero_size_boxes_skipped"] == holes.fn
    assert set(notes["longer_than_1s_cut"].split(", ")) == {outside.fn, holes.fn}
    assert len(decoded(clip_path(db, outside))) == 26  # --max_track_len 1.0 at 25 fps


def test_new_metadata_reopens_a_done_video_and_only_new_clips_are_cut(tmp_path, synthetic_video):
    db = tmp_path / "db"
    records = gt_records(synthetic_video, YID)
    ids = setup_db(db, synthetic_video.path, records[:2], YID, DATASET)
    assert extract(db, ids) == EXIT_OK
    first = {r.fn: clip_path(db, r).stat().st_mtime_ns for r in records[:2]}
    write_meta(db, YID, records, DATASET)  # parse_tracks re-ran: a new metadata file
    assert extract(db, ids) == EXIT_OK
    assert {r.fn: clip_path(db, r).stat().st_mtime_ns for r in records[:2]} == first
    assert all(clip_path(db, r).exists() for r in records)
    done = journal(db, JOB, "done")[-1]
    assert done["stats"]["clips"] == len(records) - 2 and done["notes"]["skipped"] == "2 clips existed already"


def test_missing_inputs(tmp_path, synthetic_video):
    db = tmp_path / "db"
    ids = tmp_path / "ids.txt"
    ids.write_text("noMetaYet01\nnoVideo0001\nnot-an-id\n")
    write_meta(db, "noVideo0001", gt_records(synthetic_video, "noVideo0001")[:1], DATASET)
    assert extract(db, ids) == EXIT_ITEMS_FAILED
    assert journal(db, JOB, "not_ready")[0]["item"] == "noMetaYet01"
    failed = {r["item"]: r for r in journal(db, JOB, "failed")}
    assert failed["noVideo0001"]["category"] == "missing_video"
    assert "not a YouTube id" in failed["not-an-id"]["reason"]


def test_encoders_open_only_while_their_tracks_are(monkeypatch, tmp_path, synthetic_video):
    """Memory is bounded by the tracks open at once: tracks in turn never overlap in encoders."""
    open_now, most = set(), [0]
    real = encode.VideoWriter

    class Counting(real):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            open_now.add(id(self))
            most[0] = max(most[0], len(open_now))

        def finish(self):
            open_now.discard(id(self))
            return super().finish()

    monkeypatch.setattr(encode, "VideoWriter", Counting)  # one worker: the writers live in this process
    starts = [0.0, 1.0, 2.0, 3.0, 10.5]  # each lasts 0.75 s: the 3.75-10.5 s gap is skipped by seeking
    recs = [record(YID, f"obj{k}", np.arange(t, t + 1.0, 0.25), [[10 + 20 * k, 10, 60, 60]] * 4)
            for k, t in enumerate(starts)]
    info = probe_video(synthetic_video.path)
    selection = select_tracks(recs, lambda r: tmp_path / r.fn)
    planned = plan_tasks(selection.tracks, (info.height, info.width), info.duration)
    stats = clips.extract_clips(synthetic_video.path, planned.tasks, info.fps, workers=1)
    assert len(stats.clips_written) == 5 and most[0] == 1 and not open_now
    assert stats.frames_decoded <= 94 + 21 < synthetic_video.num_frames / 2  # only the spans with tracks


def test_decode_spans_and_windows():
    assert decode_spans([(0, 1), (2, 3), (20, 25), (24, 30), (40, 41)], gap=5) == [(0, 3), (20, 30), (40, 41)]
    one = record(YID, "x", [2.0], [[0, 0, 10, 10]])
    task = ClipTask(one, Path("x.mp4"), plan_clip(one.track_ts, one.track_bbox, (240, 320)))
    start, end = task.window(25.0)
    assert start == pytest.approx(1.98) and end == pytest.approx(2.02) and end < 2.02


# ---------------------------------------------------------------------------- crash safety


def test_sigkill_mid_extraction_then_rerun_equals_an_uninterrupted_run(tmp_path, long_video):
    records = gt_records(long_video, YID)
    reference_db = tmp_path / "reference"
    assert extract(reference_db, setup_db(reference_db, long_video.path, records, YID, DATASET)) == EXIT_OK

    db = tmp_path / "db"
    ids = setup_db(db, long_video.path, records, YID, DATASET)
    args = ["extract_tracks.py", "--base_dir", str(db), "--yid_index_fn", str(ids), "--dataset_name", DATASET]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clips_dir = DatasetLayout(db).track_mp4(DATASET, f"{YID[:2]}/x.mp4").parent
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            names = os.listdir(clips_dir) if clips_dir.is_dir() else []
            if any(n.endswith(".mp4") and not n.startswith(".") for n in names):
                break  # at least one clip done, others still being written
            time.sleep(0.005)
        assert proc.poll() is None, "the extraction finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finals = [p for p in clips_dir.iterdir() if not p.name.startswith(".")]
    assert 0 < len(finals) < len(records), "killed mid-extraction"
    for path in finals:  # every clip on disk is whole
        assert probe_video(path).num_frames == len(decoded(path)) > 0
    assert not DatasetLayout(db).tracks_done_marker(DATASET, YID).exists()

    assert run_cli(*args).returncode == EXIT_OK
    assert sorted(p.name for p in clips_dir.iterdir()) == sorted(
        [Path(r.fn).name for r in records] + [f"{YID}.done.json"])  # no temporaries left
    for rec in records:
        ours, ref = decoded(clip_path(db, rec)), decoded(clip_path(reference_db, rec))
        assert len(ours) == len(ref) and ours[0].shape == ref[0].shape
        # small clips (seen for widths under 64) encode to other bytes run to run from identical
        # pixels, likely padding bytes of FFmpeg's frame allocation that libx264 reads: equal up to coding noise
        assert min(psnr(a, b) for a, b in zip(ours, ref, strict=True)) > 35


def test_crop_resize_luma_is_pillows_default_resize_of_the_integer_crop():
    """As the released clips were made: ``PIL.Image.resize`` (its default filter) of frame[y0:y1, x0:x1],
    here on the luma plane (clips are cut in the decoder's 4:2:0 form)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y = rng.integers(0, 256, (120, 160), dtype=np.uint8)
    image = Yuv420Image(y, rng.integers(0, 256, (60, 80), dtype=np.uint8), rng.integers(0, 256, (60, 80), dtype=np.uint8))
    for box, size in [((10, 20, 90, 80), (64, 48)), ((0, 0, 50, 40), (80, 64)), ((5, 5, 45, 35), (40, 30)),
                      ((3, 7, 43, 37), (40, 30))]:
        x0, y0, x1, y1 = box
        original = np.asarray(Image.fromarray(y[y0:y1, x0:x1]).resize(size))
        out = encode.crop_resized(image, box, size)
        assert np.array_equal(out.y, original)
        assert out.u.shape == out.v.shape == (size[1] // 2, size[0] // 2)


@pytest.mark.parametrize("box", [(10, 20, 90, 80), (11, 21, 91, 81), (11, 20, 57, 61)])
def test_crop_resize_chroma_covers_the_same_region_at_half_resolution(box):
    """Chroma planes are half size: an odd box edge falls on half a chroma sample. On linear
    ramps (which bicubic reproduces exactly) each output chroma sample must hold the value at
    its own position in the source, so a half-sample shift would show as an error of 0.5 x slope."""
    h2, w2 = 60, 80
    u = np.tile((np.arange(w2) * 3).astype(np.uint8), (h2, 1))  # u = 3 * column
    v = np.tile((np.arange(h2) * 4).astype(np.uint8)[:, None], (1, w2))  # v = 4 * row
    image = Yuv420Image(np.zeros((120, 160), np.uint8), u, v)
    x0, y0, x1, y1 = box
    size = (40, 30)
    out = encode.crop_resized(image, box, size)
    # output chroma sample j has its centre at source chroma coordinate x0/2 + (j + 0.5) * scale - 0.5
    cols = x0 / 2 + (np.arange(size[0] // 2) + 0.5) * (x1 - x0) / 2 / (size[0] // 2) - 0.5
    rows = y0 / 2 + (np.arange(size[1] // 2) + 0.5) * (y1 - y0) / 2 / (size[1] // 2) - 0.5
    inner = (slice(2, -2), slice(2, -2))  # away from the crop's edges (bicubic's support is clamped there)
    assert np.abs(out.u.astype(float) - 3 * cols[None, :])[inner].max() <= 0.75
    assert np.abs(out.v.astype(float) - 4 * rows[:, None])[inner].max() <= 0.75


# Runs extract_tracks.py with a limit on file size: a clip that grows past it fails to write (EFBIG),
# as on a full disk, on whichever worker process is encoding it. The limit is set once the shared
# frame ring exists (a memfd: the limit applies to it too), before the worker processes start.
_WITH_FILE_SIZE_LIMIT = """
import resource, runpy, signal, sys
import utils.clips.encode as encode
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
ring_init = encode.FrameRing.__init__
def limited(self, *args, **kwargs):
    ring_init(self, *args, **kwargs)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
encode.FrameRing.__init__ = limited
sys.argv[0] = "extract_tracks.py"
runpy.run_path("extract_tracks.py", run_name="__main__")
"""


def test_a_write_failure_on_a_worker_fails_the_video_and_leaves_no_partial_clip(tmp_path, long_video):
    """Clips are encoded on worker processes: an error there (here: files may not exceed 40 kB, as
    when the disk fills) must fail the video with the reason, drop every open clip, keep the
    finished ones whole, and leave a re-run with nothing to distrust."""
    records = gt_records(long_video, YID)
    db = tmp_path / "db"
    ids = setup_db(db, long_video.path, records, YID, DATASET)
    args = ["--base_dir", db, "--yid_index_fn", ids, "--dataset_name", DATASET, "--threads", "3"]  # the old name of --num_workers
    proc = run_cli("-c", _WITH_FILE_SIZE_LIMIT, 40_000, *args)
    assert proc.returncode == EXIT_ITEMS_FAILED, proc.stderr
    failed = journal(db, JOB, "failed")
    assert len(failed) == 1 and failed[0]["item"] == YID and "File too large" in failed[0]["reason"], failed
    clips_dir = clip_path(db, records[0]).parent
    on_disk = sorted(clips_dir.iterdir())
    assert all(p.suffix == ".mp4" for p in on_disk), on_disk  # no temporaries, no done marker
    for path in on_disk:
        assert probe_video(path).num_frames == len(decoded(path)) > 0
    assert 0 < len(on_disk) < len(records)  # some clips fit under the limit, some did not

    # a file-size limit is not transient (a full disk, ENOSPC, would stop the shard instead): retry explicitly
    assert run_cli("extract_tracks.py", *args, "--retry_failed").returncode == EXIT_OK
    assert sorted(p.name for p in clips_dir.iterdir()) == sorted(
        [Path(r.fn).name for r in records] + [f"{YID}.done.json"])


def test_the_number_of_workers_does_not_change_the_clips(tmp_path, long_video):
    """1 worker cuts in this process, 3 in worker processes: the same clips, frame for frame."""
    records = gt_records(long_video, YID)
    info = probe_video(long_video.path)
    outputs = {}
    for workers in (1, 3):
        selection = select_tracks(records, lambda r, t=workers: tmp_path / str(t) / r.fn)
        planned = plan_tasks(selection.tracks, (info.height, info.width), info.duration)
        stats = clips.extract_clips(long_video.path, planned.tasks, info.fps, workers=workers)
        assert sorted(stats.clips_written) == sorted(r.fn for r in records)
        assert stats.frames_written == sum(probe_video(tmp_path / str(workers) / r.fn).num_frames for r in records)
        outputs[workers] = {r.fn: decoded(tmp_path / str(workers) / r.fn) for r in records}
    for fn, frames in outputs[1].items():
        assert len(frames) == len(outputs[3][fn])
        # equal up to x264's run-to-run coding noise (see the SIGKILL test); a frame out of order or
        # from another clip would fall far below this
        assert min(psnr(a, b) for a, b in zip(frames, outputs[3][fn], strict=True)) > 35, fn


@pytest.mark.parametrize("flag", ["--num_workers", "--threads"])
def test_workers_flag_is_checked(flag):
    proc = run_cli("extract_tracks.py", "--yid_index_fn", "/nonexistent.txt", flag, "0")
    assert proc.returncode == EXIT_USAGE and "--num_workers (--threads) must be at least 1, got 0" in proc.stderr


@pytest.mark.parametrize("name", ["box.mp4", "cup.mp4", "vtest.avi"])
def test_clips_from_real_videos_are_the_crops_of_their_frames(tmp_path, name):
    """Real files (H.264 High with B-frames and pts that go back and forth, an odd frame rate,
    MPEG-4 part 2 with 4 keyframes): clips are the crops of the decoded frames at the boxes."""
    from tests.helpers import shared_video

    path = shared_video(name)
    info = probe_video(path)
    w, h = info.width, info.height
    t0 = 0.4 * info.duration
    t1 = t0 + min(4.0, 0.3 * info.duration)
    frames = list(read_frames(path, start=t0 - 0.5, end=t1 + 0.5))  # the tracks' span, not the whole video
    ts = np.arange(t0, t1, 1 / 16)
    a = (ts - ts[0]) / (ts[-1] - ts[0])
    recs = [  # one box drifting across the frame, one growing from a corner
        record("realvideo01", "drift", ts, [[0.1 * w + a_ * 0.5 * w, 0.2 * h, 0.3 * w, 0.4 * h] for a_ in a], (h, w)),
        record("realvideo01", "grow", ts, [[1, 3, 0.2 * w + a_ * 0.5 * w, 0.25 * h + a_ * 0.5 * h] for a_ in a], (h, w)),
    ]
    selection = select_tracks(recs, lambda r: tmp_path / r.fn)
    planned = plan_tasks(selection.tracks, (h, w), info.duration)
    stats = clips.extract_clips(path, planned.tasks, info.fps)
    assert sorted(stats.clips_written) == sorted(r.fn for r in recs) and not stats.problems
    for task in planned.tasks:
        plan = task.plan
        expected = [f for f in frames if plan.t_start - 1e-3 <= f.time <= plan.t_end + 1e-3]
        got = decoded(task.path)
        assert len(got) == len(expected) > 0
        assert probe_video(task.path).fps == pytest.approx(info.fps, rel=1e-3)
        refs = []
        for src in expected:
            x0, y0, x1, y1 = plan.box_at(src.time)
            refs.append(cv2.resize(src.image[y0:y1, x0:x1], plan.out_size, interpolation=cv2.INTER_CUBIC))
        scores = [psnr(a_, b) for a_, b in zip(got, refs, strict=True)]
        assert min(scores) >= 30.0, (name, task.name, min(scores))
        # colour too (chroma is cut from the half-size planes): PSNR over all of R, G and B
        rgb = [10 * np.log10(255.0**2 / np.mean((a_.astype(float) - b) ** 2)) for a_, b in zip(got, refs, strict=True)]
        assert min(rgb) >= 27.0, (name, task.name, min(rgb))


def _color_bars_video(path: Path, color: ColorTags | None, pix_fmt: str = "yuv420p", fps: float = 25.0) -> Path:
    """2 s of saturated colour bars drifting right, 320x240, with the given colour tags / format."""
    import av

    bars = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255],
                     [255, 255, 255], [16, 16, 16]], np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = 320, 240, pix_fmt
        stream.options = {"crf": "10", "preset": "veryfast"}
        if color is not None:
            ctx = stream.codec_context
            ctx.colorspace, ctx.color_primaries, ctx.color_trc = color.matrix, color.primaries, color.transfer
        for k in range(int(2 * fps)):
            cols = (np.arange(320) + 3 * k) // 40 % len(bars)
            rgb = np.ascontiguousarray(np.broadcast_to(bars[cols][None], (240, 320, 3)))
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if color is not None:  # RGB -> YUV with the matrix the stream says it uses
                frame = frame.reformat(format=pix_fmt, dst_colorspace=color.matrix)
                frame.colorspace = color.matrix
            frame.pts = k
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize("color, pix_fmt", [(ColorTags(1, 1, 1), "yuv420p"), (None, "yuvj420p")],
                         ids=["bt709", "full_range"])
def test_clips_keep_the_colours_of_their_source(tmp_path, color, pix_fmt):
    """Clips are cut from the source's YUV samples: a BT.709 source's clips carry its tags, and a
    full-range source is brought to the limited range H.264 clips use, so that colours read
    back are the source's (a BT.709 picture read as BT.601 shifts saturated colours by 20+ levels)."""
    source = _color_bars_video(tmp_path / "bars.mp4", color, pix_fmt)
    info = probe_video(source)
    rec = record("colorBars01", "bars", np.arange(0.2, 1.8, 1 / 16), [[40, 30, 200, 160]] * 26, (240, 320))
    selection = select_tracks([rec], lambda r: tmp_path / r.fn)
    planned = plan_tasks(selection.tracks, (240, 320), info.duration)
    clips.extract_clips(source, planned.tasks, info.fps)
    [task] = planned.tasks
    plan = task.plan
    expected = [f for f in read_frames(source) if plan.t_start - 1e-3 <= f.time <= plan.t_end + 1e-3]
    got = decoded(task.path)
    assert len(got) == len(expected)
    for clip_frame, src in zip(got, expected, strict=True):
        x0, y0, x1, y1 = plan.box_at(src.time)
        ref = cv2.resize(src.image[y0:y1, x0:x1], plan.out_size, interpolation=cv2.INTER_CUBIC).astype(float)
        inner = (slice(8, -8), slice(8, -8))
        # per-pixel colour error away from the bars' edges (chroma is half resolution there)
        err = np.abs(clip_frame.astype(float) - ref)[inner]
        assert np.median(err) <= 3.0 and np.percentile(err, 75) <= 6.0, (np.median(err), np.percentile(err, 75))


def _resolution_change_video(path: Path) -> Path:
    """MPEG-TS, 2 s at 320x240 then 2 s at 160x120 of the same horizontal ramp (TS streams can be
    joined byte for byte; the second carries its own SPS)."""
    import io

    import av

    def part(w: int, h: int, first: int, n: int) -> bytes:
        buf = io.BytesIO()
        with av.open(buf, "w", format="mpegts") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": "12", "preset": "veryfast", "x264-params": "keyint=25"}
            for k in range(first, first + n):
                ramp = np.linspace(0, 200, w)[None, :] + 40 * np.sin(np.linspace(0, 6, h))[:, None] + k % 10
                frame = av.VideoFrame.from_ndarray(np.repeat(ramp[..., None], 3, 2).astype(np.uint8), format="rgb24")
                frame.pts = k
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return buf.getvalue()

    path.write_bytes(part(320, 240, 0, 50) + part(160, 120, 52, 50))
    return path


def test_a_stream_that_changes_resolution_is_cut_at_the_probed_size(tmp_path):
    source = _resolution_change_video(tmp_path / "switch.ts")
    info = probe_video(source)
    assert (info.width, info.height) == (320, 240)
    rec = record("sizeSwitch1", "ramp", np.arange(1.0, 3.5, 1 / 16), [[100, 60, 120, 100]] * 40, (240, 320))
    selection = select_tracks([rec], lambda r: tmp_path / r.fn)
    planned = plan_tasks(selection.tracks, (240, 320), info.duration)
    stats = clips.extract_clips(source, planned.tasks, info.fps)
    assert stats.notes.get("frames_rescaled_to_the_probed_size") == [rec.fn]
    [task] = planned.tasks
    plan = task.plan
    # reference: every frame at the first frame's size (read_frames scales them so), cropped
    expected = [f for f in read_frames(source) if plan.t_start - 1e-3 <= f.time <= plan.t_end + 1e-3]
    assert {f.image.shape for f in expected} == {(240, 320, 3)}
    got = decoded(task.path)
    assert len(got) == len(expected)
    refs = []
    for src in expected:
        x0, y0, x1, y1 = plan.box_at(src.time)
        refs.append(cv2.resize(src.image[y0:y1, x0:x1], plan.out_size, interpolation=cv2.INTER_CUBIC))
    assert min(psnr(a, b) for a, b in zip(got, refs, strict=True)) >= 30.0
