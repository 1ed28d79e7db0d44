"""The metadata record (utils/records/tracks.py) and the class prompts (utils/records/prompts.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json

import numpy as np
import pytest

from tests.helpers import shared_asset
from utils.records.prompts import (
    Vocabulary,
    file_label,
    label_of,
    label_with_dashes,
    parse_prompt_lines,
    read_prompts,
    vocabulary_hash,
)
from utils.records.track_files import iter_records, read_records, records_to_jsonl_gz_bytes, write_records
from utils.records.tracks import RecordsFileError, TrackRecord, TrackRecordError, compute_tid, track_filename

YID = "dQw4w9WgXcQ"
CLASSES = ["aerosol can (also known as spray can)", "air conditioner", "Band Aid", "cat", "dog"]


def _history(t=5, c=None, seed=0):
    c = len(CLASSES) if c is None else c
    rng = np.random.default_rng(seed)
    ts = 10.0 + np.arange(t) / 16.0
    xy = rng.uniform(0, 100, (t, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 50, (t, 2))], 1)
    logits = rng.normal(size=(t, c))
    scores = rng.uniform(0.2, 1.0, t)
    return ts, boxes, logits, scores


def _record(**kw) -> TrackRecord:
    ts, boxes, logits, scores = _history()
    args = dict(class_names=CLASSES, video_size=(480, 854), segment=(9.5, 20.0), detector="owlv2", vocab_hash="ab" * 32)
    args.update(kw)
    return TrackRecord.from_history(YID, ts, boxes, logits, scores, **args)


# ---------------------------------------------------------------------------- prompts


def test_labels_and_dashes():
    assert label_of("aerosol can (also known as spray can)") == "aerosol can"
    assert label_of("  flip-flop ") == "flip-flop"
    assert label_of("photo of a bow-tie (also known as bowtie)") == "bow-tie"
    assert label_of("Band Aid") == "Band Aid"
    assert label_with_dashes("aerosol can") == "aerosol-can"
    assert label_with_dashes("Band Aid") == "Band-Aid"
    assert label_with_dashes("pan (for cooking)") == "pan-for-cooking"
    assert label_with_dashes("crème brûlée / tart") == "crme-brle-tart"
    assert label_with_dashes("bottle_cap") == "bottle_cap"
    assert label_with_dashes("?!") == "object"


def test_track_file_names_follow_the_released_verified_list():
    """Every clip name of the released verified list is what track_filename gives for a prompt line
    of that class: the label's trailing dash is kept when the name was cut before "(also" after
    two spaces (``mouse  (also known as computer mouse)`` -> ``<yid>-mouse--<tid>.mp4``)."""
    from tests.helpers import shared_asset

    prompts = Vocabulary.from_lines(shared_asset("lvis-prompts.txt").read_text().splitlines())
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(prompts.labels):
        by_label.setdefault(label.replace(" ", "_"), []).append(i)
    lines = shared_asset("trackverse-verified-6perclass.txt").read_text().splitlines()
    trailing = 0
    for line in lines:
        name, cls = line.split(",", 1)
        yid, tid = name[:11], name[-36:-4]
        candidates = by_label[cls.rstrip("_")]  # the class column is the label, spaces as "_"
        made = {track_filename(yid, prompts.lines[i], tid) for i in candidates}
        assert f"{yid[:2]}/{name}" in made, (line, made)
        trailing += name.endswith(f"--{tid}.mp4")
    assert len(lines) == 4782 and trailing == 186
    assert file_label("mouse  (also known as computer mouse)") == "mouse-"
    assert file_label("aerosol can (also known as spray can)") == "aerosol-can"
    assert file_label("pan (for cooking)") == "pan-for-cooking"  # unsafe after the released rule: as before
    assert file_label("mouse") == "mouse"


def test_vocabulary_from_small_files(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("aerosol can (also known as spray can)\r\nair conditioner\n\nflip-flop \nBand Aid")
    vocab = read_prompts(path)
    assert vocab.labels == ("aerosol can", "air conditioner", "flip-flop", "Band Aid")
    assert vocab.labels_with_dashes == ["aerosol-can", "air-conditioner", "flip-flop", "Band-Aid"]
    assert len(vocab) == 4 and vocab.index_of("band aid") == 3
    expected = hashlib.sha256(
        b"aerosol can (also known as spray can)\nair conditioner\nflip-flop\nBand Aid"
    ).hexdigest()
    assert vocab.hash == expected == vocabulary_hash(vocab.lines)
    same = tmp_path / "same.txt"
    same.write_text("aerosol can (also known as spray can)\nair conditioner\nflip-flop\nBand Aid\n")
    assert read_prompts(same).hash == vocab.hash  # line endings, blanks, final newline don't matter
    assert Vocabulary.from_lines(["b", "a"]).hash != Vocabulary.from_lines(["a", "b"]).hash
    with pytest.raises(KeyError):
        vocab.index_of("zebra")
    with pytest.raises(ValueError, match="no class prompts"):
        Vocabulary.from_lines(["", "  "])
    with pytest.raises(ValueError, match="empty label"):
        Vocabulary.from_lines(["cat", " (also known as nothing)"])
    with pytest.raises(FileNotFoundError, match="prompts file"):
        read_prompts(tmp_path / "missing.txt")


def test_comment_and_blank_lines_of_a_prompts_file_are_not_classes(tmp_path):
    """Issue 14, item 3: a ``# comment`` line became a class. Comments and blank lines are left
    out as in id lists, and ids count class lines only, so a comment shifts no id."""
    plain = tmp_path / "plain.txt"
    plain.write_text("cat\ndog (also known as hound)\nbow (a weapon)\n")
    commented = tmp_path / "commented.txt"
    commented.write_text("# my vocabulary, v2\ncat\n\n   # pets above, weapons below\ndog (also known as hound)\n"
                         "#bow (the ribbon), dropped for now\nbow (a weapon)\n# end\n")
    vocab, reference = read_prompts(commented), read_prompts(plain)
    assert vocab.labels == ("cat", "dog", "bow (a weapon)") == reference.labels
    assert vocab.lines == reference.lines
    assert [vocab.index_of(label) for label in ("cat", "dog", "bow (a weapon)")] == [0, 1, 2]  # the ids top10_lbl records
    assert vocab.hash == reference.hash == vocabulary_hash(commented.read_text().splitlines())
    assert parse_prompt_lines(["# a", " ", "x ", "  #b", "y#z"]) == ["x", "y#z"]  # only whole-line comments
    only_comments = tmp_path / "only_comments.txt"
    only_comments.write_text("# nothing here yet\n\n")
    with pytest.raises(ValueError, match="no class prompts"):
        read_prompts(only_comments)


def test_lvis_prompts_asset():
    lvis_prompts = shared_asset("lvis-prompts.txt")  # skips, naming tests/data/fetch_samples.sh, when absent
    vocab = read_prompts(lvis_prompts)
    # 1202 newline characters, and a last line without one: the 1203 LVIS v1 classes.
    assert len(vocab) == 1203
    # no blank or comment line: class id i is line i of the file, as the released top10_lbl ids
    assert vocab.lines == tuple(line.strip() for line in lvis_prompts.read_text(encoding="utf-8").splitlines())
    assert vocab.labels[0] == "aerosol can" and vocab.lines[0] == "aerosol can (also known as spray can)"
    assert all(label and "(also" not in label for label in vocab.labels)
    assert all(label == label.strip() for label in vocab.labels)
    dashed = vocab.labels_with_dashes
    assert all(d and set(d) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") for d in dashed)
    # LVIS homonyms (bow the weapon / the ribbon...) share a label; class indices tell them apart
    dupes = {label for label in vocab.labels if vocab.labels.count(label) > 1}
    assert dupes == {"bow", "fish", "octopus", "pan", "salmon"}
    assert "flip-flop" in vocab.labels and "Band-Aid" in dashed
    assert len(vocab.hash) == 64


# ---------------------------------------------------------------------------- record


def test_from_history_top10_and_stats():
    ts, boxes, logits, scores = _history(t=6, c=12, seed=3)
    names = [f"class {i}" for i in range(12)]
    rec = TrackRecord.from_history(YID, ts, boxes, logits, scores, names, (480, 854))
    weighted = logits * scores[:, None]
    order = np.argsort(-weighted.mean(0), kind="stable")[:10]
    assert rec.top10_lbl == order.tolist() and len(rec.top10_lbl) == 10
    assert rec.top10_desc == [names[i] for i in order]
    assert rec.top10_logit_mu == pytest.approx(logits.mean(0)[order], abs=1e-5)
    assert rec.top10_logit_std == pytest.approx(logits.std(0)[order], abs=1e-5)
    assert rec.top10_wlogit_mu == pytest.approx(weighted.mean(0)[order], abs=1e-5)
    assert rec.top10_wlogit_std == pytest.approx(weighted.std(0)[order], abs=1e-5)
    assert rec.track_bbox[0] == pytest.approx([boxes[0, 0], boxes[0, 1], boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]], abs=0.01)
    assert rec.video_size == [480, 854] and len(rec) == 6
    assert rec.scores == pytest.approx(scores, abs=1e-4)
    small = TrackRecord.from_history(YID, ts, boxes, logits[:, :3], scores, names[:3], (480, 854))
    assert len(small.top10_lbl) == 3  # fewer classes than 10
    with pytest.raises(TrackRecordError, match="shapes disagree"):
        TrackRecord.from_history(YID, ts, boxes[:3], logits, scores, names, (480, 854))
    with pytest.raises(TrackRecordError, match="class_names"):
        TrackRecord.from_history(YID, ts, boxes, logits, scores, names[:5], (480, 854))


def test_weighting_changes_the_ranking():
    # class 0 has the larger raw logit but only on a low-score frame
    logits = np.array([[10.0, 1.0], [0.0, 1.0]])
    scores = np.array([0.05, 1.0])
    rec = TrackRecord.from_history(YID, [0.0, 1.0], [[0, 0, 1, 1]] * 2, logits, scores, ["a", "b"], (10, 10))
    assert rec.top10_lbl == [1, 0]


def test_tid_is_defined_and_deterministic():
    rec = _record()
    text = f"{YID}|" + ",".join(f"{t:.4f}" for t in rec.track_ts) + "|" + ";".join(
        ",".join(f"{v:.2f}" for v in box) for box in rec.track_bbox
    )
    assert rec.tid == hashlib.md5(text.encode()).hexdigest() == rec.expected_tid()
    assert _record().tid == rec.tid  # same history, same id
    ts, boxes, logits, scores = _history()
    moved = TrackRecord.from_history(YID, ts, boxes + 1, logits, scores, CLASSES, (480, 854))
    assert moved.tid != rec.tid
    later = TrackRecord.from_history(YID, ts + 0.5, boxes, logits, scores, CLASSES, (480, 854))
    assert later.tid != rec.tid
    other = TrackRecord.from_history("aaaaaaaaaaa", ts, boxes, logits, scores, CLASSES, (480, 854))
    assert other.tid != rec.tid
    # scores and logits are not part of the id; sub-rounding noise is not either
    assert TrackRecord.from_history(YID, ts + 1e-7, boxes + 1e-5, logits * 2, scores / 2, CLASSES, (480, 854)).tid == rec.tid
    back = TrackRecord.from_json(rec.to_json())
    assert back.expected_tid() == rec.tid
    assert compute_tid(YID, [1, 2], [[0, 0, 1, 1], [1, 1, 2, 2]]) == compute_tid(YID, [1.0, 2.0], [[0.0, 0, 1, 1], [1, 1, 2, 2]])


def test_fn_format():
    rec = _record()
    top = rec.top10_lbl[0]
    assert rec.fn == f"{YID[:2]}/{YID}-{label_with_dashes(label_of(CLASSES[top]))}-{rec.tid}.mp4"
    assert track_filename(YID, "aerosol can (also known as spray can)", "f" * 32) == f"dQ/{YID}-aerosol-can-{'f' * 32}.mp4"
    assert track_filename(YID, "Band Aid", "x") == f"dQ/{YID}-Band-Aid-x.mp4"
    assert rec.label == label_of(CLASSES[top])


def test_round_trip_canonical():
    rec = _record(extra={"motion_q90": 1.5, "note": {"a": [1, 2]}})
    line = rec.to_json()
    assert "\n" not in line
    data = json.loads(line)
    assert list(data)[:12] == [
        "yid", "tid", "fn", "video_size", "track_ts", "track_bbox", "top10_lbl", "top10_desc",
        "top10_logit_mu", "top10_logit_std", "top10_wlogit_mu", "top10_wlogit_std",
    ]
    assert data["segment"] == [9.5, 20.0] and data["detector"] == "owlv2" and data["motion_q90"] == 1.5
    back = TrackRecord.from_json(line)
    assert back == rec and back.to_json() == line
    assert TrackRecord.from_dict(data) == rec
    assert TrackRecord.from_dict(data, validate=False).to_json() == line


def test_reads_released_spelling():
    released = {
        "track_id": "0f3a",
        "yid": YID,
        "track_mp4_filename": f"dQ/{YID}-cat-0f3a.mp4",
        "track_ts": [1.0, 1.125],
        "frame_ts": [1.0, 1.0625, 1.125],
        "frame_bboxes": [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]],
        "top10_label_ids": [3, 4],
        "top10_label_names": ["cat", "dog"],
        "split": "train",
    }
    rec = TrackRecord.from_dict(released)
    assert rec.tid == "0f3a" and rec.fn == released["track_mp4_filename"]
    assert rec.track_ts == [1.0, 1.0625, 1.125] and rec.track_bbox[2] == [3, 4, 5, 6]
    assert rec.top10_lbl == [3, 4] and rec.top10_desc == ["cat", "dog"]
    assert rec.video_size is None and rec.top10_logit_mu is None
    assert rec.extra == {"split": "train"}  # the [start, end] span says nothing the frames don't
    out = json.loads(rec.to_json())
    assert out["fn"] == released["track_mp4_filename"] and out["track_ts"] == released["frame_ts"]
    assert "video_size" not in out and "frame_ts" not in out and out["split"] == "train"
    # a span that differs from the frames is kept, under its own name
    assert TrackRecord.from_dict({**released, "track_ts": [0.5, 2.0]}).extra["track_span"] == [0.5, 2.0]
    # the original pipeline's [mu, std] pairs and integer track ids
    original = {
        "yid": YID, "track_id": 7, "fn": f"dQ/{YID}-cat-7.mp4", "video_size": [480, 854],
        "frame_ts": [0.0, 0.5], "frame_bboxes": [[0, 0, 1, 1], [0, 0, 1, 1]],
        "top10_lbl": [3], "top10_desc": ["cat"], "top10_cls": [[2.0], [0.5]], "top10_wcls": [[1.0], [0.25]],
        "frame_obj": [0.9, 0.8],
    }
    rec = TrackRecord.from_dict(original)
    assert rec.tid == "7" and rec.top10_logit_mu == [2.0] and rec.top10_wlogit_std == [0.25]
    assert rec.scores == [0.9, 0.8] and rec.extra == {}


def test_missing_tid_and_fn_are_derived():
    rec = TrackRecord.from_dict(
        {"yid": YID, "track_ts": [0, 1], "track_bbox": [[0, 0, 2, 2], [1, 1, 2, 2]], "top10_desc": ["air conditioner"]}
    )
    assert rec.tid == compute_tid(YID, [0, 1], [[0, 0, 2, 2], [1, 1, 2, 2]])
    assert rec.fn == f"dQ/{YID}-air-conditioner-{rec.tid}.mp4"
    with pytest.raises(TrackRecordError, match="no fn"):
        TrackRecord.from_dict({"yid": YID, "track_ts": [0], "track_bbox": [[0, 0, 1, 1]]})


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(track_bbox=[[0, 0, 1, 1]]), "1 boxes in track_bbox for 5 timestamps"),
        (dict(track_bbox=[[0, 0, -1, 1]] * 5), "negative width"),
        (dict(track_bbox=[[0, 0, 1, float("nan")]] * 5), "NaN"),
        (dict(track_ts=[0, 1, float("inf"), 3, 4]), "track_ts has NaN"),
        (dict(track_ts=[0, 2, 1, 3, 4]), "increasing"),
        (dict(track_ts=[]), "1 dimension|empty|0 timestamps|5 boxes"),
        (dict(yid="short"), "YouTube id"),
        (dict(tid=""), "tid is empty"),
        (dict(fn="../../etc/passwd.mp4"), "relative"),
        (dict(fn="dQ/x.avi"), "relative"),
        (dict(video_size=[480]), r"\[h, w\]"),
        (dict(video_size=[0, 10]), "positive"),
        (dict(top10_desc=["cat"]), "differ in length"),
        (dict(top10_logit_std=[-1.0] * 5), "negative"),
        (dict(segment=[5.0, 1.0]), "segment"),
        (dict(scores=[0.5]), "scores"),
        (dict(extra={"yid": "x"}), "shadow"),
        (dict(track_bbox=[[0, 0, 1]] * 5), r"\[x, y, w, h\]"),
        (dict(top10_lbl=[0.5, 1, 2, 3, 4]), "integer"),
    ],
)
def test_validation_errors(change, message):
    data = {**_record().__dict__}
    data.update(change)
    with pytest.raises(TrackRecordError, match=message):
        TrackRecord(**data)


def test_validation_names_the_record():
    data = json.loads(_record().to_json())
    data["track_bbox"] = data["track_bbox"][:2]
    with pytest.raises(TrackRecordError, match=f"track {YID}/"):
        TrackRecord.from_dict(data)
    with pytest.raises(TrackRecordError, match="misses"):
        TrackRecord.from_dict({"yid": YID})
    with pytest.raises(TrackRecordError, match="JSON"):
        TrackRecord.from_json("{not json")


# ---------------------------------------------------------------------------- files


def test_gzip_jsonl_round_trip(tmp_path):
    records = [_record(), TrackRecord.from_history(YID, *_history(seed=1), CLASSES, (480, 854))]
    data = records_to_jsonl_gz_bytes(records)
    assert data == records_to_jsonl_gz_bytes(records)  # deterministic bytes
    path = tmp_path / "meta.jsonl.gzip"
    path.write_bytes(data)
    got = read_records(path)
    assert list(got) == records and not got.truncated and got.error is None
    assert list(iter_records(path)) == records
    buf = io.BytesIO()
    assert write_records(buf, [r.to_dict() for r in records]) == 2
    assert gzip.decompress(buf.getvalue()) == gzip.decompress(data)
    plain = tmp_path / "meta.jsonl"
    plain.write_text("".join(r.to_json() + "\n" for r in records))
    assert list(read_records(plain)) == records
    empty = tmp_path / "empty.jsonl.gzip"
    empty.write_bytes(records_to_jsonl_gz_bytes([]))
    assert list(read_records(empty)) == []


def test_truncated_gzip_is_reported(tmp_path):
    records = [TrackRecord.from_history(YID, *_history(t=40, seed=s), CLASSES, (480, 854)) for s in range(30)]
    data = records_to_jsonl_gz_bytes(records)
    path = tmp_path / "cut.jsonl.gzip"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordsFileError, match="truncated"):
        read_records(path)
    with pytest.raises(RecordsFileError, match="truncated"):
        list(iter_records(path))
    got = read_records(path, tolerant=True)
    assert got.truncated and "truncated" in got.error
    assert 0 < len(got) < len(records) and list(got) == records[: len(got)]


def test_bad_line_names_file_and_line(tmp_path):
    good = _record().to_json()
    bad = json.loads(good)
    bad["track_bbox"] = bad["track_bbox"][:1]
    path = tmp_path / "bad.jsonl.gzip"
    path.write_bytes(gzip.compress((good + "\n" + json.dumps(bad) + "\n").encode()))
    with pytest.raises(RecordsFileError, match=r"bad.jsonl.gzip:2"):
        read_records(path, tolerant=True)
    torn = tmp_path / "torn.jsonl"
    torn.write_text(good + "\n" + good[:40])
    with pytest.raises(RecordsFileError, match="torn"):
        read_records(torn)
    got = read_records(torn, tolerant=True)
    assert len(got) == 1 and got.truncated


def test_torn_last_line_cut_inside_a_character(tmp_path):
    """Records keep non-ASCII class names as UTF-8; a writer killed in the middle of one
    leaves a torn line, not an undecodable file."""
    names = ["crème brûlée", "café au lait", "cat", "dog", "jalapeño"]
    rec = TrackRecord.from_history(YID, *_history(seed=2), names, (480, 854))
    line = rec.to_json().encode("utf-8")
    cut = line.index("è".encode()) + 1  # between the two bytes of "è"
    path = tmp_path / "meta.jsonl.gzip"  # the name says gzip, the bytes say plain: the bytes win
    path.write_bytes(line + b"\n" + line[:cut])
    got = read_records(path, tolerant=True)
    assert list(got) == [rec] and got.truncated and "torn" in got.error
    with pytest.raises(RecordsFileError, match=r"meta.jsonl.gzip:2: torn"):
        read_records(path)
    with pytest.raises(RecordsFileError, match=r"meta.jsonl.gzip:2: torn"):
        list(iter_records(path))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(line + b"\n" + line[:cut] + b"\n" + line + b"\n")  # the same bytes, mid-file
    with pytest.raises(RecordsFileError, match=r"bad.jsonl:2: not a JSON line"):
        read_records(bad, tolerant=True)
