"""The README's main job: example.py builds a small dataset end to end with every real stage,
offline by default (the template detector; OWLv2 with --detector owlv2), relabels it with a second
vocabulary and searches it by text. Its outputs must be consistent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import run_cli
from utils.core.layout import DatasetLayout, report_path
from utils.core.video import probe_video
from utils.detect.detectors.base import embed_prompts
from utils.detect.detectors.registry import make_detector
from utils.records.segments import read_segments
from utils.records.track_files import read_records
from utils.testing.example import PROMPTS, photo

EXPECTED = {"exampleCat1": {"cat", "coffee cup"}, "exampleRkt2": {"rocket", "person"},
            "examplePpl3": {"person", "cat"}}


@pytest.fixture(scope="module")
def example_db(tmp_path_factory):
    base = tmp_path_factory.mktemp("example") / "db"
    proc = run_cli("example.py", "--base_dir", base, timeout=900)  # the README's command: no flag
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
    assert set(stages) == {"download_videos", "gdpr_blur_faces", "parse_tracks-Example", "extract_tracks-Example",
                           "relabel_tracks-ExampleRelabelled"}
    for s in stages.values():
        assert (s["total"], s["done"], s["failed"], s["pending"]) == (3, 3, 0, 0)


def test_rerun_does_no_work(example_db):
    base, _ = example_db
    proc = run_cli("example.py", "--base_dir", base, timeout=600)
    assert proc.returncode == 0
    assert proc.stderr.count("0 done, 3 skipped") == 5  # download, blur, parse, extract, relabel


def test_relabel_with_a_second_vocabulary_names_every_track_by_its_new_class(example_db):
    base, stdout = example_db
    layout = DatasetLayout(base)
    renamed = {"cat": "kitten", "coffee cup": "mug", "rocket": "spaceship", "person": "astronaut"}
    for yid in EXPECTED:
        detected = {r.tid: r.label for r in read_records(layout.tracks_meta("Example", yid))}
        relabelled = list(read_records(layout.tracks_meta("ExampleRelabelled", yid)))
        assert {r.tid: renamed[detected[r.tid]] for r in relabelled} == {r.tid: r.label for r in relabelled}
        for r in relabelled:  # the class no track shows scores nothing
            assert r.top10_desc[-1] == "bicycle" and r.top10_logit_mu[-1] == pytest.approx(0.0, abs=1e-3)
            assert f"{detected[r.tid]} -> {r.label}" in stdout


def test_search_top_hit_is_the_rocket_track_and_is_printed(example_db):
    base, stdout = example_db
    layout = DatasetLayout(base)
    (subset,) = layout.subsets_dir().glob("Example-search-a-spaceship-top*.jsonl.gzip")
    (rocket,) = [r for r in read_records(layout.tracks_meta("Example", "exampleRkt2")) if r.label == "rocket"]
    hits = json.loads(report_path(subset).read_text())["hits"]
    assert hits[0]["tid"] == rocket.tid and hits[0]["score"] > 0.5
    assert all(h["score"] < 0.1 for h in hits[1:])  # no other track shows a rocket
    assert list(read_records(subset))[0].tid == rocket.tid  # the subset file is best first
    assert f"top hit: {rocket.fn}  (detected as 'rocket'" in stdout


# ------------------------------------------------------------------ the template detector's text encoder


def pasted(class_name: str) -> np.ndarray:
    """A frame of the example's size with the class's photograph at (200, 50), as the videos paste it."""
    frame = np.full((270, 480, 3), 90, np.uint8)
    frame[50:170, 200:330] = photo(class_name, (130, 120))
    return frame


def test_template_detector_texts_point_where_its_boxes_do():
    """A class's text and a box of that class's photograph share a direction; synonyms (from the
    prompt's "also known as" or a query) land on it too; a text naming no photograph scores 0."""
    detector = make_detector("utils.testing.example:TemplateDetector", [p.split(" (")[0] for p in PROMPTS],
                             prompts=PROMPTS)
    (dets,) = detector.detect([pasted("rocket")])
    assert len(dets) == 1 and detector.class_names[int(dets.class_ids[0])] == "rocket"
    texts = ["rocket (also known as spacecraft)", "a spaceship", "an astronaut", "a red umbrella", "a bicycle"]
    scores = embed_prompts(detector, texts) @ dets.embedding[0]
    assert scores[0] == pytest.approx(scores[1]) and scores[0] > 0.6
    assert np.abs(scores[2:]).max() < 1e-6
    assert embed_prompts(detector, ["a red umbrella"]) @ embed_prompts(detector, ["a bicycle"]).T < 0.9


def test_template_detector_finds_a_photograph_under_any_name_its_text_gives():
    detector = make_detector("utils.testing.example:TemplateDetector", ["mug", "bicycle"],
                             prompts=["mug", "bicycle"])
    (dets,) = detector.detect([pasted("coffee cup")])
    assert len(dets) == 1 and dets.xyxy[0].tolist() == [200, 50, 330, 170]
    assert dets.class_logits[0].argmax() == 0 and dets.class_logits[0, 1] < 0
