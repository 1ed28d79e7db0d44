"""relabel_tracks.py and search_tracks.py on real parse output: a fixture detector whose box
embeddings are their class's text direction plus noise (``GroundTruthDetector(embedding="class")``
through ``tests.tiny_models:FixtureDetector``) and whose text encoder maps each prompt to its
direction, so every track's true class is known. Also: precision of search over noise levels,
the tiny random OWLv2 for real, resume after SIGKILL, bad vocabularies."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import curate_db
import search_tracks
from tests.helpers import REPO, run_cli
from tests.tiny_models import GROUND_TRUTH_ENV, save_tiny_owlv2, write_ground_truth
from utils.clips.stage import EXTRACT_TRACKS_STAGE
from utils.core.errors import EXIT_OK, EXIT_USAGE
from utils.core.layout import DatasetLayout
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.export.stage import EXPORT_TRACKS_STAGE
from utils.records.index_file import load_track_table
from utils.records.prompts import read_prompts
from utils.records.provenance import Provenance, read_provenance
from utils.records.track_embeddings import embeddings_path, read_video_embeddings, write_video_tracks
from utils.records.track_files import read_records
from utils.records.tracks import TrackRecord
from utils.relabel.scoring import score_tracks, top_matches
from utils.relabel.stage import RELABEL_TRACKS_STAGE
from utils.runner.cli import main
from utils.testing.ground_truth import GroundTruthDetector, text_direction
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video
from utils.use.dataset import TrackClipDataset

YID = "synthVideo1"
FIXTURE = "tests.tiny_models:FixtureDetector"
SOURCE = "TrackVerseLVIS"
PARSE_PROMPTS = ["cat (also known as kitty)", "cup", "rocket", "table"]
# the parse-time classes permuted, and classes no object has
NEW_PROMPTS = ["dog", "table", "umbrella", "rocket", "cat", "bicycle", "cup"]
INDEX = "tracks_subsets/TrackVerseLVIS-Full.jsonl.gzip"


def add_video(db: Path, yid: str, video: Path, segments: list[tuple[float, float]]) -> None:
    layout = DatasetLayout(db)
    layout.video_mp4(yid).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(video, layout.video_mp4(yid))
    layout.video_segments(yid).parent.mkdir(parents=True, exist_ok=True)
    layout.video_segments(yid).write_text("".join(f"{a},{b}\n" for a, b in segments))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def relabel_args(db: Path, prompts: Path, name: str = "Relabelled", index: str = INDEX) -> list[str]:
    return ["--base_dir", str(db), "--index_file", index, "--class_prompts", str(prompts), "--dataset_name", name]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """One video of six tracks (cat x2, table x2, cup, rocket) parsed with the class-direction
    fixture detector, and its index."""
    root = tmp_path_factory.mktemp("relabel")
    scenes = [
        SceneSpec(3.5, (ObjectSpec("cat", (60, 50), (10, 10), (90, 60)), ObjectSpec("table", (50, 40), (100, 70), (30, 80)))),
        SceneSpec(3.5, (ObjectSpec("cup", (40, 50), (120, 10), (20, 60)), ObjectSpec("cat", (50, 50), (10, 70), (100, 20)))),
        SceneSpec(3.5, (ObjectSpec("table", (60, 40), (20, 20), (110, 80)),
                        ObjectSpec("rocket", (40, 60), (130, 60), (40, 10)))),
    ]
    video = make_synthetic_video(root / "video.mp4", scenes, width=192, height=128)
    gt = write_ground_truth(video, root / "ground-truth.json", embedding="class", track_noise=0.3)
    db = root / "db"
    add_video(db, YID, video.path, video.scene_spans())
    yids = write_lines(root / "yids.txt", [YID])
    prompts = write_lines(root / "prompts.txt", PARSE_PROMPTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(GROUND_TRUTH_ENV, str(gt))
        mp.setenv("TRACKVERSE_CACHE", str(root / "cache"))
        argv = ["--base_dir", str(db), "--yid_index_fn", str(yids), "--class_prompts", str(prompts), "--detector", FIXTURE,
                "--min_track_area", "0.02", "--min_track_len", "1"]
        assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
        assert curate_db.main(["--base_dir", str(db), "--index_file", INDEX, "--dataset_name", SOURCE,
                               "--action", "index"]) == EXIT_OK
        yield {"root": root, "db": db, "video": video, "yids": yids, "prompts": prompts, "gt": gt}


def copy_of(parsed: dict, tmp_path: Path, monkeypatch) -> Path:
    """A copy of the parsed dataset to change, with the fixture's ground truth and a fresh cache."""
    monkeypatch.setenv(GROUND_TRUTH_ENV, str(parsed["gt"]))
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    return shutil.copytree(parsed["db"], tmp_path / "db")


