"""The per-video track embeddings file parse_tracks.py writes beside each metadata file: its
format, and the done rule (a metadata file counts only with the embeddings file written with it,
whatever instant a kill came at)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

import utils.records.track_embeddings as store
from tests.tiny_models import GROUND_TRUTH_ENV, write_ground_truth
from utils.core.errors import EXIT_OK, EXIT_USAGE
from utils.core.layout import DatasetLayout
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.records.provenance import Provenance
from utils.records.track_embeddings import (
    EmbeddingsError,
    embeddings_path,
    embeddings_problem,
    index_embedding_source,
    read_video_embeddings,
    write_video_tracks,
)
from utils.records.track_files import read_records
from utils.records.tracks import TrackRecord
from utils.runner.cli import main, parse_config
from utils.runner.journal import read_journals

YID = "synthVideo1"
FIXTURE = "tests.tiny_models:FixtureDetector"


def record(i: int, yid: str = YID) -> TrackRecord:
    return TrackRecord(yid=yid, tid=f"{i:032x}", fn=f"{yid[:2]}/{yid}-cat-{i:032x}.mp4", track_ts=[0.0, 1.0],
                       track_bbox=[[0, 0, 10, 10]] * 2)


def test_format_roundtrip_nulls_and_float16(tmp_path):
    meta = tmp_path / "sy" / f"{YID}-meta.jsonl.gzip"
    vectors = [np.array([0.6, 0.8, 0.0]), None, np.array([0.0, 0.0, 1.0])]
    write_video_tracks(meta, [record(0), record(1), record(2)], vectors,
                       Provenance(detector="d", weights="w", vocab_hash="h", detector_spec="spec"))
    assert embeddings_path(meta).name == f"{YID}-emb.parquet" and embeddings_problem(meta) is None
    emb = read_video_embeddings(meta)
    assert emb.tids == [record(i).tid for i in range(3)] and emb.present.tolist() == [True, False, True]
    assert np.allclose(emb.vectors[0], [0.6, 0.8, 0.0], atol=1e-3) and emb.vectors[0].dtype == np.float32
    assert emb.info["detector"] == "d" and emb.info["weights"] == "w" and emb.info["detector_spec"] == "spec"
    # no tracks: a file all the same (a video with nothing kept is done too)
    write_video_tracks(meta, [], [])
    assert embeddings_problem(meta) is None and read_video_embeddings(meta).tids == []
    with pytest.raises(ValueError, match="2 embeddings for 1 records"):
        write_video_tracks(meta, [record(0)], [None, None])


def test_embeddings_of_another_version_do_not_count(tmp_path):
    meta = tmp_path / "sy" / f"{YID}-meta.jsonl.gzip"
    write_video_tracks(meta, [record(0), record(1)], [np.ones(4) / 2, np.ones(4) / 2])
    other = tmp_path / "other" / f"{YID}-meta.jsonl.gzip"
    write_video_tracks(other, [record(0)], [np.ones(4) / 2])
    shutil.copyfile(embeddings_path(other), embeddings_path(meta))
    assert "belongs to another version" in embeddings_problem(meta)
    with pytest.raises(EmbeddingsError):
        read_video_embeddings(meta)
    os.remove(embeddings_path(meta))
    assert "no embeddings file" in embeddings_problem(meta)
    embeddings_path(meta).write_bytes(b"not parquet")
    assert "not a readable embeddings file" in embeddings_problem(meta)


class Killed(BaseException):
    """Stands for SIGKILL between the two writes (nothing after it runs, no handler catches it)."""


@pytest.fixture
def parse_setup(tmp_path, synthetic_video, monkeypatch):
    gt = write_ground_truth(synthetic_video, tmp_path / "gt.json", embedding="class")
    monkeypatch.setenv(GROUND_TRUTH_ENV, str(gt))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("cat\ncup\nrocket\nperson\n")
    yids = tmp_path / "yids.txt"
    yids.write_text(f"{YID}\n")

    def db_with_video(name: str):
        db = tmp_path / name
        layout = DatasetLayout(db)
        layout.video_mp4(YID).parent.mkdir(parents=True)
        shutil.copyfile(synthetic_video.path, layout.video_mp4(YID))
        layout.video_segments(YID).parent.mkdir(parents=True)
        layout.video_segments(YID).write_text("".join(f"{a},{b}\n" for a, b in synthetic_video.scene_spans()))
        argv = ["--base_dir", str(db), "--yid_index_fn", str(yids), "--class_prompts", str(prompts),
                "--detector", FIXTURE, "--min_track_area", "0.02"]
        return db, argv, layout.tracks_meta("TrackVerseLVIS", YID)

    return db_with_video


def done_count(db) -> int:
    return sum(1 for r in read_journals(db / "logs" / "parse_tracks-TrackVerseLVIS") if r["event"] == "done")


def test_parse_kill_between_the_two_writes_is_not_done_and_the_rerun_equals_a_clean_run(parse_setup, monkeypatch):
    ref_db, ref_argv, ref_meta = parse_setup("reference")
    assert main(PARSE_TRACKS_STAGE, ref_argv) == EXIT_OK
    db, argv, meta = parse_setup("db")

    def killed(*args, **kwargs):
        raise Killed()

    with monkeypatch.context() as mp:
        mp.setattr(store, "atomic_write_bytes", killed)  # the metadata write, after the embeddings file's
        with pytest.raises(Killed):
            main(PARSE_TRACKS_STAGE, argv)
    assert embeddings_path(meta).exists() and not meta.exists()
    config = PARSE_TRACKS_STAGE.validate(parse_config(PARSE_TRACKS_STAGE, argv)[0])
    assert not PARSE_TRACKS_STAGE.output_exists(config, YID)
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK
    assert meta.read_bytes() == ref_meta.read_bytes()
    assert embeddings_path(meta).read_bytes() == embeddings_path(ref_meta).read_bytes()
    assert sorted(p.name for p in meta.parent.iterdir()) == [f"{YID}-emb.parquet", f"{YID}-meta.jsonl.gzip"]


def test_parse_metadata_without_matching_embeddings_is_parsed_again(parse_setup):
    db, argv, meta = parse_setup("db")
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK and done_count(db) == 1
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK and done_count(db) == 1  # done: skipped
    expected = meta.read_bytes()
    os.remove(embeddings_path(meta))  # metadata from before embeddings were kept, or a lost file
    # re-detecting costs GPU time: waits for --reparse_stale (tests/test_stale_outputs.py)
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_USAGE and done_count(db) == 1
    assert main(PARSE_TRACKS_STAGE, [*argv, "--reparse_stale"]) == EXIT_OK and done_count(db) == 2
    assert meta.read_bytes() == expected and embeddings_problem(meta) is None
    records = read_records(meta)
    write_video_tracks(meta.parent / "x" / meta.name, records[:1], [None])  # embeddings of another version
    shutil.copyfile(embeddings_path(meta.parent / "x" / meta.name), embeddings_path(meta))
    assert main(PARSE_TRACKS_STAGE, argv) == EXIT_OK and done_count(db) == 3
    assert embeddings_problem(meta) is None


def test_index_reader_leaves_out_videos_whose_embeddings_do_not_match(tmp_path):
    layout = DatasetLayout(tmp_path)
    yids = ["aaaaaaaaaaa", "bbbbbbbbbbb"]
    for k, yid in enumerate(yids):
        write_video_tracks(layout.tracks_meta("D", yid), [record(10 * k, yid), record(10 * k + 1, yid)],
                           [np.eye(3)[0], np.eye(3)[k + 1]])
    broken = layout.tracks_meta("D", yids[1])
    tids = pa.array([record(0, yids[0]).tid, record(11, yids[1]).tid, record(1, yids[0]).tid])
    fns = pa.array([record(0, yids[0]).fn, record(11, yids[1]).fn, record(1, yids[0]).fn])
    source, problems = index_embedding_source(tmp_path, "D", [yids[0], yids[1], yids[0]], tids, fns)
    loaded = source.load()
    assert problems == [] and loaded.present.all()
    assert np.allclose(loaded.vectors, [np.eye(3)[0], np.eye(3)[2], np.eye(3)[1]])
    write_video_tracks(tmp_path / "x" / broken.name, [record(11, yids[1])], [np.eye(3)[0]])
    shutil.copyfile(embeddings_path(tmp_path / "x" / broken.name), embeddings_path(broken))
    source, problems = index_embedding_source(tmp_path, "D", [yids[0], yids[1], yids[0]], tids, fns)
    assert len(problems) == 1 and source.load().present.tolist() == [True, False, True]
