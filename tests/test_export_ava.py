"""export_tracks.py --format ava, loaded by the real AVA readers on real footage.

A dataset built from two real videos (vtest.avi at 10 fps, cup.mp4 at 26.78 fps) is exported
and read back unmodified, pointed at with the loaders' documented settings only:
pytorchvideo's ``Ava`` and mmaction2's ``AVADataset`` (installed from requirements-dev.txt),
and SlowFast's conventions (not on PyPI: checked here with a reader that does what
``slowfast/datasets/ava_helper.py`` does: first frame-list line skipped, 5 space-separated
columns, timestamps 902..1798, keyframe image at index ``(timestamp - 900) * 30``, labels 1..80).
Each keyframe image must show the source frame at that second (checked against an independent
decode of the source), each box must be the record's box interpolated there (within 1e-3), and
labels must be 1-based and match the label map.
"""

from __future__ import annotations

import csv
import gzip
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import shared_video
from utils.core.errors import EXIT_OK, EXIT_USAGE
from utils.core.layout import DatasetLayout
from utils.core.video import probe_video, read_frames
from utils.export import ava
from utils.export.stage import EXPORT_TRACKS_STAGE
from utils.records.tracks import TrackRecord, compute_tid, track_filename
from utils.runner.cli import main

VTEST, CUP = "vtestVideo1", "cupVideo001"
CLASS_IDS = {"person": 792, "cup": 344, "bicycle": 94}