def true_class(record: TrackRecord, video) -> str:
    """The ground-truth class of the object a track follows (best IoU at its middle frame)."""
    mid = len(record) // 2
    x, y, w, h = record.track_bbox[mid]
    best, label = 0.0, None
    for box in video.boxes_at(record.track_ts[mid]):
        x1, y1, x2, y2 = box.xyxy
        iw, ih = max(0.0, min(x + w, x2) - max(x, x1)), max(0.0, min(y + h, y2) - max(y, y1))
        iou = iw * ih / (w * h + (x2 - x1) * (y2 - y1) - iw * ih)
        if iou > best:
            best, label = iou, box.class_name
    assert best > 0.5, f"track {record.tid} follows no ground-truth object"
    return label


def test_parse_stores_each_tracks_embedding(parsed):
    meta = DatasetLayout(parsed["db"]).tracks_meta(SOURCE, YID)
    records = read_records(meta)
    emb = read_video_embeddings(meta)
    assert len(records) == 6 and emb.tids == [r.tid for r in records] and emb.fns == [r.fn for r in records]
    assert emb.present.all() and emb.dim == 64
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=2e-3)  # unit, float16-rounded
    import pyarrow.parquet as pq
    assert str(pq.read_schema(embeddings_path(meta)).field("embedding").type) == "fixed_size_list<element: halffloat>[64]"
    for rec, vec in zip(records, emb.vectors, strict=True):
        truth = true_class(rec, parsed["video"])
        assert float(vec @ text_direction(truth, 64)) > 0.9  # the class direction, plus the track's noise
    assert emb.info["detector_spec"] == FIXTURE and emb.info["detector"] == "fixture_ground_truth"


def test_relabel_with_a_permuted_extended_vocabulary_recovers_every_true_class(parsed, tmp_path, monkeypatch):
    db = copy_of(parsed, tmp_path, monkeypatch)
    prompts = write_lines(tmp_path / "new.txt", NEW_PROMPTS)
    assert main(RELABEL_TRACKS_STAGE, relabel_args(db, prompts)) == EXIT_OK
    layout = DatasetLayout(db)
    source = read_records(layout.tracks_meta(SOURCE, YID))
    out_path = layout.tracks_meta("Relabelled", YID)
    relabelled = read_records(out_path)
    vocab = read_prompts(prompts)
    assert len(relabelled) == len(source) == 6
    for src, new in zip(source, relabelled, strict=True):
        truth = true_class(src, parsed["video"])
        assert new.label == truth and new.top10_lbl[0] == vocab.labels.index(truth)
        assert new.top10_desc == [vocab.labels[i] for i in new.top10_lbl] and len(new.top10_lbl) == len(NEW_PROMPTS)
        assert new.top10_logit_mu == sorted(new.top10_logit_mu, reverse=True) and new.top10_logit_mu[0] > 0.9
        # the same track (same tid, boxes, times, scores), the same keys; its file name carries the new label
        assert (new.tid, new.track_ts, new.track_bbox, new.scores, new.segment) == \
            (src.tid, src.track_ts, src.track_bbox, src.scores, src.segment)
        assert set(new.to_dict()) == set(src.to_dict()) - {"top10_logit_std"} | {"relabelled"}
        assert new.fn == f"sy/{YID}-{truth}-{src.tid}.mp4" and new.vocab_hash == vocab.hash
        assert new.extra["relabelled"]["from_dataset"] == SOURCE
        assert new.extra["relabelled"]["from_vocab_hash"] == read_prompts(parsed["prompts"]).hash
        # the weighted score is the cosine times the frame scores, as a detected weighted logit is
        # (written with 5 decimals, as parse writes them)
        assert new.top10_wlogit_mu[0] == pytest.approx(new.top10_logit_mu[0] * np.mean(src.scores), abs=1e-5)
    prov = read_provenance(out_path)
    assert prov.vocab_hash == vocab.hash and prov.classes == len(NEW_PROMPTS)
    assert prov.detector == "fixture_ground_truth" and prov.detector_spec == f"relabel_tracks:{FIXTURE}"
    # the new dataset keeps the embeddings too (searchable, relabelable)
    assert read_video_embeddings(out_path).tids == [r.tid for r in relabelled]

    # a re-run does nothing; index and curation work on the relabelled dataset unchanged
    assert main(RELABEL_TRACKS_STAGE, relabel_args(db, prompts)) == EXIT_OK
    done = [json.loads(line) for line in (db / "logs" / "relabel_tracks-Relabelled").glob("*.jsonl").__next__().open()]
    assert [r["event"] for r in done].count("done") == 1
    index = "tracks_subsets/Relabelled-Full.jsonl.gzip"
    assert curate_db.main(["--base_dir", str(db), "--index_file", index, "--dataset_name", "Relabelled",
                           "--action", "index"]) == EXIT_OK
    verified = write_lines(tmp_path / "verified.txt", ["# none"])
    assert curate_db.main(["--base_dir", str(db), "--index_file", index, "--action", "sample_class_balanced",
                           "--Nc", "1", "--verified_list", str(verified), "--no_plots"]) == EXIT_OK
    subset = read_records(db / "tracks_subsets" / "Relabelled-CB1-4-T0.jsonl.gzip")
    assert sorted(r.top10_lbl[0] for r in subset) == sorted(vocab.labels.index(c) for c in ("cat", "table", "cup", "rocket"))


