"""Visual QA: boxes are drawn where the tracks are; the gallery renders in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from tests.helpers import run_cli
from utils.core.layout import DatasetLayout
from utils.core.video import VideoWriter
from utils.records.track_files import records_to_jsonl_gz_bytes
from utils.records.tracks import TrackRecord
from utils.testing.synthetic import make_synthetic_video
from utils.use.qa import box_at, build_gallery, contact_sheet, track_color

YID = "qaqaqaqaqa1"
DATASET = "Synth"
CLASS_IDS = {"cat": 0, "cup": 1, "rocket": 2, "person": 3}  # the label ids of the synthetic classes


def gt_records(video) -> list[TrackRecord]:
    """One record per ground-truth identity, sampled at 16 fps."""
    records = []
    for identity, boxes in sorted(video.identities().items()):
        boxes = boxes[::2]
        ts = [b.time for b in boxes]
        xywh = [[b.xyxy[0], b.xyxy[1], b.xyxy[2] - b.xyxy[0], b.xyxy[3] - b.xyxy[1]] for b in boxes]
        r = TrackRecord(yid=YID, tid="x", fn="x.mp4", track_ts=ts, track_bbox=xywh,
                        top10_lbl=[CLASS_IDS[boxes[0].class_name]],
                        top10_desc=[boxes[0].class_name], top10_wlogit_mu=[0.5 + identity / 10],
                        video_size=[video.height, video.width])
        r.tid = r.expected_tid()
        r.fn = f"{YID[:2]}/{YID}-{boxes[0].class_name}-{r.tid}.mp4"
        records.append(r)
    return records


@pytest.fixture(scope="module")
def qa_db(tmp_path_factory):
    base = tmp_path_factory.mktemp("qa") / "db"
    layout = DatasetLayout(base)
    video = make_synthetic_video(layout.video_mp4(YID))
    records = gt_records(video)
    for r in records:  # small stand-in clips
        with VideoWriter(layout.track_mp4(DATASET, r.fn), 64, 48, 25) as writer:
            for k in range(25):
                writer.write(np.full((48, 64, 3), 40 + 4 * k, np.uint8))
    subset = layout.subsets_dir() / f"{DATASET}-CB5-0K-T0.jsonl.gzip"
    subset.parent.mkdir(parents=True)
    subset.write_bytes(records_to_jsonl_gz_bytes(records))
    meta = layout.tracks_meta(DATASET, YID)
    meta.parent.mkdir(parents=True)
    meta.write_bytes(records_to_jsonl_gz_bytes(records))
    return base, video, records, subset


def test_contact_sheet_has_boxes_where_the_tracks_are(qa_db, tmp_path):
    base, video, records, _ = qa_db
    scene0 = [r for r in records if r.track_ts[-1] < 4.0]  # the cat and the cup of the first scene
    sheet = contact_sheet(DatasetLayout(base).video_mp4(YID), scene0, tmp_path / "sheet.png", frames=4, columns=2)
    image = cv2.cvtColor(cv2.imread(str(sheet)), cv2.COLOR_BGR2RGB)
    assert image.shape == (2 * 240, 2 * 320, 3)
    start, end = min(r.track_ts[0] for r in scene0), max(r.track_ts[-1] for r in scene0)
    times = np.linspace(start, end, 4)
    checked = 0
    for k, t in enumerate(times):
        tile = image[(k // 2) * 240:(k // 2 + 1) * 240, (k % 2) * 320:(k % 2 + 1) * 320]
        for r in scene0:
            box = box_at(r, t)
            if box is None:
                continue
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            column = tile[y0 + 2:y1 - 2, max(x0, 0)]  # the left edge of the drawn box
            assert np.abs(column.astype(int) - track_color(r.tid)).max(axis=1).mean() < 30
            checked += 1
    assert checked >= 6


def test_gallery_page_lists_classes_and_clips(qa_db, tmp_path):
    base, _, records, subset = qa_db
    result = build_gallery(base, subset, tmp_path / "qa", DatasetLayout(base).base_dir / "tracks_mp4" / DATASET,
                           per_class=3)
    page = result.page.read_text()
    assert result.classes == 4 and result.tracks == len(records) and result.missing_clips == 0
    assert page.count("<video") == len(records)
    for name, cid in CLASS_IDS.items():
        assert f"<h2>{cid} {name} " in page
    assert result.sheets == 1 and (tmp_path / "qa" / "sheets" / f"{YID}.png").exists()


def test_gallery_groups_by_label_id_not_by_name(qa_db, tmp_path):
    """Issue 14: LVIS has two "bow" lines (two classes); the gallery shows one section per id,
    titled ``<id> <name>``; a record without an id is grouped by its name alone."""
    import dataclasses

    base, _, records, _ = qa_db
    bows = [dataclasses.replace(r, top10_lbl=[135 + (k % 2)], top10_desc=["bow "]) for k, r in enumerate(records)]
    bows[-1] = dataclasses.replace(records[-1], top10_lbl=None, top10_desc=["bow"])
    subset = tmp_path / "bows.jsonl.gzip"
    subset.write_bytes(records_to_jsonl_gz_bytes(bows))
    result = build_gallery(base, subset, tmp_path / "qa", DatasetLayout(base).base_dir / "tracks_mp4" / DATASET,
                           sheets=False)
    page = result.page.read_text()
    assert result.classes == 3 and result.tracks == len(bows)
    assert page.count("<h2>135 bow <small>") == 1 and page.count("<h2>136 bow <small>") == 1
    assert page.count("<h2>bow <small>(1 track)") == 1


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed: `sudo apt-get install chromium` brings it (.ci/run installs it)")


def test_gallery_renders_in_headless_chromium(qa_db, tmp_path):
    browser = chromium()
    base, _, records, subset = qa_db
    out = tmp_path / "qa"
    proc = run_cli("qa.py", "--base_dir", base, "--dataset_name", DATASET, "--records", subset, "--out", out,
                   check=True)
    assert "open file://" in proc.stdout
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files"]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,900",
                    (out / "index.html").as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (900, 1200)
    assert image.std() > 10  # not a blank page
    dom = subprocess.run([browser, *flags, "--dump-dom", (out / "index.html").as_uri()], capture_output=True,
                         text=True, timeout=120, check=False).stdout
    assert dom.count("<video") == len(records) and "person" in dom


# ------------------------------------------------------------------ qa.py: bad inputs, one line


def qa_error(*args) -> str:
    """qa.py's stderr for bad inputs: exit 2, one line, no traceback."""
    proc = run_cli("qa.py", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_qa_missing_or_unreadable_records_file(qa_db, tmp_path):
    base = qa_db[0]
    common = ["--base_dir", base, "--dataset_name", DATASET, "--out", tmp_path / "qa"]
    assert qa_error(*common, "--records", "tracks_subsets/nope.jsonl.gzip") == \
        f"error: --records {base / 'tracks_subsets' / 'nope.jsonl.gzip'} does not exist"
    assert qa_error(*common, "--records", tmp_path / "absent.jsonl.gzip") == \
        f"error: --records {tmp_path / 'absent.jsonl.gzip'} does not exist"
    assert qa_error(*common, "--records", "tracks_subsets") == \
        f"error: --records {base / 'tracks_subsets'} is a folder, not a file"
    junk = tmp_path / "junk.jsonl.gzip"
    junk.write_bytes(b"\x00\x01 not records \xff\n")
    assert qa_error(*common, "--records", junk).startswith(f"error: --records {junk}: not a track records file")
    assert not (tmp_path / "qa").exists()


def test_qa_unknown_or_invalid_yid(qa_db, tmp_path):
    base = qa_db[0]
    common = ["--base_dir", base, "--dataset_name", DATASET, "--out", tmp_path / "qa"]
    assert qa_error(*common, "--yid", "../../etc") == \
        "error: --yid: '../../etc' is not a YouTube id (11 characters of A-Z a-z 0-9 _ -)"
    meta = DatasetLayout(base).tracks_meta(DATASET, "zzzzzzzzzzz")
    assert qa_error(*common, "--yid", "zzzzzzzzzzz") == (
        f"error: --yid zzzzzzzzzzz: no track metadata {meta} (parse_tracks.py has not parsed this video for "
        f"--dataset_name {DATASET})")
    assert "no track metadata" in qa_error("--base_dir", base, "--dataset_name", "Other", "--yid", YID)
    assert qa_error("--base_dir", tmp_path / "nowhere", "--yid", YID) == \
        f"error: --base_dir {tmp_path / 'nowhere'} does not exist"
    assert not (tmp_path / "qa").exists()
