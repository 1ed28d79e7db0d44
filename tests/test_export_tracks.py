"""export_tracks.py: SOT sequences and WebDataset shards from a records file.

SOT frames are checked against an independent decode of the source (every frame, by index),
``init_bbox`` against the record, ground truth is checked to stay outside ``--out_dir``;
WebDataset shards are read back with the real ``webdataset`` library. Then the stage's
contract: frame choice rules, resume after SIGKILL (same bytes as an uninterrupted run),
partial sequences completed, bad records journaled while the rest are exported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import REPO, export, track_record, write_records_file
from tests.helpers import gt_records as labelled_gt_records
from utils.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, EXIT_USAGE, ItemError
from utils.core.layout import DatasetLayout
from utils.core.video import probe_video, read_frames
from utils.export import sot
from utils.export.inputs import ExportSequence, read_inputs
from utils.export.stage import EXPORT_TRACKS_STAGE
from utils.records.tracks import TrackRecord
from utils.runner.journal import read_journals

YID = "synthVideo1"
DATASET = "TestSet"
LABEL_IDS = {"cat": 3, "cup": 5, "rocket": 7, "person": 11}


def record(yid: str, label: str, ts, boxes_xywh, video_size) -> TrackRecord:
    return track_record(yid, label, ts, boxes_xywh, video_size, LABEL_IDS[label])


def gt_records(video, every: int = 2) -> list[TrackRecord]:
    return labelled_gt_records(video, YID, every, LABEL_IDS)


def setup_db(db: Path, video: Path, lines: list) -> Path:
    return write_records_file(db, video, lines, YID)


def journal(db: Path, key: str, event: str | None = None) -> list[dict]:
    """Records of the stage's journals whose key starts with ``key`` (the dataset name follows)."""
    return [r for folder in sorted((db / "logs").glob(f"{key}-*")) for r in read_journals(folder)
            if event is None or r["event"] == event]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source_frames(synthetic_video) -> list:
    return [f.image for f in read_frames(synthetic_video.path)]


# ---------------------------------------------------------------------------- sot