def test_relabel_and_search_write_the_released_keys_when_asked(parsed, tmp_path, monkeypatch):
    """--key_style released: the released schema's keys in the relabelled metadata and in search
    subsets; a re-run is a no-op and our readers and the index still take them."""
    released_keys = {"track_id", "track_ts", "frame_ts", "frame_bboxes", "yid", "track_mp4_filename",
                     "top10_label_ids", "top10_label_names"}
    db = copy_of(parsed, tmp_path, monkeypatch)
    prompts = write_lines(tmp_path / "new.txt", NEW_PROMPTS)
    args = [*relabel_args(db, prompts), "--key_style", "released"]
    assert main(RELABEL_TRACKS_STAGE, args) == EXIT_OK
    out_path = DatasetLayout(db).tracks_meta("Relabelled", YID)
    lines = [json.loads(line) for line in gzip.decompress(out_path.read_bytes()).splitlines()]
    assert lines and all(released_keys <= set(m) and not {"tid", "fn", "track_bbox"} & set(m) for m in lines)
    compact = read_records(DatasetLayout(db).tracks_meta(SOURCE, YID))
    assert [r.tid for r in read_records(out_path)] == [r.tid for r in compact]
    assert read_video_embeddings(out_path).tids == [r.tid for r in compact]
    before = out_path.read_bytes()
    assert main(RELABEL_TRACKS_STAGE, args) == EXIT_OK and out_path.read_bytes() == before  # done, not redone
    assert search_tracks.main(["--base_dir", str(db), "--index_file", INDEX, "cat", "--top", "2",
                               "--key_style", "released"]) == EXIT_OK
    subset = db / "tracks_subsets" / f"{SOURCE}-search-cat-top2.jsonl.gzip"
    hits = [json.loads(line) for line in gzip.decompress(subset.read_bytes()).splitlines()]
    assert len(hits) == 2 and all(released_keys <= set(m) for m in hits)
    assert [r.tid for r in read_records(subset)] == [m["track_id"] for m in hits]


