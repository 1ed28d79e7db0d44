"""The training loader returns the right frames and labels, with 0 and 2 workers."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from utils.core.video import VideoWriter, read_frames, read_frames_at
from utils.records.track_files import records_to_jsonl_gz_bytes
from utils.records.tracks import TrackRecord
from utils.use.dataset import TrackClipDataset, collate_padded, collate_tracks, sample_times

FPS = 25


def make_clip(path, frames: int, shape=(48, 64)):
    """Frame k is a flat grey of value 20 + 2k: its content tells which frame it is."""
    with VideoWriter(path, shape[1], shape[0], FPS, keyframe_interval=0.5, crf=10) as writer:
        for k in range(frames):
            writer.write(np.full((*shape, 3), 20 + 2 * k, np.uint8))


def record(yid: str, label: int, name: str, n: int) -> TrackRecord:
    ts = [i / 16 for i in range(n)]
    boxes = [[10.0, 10.0, 20.0, 30.0]] * n
    r = TrackRecord(yid=yid, tid="0" * 32, fn=f"{yid[:2]}/{yid}-{name}-x.mp4", track_ts=ts, track_bbox=boxes,
                    top10_lbl=[label, 0], top10_desc=[name, "other"])
    r.tid = r.expected_tid()
    r.fn = f"{yid[:2]}/{yid}-{name}-{r.tid}.mp4"
    return r


@pytest.fixture
def subset(tmp_path):
    clips = tmp_path / "tracks_mp4" / "Synth"
    recs = [record("aaaaaaaaaaa", 3, "cat", 40), record("bbbbbbbbbbb", 7, "cup", 60),
            record("ccccccccccc", 3, "cat", 50)]
    for r, frames in zip(recs, (50, 60, 40), strict=True):
        (clips / r.fn).parent.mkdir(parents=True, exist_ok=True)
        make_clip(clips / r.fn, frames)
    path = tmp_path / "Synth-subset.jsonl.gzip"
    path.write_bytes(records_to_jsonl_gz_bytes(recs))
    return path, clips, recs


def check_frames(clip, frames: torch.Tensor, times: torch.Tensor, num_frames_in_clip: int) -> None:
    """Each returned frame is the clip's frame nearest its sampling time, pixel for pixel."""
    targets = sample_times(num_frames_in_clip / FPS, len(times), FPS)
    assert np.abs(times.numpy() - targets).max() <= 0.5 / FPS + 1e-6
    size = (frames.shape[2], frames.shape[1])
    reference = {round(f.time, 4): f.image for f in read_frames(clip, size=size)}
    for frame, t in zip(frames, times.tolist(), strict=True):
        assert np.abs(frame.numpy().astype(int) - reference[round(t, 4)]).max() == 0


def test_items_have_the_right_frames_and_labels(subset):
    path, clips, recs = subset
    ds = TrackClipDataset(path, clips, num_frames=4, size=(32, 32))
    assert len(ds) == 3
    item = ds[1]
    assert item["frames"].shape == (4, 32, 32, 3) and item["frames"].dtype == torch.uint8
    assert item["label"] == 7 and item["label_name"] == "cup"
    assert item["record"]["tid"] == recs[1].tid
    check_frames(clips / recs[1].fn, item["frames"], item["times"], 60)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_with_workers(subset, workers):
    path, clips, recs = subset
    ds = TrackClipDataset(path, clips, num_frames=3, size=(24, 24))
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_tracks)
    batches = list(loader)
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert labels == [3, 7, 3]
    frames = torch.cat([b["frames"] for b in batches])
    assert frames.shape == (3, 3, 24, 24, 3)
    times = torch.cat([b["times"] for b in batches])
    for i, n in enumerate((50, 60, 40)):
        check_frames(clips / recs[i].fn, frames[i], times[i], n)
    assert [r["fn"] for b in batches for r in b["record"]] == [r.fn for r in recs]


@pytest.mark.parametrize("workers", [0, 2])
def test_whole_clips_of_different_lengths_and_sizes_batch_with_padding(tmp_path, subset, workers):
    path, clips, recs = subset
    make_clip(clips / recs[2].fn, 40, shape=(32, 80))  # another frame size too
    ds = TrackClipDataset(path, clips, num_frames=None, size=None)
    loader = DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_padded)
    (batch,) = list(loader)
    assert batch["lengths"].tolist() == [50, 60, 40]
    assert batch["sizes"].tolist() == [[48, 64], [48, 64], [32, 80]]
    assert batch["frames"].shape == (3, 60, 48, 80, 3) and batch["label"].tolist() == [3, 7, 3]
    for i, (n, (h, w)) in enumerate(zip((50, 60, 40), ((48, 64), (48, 64), (32, 80)), strict=True)):
        reference = np.stack([f.image for f in read_frames(clips / recs[i].fn)])
        assert np.array_equal(batch["frames"][i, :n, :h, :w].numpy(), reference)  # every frame, in order
        assert batch["frames"][i, n:].abs().sum() == 0 and batch["frames"][i, :, h:].abs().sum() == 0
        assert batch["frames"][i, :, :, w:].abs().sum() == 0
        assert batch["times"][i, :n].tolist() == pytest.approx([k / FPS for k in range(n)], abs=1e-3)
    with pytest.raises(ValueError, match="num_frames"):
        TrackClipDataset(path, clips, num_frames=0)


def test_released_spelling_is_read(tmp_path, subset):
    _, clips, recs = subset
    released = []
    for r in recs:
        released.append({"yid": r.yid, "track_id": r.tid, "track_mp4_filename": r.fn,
                         "frame_ts": r.track_ts, "frame_bboxes": r.track_bbox,
                         "top10_label_ids": r.top10_lbl, "top10_label_names": r.top10_desc})
    path = tmp_path / "released.jsonl.gzip"
    with gzip.open(path, "wt") as f:
        for d in released:
            f.write(json.dumps(d) + "\n")
    ds = TrackClipDataset(path, clips, num_frames=2)
    assert [ds[i]["label_name"] for i in range(3)] == ["cat", "cup", "cat"]


def test_missing_clips(subset, tmp_path):
    path, clips, recs = subset
    (clips / recs[0].fn).unlink()
    ds = TrackClipDataset(path, clips, skip_missing=True)
    assert len(ds) == 2
    with pytest.raises(Exception, match=recs[0].yid):
        TrackClipDataset(path, clips)[0]


def test_read_frames_at_seeks_exactly(tmp_path):
    make_clip(tmp_path / "c.mp4", 100)
    frames = read_frames_at(tmp_path / "c.mp4", [0.0, 0.49, 0.52, 2.0, 3.96, 5.0])  # no exact ties
    assert [round(f.time * FPS) for f in frames] == [0, 12, 13, 50, 99, 99]
    reference = {round(f.time * FPS): f.image for f in read_frames(tmp_path / "c.mp4")}
    for f in frames:
        assert np.array_equal(f.image, reference[round(f.time * FPS)])


def test_read_frames_at_with_sparse_keyframes_terminates(sparse_keyframe_video):
    times = [0.6, 3.0, 9.0, 11.0]  # far apart, one keyframe in the whole file
    frames = read_frames_at(sparse_keyframe_video.path, times)
    assert [round(f.time, 2) for f in frames] == times
