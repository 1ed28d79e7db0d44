"""Stages hold no state: submitit pickles the job of every rank once per array task and again
on every requeue, so what a stage learns while listing a large index must not travel with it."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest

from utils.clips.released import DOWNLOAD_TRACKS_STAGE
from utils.clips.stage import EXTRACT_TRACKS_STAGE
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.ingest.stage import BLUR_FACES_STAGE, DOWNLOAD_VIDEOS_STAGE
from utils.metrics.stage import VISUAL_METRICS_STAGE
from utils.records.provenance import Provenance
from utils.records.track_embeddings import write_video_tracks
from utils.records.tracks import TrackRecord
from utils.relabel.stage import RELABEL_TRACKS_STAGE
from utils.runner.cli import parse_config
from utils.runner.slurm import ShardJob

TRACKS = 100_000
MAX_PICKLE_BYTES = 64 * 1024


def _yid(i: int) -> str:
    return f"v{i:010d}"


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory) -> dict[str, Path]:
    """A 100K-track index (one track per video) and the matching list of 100K video ids."""
    root = tmp_path_factory.mktemp("big")
    yids = root / "yids.txt"
    yids.write_text("".join(f"{_yid(i)}\n" for i in range(TRACKS)))
    index = root / "index.jsonl.gzip"
    with gzip.open(index, "wt", compresslevel=1) as f:
        for i in range(TRACKS):
            yid = _yid(i)
            f.write(json.dumps({
                "yid": yid, "tid": f"{i:032x}", "fn": f"{yid[:2]}/{yid}-cat-{i:032x}.mp4", "video_size": [360, 640],
                "track_ts": [0.0, 1.0, 2.0, 3.0], "track_bbox": [[10, 10, 100, 100]] * 4,
                "top10_lbl": [0], "top10_desc": ["cat"], "top10_logit_mu": [1.0], "top10_logit_std": [0.0],
                "top10_wlogit_mu": [1.0], "top10_wlogit_std": [0.0],
            }) + "\n")
    prompts = root / "prompts.txt"
    prompts.write_text("cat\ndog\n")
    # one parsed video with track embeddings, what relabel_tracks.py needs to start
    from utils.core.layout import DatasetLayout
    first = TrackRecord(yid=_yid(0), tid=f"{0:032x}", fn=f"{_yid(0)[:2]}/{_yid(0)}-cat-{0:032x}.mp4",
                        track_ts=[0.0, 1.0], track_bbox=[[10, 10, 100, 100]] * 2)
    write_video_tracks(DatasetLayout(root / "db").tracks_meta("SRC", _yid(0)), [first], [[1.0, 0.0]],
                       Provenance(detector="ground_truth", vocab_hash="0" * 64, classes=2, detector_spec="ground_truth"))
    # the folders the reading stages refuse to start without (a root and dataset that exist)
    for folder in ("videos_mp4", "videos_segm", "tracks_meta/TrackVerseLVIS", "tracks_mp4/TrackVerseLVIS"):
        (root / "db" / folder).mkdir(parents=True, exist_ok=True)
    return {"root": root, "yids": yids, "index": index, "prompts": prompts}


def _flags(inputs: dict[str, Path], stage) -> list[str]:
    base = ["--base_dir", str(inputs["root"] / "db")]
    yids = ["--yid_index_fn", str(inputs["yids"])]
    return {
        "download_videos": base + yids,
        "gdpr_blur_faces": base + yids,
        "parse_tracks": base + yids + ["--class_prompts", str(inputs["prompts"]), "--detector", "ground_truth"],
        "extract_tracks": base + yids,
        "visual_metrics": base + ["--index_file", str(inputs["index"]), "--metric", "motion"],
        "download_tracks": base + ["--db_meta_file", str(inputs["index"])],
        "relabel_tracks": base + ["--index_file", str(inputs["index"]), "--class_prompts", str(inputs["prompts"]),
                                  "--dataset_name", "NEW", "--source_dataset_name", "SRC"],
    }[stage.name]


@pytest.mark.parametrize("stage", [DOWNLOAD_VIDEOS_STAGE, BLUR_FACES_STAGE, PARSE_TRACKS_STAGE, EXTRACT_TRACKS_STAGE,
                                   VISUAL_METRICS_STAGE, DOWNLOAD_TRACKS_STAGE, RELABEL_TRACKS_STAGE],
                         ids=lambda s: s.name)
def test_pickled_job_stays_small_after_listing_a_large_index(big_inputs, stage):
    config, _slurm = parse_config(stage, _flags(big_inputs, stage))
    config = stage.validate(config)
    items = stage.list_items(config)  # what submission does on the login node
    assert len(items) >= TRACKS // 256
    for item in items[:3]:
        stage.output_exists(config, item)
    job = pickle.dumps((ShardJob(stage), config, 0, 1))
    assert len(job) < MAX_PICKLE_BYTES, f"{stage.name}: pickled job is {len(job)} bytes"
    again = pickle.loads(job)[0].stage
    assert again.list_items(config) == items  # the unpickled stage lists the same work