def test_relabel_is_redone_when_the_source_changes(parsed, tmp_path, monkeypatch):
    db = copy_of(parsed, tmp_path, monkeypatch)
    prompts = write_lines(tmp_path / "new.txt", NEW_PROMPTS)
    assert main(RELABEL_TRACKS_STAGE, relabel_args(db, prompts)) == EXIT_OK
    layout = DatasetLayout(db)
    source = layout.tracks_meta(SOURCE, YID)
    records, emb = read_records(source), read_video_embeddings(source)
    write_video_tracks(source, records[:2], list(emb.vectors[:2]), read_provenance(source),
                       info={"detector_spec": FIXTURE})  # the source re-parsed (two tracks left)
    config = RELABEL_TRACKS_STAGE.validate(RELABEL_TRACKS_STAGE.config_class(
        base_dir=db, index_file=Path(INDEX), class_prompts=prompts, dataset_name="Relabelled"))
    assert not RELABEL_TRACKS_STAGE.output_exists(config, YID)
    assert main(RELABEL_TRACKS_STAGE, relabel_args(db, prompts)) == EXIT_OK
    assert [r.tid for r in read_records(layout.tracks_meta("Relabelled", YID))] == [r.tid for r in records[:2]]
    # another vocabulary under the same name is refused, not mixed in
    other = write_lines(tmp_path / "other.txt", ["cat", "dog"])
    proc = run_cli("relabel_tracks.py", *relabel_args(db, other), env={GROUND_TRUTH_ENV: str(parsed["gt"])})
    assert proc.returncode == EXIT_USAGE and "another vocabulary" in proc.stderr


def test_search_returns_the_class_tracks_first_as_a_subset_every_reader_takes(parsed, tmp_path, monkeypatch, capsys):
    db = copy_of(parsed, tmp_path, monkeypatch)
    queries = write_lines(tmp_path / "queries.txt", ["# one per line", "a rocket", "cup"])
    assert search_tracks.main(["--base_dir", str(db), "--index_file", INDEX, "cat", "table", "--queries_file",
                               str(queries), "--top", "3"]) == EXIT_OK
    printed = capsys.readouterr().out
    truth = {r.tid: true_class(r, parsed["video"]) for r in read_records(DatasetLayout(db).tracks_meta(SOURCE, YID))}
    for query, label, count in (("cat", "cat", 2), ("table", "table", 2), ("a rocket", "rocket", 1), ("cup", "cup", 1)):
        name = f"{SOURCE}-search-{query.replace(' ', '-')}-top3"
        subset = db / "tracks_subsets" / f"{name}.jsonl.gzip"
        hits = read_records(subset)
        assert len(hits) == 3 and [truth[h.tid] for h in hits[:count]] == [label] * count  # precision@k = 1
        assert all(truth[h.tid] != label for h in hits[count:])
        report = json.loads((db / "tracks_subsets" / f"{name}.report.json").read_text())
        assert [h["tid"] for h in report["hits"]] == [h.tid for h in hits]  # best first
        assert report["hits"][0]["score"] > 0.9 > report["hits"][count]["score"]
        assert f"{query!r}: 3 tracks" in printed
    # --min_score keeps only the matching tracks
    assert search_tracks.main(["--base_dir", str(db), "--index_file", INDEX, "cat", "--min_score", "0.8"]) == EXIT_OK
    assert len(read_records(db / "tracks_subsets" / f"{SOURCE}-search-cat-top200-min0.8.jsonl.gzip")) == 2

    # export_tracks.py and the training loader read the search subset as any subset
    subset = db / "tracks_subsets" / f"{SOURCE}-search-cat-top3.jsonl.gzip"
    out = tmp_path / "sot"
    assert main(EXPORT_TRACKS_STAGE, ["--base_dir", str(db), "--records", str(subset), "--format", "sot", "--out_dir", str(out),
                 "--nframes", "2"]) == EXIT_OK
    assert len([p for p in out.iterdir() if (p / "sequence_meta.json").is_file()]) == 3
    assert main(EXTRACT_TRACKS_STAGE, ["--base_dir", str(db), "--yid_index_fn", str(parsed["yids"]),
                                       "--dataset_name", SOURCE]) == EXIT_OK
    ds = TrackClipDataset(subset, clips_dir=db / "tracks_mp4" / SOURCE, num_frames=2, size=(32, 32))
    item = ds[0]
    assert item["frames"].shape == (2, 32, 32, 3) and item["record"]["tid"] == read_records(subset)[0].tid


def test_search_and_relabel_without_embeddings_or_query_say_so(parsed, tmp_path, capsys):
    db = shutil.copytree(parsed["db"], tmp_path / "db")
    assert search_tracks.main(["--base_dir", str(db), "--index_file", INDEX]) == EXIT_USAGE
    assert "no query" in capsys.readouterr().err
    os.remove(embeddings_path(DatasetLayout(db).tracks_meta(SOURCE, YID)))
    assert search_tracks.main(["--base_dir", str(db), "--index_file", INDEX, "cat"]) == EXIT_USAGE
    assert "no track embeddings" in capsys.readouterr().err
    prompts = write_lines(tmp_path / "new.txt", NEW_PROMPTS)
    assert main(RELABEL_TRACKS_STAGE, relabel_args(db, prompts)) == EXIT_USAGE
    assert "parse them with parse_tracks.py first" in capsys.readouterr().err


