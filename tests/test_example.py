"""The README's main job: example.py builds a small dataset end to end with every real stage
(offline template detector here; OWLv2 on a user's machine). Its outputs must be consistent."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli
from utils.core.layout import DatasetLayout
from utils.core.video import probe_video
from utils.records.segments import read_segments
from utils.records.track_files import read_records

EXPECTED = {"exampleCat1": {"cat", "coffee cup"}, "exampleRkt2": {"rocket", "person"},
            "examplePpl3": {"person", "cat"}}


@pytest.fixture(scope="module")
def example_db(tmp_path_factory):
    base = tmp_path_factory.mktemp("example") / "db"
    proc = run_cli("example.py", "--base_dir", base, "--detector", "utils.testing.example:TemplateDetector", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base, proc.stdout


def test_every_stage_output_is_there_and_consistent(example_db):
    base, stdout = example_db
    layout = DatasetLayout(base)
    assert "Done in" in stdout and "gallery" in stdout
    total = 0
    for yid, labels in EXPECTED.items():
        assert probe_video(layout.video_mp4(yid)).duration > 5
        assert layout.video_sidecar(yid, "blurred").exists()
        segments = read_segments(layout.video_segments(yid))
        assert len(segments) == (2 if yid == "exampleRkt2" else 1)
        records = list(read_records(layout.tracks_meta("Example", yid)))
        assert {r.label for r in records} == labels  # each photograph found, once
        for r in records:
            assert any(s[0] - 0.1 <= r.track_ts[0] and r.track_ts[-1] <= s[1] + 0.1 for s in segments)
            clip = layout.track_mp4("Example", r.fn)
            assert probe_video(clip).num_frames > 50
        total += len(records)
    assert total == 6
    index = list(read_records(layout.relative("tracks_subsets/Example/Example-Full.jsonl.gzip")))
    assert len(index) == 6
    (subset,) = layout.subsets_dir().glob("Example-CB5-*.jsonl.gzip")
    assert {r.tid for r in read_records(subset)} == {r.tid for r in index}
    page = (base / "qa" / "index.html").read_text()
    assert page.count("<video") == 6


def test_status_reports_everything_done(example_db):
    base, _ = example_db
    data = json.loads(run_cli("status.py", "--base_dir", base, "--json", check=True).stdout)
    stages = {s["stage"]: s for s in data["stages"]}
    assert set(stages) == {"download_videos", "gdpr_blur_faces", "parse_tracks-Example", "extract_tracks-Example"}
    for s in stages.values():
        assert (s["total"], s["done"], s["failed"], s["pending"]) == (3, 3, 0, 0)


def test_rerun_does_no_work(example_db):
    base, _ = example_db
    proc = run_cli("example.py", "--base_dir", base, "--detector", "utils.testing.example:TemplateDetector", timeout=600)
    assert proc.returncode == 0
    assert proc.stderr.count("0 done, 3 skipped") == 4  # download, blur, parse, extract
