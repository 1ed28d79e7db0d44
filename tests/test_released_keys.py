"""``--key_style released``: track records handed on in the released TrackVerse schema.

The released README lists the keys ``track_id, track_ts, frame_ts, frame_bboxes, yid,
track_mp4_filename, top10_label_ids, top10_label_names``; the released download_tracks.py reads
``yid``, ``track_mp4_filename``, ``track_ts`` (paired with ``frame_bboxes`` box by box) and
``frame_bboxes``. A subset written by curate_db.py with ``--key_style released`` is read here
by a reader written from that key list alone, our readers still take it, and our
download_tracks.py rebuilds the clips from such a file.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import build_curation_db as build_db
from tests.helpers import curation_record as make_record
from tests.helpers import export, gt_records, subset_records, write_records_file
from tests.helpers import index_curation_db as index
from tests.helpers import rebuild_subset as run
from tests.helpers import rebuilt_clip as clip
from tests.helpers import sample_subsets as sample
from utils.core.errors import EXIT_OK
from utils.core.layout import DatasetLayout
from utils.records.released import RELEASED_KEYS, records_gz_bytes, released_dict
from utils.records.track_files import read_records

README_KEYS = ["track_id", "track_ts", "frame_ts", "frame_bboxes", "yid", "track_mp4_filename", "top10_label_ids",
               "top10_label_names"]


def read_released(path: Path) -> list[dict]:
    """An independent reader: gzip JSON lines, each with every key the released README lists,
    per-frame lists of equal length, boxes ``[x, y, w, h]``, an mp4 name under ``<yid[:2]>/``."""
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            m = json.loads(line)
            assert all(key in m for key in README_KEYS), sorted(m)
            assert len(m["frame_ts"]) == len(m["frame_bboxes"]) and all(len(b) == 4 for b in m["frame_bboxes"])
            assert m["track_ts"][0] == m["frame_ts"][0] and m["track_ts"][-1] == m["frame_ts"][-1]
            assert m["track_mp4_filename"] == f"{m['yid'][:2]}/{Path(m['track_mp4_filename']).name}"
            assert m["track_mp4_filename"].endswith(f"-{m['track_id']}.mp4")
            out.append(m)
    return out


def released_downloader_tracks(path: Path) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """What the released download_tracks.py takes from each line (yid, file name, timestamps,
    boxes) and the pairing its clip cutter relies on: one timestamp per box."""
    tracks = []
    with gzip.open(path, "rt") as f:
        for line in f:
            m = json.loads(line)
            ts, boxes = np.array(m["track_ts"]).astype(float), np.array(m["frame_bboxes"]).astype(float)
            assert ts.shape[0] == boxes.shape[0] and np.all(np.diff(ts) > 0)
            tracks.append((m["yid"], m["track_mp4_filename"], ts, boxes))
    return tracks


def test_released_dict_keys_and_order():
    rec = make_record("abcdefghijk", 3, 0.5, 1)
    data = released_dict(rec)
    assert list(data)[:len(README_KEYS)] == README_KEYS
    assert not {"tid", "fn", "track_bbox", "top10_lbl", "top10_desc"} & set(data)
    assert data["track_ts"] == data["frame_ts"] == rec.track_ts and data["frame_bboxes"] == rec.track_bbox
    assert data["top10_wlogit_mu"] == rec.top10_wlogit_mu and data["video_size"] == rec.video_size  # ours kept
    assert [k for k, _ in RELEASED_KEYS] == README_KEYS


def test_curated_subset_in_the_released_schema(tmp_path):
    base = tmp_path / "db"
    build_db(base, videos=12)
    assert index(base) == 0
    verified = tmp_path / "verified.txt"
    verified.write_text("")
    assert sample(base, "sample_random", verified, "--N", "0.02", "--seed", "1") == 0
    names = sorted(p.name for p in DatasetLayout(base).subsets_dir().glob("*-RND*.jsonl.gzip"))
    assert len(names) == 1
    ours = subset_records(base, names[0])  # the compact spelling (the default)
    assert sample(base, "sample_random", verified, "--N", "0.02", "--seed", "1", "--key_style", "released") == 0
    path = DatasetLayout(base).subset_file(names[0])  # the same subset, rewritten in the other spelling
    released = read_released(path)
    assert len(released) == len(ours) == 20
    for m, r in zip(released, ours, strict=True):
        assert (m["track_id"], m["yid"], m["track_mp4_filename"]) == (r.tid, r.yid, r.fn)
        assert (m["frame_ts"], m["frame_bboxes"]) == (r.track_ts, r.track_bbox)
        assert (m["top10_label_ids"], m["top10_label_names"]) == (r.top10_lbl, r.top10_desc)
    assert [t[1] for t in released_downloader_tracks(path)] == [r.fn for r in ours]
    # our readers take it, nothing lost or added
    assert [r.to_dict() for r in read_records(path)] == [r.to_dict() for r in ours]


def test_download_tracks_rebuilds_clips_from_a_released_style_file(tmp_path, server, synthetic_video):
    records = [dataclasses.replace(r, top10_lbl=[i], top10_desc=[Path(r.fn).name.split("-")[1]])
               for i, r in enumerate(gt_records(synthetic_video, "relStyleAAA"))]
    server.add("/v/relStyleAAA.mp4", synthetic_video.path)
    subset = tmp_path / "released.jsonl.gzip"
    subset.write_bytes(records_gz_bytes(records, "released"))
    assert len(read_released(subset)) == len(records)
    assert run(tmp_path, server, subset=subset) == EXIT_OK
    for rec in records:
        assert clip(tmp_path, rec.fn).is_file(), rec.fn


@pytest.mark.parametrize("style", ["compact", "released"])
def test_webdataset_records_follow_the_key_style(tmp_path, synthetic_video, style):
    import tarfile

    dataset, yid = "TestSet", "synthVideo1"
    db = tmp_path / "db"
    records = gt_records(synthetic_video, yid, label_ids={"cat": 3, "cup": 5, "rocket": 7, "person": 11})[:2]
    path = write_records_file(db, synthetic_video.path, records, yid)
    layout = DatasetLayout(db)
    for rec in records:  # the clip bytes do not matter here
        target = layout.track_mp4(dataset, rec.fn)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    out = db / "exports" / "wds"
    assert export(db, path, "webdataset", out, "--dataset_name", dataset, "--key_style", style) == EXIT_OK
    samples = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            samples += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(samples) == 2
    for data in samples:
        assert ("track_mp4_filename" in data) == (style == "released") and ("fn" in data) == (style == "compact")