@pytest.mark.parametrize("content, reason", [
    ("", "no class prompts (the file is empty"),
    ("# only a comment\n\n", "no class prompts (the file is empty"),
    ("cat\ndog\ncat\n", "class 2 repeats class 0 ('cat')"),
])
def test_bad_vocabulary_is_one_clear_line_and_exit_2(parsed, tmp_path, content, reason):
    prompts = tmp_path / "bad.txt"
    prompts.write_text(content)
    proc = run_cli("relabel_tracks.py", *relabel_args(parsed["db"], prompts))
    assert proc.returncode == EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --class_prompts {prompts}: {reason}"), proc.stderr


def test_search_precision_at_k_over_noise_levels():
    """Eight classes of ten tracks (16 frames each) from the class-direction detector; each class
    searched by its name: precision@10 is 1 at low noise and falls as tracks stray from their
    class (measured, printed; ``-s`` shows the table)."""
    classes = ["cat", "cup", "rocket", "person", "table", "dog", "bicycle", "umbrella"]
    per_class, frames = 10, 16
    identities = [(c, i) for c in range(len(classes)) for i in range(per_class)]
    truth = np.array([c for c, _ in identities])
    table = {f / 16: [([0, 0, 4, 4], c, c * 100 + i) for c, i in identities] for f in range(frames)}
    frame = np.zeros((8, 8, 3), np.uint8)
    measured = {}
    for noise in (0.25, 1.0, 2.0, 4.0, 8.0):
        det = GroundTruthDetector(classes, table, embedding="class", track_noise=noise, noise=0.3, clip=False)
        sums = sum(det.detect([frame], [ts])[0].embedding.astype(np.float64) for ts in table)
        tracks = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float16)  # as stored
        text = det.embed_text(classes)
        precision = np.mean([np.mean(truth[top_matches(text[c], tracks, top=per_class)[0]] == c)
                             for c in range(len(classes))])
        accuracy = np.mean(score_tracks(tracks, det.embed_text(classes[::-1] + ["kite"]), 1).ids[:, 0]
                           == len(classes) - 1 - truth)  # a permuted, extended vocabulary
        measured[noise] = (precision, accuracy)
    print("\ntrack noise: precision@10, relabel accuracy")
    for noise, (p, a) in measured.items():
        print(f"  {noise:5.2f}: {p:.3f}  {a:.3f}")
    assert measured[0.25] == (1.0, 1.0) and measured[1.0] == (1.0, 1.0)
    values = [p for p, _ in measured.values()]
    assert values == sorted(values, reverse=True) and values[-1] < 0.6


# ---------------------------------------------------------------------------- kill and resume


def write_source(db: Path, videos: int, tracks: int) -> list[str]:
    """Parsed-looking metadata + embeddings (fixture detector) for ``videos`` videos."""
    layout = DatasetLayout(db)
    rng = np.random.default_rng(0)
    yids = [f"kill{i:07d}" for i in range(videos)]
    prov = Provenance(detector="fixture_ground_truth", vocab_hash="0" * 64, classes=4, detector_spec=FIXTURE)
    for yid in yids:
        records, vectors = [], []
        for t in range(tracks):
            c = int(rng.integers(4))
            records.append(TrackRecord(
                yid=yid, tid=f"{yid}{t:025d}", fn=f"{yid[:2]}/{yid}-{PARSE_PROMPTS[c].split()[0]}-{yid}{t:025d}.mp4",
                track_ts=[0.0, 0.5, 1.0], track_bbox=[[1, 2, 30, 40]] * 3, video_size=[128, 192],
                scores=[0.9, 0.8, 0.7], top10_lbl=[c], top10_desc=[PARSE_PROMPTS[c]], top10_logit_mu=[4.0],
                top10_logit_std=[0.0], top10_wlogit_mu=[3.2], top10_wlogit_std=[0.1]))
            v = text_direction(PARSE_PROMPTS[c], 64) + 0.3 * rng.standard_normal(64)
            vectors.append(v / np.linalg.norm(v))
        write_video_tracks(layout.tracks_meta(SOURCE, yid), records, vectors, prov)
    return yids


