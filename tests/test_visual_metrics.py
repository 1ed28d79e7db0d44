"""visual_metrics.py: motion orders clips by speed; embeddings are 2048-d and deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.helpers import Stopwatch, run_cli
from utils.core.video import VideoWriter
from utils.metrics.compute import RAFTFlow, frame_pairs, track_motion
from utils.records.metrics_store import VectorSource, load_metric_columns
from utils.records.track_files import records_to_jsonl_gz_bytes
from utils.records.tracks import TrackRecord
from utils.testing.synthetic import procedural_texture

DATASET = "Synth"


def make_motion_clip(path: Path, speed: float, seconds: float = 2.0, fps: float = 25.0) -> None:
    """A textured object moving right at ``speed`` px per frame over a textured background."""
    rng = np.random.default_rng(1)
    background = np.kron(rng.integers(40, 200, (12, 12, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    patch = procedural_texture("object", (40, 40))
    with VideoWriter(path, 96, 96, fps, keyframe_interval=0.5, crf=12) as writer:
        for k in range(int(seconds * fps)):
            frame = background.copy()
            x = int(round(10 + speed * k)) % 56
            frame[28:68, x:x + 40] = patch
            writer.write(frame)


def record(yid: str, name: str) -> TrackRecord:
    ts = [i / 16 for i in range(40)]
    r = TrackRecord(yid=yid, tid="x", fn="x.mp4", track_ts=ts, track_bbox=[[0.0, 0.0, 10.0, 10.0]] * 40,
                    top10_lbl=[0], top10_desc=[name], top10_wlogit_mu=[1.0], top10_wlogit_std=[0.1],
                    top10_logit_mu=[2.0], top10_logit_std=[0.1])
    r.tid = r.expected_tid()
    r.fn = f"{yid[:2]}/{yid}-{name}-{r.tid}.mp4"
    return r


@pytest.fixture
def clips_db(tmp_path):
    base = tmp_path / "db"
    speeds = {"static00000": 0.0, "slowmove000": 0.5, "fastmove000": 1.5, "samefast000": 1.5}
    recs = []
    for yid, speed in speeds.items():
        r = record(yid, "object")
        path = base / "tracks_mp4" / DATASET / r.fn
        path.parent.mkdir(parents=True, exist_ok=True)
        make_motion_clip(path, speed)
        recs.append(r)
    index = base / "tracks_subsets" / "Synth-Full.jsonl.gzip"
    index.parent.mkdir(parents=True)
    index.write_bytes(records_to_jsonl_gz_bytes(recs))
    return base, index, recs


def keys(recs):
    return pa.array([r.tid for r in recs]), pa.array([r.fn for r in recs])


def test_motion_orders_clips_by_speed(clips_db):
    base, index, recs = clips_db
    proc = run_cli("visual_metrics.py", "--base_dir", base, "--dataset_name", DATASET, "--index_file", index,
                   "--metric", "motion", "--flow", "dis", "--chunk_size", "3", check=True)
    assert "2 done" in proc.stderr  # two chunks of at most 3 tracks
    cols = load_metric_columns(base, DATASET, "motion", ["q50", "q90", "num_pairs"], *keys(recs))
    q90 = cols.values["q90"]
    assert cols.present.all()
    assert q90[0] < 0.2  # static: near zero
    assert q90[0] < q90[1] < q90[2]  # ordered by speed
    assert q90[3] == pytest.approx(q90[2], rel=0.05)
    # pairs: 16 fps over 2 s = 32 frames, a pair every 4 frames
    assert cols.values["num_pairs"][0] == 8
    again = run_cli("visual_metrics.py", "--base_dir", base, "--dataset_name", DATASET, "--index_file", index,
                    "--metric", "motion", "--flow", "dis", "--chunk_size", "3", check=True)
    assert "0 done, 2 skipped" in again.stderr


def test_raft_code_path_with_random_weights(clips_db):
    base, _, recs = clips_db
    clip = base / "tracks_mp4" / DATASET / recs[2].fn
    flow = RAFTFlow(weights="none", device="cpu", model="small", batch_size=4)
    quantiles, n = track_motion(clip, flow)
    assert n == len(frame_pairs(clip)) == 8
    assert quantiles.shape == (7,) and np.all(np.isfinite(quantiles)) and np.all(np.diff(quantiles) >= 0)


def test_embeddings_are_2048d_and_identical_clips_match(clips_db):
    base, index, recs = clips_db
    run_cli("visual_metrics.py", "--base_dir", base, "--dataset_name", DATASET, "--index_file", index,
            "--metric", "embeddings", "--embedding_weights", "none", "--device", "cpu", check=True)
    vectors = VectorSource(base, DATASET, "embeddings", "embedding", *keys(recs)).load()
    assert vectors.vectors.shape == (4, 2048)
    assert np.allclose(np.linalg.norm(vectors.vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors.vectors[2], vectors.vectors[3], atol=1e-6)  # the same pixels
    # different pixels, different vectors (random weights squeeze features together: small gaps)
    assert np.abs(vectors.vectors[0] - vectors.vectors[2]).max() > 1e-5


def test_missing_clips_wait_unless_allowed(clips_db):
    base, index, recs = clips_db
    (base / "tracks_mp4" / DATASET / recs[1].fn).unlink()
    proc = run_cli("visual_metrics.py", "--base_dir", base, "--dataset_name", DATASET, "--index_file", index,
                   "--metric", "motion", "--flow", "dis")
    assert proc.returncode == 0 and "1 not ready" in proc.stderr, proc.stderr
    run_cli("visual_metrics.py", "--base_dir", base, "--dataset_name", DATASET, "--index_file", index,
            "--metric", "motion", "--flow", "dis", "--allow_missing_clips", check=True)
    cols = load_metric_columns(base, DATASET, "motion", ["q90"], *keys(recs))
    assert cols.present.tolist() == [True, False, True, True]


def test_curate_db_min_motion_keeps_only_moving_tracks(clips_db, tmp_path):
    """visual_metrics -> curate_db end to end: the index, motion of every track, a subset."""
    base, _, recs = clips_db
    layout_meta = base / "tracks_meta" / DATASET
    for r in recs:
        path = layout_meta / r.yid[:2] / f"{r.yid}-meta.jsonl.gzip"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(records_to_jsonl_gz_bytes([r]))
    index = "tracks_subsets/Synth/Synth-Full.jsonl.gzip"
    run_cli("curate_db.py", "--base_dir", base, "--index_file", index, "--dataset_name", DATASET,
            "--action", "index", "--num_workers", "1", check=True)
    run_cli("visual_metrics.py", "--base_dir", base, "--dataset_name", DATASET, "--index_file", index,
            "--metric", "motion", "--flow", "dis", check=True)
    verified = tmp_path / "verified.txt"
    verified.write_text("# none\n")
    q90 = load_metric_columns(base, DATASET, "motion", ["q90"], *keys(recs)).values["q90"]
    threshold = float((q90[0] + q90[1]) / 2)  # between the static and the slow clip
    run_cli("curate_db.py", "--base_dir", base, "--index_file", index, "--action", "sample_class_balanced",
            "--Nc", "3", "--temperature", "0", "--verified_list", verified, "--min_motion", f"{threshold:.4f}",
            "--no_plots", check=True)
    # Nc 3: the three moving tracks fill the class, so no relaxation round lowers the threshold
    (subset,) = (base / "tracks_subsets").glob("Synth-CB3-*.jsonl.gzip")
    from utils.records.track_files import read_records

    kept = {r.yid for r in read_records(subset)}
    assert kept == {"slowmove000", "fastmove000", "samefast000"}  # the static clip is left out


def test_default_weights_offline_are_said_within_seconds_with_the_flag(tmp_path, monkeypatch):
    """Weights neither in torch.hub's cache nor reachable: a SystemicError at once (torch.hub
    would wait on the network without a timeout), naming the URL, the flag and the cache path."""
    import socket
    from types import SimpleNamespace

    import torch
    from torchvision.models import resnet18

    from utils.core.errors import SystemicError
    from utils.metrics.compute import load_torchvision_model

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/models/resnet18-test.pth"
        watch = Stopwatch()
        with pytest.raises(SystemicError) as info:
            load_torchvision_model(resnet18, SimpleNamespace(url=url), "default", "ResNet-18", "--embedding_weights")
        assert watch.waited < 15
    message = str(info.value)
    assert url in message and "no answer from" in message and "--embedding_weights FILE" in message
    assert str(tmp_path / "torch-hub" / "checkpoints" / "resnet18-test.pth") in message
    with pytest.raises(SystemicError, match="do not exist"):
        load_torchvision_model(resnet18, SimpleNamespace(url=url), str(tmp_path / "none.pth"), "ResNet-18",
                               "--embedding_weights")
