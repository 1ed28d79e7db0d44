"""download_tracks.py: rebuild a released subset end to end, with the real yt-dlp downloading
from a local HTTP server (tests/http_server.py): released spelling of the records, boxes scaled
for a video served at another size, every video of a shard processed (the last one too),
failures journaled, sources removed on request, nothing redone on a re-run."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import RELEASED_SUBSET as SUBSET
from tests.helpers import decoded, gt_records, journal, psnr
from tests.helpers import rebuild_subset as run
from tests.helpers import rebuilt_clip as clip
from tests.http_server import Fault
from utils.clips.geometry import plan_clip
from utils.clips.released import DOWNLOAD_TRACKS_STAGE, SubsetIndex, resolve_meta_file
from utils.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from utils.core.layout import DatasetLayout
from utils.core.video import VideoWriter, probe_video, read_frames
from utils.records.tracks import TrackRecord
from utils.runner.cli import main
from utils.testing.synthetic import SyntheticVideo

YID = "synthVideo1"
JOB = "download_tracks-TrackVerse-Test"


def released(rec: TrackRecord) -> dict:
    """A record in the released subsets' spelling."""
    return {
        "yid": rec.yid, "track_id": rec.tid, "track_mp4_filename": rec.fn, "video_size": rec.video_size,
        "track_ts": [rec.track_ts[0], rec.track_ts[-1]], "frame_ts": rec.track_ts, "frame_bboxes": rec.track_bbox,
        "top10_label_ids": [3], "top10_label_names": [Path(rec.fn).name.split("-")[1]],
    }


