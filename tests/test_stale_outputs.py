"""Outputs made with another vocabulary, detector or weights are never silently kept or merged.

parse_tracks.py: a video's metadata is done only for the detector, weights id and vocabulary
hash its gzip header records; a run with other ones stops before any work (exit 2, counting
them and saying with what) unless ``--reparse_stale``, which parses them again. curate_db.py
--action index reports every vocabulary it merges and refuses several unless
``--allow_mixed_vocabularies``.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

import curate_db
from tests.helpers import FIXTURE, PARSE_JOB, add_video, item_list, journal, meta_path
from tests.helpers import PARSE_PROMPTS as PROMPTS
from tests.helpers import PARSE_YID as YID
from tests.helpers import parse_args as stage_args
from tests.tiny_models import GROUND_TRUTH_ENV, FixtureDetector, write_ground_truth
from utils.core.errors import EXIT_OK, EXIT_USAGE
from utils.core.io import atomic_write_bytes
from utils.core.layout import DatasetLayout, report_path
from utils.detect.stage import PARSE_TRACKS_STAGE, expected_weights_id, provenance_matches
from utils.records.prompts import read_prompts, vocabulary_hash
from utils.records.provenance import Provenance, read_provenance
from utils.records.track_embeddings import embeddings_path, embeddings_problem
from utils.records.track_files import iter_records, read_records, records_to_jsonl_gz_bytes
from utils.records.tracks import TrackRecord, compute_tid, track_filename
from utils.runner.cli import main

EMPTY = "emptySegm01"  # a video without segments: done with no tracks
# The same classes in another order, and one more: another vocabulary (and other label ids).
PROMPTS_B = [*reversed(PROMPTS), "dog"]


class RenamedFixture(FixtureDetector):
    """Another detector (for the detector-change test): the same boxes under another name."""

    name = "renamed_fixture"


RENAMED = "tests.test_stale_outputs:RenamedFixture"


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture
def ground_truth(tmp_path: Path, synthetic_video, monkeypatch) -> Path:
    path = write_ground_truth(synthetic_video, tmp_path / "ground-truth.json")
    monkeypatch.setenv(GROUND_TRUTH_ENV, str(path))
    return path


@pytest.fixture
def prompts_b(tmp_path: Path) -> Path:
    path = tmp_path / "prompts-b.txt"
    path.write_text("\n".join(PROMPTS_B) + "\n")
    return path


@pytest.fixture
def db(tmp_path: Path, synthetic_video) -> Path:
    db = tmp_path / "db"
    add_video(db, YID, synthetic_video.path, synthetic_video.scene_spans())
    add_video(db, EMPTY, None, [])
    return db


def parse(db: Path, tmp_path: Path, prompts: Path, *extra: str, detector: str = FIXTURE) -> int:
    yids = item_list(tmp_path, [YID, EMPTY])
    return main(PARSE_TRACKS_STAGE, stage_args(db, yids, prompts, "--min_track_area", "0.02", *extra,
                                               detector=detector))


def snapshot(db: Path) -> dict[str, bytes]:
    return {yid: meta_path(db, yid).read_bytes() for yid in (YID, EMPTY)}


# ------------------------------------------------------------------------------ parse_tracks


def test_vocabulary_change_stops_then_reparse_stale_replaces(tmp_path, db, prompts_file, prompts_b, ground_truth,
                                                             capsys):
    vocab_a, vocab_b = read_prompts(prompts_file), read_prompts(prompts_b)
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    capsys.readouterr()
    for yid in (YID, EMPTY):  # the empty result records what produced it too
        prov = read_provenance(meta_path(db, yid))
        assert prov is not None and prov.source == "header"
        assert (prov.detector, prov.detector_spec, prov.weights) == ("fixture_ground_truth", FIXTURE, None)
        assert (prov.vocab_hash, prov.classes) == (vocab_a.hash, len(PROMPTS))
    before = snapshot(db)
    starts = len(journal(db, PARSE_JOB, "start"))

    # The same settings: done.
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    assert "0 done, 2 skipped" in capsys.readouterr().err

    # Other prompts: stopped before any work, one line saying how many and with what.
    assert parse(db, tmp_path, prompts_b) == EXIT_USAGE
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "2 of the 2 videos" in line and "--reparse_stale" in line
    assert f"vocabulary {vocab_a.hash[:12]} (5 classes)" in line  # what they were parsed with
    assert f"vocabulary {vocab_b.hash[:12]} (6 classes)" in line  # what this run would use
    assert f"2 with detector {FIXTURE}, weights none" in line
    assert snapshot(db) == before and len(journal(db, PARSE_JOB, "start")) == starts + 1  # only the plain re-run started

    # --reparse_stale: both parsed again with B, atomically replaced.
    assert parse(db, tmp_path, prompts_b, "--reparse_stale") == EXIT_OK
    assert "2 done, 0 skipped" in capsys.readouterr().err
    records = read_records(meta_path(db))
    assert len(records) == 4 and all(r.vocab_hash == vocab_b.hash for r in records)
    for rec in records:  # label ids are B's lines
        assert rec.top10_lbl[0] == vocab_b.index_of(rec.label) and len(rec.top10_lbl) == len(PROMPTS_B)
    for yid in (YID, EMPTY):
        prov = read_provenance(meta_path(db, yid))
        assert prov is not None and (prov.vocab_hash, prov.classes) == (vocab_b.hash, len(PROMPTS_B))
    assert read_records(meta_path(db, EMPTY)) == []
    assert not [p for p in meta_path(db).parent.iterdir() if p.name.startswith(".")]  # no temporaries

    # B is now what is done; A would be stale in turn.
    assert parse(db, tmp_path, prompts_b) == EXIT_OK
    assert "0 done, 2 skipped" in capsys.readouterr().err
    assert parse(db, tmp_path, prompts_file) == EXIT_USAGE
    assert f"vocabulary {vocab_b.hash[:12]} (6 classes)" in capsys.readouterr().err


def test_detector_or_weights_change_stops_then_reparse_stale(tmp_path, db, prompts_file, ground_truth, capsys):
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    capsys.readouterr()
    before = snapshot(db)

    # Other weights (the fixture takes --model as model_id): stale.
    assert parse(db, tmp_path, prompts_file, "--model", "fixture-weights-v2") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "2 of the 2 videos" in err and "weights fixture-weights-v2" in err and "weights none" in err

    # Another detector: stale.
    assert parse(db, tmp_path, prompts_file, detector=RENAMED) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "2 of the 2 videos" in err and f"2 with detector {FIXTURE}" in err and f"detector {RENAMED}" in err
    assert snapshot(db) == before

    assert parse(db, tmp_path, prompts_file, "--reparse_stale", detector=RENAMED) == EXIT_OK
    assert "2 done" in capsys.readouterr().err
    assert {r.detector for r in read_records(meta_path(db))} == {"renamed_fixture"}
    prov = read_provenance(meta_path(db, EMPTY))
    assert prov is not None and (prov.detector, prov.detector_spec) == ("renamed_fixture", RENAMED)
    # Only one of the two stale (the other back to the first detector's): the count says so.
    atomic_write_bytes(meta_path(db, EMPTY), before[EMPTY])
    assert parse(db, tmp_path, prompts_file, detector=RENAMED) == EXIT_USAGE
    assert "1 of the 2 videos" in capsys.readouterr().err
    assert parse(db, tmp_path, prompts_file, "--reparse_stale", detector=RENAMED) == EXIT_OK
    assert "1 done, 1 skipped" in capsys.readouterr().err


def test_slurm_submission_checks_too(tmp_path, db, prompts_file, prompts_b, ground_truth, capsys):
    """The check runs before a --slurm submission: nothing is submitted."""
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    capsys.readouterr()
    assert parse(db, tmp_path, prompts_b, "--slurm", "--slurm_cluster", "local", "--world_size", "2") == EXIT_USAGE
    assert "2 of the 2 videos" in capsys.readouterr().err
    assert not list((db / "logs").glob("slurm/**/submissions/*.json"))


def test_files_from_before_provenance_headers(tmp_path, db, prompts_file, ground_truth, capsys):
    """A file without a header is judged by its first record; an empty one has no provenance
    and is stale with its own explanation."""
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    capsys.readouterr()
    # Rewrite both as the previous version did: same records, no header.
    records = read_records(meta_path(db))
    atomic_write_bytes(meta_path(db), records_to_jsonl_gz_bytes(records))
    atomic_write_bytes(meta_path(db, EMPTY), records_to_jsonl_gz_bytes([]))
    assert read_provenance(meta_path(db)).source == "records"
    assert read_provenance(meta_path(db, EMPTY)) is None

    assert parse(db, tmp_path, prompts_file) == EXIT_USAGE
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")][0]
    assert "1 of the 2 videos" in line and "1 without provenance (written before parse_tracks recorded it" in line

    assert parse(db, tmp_path, prompts_file, "--reparse_stale") == EXIT_OK
    assert "1 done, 1 skipped" in capsys.readouterr().err  # the old file with tracks is still good
    assert read_provenance(meta_path(db)).source == "records"
    assert read_provenance(meta_path(db, EMPTY)).source == "header"


def test_metadata_without_embeddings_waits_for_reparse_stale(tmp_path, db, prompts_file, ground_truth, capsys):
    """Metadata from before parse_tracks kept track embeddings (or whose -emb.parquet was
    removed) is not done, but re-detecting costs GPU time: like another vocabulary it stops the
    run, saying so, until --reparse_stale; an embeddings file of another version of the records
    (a kill between the two writes of a re-parse) is simply parsed again."""
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    emb = embeddings_path(meta_path(db))
    assert emb.exists()
    emb.unlink()
    capsys.readouterr()
    assert parse(db, tmp_path, prompts_file) == EXIT_USAGE
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")][0]
    assert "1 of the 2 videos" in line and "1 without track embeddings" in line and "--reparse_stale" in line
    assert parse(db, tmp_path, prompts_file, "--reparse_stale") == EXIT_OK
    assert "1 done, 1 skipped" in capsys.readouterr().err
    assert embeddings_problem(meta_path(db)) is None

    # The embeddings file of the other video, now written for different records: parsed again.
    other = embeddings_path(meta_path(db, EMPTY))
    other.write_bytes(emb.read_bytes())
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    assert "1 done, 1 skipped" in capsys.readouterr().err
    assert embeddings_problem(meta_path(db, EMPTY)) is None


def test_damaged_metadata_is_stale(tmp_path, db, prompts_file, ground_truth, capsys):
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    meta_path(db, EMPTY).write_bytes(b"\x1f\x8b\x08\x04junk")  # cut inside its header
    capsys.readouterr()
    assert parse(db, tmp_path, prompts_file) == EXIT_USAGE
    assert "1 unreadable (damaged metadata file)" in capsys.readouterr().err
    assert parse(db, tmp_path, prompts_file, "--reparse_stale") == EXIT_OK
    assert read_provenance(meta_path(db, EMPTY)).vocab_hash == read_prompts(prompts_file).hash


def test_the_header_is_invisible_to_readers(tmp_path):
    """Provenance lives in the gzip header's extra field: every gzip reader skips it, records
    keep the released keys, and the bytes depend on the content only."""
    prov = Provenance(detector="owlv2", weights="google/owlv2-base-patch16-ensemble", vocab_hash="ab" * 32,
                      classes=1203, detector_spec="owlv2")
    rec = make_record("abcdefghijk", "cat")
    path = tmp_path / "abcdefghijk-meta.jsonl.gzip"
    data = records_to_jsonl_gz_bytes([rec], prov)
    assert data == records_to_jsonl_gz_bytes([rec], prov)
    path.write_bytes(data)
    assert read_provenance(path) == prov
    assert read_provenance(path, from_records=False) == prov
    assert list(read_records(path)) == [rec] and list(iter_records(path)) == [rec]
    with gzip.open(path, "rt") as f:
        assert [json.loads(line) for line in f] == [rec.to_dict()]
    assert subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True).stdout == \
        (rec.to_json() + "\n").encode()
    # without provenance: the same bytes as before
    assert records_to_jsonl_gz_bytes([rec]) == gzip.compress((rec.to_json() + "\n").encode(), 6, mtime=0)


def test_weights_id_known_before_building():
    from utils.detect.detectors.detic import DETIC_WEIGHTS_URL
    from utils.detect.detectors.owlv2 import DEFAULT_MODEL_ID

    assert expected_weights_id("owlv2", None) == DEFAULT_MODEL_ID
    assert expected_weights_id("detic", None) == DETIC_WEIGHTS_URL
    assert expected_weights_id(FIXTURE, None) is None
    assert expected_weights_id("owlv2", "google/owlv2-large-patch14") == "google/owlv2-large-patch14"
    here = Path(".").resolve()
    assert expected_weights_id("owlv2", ".") == str(here)  # a local folder: absolute

    expected = Provenance(detector="owlv2", weights=DEFAULT_MODEL_ID, vocab_hash="ab" * 32, classes=3,
                          detector_spec="owlv2")
    assert provenance_matches(expected, expected)
    old = Provenance(detector="owlv2", weights=DEFAULT_MODEL_ID, vocab_hash="ab" * 32, source="records")
    assert provenance_matches(old, expected)
    assert not provenance_matches(Provenance(detector="owlv2", weights="other", vocab_hash="ab" * 32,
                                             source="records"), expected)
    assert not provenance_matches(Provenance(detector="detic", weights=DEFAULT_MODEL_ID, vocab_hash="ab" * 32,
                                             detector_spec="detic"), expected)
    assert not provenance_matches(Provenance(detector="owlv2", source="records"), expected)
    assert not provenance_matches(None, expected)


# ------------------------------------------------------------------------------ curate index

DS = "TrackVerseLVIS"
INDEX = f"tracks_subsets/{DS}/{DS}-Full.jsonl.gzip"


def make_record(yid: str, label: str, k: int = 0, vocab: str | None = None) -> TrackRecord:
    ts = [round(i / 16, 4) for i in range(6)]
    bbox = [[10.0 + k + i, 5.0, 40.0, 30.0] for i in range(6)]
    tid = compute_tid(yid, ts, bbox)
    return TrackRecord(yid=yid, tid=tid, fn=track_filename(yid, label, tid), track_ts=ts, track_bbox=bbox,
                       video_size=[360, 640], top10_lbl=[0], top10_desc=[label], top10_logit_mu=[1.0],
                       top10_logit_std=[0.1], top10_wlogit_mu=[0.5], top10_wlogit_std=[0.1],
                       detector="owlv2", vocab_hash=vocab)


def write_meta(base: Path, yid: str, records: list, prov: Provenance | None) -> None:
    atomic_write_bytes(DatasetLayout(base).tracks_meta(DS, yid), records_to_jsonl_gz_bytes(records, prov))


def index(base: Path, *extra: str) -> int:
    return curate_db.main(["--action", "index", "--base_dir", str(base), "--dataset_name", DS, "--index_file", INDEX,
                           "--num_workers", "1", *extra])


def test_index_refuses_mixed_vocabularies_unless_allowed(tmp_path, capsys):
    base = tmp_path / "db"
    lines_a, lines_b = ["cat", "dog", "cup"], ["cat", "dog", "cup", "horse"]
    a = Provenance("owlv2", "google/owlv2-base-patch16-ensemble", vocabulary_hash(lines_a), 3, "owlv2")
    b = Provenance("owlv2", "google/owlv2-base-patch16-ensemble", vocabulary_hash(lines_b), 4, "owlv2")
    for i in range(3):
        yid = f"vidA{i:07d}"
        write_meta(base, yid, [make_record(yid, "cat", i, a.vocab_hash)], a)
    write_meta(base, "vidAempty00", [], a)
    write_meta(base, "vidB0000000", [make_record("vidB0000000", "horse", 0, b.vocab_hash)], b)
    index_file = DatasetLayout(base).relative(INDEX)

    assert index(base) == EXIT_USAGE
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "2 different vocabularies or detectors" in line and "--allow_mixed_vocabularies" in line
    assert f"vocabulary {a.vocab_hash[:12]} (3 classes), detector owlv2, weights google/owlv2-base-patch16-ensemble: " \
           "4 videos" in line
    assert f"vocabulary {b.vocab_hash[:12]} (4 classes), detector owlv2" in line and ": 1 video" in line
    assert not index_file.exists()

    assert index(base, "--allow_mixed_vocabularies") == EXIT_OK
    out = capsys.readouterr().out
    assert "2 vocabularies (mixed: --allow_mixed_vocabularies):" in out
    assert f"vocabulary {a.vocab_hash[:12]} (3 classes), detector owlv2, weights " \
           "google/owlv2-base-patch16-ensemble: 4 videos, 3 tracks" in out
    assert f"vocabulary {b.vocab_hash[:12]} (4 classes)" in out and "1 video, 1 track" in out
    report = json.loads(report_path(index_file).read_text())
    assert [(v["vocab_hash"], v["classes"], v["videos"], v["tracks"]) for v in report["vocabularies"]] == [
        (a.vocab_hash, 3, 4, 3), (b.vocab_hash, 4, 1, 1)]
    assert len(read_records(index_file)) == 4


def test_index_of_one_vocabulary_reports_it(tmp_path, capsys):
    base = tmp_path / "db"
    a = Provenance("owlv2", None, vocabulary_hash(["cat"]), 1, "owlv2")
    write_meta(base, "vidA0000000", [make_record("vidA0000000", "cat", 0, a.vocab_hash)], a)
    # written before headers: its record says the same vocabulary (no class count there)
    write_meta(base, "vidA0000001", [make_record("vidA0000001", "cat", 1, a.vocab_hash)], None)
    write_meta(base, "vidOldEmpty", [], None)  # old and empty: reported, mixes nothing
    assert index(base) == EXIT_OK
    out = capsys.readouterr().out
    assert "1 vocabulary:" in out
    assert f"vocabulary {a.vocab_hash[:12]} (1 class), detector owlv2, weights none: 2 videos, 2 tracks" in out
    assert "no provenance and no tracks" in out and "1 video, 0 tracks" in out


def test_index_counts_metadata_without_provenance_as_a_vocabulary(tmp_path, capsys):
    """Records that say nothing of their vocabulary could be any: mixing them with a known one
    is refused too."""
    base = tmp_path / "db"
    a = Provenance("owlv2", None, vocabulary_hash(["cat"]), 1, "owlv2")
    write_meta(base, "vidA0000000", [make_record("vidA0000000", "cat", 0, a.vocab_hash)], a)
    write_meta(base, "vidUnknown0", [make_record("vidUnknown0", "cat", 1, None)], None)
    assert index(base) == EXIT_USAGE
    assert "no provenance (written before parse_tracks recorded it, or by another tool): 1 video" in \
        capsys.readouterr().err
    assert index(base, "--allow_mixed_vocabularies") == EXIT_OK


def test_index_after_parse_with_two_vocabularies(tmp_path, db, prompts_file, prompts_b, ground_truth, capsys):
    """End to end: two parse runs into one dataset folder (the second under --reparse_stale for
    one video only, via its own list), then the index refuses, then merges when told to."""
    assert parse(db, tmp_path, prompts_file) == EXIT_OK
    only_empty = tmp_path / "only-empty.txt"
    only_empty.write_text(EMPTY + "\n")
    argv = stage_args(db, only_empty, prompts_b, "--reparse_stale")
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
    capsys.readouterr()
    assert curate_db.main(["--action", "index", "--base_dir", str(db), "--dataset_name", DS, "--num_workers", "1"]) \
        == EXIT_USAGE
    err = capsys.readouterr().err
    hash_a, hash_b = read_prompts(prompts_file).hash, read_prompts(prompts_b).hash
    assert f"vocabulary {hash_a[:12]} (5 classes), detector fixture_ground_truth, weights none: 1 video" in err
    assert f"vocabulary {hash_b[:12]} (6 classes), detector fixture_ground_truth, weights none: 1 video" in err
    assert curate_db.main(["--action", "index", "--base_dir", str(db), "--dataset_name", DS, "--num_workers", "1",
                           "--allow_mixed_vocabularies"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "1 video, 4 tracks" in out and "1 video, 0 tracks" in out