def test_killed_relabel_rerun_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    db = tmp_path / "db"
    write_source(db, videos=300, tracks=8)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"size": [192, 128], "boxes": {}, "options": {"embedding": "class"}}))
    env = {GROUND_TRUTH_ENV: str(gt), "TRACKVERSE_CACHE": str(tmp_path / "cache")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert curate_db.main(["--base_dir", str(db), "--index_file", INDEX, "--dataset_name", SOURCE,
                           "--action", "index"]) == EXIT_OK
    prompts = write_lines(tmp_path / "new.txt", NEW_PROMPTS)
    assert main(RELABEL_TRACKS_STAGE, relabel_args(db, prompts, "Reference")) == EXIT_OK

    out = db / "tracks_meta" / "Killed"
    proc = subprocess.Popen([sys.executable, "relabel_tracks.py", *relabel_args(db, prompts, "Killed")], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(out.glob("*/*-meta.jsonl.gzip"))) < 20:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(list(out.glob("*/*-meta.jsonl.gzip"))) < 300  # killed mid-run

    assert run_cli("relabel_tracks.py", *relabel_args(db, prompts, "Killed"), env=env).returncode == EXIT_OK
    reference = db / "tracks_meta" / "Reference"
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert len(files) == 600 and files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (reference / f).read_bytes() for f in files)  # no temporaries either


# ---------------------------------------------------------------------------- OWLv2 for real


def test_owlv2_tiny_model_embeddings_text_tower_and_relabel(tmp_path, monkeypatch):
    """The tiny random OWLv2: parse stores its class embeddings, relabel encodes the vocabulary with
    its text tower (the prompt template included) and, with the parse-time vocabulary, gives each
    track the parse-time top-1 label where the parse-time scores are not a near tie."""
    from utils.detect.detectors.owlv2 import OwlV2Detector

    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    model = save_tiny_owlv2(tmp_path / "model")
    scenes = [SceneSpec(1.5, (ObjectSpec("cat", (60, 50), (10, 10), (80, 50)),)),
              SceneSpec(1.0, (ObjectSpec("rocket", (40, 60), (100, 10), (20, 40)),))]
    video = make_synthetic_video(tmp_path / "short.mp4", scenes, width=192, height=112)
    db = tmp_path / "db"
    add_video(db, YID, video.path, video.scene_spans())
    prompts = write_lines(tmp_path / "prompts.txt", PARSE_PROMPTS + ["person (also known as human, people)"])
    argv = ["--base_dir", str(db), "--yid_index_fn", str(write_lines(tmp_path / "yids.txt", [YID])),
            "--class_prompts", str(prompts), "--detector", "owlv2", "--model", str(model), "--device", "cpu",
            "--batch_size", "4", "--max_side", "128", "--track_thresh", "0.1", "--low_thresh", "0.05",
            "--min_track_len", "0.3", "--min_track_area", "0"]
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
    layout = DatasetLayout(db)
    source = read_records(layout.tracks_meta(SOURCE, YID))
    emb = read_video_embeddings(layout.tracks_meta(SOURCE, YID))
    assert len(source) >= 3 and emb.present.all() and emb.dim == 32  # the tiny model's projection size
    assert emb.info["detector_spec"] == "owlv2" and emb.info["weights"] == str(model)

    assert curate_db.main(["--base_dir", str(db), "--index_file", INDEX, "--dataset_name", SOURCE,
                           "--action", "index"]) == EXIT_OK
    assert main(RELABEL_TRACKS_STAGE, relabel_args(db, prompts)) == EXIT_OK
    relabelled = read_records(layout.tracks_meta("Relabelled", YID))
    # the text tower was used, with the prompt template: the cached vocabulary embeddings are
    # what the detector itself encodes from "a photo of a <prompt>"
    cached = [np.load(p) for p in (tmp_path / "cache" / "text-embeddings").glob("*.npy")]
    detector = OwlV2Detector(read_prompts(prompts).labels, model_id=str(model), prompts=read_prompts(prompts).lines,
                             device="cpu", use_cache=False)
    expected = detector.encode_texts([f"a photo of a {line}" for line in read_prompts(prompts).lines])
    assert len(cached) == 1 and np.allclose(cached[0], expected, atol=1e-5)
    assert np.allclose(detector.embed_text(read_prompts(prompts).lines), expected, atol=1e-5)
    assert not np.allclose(detector.encode_texts(list(read_prompts(prompts).lines)), expected, atol=1e-3)

    clear = [(s, r) for s, r in zip(source, relabelled, strict=True)
             if s.top10_logit_mu[0] - s.top10_logit_mu[1] > 0.005]
    assert len(clear) >= len(source) // 2
    assert [r.top10_lbl[0] for _, r in clear] == [s.top10_lbl[0] for s, _ in clear]