def write_subset(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_bytes(gzip.compress(text.encode()))
    return path


def with_yid(records: list[TrackRecord], yid: str, video_size=None) -> list[TrackRecord]:
    """The same tracks as if found in video ``yid`` (file names follow)."""
    out = []
    for r in records:
        size = video_size or r.video_size
        sy, sx = size[0] / r.video_size[0], size[1] / r.video_size[1]
        boxes = [[x * sx, y * sy, w * sx, h * sy] for x, y, w, h in r.track_bbox]
        out.append(TrackRecord(yid=yid, tid=r.tid, fn=f"{yid[:2]}/{yid}-{Path(r.fn).name.split('-', 1)[1]}",
                               track_ts=r.track_ts, track_bbox=boxes, video_size=list(size)))
    return out


@pytest.fixture(scope="module")
def half_size_video(tmp_path_factory, synthetic_video: SyntheticVideo) -> Path:
    """The fixture at 160x120: what a site serves when the record's size is no longer offered."""
    path = tmp_path_factory.mktemp("half") / "half.mp4"
    with VideoWriter(path, 160, 120, synthetic_video.fps, keyframe_interval=1.0, crf=18) as writer:
        for frame in read_frames(synthetic_video.path, size=(160, 120)):
            writer.write(frame.image)
    return path


# ------------------------------------------------------------------------------ end to end


def test_rebuilds_a_subset_end_to_end_with_yt_dlp(tmp_path, server, synthetic_video, half_size_video):
    base = gt_records(synthetic_video, YID)
    same = with_yid(base[:3], "sameSizeAAA")
    # records made on a 640x480 copy; the server only has 160x120: boxes are scaled by 1/4
    scaled = with_yid(base[:3], "otherSizeAA", video_size=[480, 640])
    last = with_yid(base[3:], "lastVideoAA")
    gone = with_yid(base[:1], "goneVideoAA")
    server.add("/v/sameSizeAAA.mp4", synthetic_video.path)
    server.add("/v/otherSizeAA.mp4", half_size_video)
    server.add("/v/lastVideoAA.mp4", synthetic_video.path)
    # non-contiguous records of one video, a line that is no record, a video that is gone
    lines = ([released(r) for r in same[:2]] + [released(r) for r in scaled] + ["{not json"]
             + [released(gone[0])] + [released(same[2])] + [released(r) for r in last])
    write_subset(tmp_path / SUBSET, lines)

    proc = run(tmp_path, server, "--remove_video_mp4", cli=True)
    assert proc.returncode == EXIT_ITEMS_FAILED, proc.stderr
    assert "5 items: 3 done, 0 skipped (already done), 2 failed" in proc.stderr
    failed = {r["item"]: r for r in journal(tmp_path / "db", JOB, "failed")}
    assert failed["goneVideoAA"]["category"] in ("not_found", "unavailable")
    assert failed[f"{SUBSET}:6"]["category"] == "bad_record" and "not a JSON track record" in failed[f"{SUBSET}:6"]["reason"]
    for rec in same + scaled + last:  # the released names are kept
        assert clip(tmp_path, rec.fn).is_file(), rec.fn
    layout = DatasetLayout(tmp_path / "db")
    for yid in ("sameSizeAAA", "otherSizeAA", "lastVideoAA"):  # --remove_video_mp4, after the clips
        assert not layout.video_mp4(yid).exists()
        assert layout.tracks_done_marker(None, yid).exists()
    done = {r["item"]: r for r in journal(tmp_path / "db", JOB, "done")}
    assert "boxes scaled by 0.25 x 0.25" in done["otherSizeAA"]["notes"]["scaled_boxes"]
    assert "scaled_boxes" not in done["sameSizeAAA"]["notes"]

    # the scaled clips are the crops of the video as served, at the scaled boxes
    served = list(read_frames(half_size_video))
    for rec in scaled:
        boxes = np.asarray(rec.track_bbox) / 4
        plan = plan_clip(rec.track_ts, boxes, (120, 160))
        frames = decoded(clip(tmp_path, rec.fn))
        expected = [f for f in served if plan.t_start - 1e-3 <= f.time <= plan.t_end + 1e-3]
        assert len(frames) == len(expected) and probe_video(clip(tmp_path, rec.fn)).width == plan.out_size[0]
        refs = [cv2.resize(f.image[y0:y1, x0:x1], plan.out_size, interpolation=cv2.INTER_CUBIC)
                for f in expected for x0, y0, x1, y1 in [plan.box_at(f.time)]]
        assert min(psnr(a, b) for a, b in zip(frames, refs, strict=True)) >= 30

    # a re-run downloads nothing and redoes nothing
    requests = len(server.requests)
    assert run(tmp_path, server) == EXIT_OK
    assert len(server.requests) == requests
    summary = journal(tmp_path / "db", JOB, "summary")[-1]
    assert summary["skipped"] == 3 and summary["previously_failed"] == 2


def test_every_video_of_a_shard_is_processed_the_last_one_too(tmp_path, server, synthetic_video):
    yids = ["shardVideo0", "shardVideo1", "shardVideo2", "shardVideo3", "shardVideo4"]
    cat = gt_records(synthetic_video, YID)[:1]
    lines = []
    for yid in yids:
        server.add(f"/v/{yid}.mp4", synthetic_video.path)
        lines += [released(r) for r in with_yid(cat, yid)]
    write_subset(tmp_path / SUBSET, lines)
    done: list[str] = []
    for rank in (1, 0):  # rank 1 holds videos 1 and 3, rank 0 holds 0, 2 and the file's last one
        assert run(tmp_path, server, "--world_size", "2", "--rank", str(rank)) == EXIT_OK
        now = [r["item"] for r in journal(tmp_path / "db", JOB, "done")]
        assert sorted(set(now) - set(done)) == yids[rank::2]
        done = now
    layout = DatasetLayout(tmp_path / "db")
    assert all(layout.tracks_done_marker(None, y).exists() for y in yids)
    assert all(layout.video_mp4(y).exists() for y in yids)  # no --remove_video_mp4: kept


def test_bad_tracks_fail_the_video_and_keep_its_source(tmp_path, server, synthetic_video):
    yid = "badTracksAA"
    good = with_yid(gt_records(synthetic_video, YID)[:1], yid)[0]
    late = released(with_yid(gt_records(synthetic_video, YID)[:1], yid)[0])
    late.update(frame_ts=[50.0, 51.0], track_ts=[50.0, 51.0], frame_bboxes=[[10, 10, 40, 40]] * 2,
                track_mp4_filename=f"{yid[:2]}/{yid}-late-x.mp4")
    escape = {**released(good), "track_mp4_filename": "/etc/evil.mp4"}
    server.add(f"/v/{yid}.mp4", synthetic_video.path)
    write_subset(tmp_path / SUBSET, [released(good), late, escape])
    assert run(tmp_path, server, "--remove_video_mp4") == EXIT_ITEMS_FAILED
    failed = journal(tmp_path / "db", JOB, "failed")[-1]
    assert failed["category"] == "bad_tracks"
    assert "badTracksAA-late-x.mp4: starts at 50.000 s, after the video ends" in failed["reason"]
    assert "/etc/evil.mp4" in failed["reason"] and "is kept" in failed["reason"]
    assert clip(tmp_path, good.fn).is_file()
    assert DatasetLayout(tmp_path / "db").video_mp4(yid).exists()  # not all clips exist: kept


def test_a_transient_download_failure_is_retried_by_a_plain_rerun(tmp_path, server, synthetic_video):
    yid = "flakyVideoA"
    server.add(f"/v/{yid}.mp4", synthetic_video.path)
    server.fail(f"/v/{yid}.mp4", Fault.status(503, times=None))
    write_subset(tmp_path / SUBSET, [released(r) for r in with_yid(gt_records(synthetic_video, YID)[:2], yid)])
    assert run(tmp_path, server) == EXIT_ITEMS_FAILED
    failed = journal(tmp_path / "db", JOB, "failed")[-1]
    assert failed["transient"] and failed["category"] == "server_error"
    server.clear_faults(f"/v/{yid}.mp4")
    assert run(tmp_path, server) == EXIT_OK
    assert DatasetLayout(tmp_path / "db").tracks_done_marker(None, yid).exists()


def test_another_subset_with_more_tracks_of_a_done_video_cuts_only_the_new_ones(tmp_path, server, synthetic_video):
    yid = "twoSubsetsA"
    records = with_yid(gt_records(synthetic_video, YID), yid)
    server.add(f"/v/{yid}.mp4", synthetic_video.path)
    small = write_subset(tmp_path / "small" / SUBSET, [released(r) for r in records[:2]])
    assert run(tmp_path, server, subset=small) == EXIT_OK
    first = {r.fn: clip(tmp_path, r.fn).stat().st_mtime_ns for r in records[:2]}
    assert run(tmp_path, server, subset=write_subset(tmp_path / SUBSET, [released(r) for r in records])) == EXIT_OK
    assert {r.fn: clip(tmp_path, r.fn).stat().st_mtime_ns for r in records[:2]} == first
    assert all(clip(tmp_path, r.fn).is_file() for r in records)
    requests = len(server.requests)
    assert run(tmp_path, server, subset=small) == EXIT_OK  # back to the small one: all there, no download
    assert len(server.requests) == requests


# ------------------------------------------------------------------------------ pieces


def test_subset_index_groups_by_video_in_order_of_first_appearance(tmp_path):
    lines = [{"yid": "bbbbbbbbbbb", "n": 1}, {"yid": "aaaaaaaaaaa", "n": 2}, "oops", {"yid": "bbbbbbbbbbb", "n": 3}]
    path = write_subset(tmp_path / "s.jsonl.gzip", lines)
    index = SubsetIndex.scan(path, keep=lambda i: i == 0)
    assert index.items == ["bbbbbbbbbbb", "aaaaaaaaaaa", "s.jsonl.gzip:3"]
    assert [json.loads(x)["n"] for x in index.lines("bbbbbbbbbbb")] == [1, 3]
    assert index.lines("aaaaaaaaaaa") == []  # another rank's video: not kept
    assert index.digests["bbbbbbbbbbb"] != SubsetIndex.scan(write_subset(path, lines[:1])).digests["bbbbbbbbbbb"]
    truncated = tmp_path / "t.jsonl.gzip"
    truncated.write_bytes(gzip.compress(b'{"yid": "bbbbbbbbbbb"}\n' * 1000)[:-30])
    with pytest.raises(UsageError, match="damaged or truncated"):
        SubsetIndex.scan(truncated)


def test_meta_file_is_found_in_the_working_folder_or_the_root(tmp_path, monkeypatch):
    root = tmp_path / "db"
    inside = write_subset(root / "metadata" / SUBSET, [{"yid": "bbbbbbbbbbb"}])
    assert resolve_meta_file("metadata/" + SUBSET, root) == inside
    monkeypatch.chdir(root)
    assert resolve_meta_file("metadata/" + SUBSET, tmp_path / "elsewhere") == Path("metadata/" + SUBSET)
    with pytest.raises(UsageError):
        resolve_meta_file("../../etc/passwd", tmp_path / "nowhere")
    shutil.rmtree(root)
    assert main(DOWNLOAD_TRACKS_STAGE, ["--base_dir", str(root), "--db_meta_file", "missing.jsonl.gzip"]) == EXIT_USAGE