def track(yid: str, label: str, start: float, end: float, size: tuple[int, int], seed: int) -> TrackRecord:
    """A track sampled at 16 fps whose box drifts (so interpolation between samples matters)."""
    h, w = size
    rng = np.random.default_rng(seed)
    ts = np.round(np.arange(start, end, 1 / 16), 4)
    x = np.linspace(0.1 * w, 0.5 * w, ts.size) + rng.uniform(0, 3, ts.size)
    y = np.linspace(0.2 * h, 0.3 * h, ts.size)
    boxes = [[round(float(a), 2), round(float(b), 2), round(0.2 * w, 2), round(0.4 * h, 2)]
             for a, b in zip(x, y, strict=True)]
    tid = compute_tid(yid, ts.tolist(), boxes)
    return TrackRecord(yid=yid, tid=tid, fn=track_filename(yid, label, tid), track_ts=ts.tolist(), track_bbox=boxes,
                       video_size=[h, w], top10_lbl=[CLASS_IDS[label]], top10_desc=[label])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(out_dir, records, source videos): vtest with two people over 1.4..6.3 s and 2.2..4.9 s
    (the first overlaps second 1, which AVA loaders refuse), cup.mp4 with a cup over 0.3..4.6 s."""
    videos = {VTEST: shared_video("vtest.avi"), CUP: shared_video("cup.mp4")}
    db = tmp_path_factory.mktemp("ava") / "db"
    layout = DatasetLayout(db)
    for yid, src in videos.items():
        target = layout.video_mp4(yid)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    records = [track(VTEST, "person", 1.4, 6.3, (576, 768), 1), track(VTEST, "bicycle", 2.2, 4.9, (576, 768), 2),
               track(CUP, "cup", 0.3, 4.6, (480, 640), 3)]
    path = db / "tracks_subsets" / "subset.jsonl.gzip"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress("".join(r.to_json() + "\n" for r in records).encode()))
    out = db / "exports" / "ava"
    assert main(EXPORT_TRACKS_STAGE, ["--base_dir", str(db), "--records", str(path), "--format", "ava",
                                      "--out_dir", str(out), "--num_workers", "2"]) == EXIT_OK
    return out, records, {yid: layout.video_mp4(yid) for yid in videos}


def source_frame(video: Path, t: float) -> np.ndarray:
    """The source frame nearest to ``t`` seconds, decoded independently (every frame, by index)."""
    fps = probe_video(video).fps
    frames = list(read_frames(video, end=t + 1.0))
    return frames[int(round(t * fps))].image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def expected_box(record: TrackRecord, second: int) -> np.ndarray:
    h, w = record.video_size
    xyxy = record.bboxes_xyxy()
    box = [np.interp(second, record.track_ts, xyxy[:, j]) for j in range(4)]
    return np.clip(np.array(box) / [w, h, w, h], 0, 1)


def label_map(out: Path) -> dict[int, str]:
    """The label map read as the loaders read it (two-space ``name:`` / ``id:`` lines)."""
    names, name = {}, ""
    for line in (out / "annotations" / ava.LABEL_MAP).read_text().splitlines(keepends=True):
        if line.startswith("  name:"):
            name = line.split('"')[1]
        elif line.startswith("  id:"):
            names[int(line.strip().split(" ")[-1])] = name
    return names


def person_tids(out: Path) -> dict[tuple[str, int], str]:
    with open(out / "annotations" / ava.PERSON_IDS) as f:
        return {(row["video_id"], int(row["person_id"])): row["tid"] for row in csv.DictReader(f)}


def test_files_follow_the_ava_conventions(exported):
    out, records, videos = exported
    ann = out / "annotations"
    labels = label_map(out)
    assert labels == {1: "bicycle", 2: "cup", 3: "person"}  # 1-based, in class-index order
    rows = list(csv.reader((ann / "train.csv").read_text().splitlines()))
    assert rows and all(len(row) == 8 for row in rows) and rows[0][0] in (VTEST, CUP)  # no header
    by_tid = {r.tid: r for r in records}
    tids = person_tids(out)
    keys = set()
    for yid, ts, x1, y1, x2, y2, action, person in rows:
        second = int(ts) - 900
        assert 902 <= int(ts) <= 1798 and len(ts) == 4
        record = by_tid[tids[(yid, int(person))]]
        assert labels[int(action)] == record.label
        assert np.abs(np.array([float(v) for v in (x1, y1, x2, y2)]) - expected_box(record, second)).max() < 1e-3
        keys.add((record.tid, second))
    # every whole second of each span from 2 s on (second 1 of the first person is out of AVA's range)
    assert keys == {(r.tid, s) for r in records for s in range(max(2, int(np.ceil(r.track_ts[0]))),
                                                               int(np.floor(r.track_ts[-1])) + 1)}
    with open(ann / ava.VIDEO_INFO) as f:
        info = {row["video_id"]: row for row in csv.DictReader(f)}
    assert float(info[VTEST]["source_fps"]) == pytest.approx(10.0)
    assert float(info[CUP]["source_fps"]) == pytest.approx(probe_video(videos[CUP]).fps)
    proposals = pickle.loads((ann / "dense_proposals_train.pkl").read_bytes())
    assert proposals[f"{VTEST},0903"].shape == (2, 5) and proposals[f"{VTEST},0903"].dtype == np.float32
    # frames: 30 fps from the video's start, 1-based, to 3 s past the last keyframe (6 s for vtest)
    names = sorted(p.name for p in (out / "frames" / VTEST).iterdir())
    assert names == [f"img_{k:05d}.jpg" for k in range(1, 9 * 30 + 2)]
    lines = (out / "frame_lists" / "train.csv").read_text().splitlines()
    assert lines[0] == "original_vido_id video_id frame_id path labels"
    first = lines[1].split()
    assert len(first) == 5 and first[2] == "0" and first[3].endswith("/img_00001.jpg")


def test_keyframe_images_show_the_source_frame_at_that_second(exported):
    out, records, videos = exported
    for yid, second in ((VTEST, 4), (CUP, 3)):
        k = second * 30 + 1  # the AVA layout: frame 1 at 0 s, 30 per second
        image = cv2.cvtColor(cv2.imread(str(out / "frames" / yid / f"img_{k:05d}.jpg")), cv2.COLOR_BGR2RGB)
        assert psnr(image, source_frame(videos[yid], second)) > 35


def test_slowfast_reader_conventions(exported):
    """What slowfast/datasets/ava_helper.py does with FRAME_DIR, FRAME_LIST_DIR, ANNOTATION_DIR."""
    out, records, videos = exported
    image_paths: dict[str, list[str]] = {}
    with open(out / "frame_lists" / "train.csv") as f:
        f.readline()
        for line in f:
            row = line.split()
            assert len(row) == 5
            image_paths.setdefault(row[0], []).append(str(out / "frames" / row[3]))
    boxes: dict[str, dict[int, list]] = {}
    for line in open(out / "annotations" / "train.csv"):
        row = line.strip().split(",")
        sec = int(row[1])
        assert 902 <= sec <= 1798
        label = int(row[6])
        assert 1 <= label <= 80
        boxes.setdefault(row[0], {}).setdefault(sec, []).append((list(map(float, row[2:6])), label))
    assert set(boxes) == set(image_paths)
    sec = 905
    center = (sec - 900) * 30
    image = cv2.cvtColor(cv2.imread(image_paths[VTEST][center]), cv2.COLOR_BGR2RGB)
    assert psnr(image, source_frame(videos[VTEST], 5)) > 35
    # a 32-frame window at sample rate 2 around the last keyframe finds real files
    last = max(boxes[VTEST])
    assert (last - 900) * 30 + 32 < len(image_paths[VTEST])


def test_pytorchvideo_ava_loads_a_sample(exported):
    pytest.importorskip("pytorchvideo", reason="pip install -r requirements-dev.txt (pytorchvideo==0.1.5)")
    import torch
    from pytorchvideo.data import Ava
    from pytorchvideo.data.clip_sampling import make_clip_sampler

    out, records, videos = exported
    dataset = Ava(frame_paths_file=str(out / "frame_lists" / "train.csv"),
                  frame_labels_file=str(out / "annotations" / "train.csv"),
                  video_path_prefix=str(out / "frames"),
                  label_map_file=str(out / "annotations" / ava.LABEL_MAP),
                  clip_sampler=make_clip_sampler("random", 1.0), video_sampler=torch.utils.data.SequentialSampler)
    labels = label_map(out)
    tids = person_tids(out)
    by_tid = {r.tid: r for r in records}
    seen = 0
    for sample in dataset:
        yid = sample["video_name"]
        second = int(round(sample["clip_index"]))
        video = sample["video"]  # (C, T, H, W), 1 s around the keyframe: frame 15 is the keyframe
        assert video.shape[1] == 30
        image = video[:, 15].permute(1, 2, 0).numpy().astype(np.uint8)
        assert psnr(image, source_frame(videos[yid], second)) > 35
        for box, box_labels, person in zip(sample["boxes"], sample["labels"], sample["extra_info"], strict=True):
            record = by_tid[tids[(yid, int(person[0]))]]
            assert [labels[i] for i in box_labels] == [record.label]
            assert np.abs(np.asarray(box) - expected_box(record, second)).max() < 1e-3
        seen += 1
        if seen == 3:
            break
    assert seen == 3


def test_mmaction2_ava_dataset_loads_a_sample(exported):
    pytest.importorskip("mmaction", reason="pip install -r requirements-dev.txt (mmaction2==1.2.0, mmcv-lite==2.1.0)")
    from mmaction.datasets import AVADataset
    from mmaction.datasets.transforms import RawFrameDecode, SampleAVAFrames
    out, records, videos = exported
    ann = out / "annotations"
    labels = label_map(out)
    dataset = AVADataset(ann_file=str(ann / "train.csv"), exclude_file=str(ann / "train_excluded_timestamps.csv"),
                         label_file=str(ann / ava.LABEL_MAP), proposal_file=str(ann / "dense_proposals_train.pkl"),
                         data_prefix=dict(img=str(out / "frames")), num_classes=len(labels) + 1,
                         pipeline=[SampleAVAFrames(clip_len=1, frame_interval=1, test_mode=True), RawFrameDecode()])
    tids = person_tids(out)
    by_tid = {r.tid: r for r in records}
    assert len(dataset) > 0
    for i in (0, len(dataset) - 1):
        sample = dataset[i]
        yid, second = sample["video_id"], sample["timestamp"] - 900
        # mmaction2 reads frame 30 * (timestamp - 900) + 2 (start_index counted twice): 1/30 s after the second
        (index,) = sample["frame_inds"]
        assert abs((index - 1) / 30 - second) <= 1 / 30 + 1e-9
        image = sample["imgs"][0]
        fps = probe_video(videos[yid]).fps
        assert psnr(image, source_frame(videos[yid], round((index - 1) / 30 * fps) / fps)) > 35
        h, w = sample["img_shape"]  # RawFrameDecode scales the boxes to pixels
        for box, onehot, person in zip(sample["gt_bboxes"], sample["gt_labels"], sample["entity_ids"], strict=True):
            record = by_tid[tids[(yid, int(person))]]
            assert [labels[j] for j in np.flatnonzero(onehot)] == [record.label]
            assert np.abs(np.asarray(box) / [w, h, w, h] - expected_box(record, second)).max() < 1e-3
        assert sample["proposals"].shape[1] == 4


def test_rerun_skips_done_videos_and_a_lost_part_is_redone(exported):
    out, records, videos = exported
    db = out.parent.parent
    args = ["--base_dir", str(db), "--records", str(db / "tracks_subsets" / "subset.jsonl.gzip"), "--format", "ava",
            "--out_dir", str(out)]
    before = {p: p.read_bytes() for p in sorted((out / "annotations").iterdir())}
    frame = out / "frames" / VTEST / "img_00001.jpg"
    stamp = frame.stat().st_mtime_ns
    assert main(EXPORT_TRACKS_STAGE, args) == EXIT_OK
    assert frame.stat().st_mtime_ns == stamp  # done videos are not redone
    ava.part_path(out, CUP).unlink()
    assert main(EXPORT_TRACKS_STAGE, args) == EXIT_OK
    assert frame.stat().st_mtime_ns == stamp and ava.part_path(out, CUP).is_file()
    assert {p: p.read_bytes() for p in sorted((out / "annotations").iterdir())} == before  # same bytes


def test_a_video_without_usable_seconds_is_done_but_left_out_of_the_lists(tmp_path):
    """Tracks only in the first 2 s (timestamps before 902): no frames, no list entry (SlowFast
    wants every listed video annotated), counted in the summary, exit 0."""
    db = tmp_path / "db"
    target = DatasetLayout(db).video_mp4(CUP)
    target.parent.mkdir(parents=True)
    shutil.copyfile(shared_video("cup.mp4"), target)
    path = db / "subset.jsonl.gzip"
    path.write_bytes(gzip.compress((track(CUP, "cup", 0.2, 1.9, (480, 640), 4).to_json() + "\n").encode()))
    out = db / "ava"
    assert main(EXPORT_TRACKS_STAGE, ["--base_dir", str(db), "--records", str(path), "--format", "ava",
                                      "--out_dir", str(out)]) == EXIT_OK
    assert ava.part_path(out, CUP).is_file() and not list((out / "frames").rglob("*.jpg"))
    assert (out / "frame_lists" / "train.csv").read_text().splitlines() == [ava.FRAME_LIST_HEADER]
    assert (out / "annotations" / "train.csv").read_text() == ""


def test_bad_flags_are_usage_errors(exported, capsys):
    out, records, videos = exported
    db = out.parent.parent
    base = ["--base_dir", str(db), "--records", str(db / "tracks_subsets" / "subset.jsonl.gzip"), "--format", "ava",
            "--out_dir", str(out.parent / "other")]
    assert main(EXPORT_TRACKS_STAGE, [*base, "--val_fraction", "1.5"]) == EXIT_USAGE
    assert main(EXPORT_TRACKS_STAGE, [*base, "--frame_rate", "0"]) == EXIT_USAGE
    assert "--val_fraction" in capsys.readouterr().err


def test_val_split_by_video_and_predicted_boxes(tmp_path, exported):
    out, records, videos = exported
    assert ava.split_of(VTEST, 0.0) == "train" and ava.split_of(VTEST, 1.0) == "val"
    yids = [f"vid{i:08d}" for i in range(400)]
    share = sum(ava.split_of(y, 0.25) == "val" for y in yids) / len(yids)
    assert 0.18 < share < 0.32
    assert (out / "annotations" / "val.csv").read_text() == ""
    assert (out / "frame_lists" / "val.csv").read_text().splitlines() == [ava.FRAME_LIST_HEADER]
    # everything in val: SlowFast's test lists (predicted boxes with a score column) and mmaction2's proposals
    db = out.parent.parent
    val_out = out.parent / "ava-val"
    assert main(EXPORT_TRACKS_STAGE, ["--base_dir", str(db), "--records", str(db / "tracks_subsets" / "subset.jsonl.gzip"),
                                      "--format", "ava", "--out_dir", str(val_out), "--val_fraction", "1"]) == EXIT_OK
    ann = val_out / "annotations"
    assert (ann / "train.csv").read_text() == "" and (ann / "val.csv").read_text() == (out / "annotations" / "train.csv").read_text()
    predicted = [line.split(",") for line in (ann / "val_predicted_boxes.csv").read_text().splitlines()]
    gt = [line.split(",") for line in (ann / "val.csv").read_text().splitlines()]
    assert [p[:7] for p in predicted] == [g[:7] for g in gt] and {p[7] for p in predicted} == {"1.0"}
    assert pickle.loads((ann / "dense_proposals_val.pkl").read_bytes()).keys() == \
        pickle.loads((out / "annotations" / "dense_proposals_train.pkl").read_bytes()).keys()