def test_sot_frames_boxes_and_ground_truth_apart(tmp_path, synthetic_video, source_frames):
    db = tmp_path / "db"
    records = gt_records(synthetic_video)
    path = setup_db(db, synthetic_video.path, records)
    out = db / "exports" / "bench"
    assert export(db, path, "sot", out, "--nframes", "5") == EXIT_OK
    fps, w, h = synthetic_video.fps, synthetic_video.width, synthetic_video.height
    gt_file = db / "exports" / "bench.gt.jsonl"
    gt = {json.loads(line)["seq_id"]: json.loads(line) for line in gt_file.read_text().splitlines()}
    assert sorted(gt) == sorted(f"{r.yid}-{r.tid}" for r in records)
    requests = json.loads((out / "gt_requests.json").read_text())["requests"]
    assert len(requests) == 5 * len(records)
    for rec in records:
        seq_id = f"{rec.yid}-{rec.tid}"
        meta = json.loads((out / seq_id / "sequence_meta.json").read_text())
        assert {"frame_ids", "init_bbox", "label", "yid", "tid", "stride", "nframes", "clip_fps",
                "gt_available"} <= set(meta)
        assert meta["label"] == rec.label and meta["yid"] == YID and meta["tid"] == rec.tid and meta["nframes"] == 5
        assert meta["gt_available"] is True
        ids = meta["frame_ids"]
        first, last = round(rec.track_ts[0] * fps), round(rec.track_ts[-1] * fps)
        stride = min(15, (last - first) // 4)
        assert meta["stride"] == stride and ids == [first + k * stride for k in range(5)]
        # the SOURCE video's frame rate (prepare_sot_dataset's field), not the sampled rate
        assert meta["clip_fps"] == pytest.approx(probe_video(synthetic_video.path).fps) == pytest.approx(fps)
        for k, fid in enumerate(ids):  # the source frame at that id, from an independent full decode
            assert psnr(png(out / seq_id / "frames" / f"f{k:02d}.png"), source_frames[fid]) >= 40
        # init_bbox: the record's box at the first frame (its first timestamp), in thousandths
        x, y, bw, bh = rec.track_bbox[0]
        expected = [x / w * 1000, y / h * 1000, (x + bw) / w * 1000, (y + bh) / h * 1000]
        assert np.abs(np.array(meta["init_bbox"]) - expected).max() <= 1
        assert gt[seq_id]["frame_ids"] == ids and gt[seq_id]["boxes"][0] == meta["init_bbox"]
        # every gt box is the record's box where the record has that frame
        for fid, box in zip(ids, gt[seq_id]["boxes"], strict=True):
            hits = [j for j, t in enumerate(rec.track_ts) if round(t * fps) == fid]
            if hits:
                x, y, bw, bh = rec.track_bbox[hits[0]]
                assert np.abs(np.array(box) - [x / w * 1000, y / h * 1000, (x + bw) / w * 1000,
                                               (y + bh) / h * 1000]).max() <= 1
        crop = png(out / seq_id / "frames" / "crop.png")
        assert abs(crop.shape[1] - bw) <= 1 and abs(crop.shape[0] - bh) <= 1
        annotated = png(out / seq_id / "frames" / "f00_ann.png")
        assert annotated.shape == source_frames[0].shape and not np.array_equal(annotated, source_frames[ids[0]])
    # no ground truth anywhere under out_dir: only frames, sequence metadata and the request list
    for p in out.rglob("*"):
        if p.is_file():
            assert p.suffix == ".png" or p.name in ("sequence_meta.json", "gt_requests.json"), p
            if p.suffix == ".json":
                assert "boxes" not in json.loads(p.read_text()), p
    assert not any(sot.is_inside(p, out) for p in (gt_file, sot.parts_dir(gt_file)))


def test_long_sequences_keep_the_two_digit_names(tmp_path, synthetic_video, source_frames):
    """More than 100 frames: f00 .. f99, f100 (never widened to f000), as prepare_sot_dataset names them."""
    db = tmp_path / "db"
    line = {"seq_id": "long", "yid": YID, "init_frame_id": 0, "init_bbox": [100, 100, 400, 500],
            "canonical_frame_ids": list(range(0, 202, 2))}
    path = setup_db(db, synthetic_video.path, [line])
    out = db / "exports" / "long"
    assert export(db, path, "sot", out, "--nframes", "101") == EXIT_OK
    names = sorted(p.name for p in (out / "long" / "frames").iterdir())
    assert names == sorted([f"f{k:02d}.png" for k in range(101)] + ["f00_ann.png", "crop.png"])
    assert "f100.png" in names and "f000.png" not in names
    assert psnr(png(out / "long" / "frames" / "f100.png"), source_frames[200]) >= 40
    meta = json.loads((out / "long" / "sequence_meta.json").read_text())
    assert meta["nframes"] == 101 and meta["frame_ids"][-1] == 200


def test_frame_choice_rules():
    rec = record(YID, "cat", [1.0, 1.5, 2.0, 3.0], [[0, 0, 10, 10]] * 4, (240, 320))
    seq = ExportSequence(seq_id="s", yid=YID, record=rec)
    # auto: min(15, span / (n - 1)); the span is frames 25..75 at 25 fps
    assert sot.choose_frames(seq, 5, None, 25.0, 300).frame_ids == [25, 37, 49, 61, 73]
    assert sot.choose_frames(seq, 3, None, 25.0, 300).frame_ids == [25, 40, 55]  # capped at 15
    choice = sot.choose_frames(seq, 4, 10, 25.0, 300)
    assert choice.frame_ids == [25, 35, 45, 55] and choice.stride == 10 and choice.source == "stride"
    with pytest.raises(ItemError) as info:
        sot.choose_frames(seq, 8, 10, 25.0, 300)  # 71 frames needed, 51 spanned
    assert info.value.category == "too_short"
    explicit = ExportSequence(seq_id="s", yid=YID, record=rec, frame_ids=[30, 33, 36, 50])
    assert sot.choose_frames(explicit, 3, 10, 25.0, 300).frame_ids == [30, 33, 36]  # explicit ids win
    assert sot.choose_frames(explicit, 5, 10, 25.0, 300).source == "stride"  # not enough explicit ids


def test_benchmark_input_and_bad_records_are_journaled(tmp_path, synthetic_video, source_frames):
    db = tmp_path / "db"
    good = gt_records(synthetic_video)[:2]
    bench = {"seq_id": "bench_seq_1", "scene": YID, "init_frame_id": 10, "init_bbox": [100, 200, 300, 400],
             "canonical_frame_ids": [10, 12, 14, 16], "clip_fps": 12.5}
    bad = {"yid": YID, "track_ts": [1.0, 2.0]}  # no boxes
    other = record("otherVideo1", "cat", [0.0, 1.0], [[0, 0, 10, 10]] * 2, (240, 320))  # no such video
    path = setup_db(db, synthetic_video.path, [good[0], "{not json", bad, bench, other, good[1]])
    out = db / "exports" / "mixed"
    assert export(db, path, "sot", out, "--nframes", "4") == EXIT_ITEMS_FAILED
    failed = {r["item"]: r["category"] for r in journal(db, "export_tracks-sot-mixed", "failed")}
    assert failed == {"bad-line-000002": "bad_record", "bad-line-000003": "bad_record",
                      f"otherVideo1-{other.tid}": "missing_video"}
    for rec in good:
        assert sot.sequence_complete(out / f"{rec.yid}-{rec.tid}", sot.part_path(db / "exports" / "mixed.gt.jsonl",
                                                                                  f"{rec.yid}-{rec.tid}"), 4)
    meta = json.loads((out / "bench_seq_1" / "sequence_meta.json").read_text())
    assert meta["frame_ids"] == [10, 12, 14, 16] and meta["init_bbox"] == [100, 200, 300, 400]
    assert meta["clip_fps"] == 12.5 and meta["gt_available"] is False and meta["frame_choice"] == "explicit"
    for k, fid in enumerate(meta["frame_ids"]):
        assert psnr(png(out / "bench_seq_1" / "frames" / f"f{k:02d}.png"), source_frames[fid]) >= 40
    crop = png(out / "bench_seq_1" / "frames" / "crop.png")
    assert crop.shape[:2] == (round(0.2 * 240), round(0.2 * 320))


def test_usage_errors(tmp_path, synthetic_video):
    db = tmp_path / "db"
    path = setup_db(db, synthetic_video.path, gt_records(synthetic_video)[:1])
    out = db / "exports" / "x"
    assert export(db, path, "sot", out, "--gt_out", str(out / "gt.jsonl")) == EXIT_USAGE
    assert export(db, path, "sot", out, "--stride", "0") == EXIT_USAGE
    assert export(db, path, "sot", out, "--stride", "x") == EXIT_USAGE
    assert export(db, db / "nope.jsonl", "sot", out) == EXIT_USAGE
    assert not out.exists()


def test_sot_resume_after_sigkill_and_partial_sequences(tmp_path, synthetic_video):
    db = tmp_path / "db"
    records = [r for every in (1, 2, 3) for r in gt_records(synthetic_video, every)]
    path = setup_db(db, synthetic_video.path, records)
    reference = db / "exports" / "ref"
    assert export(db, path, "sot", reference, "--nframes", "6") == EXIT_OK

    out = db / "exports" / "killed"
    argv = [sys.executable, "export_tracks.py", "--base_dir", str(db), "--records", str(path), "--format", "sot",
            "--out_dir", str(out), "--nframes", "6"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("*/sequence_meta.json"))) >= 2:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed, "the export ended before it could be killed"
    assert len(list(out.glob("*/sequence_meta.json"))) < len(records)
    assert export(db, path, "sot", out, "--nframes", "6") == EXIT_OK
    assert tree(out) == tree(reference)
    assert (db / "exports" / "killed.gt.jsonl").read_text().splitlines() == \
        (db / "exports" / "ref.gt.jsonl").read_text().splitlines()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]

    # a partial sequence (a frame lost) is completed; a complete one is skipped
    victim = out / f"{records[0].yid}-{records[0].tid}" / "frames" / "f03.png"
    victim.unlink()
    assert export(db, path, "sot", out, "--nframes", "6") == EXIT_OK
    assert tree(out) == tree(reference)
    summary = journal(db, "export_tracks-sot-killed", "summary")[-1]
    assert summary["done"] == 1 and summary["skipped"] == len(records) - 1