def test_relabel_reads_index_rows_through_the_shared_reader(parsed):
    """The index gathers track embeddings like the other metrics: keyed to its rows by tid and fn."""
    from utils.records.track_embeddings import index_embedding_source

    db = parsed["db"]
    table = load_track_table(db / INDEX, columns=["yid", "tid", "fn"])
    source, problems = index_embedding_source(db, SOURCE, table.table.column("yid").to_pylist(),
                                              table.strings("tid"), table.strings("fn"))
    loaded = source.load()
    assert problems == [] and loaded.present.all() and source.dim == 64
    emb = read_video_embeddings(DatasetLayout(db).tracks_meta(SOURCE, YID))
    order = [emb.tids.index(t) for t in table.table.column("tid").to_pylist()]
    assert np.array_equal(loaded.vectors, emb.vectors[order])
    with gzip.open(db / INDEX, "rt") as f:
        assert len(f.read().splitlines()) == loaded.vectors.shape[0]


def no_text_encoder(class_names, prompts=None):
    """A plug-in detector without the optional text encoder."""
    detector = GroundTruthDetector(class_names, table={})
    detector.embed_text = None
    return detector


def bad_text_encoder(class_names, prompts=None):
    """One whose text encoder returns one row too many."""
    detector = GroundTruthDetector(class_names, table={})
    detector.embed_text = lambda prompts: np.ones((len(prompts) + 1, 4))
    return detector


def text_encoder(class_names, **options):
    return GroundTruthDetector(class_names, table={}, embedding="class")


def test_a_detector_without_a_usable_text_encoder_is_a_clear_systemic_fault(tmp_path, monkeypatch):
    from utils.core.errors import SystemicError
    from utils.relabel.text import text_embeddings

    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemicError, match="has no text encoder"):
        text_embeddings("tests.test_relabel:no_text_encoder", None, ["cat"])
    with pytest.raises(SystemicError, match=r"returned shape \(2, 4\) for 1 prompts"):
        text_embeddings("tests.test_relabel:bad_text_encoder", None, ["cat"])
    with pytest.raises(SystemicError, match="takes no 'model_id' option"):
        text_embeddings("tests.test_relabel:bad_text_encoder", "/some/weights", ["cat"])
    first = text_embeddings("tests.test_relabel:text_encoder", None, ["cat", "a dog"])  # then from the cache, no model built
    assert np.allclose(first, [text_direction("cat", 64), text_direction("dog", 64)])
    assert len(list((tmp_path / "cache" / "text-embeddings").glob("*.npy"))) == 1
    import utils.relabel.text as text_module

    monkeypatch.setattr(text_module, "build_text_encoder", lambda *a, **k: pytest.fail("a cache hit built a model"))
    assert np.array_equal(text_embeddings("tests.test_relabel:text_encoder", None, ["cat", "a dog"]), first)


@pytest.mark.parametrize("classes", [3, 10, 11, 37, 1203])
def test_scoring_equals_a_full_stable_sort(classes):
    """score_tracks' top-10 (pure: chunks, block-max bound) is a full sort's, ties to the lower id."""
    rng = np.random.default_rng(classes)
    text = rng.standard_normal((classes, 16)).astype(np.float32)
    tracks = rng.standard_normal((700, 16)).astype(np.float16)
    tracks[:50] = 0  # every class ties
    text[classes // 2] = text[0]  # two classes tie on every track
    top = score_tracks(tracks, text, 10, chunk=128)
    full = tracks.astype(np.float32) @ text.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    assert np.array_equal(top.ids, expected) and np.array_equal(top.scores, np.take_along_axis(full, expected, 1))
    assert score_tracks(np.zeros((0, 16), np.float16), text, 10).ids.shape == (0, min(10, classes))
