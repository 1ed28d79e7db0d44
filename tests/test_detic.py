"""The ``detic`` detector for real: detectron2, CLIP and Detic built from the source snapshots
(``tools/install_detic.sh``), the full-size Swin-B DETIC of the original (``random:detic-swinb``:
Detic's own config, random weights) with Detic's CLIP text encoder at full size.

What is checked: the model is the full-size one; the adapter brings DETIC's boxes (computed on
the frame resized to the 480 px test size) back to frame pixels with the scores and per-class
probabilities of the same instances (proposals replaced by ground truth, regression zeroed:
``tests.detic_plugins``); the track embedding lives where ``embed_text`` puts text (the final
stage's class logits are their scaled cosines); and the stages end to end: parse_tracks.py
(metadata, embeddings, provenance header, stale check), relabel_tracks.py and search_tracks.py
over a DETIC-parsed dataset, and tracks that follow a synthetic video's moving boxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import add_video, item_list, match_to_ground_truth, meta_path, run_cli
from tests.tiny_models import GROUND_TRUTH_ENV, write_ground_truth
from utils.core.errors import EXIT_OK, EXIT_SYSTEMIC, EXIT_USAGE
from utils.core.layout import DatasetLayout
from utils.core.video import read_frames_at
from utils.detect.detectors import make_detector
from utils.detect.detectors.detic import INSTALL_COMMAND, DeticDetector, _RoiCapture, detic_available
from utils.records.prompts import read_prompts
from utils.records.provenance import read_provenance
from utils.records.track_embeddings import read_video_embeddings
from utils.records.track_files import read_records
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video

pytestmark = pytest.mark.skipif(
    not detic_available(), reason=f"detectron2, CLIP and Detic are not installed: run {INSTALL_COMMAND}")

NAMES = ["cat", "cup", "rocket"]
RANDOM = "random:detic-swinb"
YID = "synthVideo1"
INDEX = "tracks_subsets/TrackVerseLVIS-Full.jsonl.gzip"


def frames_of(video, times: list[float]) -> list[np.ndarray]:
    return [frame.image for frame in read_frames_at(video.path, times)]


@pytest.fixture(scope="module")
def detic() -> DeticDetector:
    return make_detector("detic", NAMES, weights=RANDOM, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def moving_boxes(tmp_path_factory):
    """Two objects crossing a 256x160 frame apart from each other, 2 s."""
    root = tmp_path_factory.mktemp("detic-video")
    scenes = [SceneSpec(2.0, (ObjectSpec("cat", (70, 50), (5, 10), (120, 40)),
                              ObjectSpec("rocket", (40, 60), (200, 90), (110, 95))))]
    video = make_synthetic_video(root / "video.mp4", scenes, width=256, height=160, fps=10)
    return video, write_ground_truth(video, root / "ground-truth.json")


def test_random_detic_is_the_full_size_swin_b_model(detic):
    model = detic.model
    swin = model.backbone.bottom_up
    assert type(swin).__name__ == "SwinTransformer" and swin.embed_dim == 128  # Swin-B
    assert [len(layer.blocks) for layer in swin.layers] == [2, 2, 18, 2]
    assert sum(p.numel() for p in swin.parameters()) > 86e6
    assert len(model.roi_heads.box_predictor) == 3  # the cascade
    encoder = detic._encoder()
    assert 63e6 < sum(p.numel() for p in encoder.parameters()) < 64e6  # CLIP ViT-B/32's text tower
    assert encoder.context_length == 77 and encoder.text_projection.shape == (512, 512)
    prov = detic.provenance()
    assert prov["detector"] == "detic" and prov["weights"] == RANDOM
    assert prov["config"] == "Detic_LCOCOI21k_CLIP_SwinB_896b32_4x_ft4x_max-size" and prov["input_size"] == 480
    assert detic.precision == "auto" and detic.autocast_dtype is None  # float32 on a CPU


def test_text_encoder_is_seeded_and_uses_the_prompt_template(detic):
    lines = ["cat (also known as kitty)", "cup"]
    first = detic.embed_text(lines)
    detic._text_encoder = None  # built again: the same random weights
    again = detic.embed_text(lines)
    assert first.shape == (2, 512) and np.array_equal(first, again)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.allclose(first, detic.encode_texts([f"a {line}" for line in lines]))
    assert not np.allclose(first, detic.encode_texts(lines), atol=1e-3)


def test_track_embedding_is_where_embed_text_puts_text(detic, moving_boxes):
    """Each box's embedding scores each class the way DETIC's last cascade stage does: its
    class probability is sigmoid(temperature * cosine(embedding, embed_text(class)))."""
    video, _ = moving_boxes
    frames = frames_of(video, [0.5])
    (dets,) = detic.detect(frames)
    assert len(dets) > 0 and dets.dim == 512
    capture = _RoiCapture(detic.model.roi_heads)
    import torch

    with torch.no_grad(), capture.active():
        detic.model.inference(detic.prepare(frames).inputs)
    kept = capture.kept[0]
    last_stage = capture.stage_probs[-1][0][kept][:, : len(NAMES)].numpy()
    cls_score = detic.model.roi_heads.box_predictor[-1].cls_score
    cosine = dets.embedding @ detic.embed_text(NAMES).T
    logits = cls_score.norm_temperature * cosine + (float(cls_score.cls_bias) if cls_score.use_bias else 0.0)
    assert np.allclose(last_stage, 1 / (1 + np.exp(-logits)), atol=2e-3)
    # and the instance score is the square root of the best cascade-averaged probability times
    # the proposal score, as Detic computes it (class_logits are those averaged probabilities)
    assert np.all(dets.score <= np.sqrt(dets.class_logits.max(axis=1)) + 1e-4)


def test_boxes_scores_and_class_probabilities_come_back_to_frame_pixels(moving_boxes):
    """Proposals = ground truth in the 480 px network input; DETIC's outputs mapped back must be
    those boxes in frame pixels, each with the scores of its own proposal."""
    from tests.detic_plugins import DeticOnGroundTruthProposals

    video, truth = moving_boxes
    det = DeticOnGroundTruthProposals(NAMES, ground_truth=truth, device="cpu")
    times = [0.0, 1.0, 1.9]
    frames = frames_of(video, times)
    prepared = det.prepare(frames)
    assert [tuple(x["image"].shape[1:]) for x in prepared.inputs] == [(300, 480)] * 3  # 160x256 -> 480 px side
    for dets, t in zip(det.detect(prepared, times), times, strict=True):
        want = sorted((b.xyxy for b in video.boxes_at(t)), key=lambda b: b[0])
        got = dets.xyxy[np.argsort(dets.xyxy[:, 0])]
        assert len(got) == 2 and np.allclose(got, np.array(want), atol=0.5), (t, got, want)
        # proposal score 1: instance score = sqrt(best cascade-averaged class probability)
        assert np.allclose(dets.score, np.sqrt(dets.class_logits.max(axis=1)), atol=1e-4)
        assert np.allclose(np.linalg.norm(dets.embedding, axis=1), 1.0, atol=1e-4)
    # array frames give the same as prepared ones
    again = det.detect(frames, times)
    assert all(np.allclose(a.xyxy, b.xyxy) for a, b in zip(again, det.detect(prepared, times), strict=True))


def test_cuda_out_of_memory_halves_the_batch_then_fails_clearly(detic, moving_boxes, monkeypatch):
    import torch

    from utils.detect.detectors import DetectorError

    video, _ = moving_boxes
    frames = frames_of(video, [0.2, 0.6, 1.0])
    monkeypatch.setattr(detic, "batch_size", 4)
    real = detic._detect_batch
    sizes = []

    def flaky(batch):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch)

    monkeypatch.setattr(detic, "_detect_batch", flaky)
    got = detic.detect(frames)
    assert sizes == [3, 1, 1, 1] and detic.batch_size == 1 and len(got) == 3
    assert all(len(d) > 0 and d.dim == 512 for d in got)

    def always(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(detic, "_detect_batch", always)
    with pytest.raises(DetectorError, match="single 256x160 frame"):
        detic.detect(frames)


def test_autocast_path_gives_the_same_detections_in_float32(detic, moving_boxes, monkeypatch):
    """bf16 autocast (what fp16 is on CUDA, here on the CPU): the same boxes, float32 outputs."""
    import torch

    video, _ = moving_boxes
    frames = frames_of(video, [0.5])
    (plain,) = detic.detect(frames)
    monkeypatch.setattr(detic, "autocast_dtype", torch.bfloat16)
    (mixed,) = detic.detect(frames)
    assert mixed.xyxy.dtype == np.float32 and mixed.embedding.dtype == np.float32 and len(mixed) > 0
    assert np.allclose(np.linalg.norm(mixed.embedding, axis=1), 1.0, atol=1e-3)
    top = plain.xyxy[np.argmax(plain.score)]
    assert np.abs(mixed.xyxy - top).max(axis=1).min() < 4.0  # the best box is found again, to bf16 precision


def test_precision_and_embedding_options_are_checked():
    with pytest.raises(ValueError, match="precision"):
        make_detector("detic", NAMES, weights=RANDOM, precision="int8")
    with pytest.raises(ValueError, match="embedding"):
        make_detector("detic", NAMES, weights=RANDOM, embedding="pixels")
    from utils.detect.detectors import DetectorError

    with pytest.raises(DetectorError, match="use one of random:detic-swinb"):
        make_detector("detic", NAMES, weights="random:detic-huge")


# ---------------------------------------------------------------------------- stages


def parse_args(db: Path, yids: Path, prompts: Path, detector: str, *extra: str) -> list[str]:
    return ["parse_tracks.py", "--base_dir", str(db), "--yid_index_fn", str(yids), "--class_prompts", str(prompts),
            "--detector", detector, "--device", "cpu", "--fps", "4", "--batch_size", "4", *extra]


def test_offline_without_weights_parse_stops_at_once_saying_what_to_fetch(tmp_path, moving_boxes):
    from utils.detect.detectors.detic import check_weights

    if check_weights() is None:
        pytest.skip("DETIC's weights can be had here: nothing to refuse")
    video, _ = moving_boxes
    db = tmp_path / "db"
    add_video(db, YID, video.path, video.scene_spans())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("cat\n")
    proc = run_cli(*parse_args(db, item_list(tmp_path, [YID]), prompts, "detic"), timeout=300)
    assert proc.returncode == EXIT_SYSTEMIC, proc.stderr
    assert "cannot fetch DETIC weights" in proc.stderr and "--model" in proc.stderr and "Traceback" not in proc.stderr
    assert not meta_path(db).exists()


@pytest.mark.slow
def test_parse_relabel_and_search_with_random_detic(tmp_path, moving_boxes):
    video, _ = moving_boxes
    env = {"TRACKVERSE_CACHE": str(tmp_path / "cache")}
    db = tmp_path / "db"
    add_video(db, YID, video.path, video.scene_spans())
    yids = item_list(tmp_path, [YID])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("cat (also known as kitty)\ncup\nrocket\n")
    flags = ("--model", RANDOM, "--min_track_len", "0.5", "--min_track_area", "0.01")
    proc = run_cli(*parse_args(db, yids, prompts, "detic", *flags), env=env, timeout=600)
    assert proc.returncode == EXIT_OK, proc.stderr
    meta = meta_path(db)
    records = read_records(meta)
    assert records, "random DETIC found no track"
    prov = read_provenance(meta)
    assert prov.detector == "detic" and prov.weights == RANDOM and prov.detector_spec == "detic"
    assert prov.vocab_hash == read_prompts(prompts).hash
    emb = read_video_embeddings(meta)
    assert emb.present.all() and emb.dim == 512 and emb.tids == [r.tid for r in records]
    assert emb.info["detector_spec"] == "detic" and emb.info["weights"] == RANDOM

    # stale check: the same data with other weights stops before any work
    proc = run_cli(*parse_args(db, yids, prompts, "detic", "--model", "other-weights.pth"), env=env, timeout=300)
    assert proc.returncode == EXIT_USAGE and "--reparse_stale" in proc.stderr

    assert run_cli("curate_db.py", "--base_dir", db, "--index_file", INDEX, "--dataset_name", "TrackVerseLVIS",
                   "--action", "index", env=env).returncode == EXIT_OK
    detic = make_detector("detic", read_prompts(prompts).labels, weights=RANDOM, prompts=read_prompts(prompts).lines,
                          device="cpu")

    # relabel: the vocabulary through DETIC's text encoder, with its prompt template
    new = tmp_path / "new.txt"
    new.write_text("rocket\ntable\ncat\n")
    proc = run_cli("relabel_tracks.py", "--base_dir", db, "--index_file", INDEX, "--class_prompts", new,
                   "--dataset_name", "Relabelled", env=env, timeout=600)
    assert proc.returncode == EXIT_OK, proc.stderr
    relabelled = read_records(DatasetLayout(db).tracks_meta("Relabelled", YID))
    assert [r.tid for r in relabelled] == [r.tid for r in records]
    cached = [np.load(p) for p in (tmp_path / "cache" / "text-embeddings").glob("*.npy")]
    expected = detic.embed_text(["rocket", "table", "cat"])
    assert len(cached) == 1 and np.allclose(cached[0], expected, atol=1e-5)
    for rec, vec in zip(relabelled, emb.vectors, strict=True):
        best = int(np.argmax(expected @ vec.astype(np.float32)))
        assert rec.top10_lbl[0] == best and rec.top10_desc[0] == ["rocket", "table", "cat"][best]

    # search: tracks ranked by cosine with the query's DETIC text embedding
    proc = run_cli("search_tracks.py", "--base_dir", db, "--index_file", INDEX, "a rocket", "--top", "2",
                   env=env, timeout=600)
    assert proc.returncode == EXIT_OK, proc.stderr
    subset = db / "tracks_subsets" / f"TrackVerseLVIS-search-a-rocket-top{min(2, len(records))}.jsonl.gzip"
    hits = read_records(subset)
    cosine = emb.vectors.astype(np.float32) @ detic.embed_text(["a rocket"])[0]
    best = [records[i].tid for i in np.argsort(-cosine, kind="stable")[: len(hits)]]
    assert [h.tid for h in hits] == best


@pytest.mark.slow
def test_tracks_follow_the_moving_boxes_with_ground_truth_proposals(tmp_path, moving_boxes):
    video, truth = moving_boxes
    db = tmp_path / "db"
    add_video(db, YID, video.path, video.scene_spans())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("cat\ncup\nrocket\n")
    for extra in ((), ("--decode_workers", "1")):  # plain and pipelined decoding
        out = db if not extra else tmp_path / "db-pipelined"
        if extra:
            add_video(out, YID, video.path, video.scene_spans())
        proc = run_cli(*parse_args(out, item_list(tmp_path, [YID]), prompts, "tests.detic_plugins:DeticOnGroundTruthProposals",
                                   "--min_track_len", "1", "--min_track_area", "0.01", *extra,
                                   # a random classifier's scores (around 0.5) say nothing: every box counts
                                   "--track_thresh", "0.2", "--low_thresh", "0.1"),
                       env={GROUND_TRUTH_ENV: str(truth), "TRACKVERSE_CACHE": str(tmp_path / "cache")}, timeout=600)
        assert proc.returncode == EXIT_OK, proc.stderr
        records = read_records(meta_path(out))
        assert len(records) == 2
        followed = sorted(match_to_ground_truth(rec, video) for rec in records)
        assert [identity for identity, _ in followed] == sorted(video.identities())
        assert all(mean_iou > 0.95 for _, mean_iou in followed), followed
        assert read_provenance(meta_path(out)).detector == "detic"