def test_sot_sharded_ranks_merge_ground_truth(tmp_path, synthetic_video):
    db = tmp_path / "db"
    records = gt_records(synthetic_video)
    path = setup_db(db, synthetic_video.path, records)
    out = db / "exports" / "sharded"
    for rank in (1, 0):
        assert export(db, path, "sot", out, "--nframes", "3", "--world_size", "2", "--rank", str(rank)) == EXIT_OK
    lines = (db / "exports" / "sharded.gt.jsonl").read_text().splitlines()
    assert [json.loads(x)["seq_id"] for x in lines] == sorted(f"{r.yid}-{r.tid}" for r in records)
    assert len(json.loads((out / "gt_requests.json").read_text())["requests"]) == 3 * len(records)
    # status.py sees the stage from its journals, like every stage
    from utils.runner.status import dataset_status

    [status] = [s for s in dataset_status(db) if s.stage.startswith("export_tracks")]
    default_dataset = EXPORT_TRACKS_STAGE.config_class.__dataclass_fields__["dataset_name"].default
    assert [s.stage for s in dataset_status(db, default_dataset)] == [status.stage]  # found by dataset too
    assert status.done == len(records) and status.failed == 0


def test_inputs_accept_a_benchmark_json_list(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps([{"seq_id": "a", "yid": YID, "init_frame_id": 3, "init_bbox": [1, 2, 3, 4],
                                 "canonical_frame_ids": [3, 4], "clip_fps": 5},
                                {"seq_id": "a.b", "yid": YID, "init_frame_id": 3, "init_bbox": [1, 2, 3, 4]}]))
    inputs = read_inputs(path)
    assert inputs.ids() == ["a", "bad-line-000002"]
    assert inputs.sequences["a"].frame_ids == [3, 4] and inputs.sequences["a"].clip_fps == 5.0
    path.write_text(json.dumps({"sequences": [{"seq_id": "b", "scene": YID, "init_frame_id": 20,
                                               "init_bbox": [1, 2, 3, 4], "canonical_frame_ids": [10, 22, 24]}]}))
    seq = read_inputs(path).sequences["b"]
    # a benchmark sequence starts at its init frame (ids before it are not exported)
    assert sot.choose_frames(seq, 3, None, 25.0, 300).frame_ids == [20, 22, 24]


# ---------------------------------------------------------------------------- webdataset


def test_webdataset_shards_read_back_with_the_library(tmp_path, synthetic_video):
    import webdataset as wds  # the real library: a missing package fails, never skips
    db = tmp_path / "db"
    records = [r for every in (2, 3) for r in gt_records(synthetic_video, every)]  # 10 tracks
    path = setup_db(db, synthetic_video.path, records + ["{torn"])
    layout = DatasetLayout(db)
    for i, rec in enumerate(records):  # stand-in clips: distinct bytes per track
        clip = layout.track_mp4(DATASET, rec.fn)
        clip.parent.mkdir(parents=True, exist_ok=True)
        clip.write_bytes(synthetic_video.path.read_bytes() + bytes([i]))
    out = db / "exports" / "wds"
    codes = [export(db, path, "webdataset", out, "--shard_size", "3", "--min_shards", "1", "--dataset_name", DATASET,
                    "--world_size", "2", "--rank", str(rank)) for rank in (0, 1)]
    assert sorted(codes) == [EXIT_OK, EXIT_ITEMS_FAILED]  # the torn line is one rank's failed item
    shards = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in shards] == [f"shard-{i:06d}.tar" for i in range(4)]
    index = json.loads((out / "shards.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [3, 3, 3, 1] and index["samples"] == 10
    assert [s["bytes"] for s in index["shards"]] == [p.stat().st_size for p in shards]

    dataset = wds.WebDataset([str(p) for p in shards], shardshuffle=False, empty_check=False).decode()
    seen = {}
    for sample in dataset:
        meta = sample["json"]
        assert sample["__key__"] not in seen
        seen[sample["__key__"]] = (meta, sample["mp4"])
    by_key = {f"{r.yid}-{r.tid}": (i, r) for i, r in enumerate(records)}
    assert set(seen) == set(by_key)
    for key, (meta, mp4) in seen.items():
        i, rec = by_key[key]
        assert TrackRecord.from_dict({k: v for k, v in meta.items() if k not in ("seq_id", "label")}) == rec
        assert meta["label"] == rec.label
        assert mp4 == layout.track_mp4(DATASET, rec.fn).read_bytes()

    before = {p.name: p.stat().st_mtime_ns for p in shards}
    # the bad line failed permanently before: not retried without --retry_failed
    assert export(db, path, "webdataset", out, "--shard_size", "3", "--min_shards", "1",
                  "--dataset_name", DATASET) == EXIT_OK
    assert {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.tar"))} == before  # done shards skipped
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_readme_webdataset_loader_runs_with_workers_on_a_default_export(tmp_path, synthetic_video, monkeypatch):
    """The README's snippet, as written, on shards planned with the defaults (10 tracks: 10 shards,
    not one, so 4 DataLoader workers each get one): clips decoded with PyAV, records as JSON."""
    db = tmp_path / "db"
    records = [r for every in (2, 3) for r in gt_records(synthetic_video, every)]
    path = setup_db(db, synthetic_video.path, records)
    layout = DatasetLayout(db)
    for rec in records:
        clip = layout.track_mp4(DATASET, rec.fn)
        clip.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(synthetic_video.path, clip)
    out = db / "exports" / "wds"
    assert export(db, path, "webdataset", out, "--dataset_name", DATASET) == EXIT_OK
    assert len(list(out.glob("shard-*.tar"))) == 10
    readme = (REPO / "README.md").read_text()
    start = readme.index("# webdataset-loader")
    code = readme[start:readme.index("```", start)]
    monkeypatch.chdir(db)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    frames, meta = namespace["frames"], namespace["record"]
    assert namespace["loader"].num_workers == 4
    assert tuple(frames.shape) == (len(source_frames_of(synthetic_video)), synthetic_video.height,
                                   synthetic_video.width, 3)
    assert f"{meta['yid']}-{meta['tid']}" == meta["seq_id"] and meta["seq_id"] in {f"{r.yid}-{r.tid}" for r in records}
    # every sample comes through 4 workers
    samples = list(namespace["loader"])
    assert sorted(m["seq_id"] for _, m in samples) == sorted(f"{r.yid}-{r.tid}" for r in records)


def source_frames_of(video) -> list:
    return list(read_frames(video.path))


def test_webdataset_waits_for_missing_clips(tmp_path, synthetic_video):
    db = tmp_path / "db"
    records = gt_records(synthetic_video)[:2]
    path = setup_db(db, synthetic_video.path, records)
    DatasetLayout(db).tracks_mp4_dir(DATASET).mkdir(parents=True)  # the dataset exists, its clips do not yet
    out = db / "exports" / "wds"
    assert export(db, path, "webdataset", out, "--dataset_name", DATASET) == EXIT_OK
    assert not list(out.glob("shard-*.tar"))
    assert journal(db, "export_tracks-webdataset-wds", "not_ready")


# ---------------------------------------------------------------------------- frames


def test_frames_written_once_with_csv_boxes_matching_records(tmp_path, synthetic_video, source_frames, monkeypatch):
    import csv

    import utils.export.frames as frames_mod

    db = tmp_path / "db"
    records = [r for every in (2, 3) for r in gt_records(synthetic_video, every)]  # tracks sharing frames
    unlabelled = TrackRecord(yid=YID, tid="t0", fn=f"{YID[:2]}/{YID}-x-t0.mp4", track_ts=[0.0, 0.2],
                             track_bbox=[[10, 20, 30, 40]] * 2, video_size=[240, 320], top10_desc=["ghost"])
    path = setup_db(db, synthetic_video.path, [*records, unlabelled])
    out = db / "exports" / "frames"
    writes: list[Path] = []
    real = frames_mod.atomic_write_bytes
    monkeypatch.setattr(frames_mod, "atomic_write_bytes", lambda p, data: (writes.append(Path(p)), real(p, data)))
    assert export(db, path, "frames", out, "--image_format", "png", "--num_workers", "2") == EXIT_OK
    fps, w, h = synthetic_video.fps, synthetic_video.width, synthetic_video.height
    spans = [(round(r.track_ts[0] * fps), round(r.track_ts[-1] * fps)) for r in [*records, unlabelled]]
    wanted = sorted({f for a, b in spans for f in range(a, b + 1)})
    assert len(writes) == len(set(writes)) == len(wanted)  # each shared frame written once
    files = sorted((out / "frames" / YID).iterdir())
    assert [p.name for p in files] == [f"{YID}_{f:06d}.png" for f in wanted]
    for f in wanted[::37]:
        assert psnr(png(out / "frames" / YID / f"{YID}_{f:06d}.png"), source_frames[f]) >= 40

    labels = dict(csv.reader((out / "label_map.csv").read_text().splitlines()[1:]))
    # the records' top-1 indices kept, an unnumbered name after the largest
    assert labels == {**{str(i): name for name, i in LABEL_IDS.items()}, "12": "ghost"}
    with open(out / "annotations.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["video_id", "timestamp", "x1", "y1", "x2", "y2", "label_id", "track_id"]
    assert len(rows) == sum(b - a + 1 for a, b in spans)
    by_track: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        assert row["video_id"] == YID
        box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        assert all(0 <= v <= 1 for v in box)
        by_track.setdefault(row["track_id"], {})[round(float(row["timestamp"]), 4)] = box
    for rec in records:
        assert {r["label_id"] for r in rows if r["track_id"] == rec.tid} == {str(LABEL_IDS[rec.label])}
        for t, (x, y, bw, bh) in zip(rec.track_ts, rec.track_bbox, strict=True):
            got = by_track[rec.tid][round(round(t * fps) / fps, 4)]
            assert np.abs(np.array(got) - [x / w, y / h, (x + bw) / w, (y + bh) / h]).max() < 1e-5

    # a lost frame is rewritten alone; a finished video is skipped
    (out / "frames" / YID / files[5].name).unlink()
    (out / "annotations.parts" / f"{YID}.csv").unlink()
    writes.clear()
    before = (out / "annotations.csv").read_bytes()
    assert export(db, path, "frames", out, "--image_format", "png") == EXIT_OK
    assert writes == [files[5]] and (out / "annotations.csv").read_bytes() == before


# ---------------------------------------------------------------------------- the stage's shape


def test_flags_are_config_fields_with_help_and_the_stage_pickles():
    import argparse
    import pickle

    from utils.core.config import config_fields
    from utils.runner.cli import build_parser
    from utils.runner.slurm import SlurmOptions

    parser = build_parser(EXPORT_TRACKS_STAGE)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == {f.name for f, _, _ in config_fields(EXPORT_TRACKS_STAGE.config_class)} | \
        {f.name for f, _, _ in config_fields(SlurmOptions)}
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings or action.dest == "help":
            continue
        assert (action.help or "").strip(), action.option_strings
        assert formatter._expand_help(action).lower().count("(default") <= 1, action.option_strings
    assert "(default: None)" not in parser.format_help()
    assert pickle.loads(pickle.dumps(EXPORT_TRACKS_STAGE)).name == "export_tracks"
