"""Detector interface, registry, NMS, the ground-truth detector, OWLv2 (tiny random model:
real transformers code path, no download) and the DETIC output conversion."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import Stopwatch
from tests.tiny_models import build_tiny_owlv2
from utils.detect.detectors import (
    Detections,
    Detector,
    DetectorError,
    available_detectors,
    l2_normalize,
    make_detector,
    nms,
    nms_detections,
    register_detector,
)
from utils.detect.detectors.detic import (
    _RoiCapture,
    detic_available,
    detic_outputs_to_detections,
    instances_to_detections,
)
from utils.records.prompts import vocabulary_hash
from utils.testing.ground_truth import GroundTruthDetector, identity_embedding

NAMES = ["cat", "dog", "car"]


def _dets(n: int, c: int = 3, d: int = 8, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (n, 2))
    wh = rng.uniform(1, 20, (n, 2))
    return Detections(
        xyxy=np.concatenate([xy, xy + wh], 1),
        score=rng.uniform(0, 1, n),
        class_logits=rng.normal(size=(n, c)),
        embedding=l2_normalize(rng.normal(size=(n, d))),
    )


# ---------------------------------------------------------------------------- Detections


def test_detections_validates_and_converts():
    d = _dets(5)
    assert len(d) == 5 and d.num_classes == 3 and d.dim == 8
    assert d.xyxy.dtype == np.float32 and d.embedding.dtype == np.float32
    assert d.xywh.shape == (5, 4) and np.allclose(d.xywh[:, 2:], d.xyxy[:, 2:] - d.xyxy[:, :2])
    t = Detections(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5]), torch.zeros(1, 2), torch.tensor([[1.0, 0]]))
    assert isinstance(t.xyxy, np.ndarray) and t.class_ids.tolist() == [0]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(score=np.ones(4)), "score has 4 rows"),
        (dict(xyxy=np.ones((5, 3))), r"\(N, 4\)"),
        (dict(xyxy=np.array([[5, 0, 1, 1]] * 5, float)), "x2 < x1"),
        (dict(class_logits=np.full((5, 3), np.nan)), "NaN"),
        (dict(embedding=np.ones((5, 8))), "L2-normalised"),
        (dict(score=np.full(5, 1.5)), r"\[0, 1\]"),
        (dict(score=np.ones((5, 1))), "1 dimension"),
    ],
)
def test_detections_rejects_malformed(change, message):
    d = _dets(5)
    fields = dict(xyxy=d.xyxy, score=d.score, class_logits=d.class_logits, embedding=d.embedding)
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        Detections(**fields)


def test_detections_empty_index_concatenate():
    e = Detections.empty(3, 8)
    assert len(e) == 0 and e.num_classes == 3 and e.dim == 8 and e.class_ids.shape == (0,)
    d = _dets(6)
    mask = d.score > 0.5
    assert len(d[mask]) == int(mask.sum())
    assert np.array_equal(d[[4, 1]].xyxy, d.xyxy[[4, 1]])
    assert len(d[2]) == 1 and len(d[1:4]) == 3 and len(d[[]]) == 0
    assert len(d[torch.tensor([0, 1])]) == 2
    cat = Detections.concatenate([d, e, d[:2]])
    assert len(cat) == 8 and np.array_equal(cat.xyxy[6:], d.xyxy[:2])
    with pytest.raises(ValueError, match="concatenate"):
        Detections.concatenate([d, Detections.empty(4, 8)])
    with pytest.raises(ValueError):
        Detections.concatenate([])
    with pytest.raises(IndexError):
        d[np.array([True, False])]


def test_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.3], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, class_ids=[0, 1, 0]).tolist() == [1, 0, 2]
    assert nms(boxes, scores, 1.0).tolist() == [1, 0, 2]
    assert nms(boxes, scores, 0.5, max_det=1).tolist() == [1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    d = Detections(boxes, scores, np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32))
    assert nms_detections(d, 0.5).score.tolist() == pytest.approx([0.9, 0.3])
    assert len(nms_detections(d, 0.5, class_agnostic=False)) == 3


# ---------------------------------------------------------------------------- registry


class _Fixed(Detector):
    name = "fixed"

    def __init__(self, class_names, dim=4):
        self.class_names = list(class_names)
        self.dim = dim

    def detect(self, frames, timestamps=None):
        return [Detections.empty(len(self.class_names), self.dim) for _ in frames]


def test_registry_names_and_specs():
    assert {"owlv2", "detic", "ground_truth"} <= set(available_detectors())
    register_detector("test-fixed")(_Fixed)
    det = make_detector("test-fixed", NAMES, dim=6)
    assert isinstance(det, _Fixed) and det.dim == 6
    out = det.detect([np.zeros((4, 4, 3), np.uint8)])
    assert len(out) == 1 and out[0].dim == 6
    prov = det.provenance()
    assert prov == {"detector": "fixed", "weights": None, "vocab_hash": vocabulary_hash(NAMES)}

    gt = make_detector("utils.testing.ground_truth:GroundTruthDetector", NAMES, table={})
    assert isinstance(gt, GroundTruthDetector)
    assert isinstance(make_detector("ground_truth", NAMES, table={}), GroundTruthDetector)


def test_the_library_registry_names_only_library_detectors():
    """Plug-ins (the test and example detectors) register themselves when imported; the library's
    own list never names a module above it (the import-rule test reads registry strings)."""
    import subprocess

    from tests.helpers import REPO

    code = ("from utils.detect.detectors import available_detectors; print(available_detectors()); "
            "import utils.testing.ground_truth; print(available_detectors())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["['detic', 'owlv2']", "['detic', 'ground_truth', 'owlv2']"]


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="unknown detector 'yolo'.*owlv2"):
        make_detector("yolo", NAMES)
    with pytest.raises(DetectorError, match="no_such_module_xyz"):
        make_detector("no_such_module_xyz:Thing", NAMES)
    with pytest.raises(DetectorError, match="has no attribute 'Nope'"):
        make_detector("utils.testing.ground_truth:Nope", NAMES)
    with pytest.raises(ValueError, match="does not accept options.*bogus"):
        make_detector("ground_truth", NAMES, table={}, bogus=1)
    with pytest.raises(ValueError, match="already registered"):
        register_detector("ground_truth")(_Fixed)
    with pytest.raises(TypeError, match="no detect"):
        make_detector("builtins:list", NAMES)


# ---------------------------------------------------------------------------- ground truth


def _frames(n, h=60, w=80):
    return [np.zeros((h, w, 3), np.uint8) for _ in range(n)]


def test_ground_truth_detector():
    table = {
        0.0: [([10, 10, 30, 40], 1, "a"), ([50, 5, 90, 50], 2, "b")],
        0.0625: [([12, 11, 32, 41], 1, "a", 0.3)],
    }
    det = GroundTruthDetector(NAMES, table, dim=16)
    with pytest.raises(ValueError, match="timestamp"):
        det.detect(_frames(1))
    out = det.detect(_frames(3), timestamps=[0.0, 0.0625 + 1e-7, 1.0])
    assert [len(o) for o in out] == [2, 1, 0]
    first = out[0]
    assert first.score.tolist() == pytest.approx([0.9, 0.9]) and out[1].score.tolist() == pytest.approx([0.3])
    assert first.class_ids.tolist() == [1, 2]
    assert first.xyxy[1].tolist() == [50, 5, 80, 50]  # clipped to the 80-px-wide frame
    a0, a1, b0 = first.embedding[0], out[1].embedding[0], first.embedding[1]
    assert float(a0 @ a1) > 0.99 and float(a0 @ b0) < 0.6
    assert float(a0 @ identity_embedding("a", 16)) > 0.99
    again = GroundTruthDetector(NAMES, table, dim=16).detect(_frames(1), [0.0])[0]
    assert np.array_equal(again.embedding, first.embedding)  # seeded
    assert out[2].num_classes == 3 and out[2].dim == 16


def test_ground_truth_sources(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"0.5": [[[0, 0, 10, 10], 0, 7]]}))
    assert len(GroundTruthDetector(NAMES, str(path)).detect(_frames(1), [0.5])[0]) == 1
    det = GroundTruthDetector(NAMES, source=lambda t: [([0, 0, 5, 5], 2, 1)] if t < 1 else [])
    assert [len(o) for o in det.detect(_frames(2), [0.0, 2.0])] == [1, 0]
    mot = tmp_path / "gt.txt"
    mot.write_text("1,1,10,20,30,40,1,1,1\n1,2,0,0,5,5,0,1,1\n2,1,12,20,30,40,1,1,1\n")
    det = GroundTruthDetector.from_mot_file(mot, ["person"], fps=10)
    assert det.timestamps() == [0.0, 0.1]
    out = det.detect(_frames(2, 100, 100), [0.0, 0.1])
    assert [len(o) for o in out] == [1, 1] and out[0].xyxy[0].tolist() == [10, 20, 40, 60]
    with pytest.raises(ValueError, match="exactly one"):
        GroundTruthDetector(NAMES)
    with pytest.raises(ValueError, match="class index 5"):
        GroundTruthDetector(NAMES, {0.0: [([0, 0, 1, 1], 5, 0)]}).detect(_frames(1), [0.0])


def test_frames_are_checked():
    det = GroundTruthDetector(NAMES, {})
    with pytest.raises(ValueError, match="uint8"):
        det.detect([np.zeros((4, 4, 3), np.float32)], [0.0])
    with pytest.raises(ValueError, match="HxWx3"):
        det.detect([np.zeros((4, 4), np.uint8)], [0.0])


# ---------------------------------------------------------------------------- OWLv2 (tiny random model)


@pytest.fixture(scope="module")
def tiny_owlv2(tmp_path_factory):
    """A randomly initialised Owlv2ForObjectDetection and its processor (tests/tiny_models.py)."""
    return build_tiny_owlv2(tmp_path_factory.mktemp("tiny-clip-tokenizer"))


def _owl(tiny_owlv2, tmp_path, **kw):
    from utils.detect.detectors.owlv2 import OwlV2Detector

    model, processor = tiny_owlv2
    kw.setdefault("cache_dir", tmp_path)
    kw.setdefault("prompt_template", "{}")
    kw.setdefault("device", "cpu")
    return OwlV2Detector(NAMES, model=model, processor=processor, **kw)


def _rand_frame(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_owlv2_prompt_cache(tiny_owlv2, tmp_path):
    first = _owl(tiny_owlv2, tmp_path)
    assert not first.text_cache_hit and first.text_encoder_calls == 1
    assert first.text_cache_path is not None and first.text_cache_path.is_file()
    second = _owl(tiny_owlv2, tmp_path)
    assert second.text_cache_hit and second.text_encoder_calls == 0
    assert torch.equal(first.text_embeds, second.text_embeds)
    other = _owl(tiny_owlv2, tmp_path, prompt_template="a {}")
    assert not other.text_cache_hit and other.text_cache_path != first.text_cache_path
    nocache = _owl(tiny_owlv2, tmp_path / "none", use_cache=False)
    assert nocache.text_encoder_calls == 1 and not (tmp_path / "none").exists()
    prov = first.provenance()
    assert prov["detector"] == "owlv2" and prov["vocab_hash"] == vocabulary_hash(NAMES)


def test_owlv2_boxes_in_source_pixels_for_non_square_frames(tiny_owlv2, tmp_path):
    model, processor = tiny_owlv2
    h, w = 48, 96
    frame = _rand_frame(h, w, 1)
    det = _owl(tiny_owlv2, tmp_path, min_score=0.0, nms_threshold=1.0, top_k=None)
    (out,) = det.detect([frame])
    assert len(out) > 0
    assert np.all(out.xyxy[:, [0, 2]] >= 0) and np.all(out.xyxy[:, [0, 2]] <= w)
    assert np.all(out.xyxy[:, [1, 3]] >= 0) and np.all(out.xyxy[:, [1, 3]] <= h)

    # Hand computation on the raw output of the model's own full forward pass (text + image):
    # boxes are cxcywh in [0, 1] of the frame padded (bottom/right) to a max(h, w) square.
    inputs = processor(text=[NAMES], images=[frame], return_tensors="pt")
    with torch.no_grad():
        raw = model(**inputs)
    cx, cy, bw, bh = raw.pred_boxes[0].unbind(-1)
    side = max(h, w)  # 96: the padded square, for both axes
    expected = torch.stack([(cx - bw / 2) * side, (cy - bh / 2) * side, (cx + bw / 2) * side, (cy + bh / 2) * side], -1)
    expected[:, [0, 2]] = expected[:, [0, 2]].clamp(0, w)
    expected[:, [1, 3]] = expected[:, [1, 3]].clamp(0, h)
    keep = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert int(keep.sum()) < keep.numel()  # some boxes fell entirely in the padding and were dropped
    score = torch.sigmoid(raw.objectness_logits[0]) * torch.sigmoid(raw.logits[0].max(-1).values)
    exp_boxes, exp_score = expected[keep].numpy(), score[keep].numpy()
    exp_logits, exp_emb = raw.logits[0][keep].numpy(), raw.class_embeds[0][keep].numpy()

    order_got = np.lexsort(out.xyxy.T[::-1])
    order_exp = np.lexsort(exp_boxes.T[::-1])
    np.testing.assert_allclose(out.xyxy[order_got], exp_boxes[order_exp], atol=1e-3)
    np.testing.assert_allclose(out.score[order_got], exp_score[order_exp], atol=1e-5)
    np.testing.assert_allclose(out.class_logits[order_got], exp_logits[order_exp], atol=1e-4)
    exp_emb = exp_emb / np.linalg.norm(exp_emb, axis=1, keepdims=True)
    np.testing.assert_allclose(out.embedding[order_got], exp_emb[order_exp], atol=1e-4)
    assert np.all(np.diff(out.score) <= 0)  # sorted by score

    # Same boxes as transformers' own post-processing (which scales by the padded size).
    post = processor.image_processor.post_process_object_detection(raw, threshold=0.0, target_sizes=[(h, w)])[0]
    ref = post["boxes"].clone()
    ref[:, [0, 2]] = ref[:, [0, 2]].clamp(0, w)
    ref[:, [1, 3]] = ref[:, [1, 3]].clamp(0, h)
    ref = ref[keep].numpy()
    np.testing.assert_allclose(ref[np.lexsort(ref.T[::-1])], exp_boxes[order_exp], atol=1e-3)


def test_owlv2_batching_matches_one_by_one(tiny_owlv2, tmp_path):
    frames = [_rand_frame(48, 96, 2), _rand_frame(64, 64, 3), _rand_frame(48, 96, 4), _rand_frame(80, 40, 5)]
    batched = _owl(tiny_owlv2, tmp_path, batch_size=3, min_score=0.0).detect(frames)
    single = _owl(tiny_owlv2, tmp_path, batch_size=1, min_score=0.0).detect(frames)
    assert len(batched) == len(single) == 4
    for a, b in zip(batched, single, strict=True):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.score, b.score, atol=1e-5)
        np.testing.assert_allclose(a.class_logits, b.class_logits, atol=1e-4)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(a.embedding, axis=1), 1.0, atol=1e-5)
        assert a.num_classes == 3 and a.dim == 32


def test_owlv2_filters(tiny_owlv2, tmp_path):
    frame = _rand_frame(64, 64, 6)
    everything = _owl(tiny_owlv2, tmp_path, min_score=0.0, nms_threshold=1.0, top_k=None).detect([frame])[0]
    top3 = _owl(tiny_owlv2, tmp_path, min_score=0.0, nms_threshold=1.0, top_k=3).detect([frame])[0]
    np.testing.assert_allclose(top3.score, everything.score[:3], atol=1e-6)
    cut = float(np.median(everything.score))
    assert np.all(_owl(tiny_owlv2, tmp_path, min_score=cut).detect([frame])[0].score >= cut)
    assert len(_owl(tiny_owlv2, tmp_path, min_score=1.0).detect([frame])[0]) == 0


def test_owlv2_shrinks_batch_on_cuda_oom(tiny_owlv2, tmp_path, monkeypatch):
    det = _owl(tiny_owlv2, tmp_path, batch_size=8, min_score=0.0)
    frames = [_rand_frame(32, 32, s) for s in range(5)]
    expected = det.detect(frames)
    real = det._detect_batch
    sizes = []

    def flaky(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(chunk)

    monkeypatch.setattr(det, "_detect_batch", flaky)
    got = det.detect(frames)
    assert sizes[:3] == [5, 2, 2] and det.batch_size == 2
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-4)

    calls = []

    def always(chunk):
        calls.append(len(chunk))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(det, "_detect_batch", always)
    with pytest.raises(DetectorError, match="single"):
        det.detect(frames)
    assert calls == [2, 1]  # halves down to 1, then gives up


def test_owlv2_missing_weights_message(tmp_path):
    from utils.detect.detectors.owlv2 import DEFAULT_MODEL_ID

    with pytest.raises(DetectorError) as info:
        make_detector("owlv2", NAMES, local_files_only=True, cache_dir=tmp_path, device="cpu")
    message = str(info.value)
    assert DEFAULT_MODEL_ID in message and "hf download" in message and "local" in message
    missing = tmp_path / "no-such-model"
    with pytest.raises(DetectorError, match="no-such-model"):
        make_detector("owlv2", NAMES, model_id=str(missing), local_files_only=True, device="cpu")


def test_owlv2_argument_checks(tiny_owlv2, tmp_path):
    model, processor = tiny_owlv2
    from utils.detect.detectors.owlv2 import OwlV2Detector

    with pytest.raises(ValueError, match="both"):
        OwlV2Detector(NAMES, model=model, device="cpu")
    with pytest.raises(ValueError, match="prompts"):
        _owl(tiny_owlv2, tmp_path, prompts=["a"])
    with pytest.raises(ValueError, match="batch_size"):
        _owl(tiny_owlv2, tmp_path, batch_size=0)


# ---------------------------------------------------------------------------- DETIC


def test_detic_conversion_from_plain_tensors():
    boxes = torch.tensor([[10.0, 20, 50, 60], [0, 0, 500, 300]])
    scores = torch.tensor([0.8, 1.2])
    probs = torch.tensor([[0.1, 0.7, 0.2, 0.05], [0.6, 0.1, 0.1, 0.3]])  # 3 classes + background
    feats = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    d = detic_outputs_to_detections(boxes, scores, probs, feats, num_classes=3, pred_classes=[1, 0], image_size=(240, 320))
    assert d.num_classes == 3 and d.class_logits[0].tolist() == pytest.approx([0.1, 0.7, 0.2])
    assert d.embedding[0].tolist() == pytest.approx([0.6, 0.8]) and d.embedding[1].tolist() == pytest.approx([0, 1])
    assert d.xyxy[1].tolist() == [0, 0, 320, 240] and d.score.tolist() == pytest.approx([0.8, 1.0])
    scaled = detic_outputs_to_detections(boxes[:1], scores[:1], probs[:1, :3], feats[:1], num_classes=3, scale=(2.0, 0.5))
    assert scaled.xyxy[0].tolist() == [20, 10, 100, 30]
    onehot = detic_outputs_to_detections(boxes, scores.clamp(max=1), None, feats, num_classes=3, pred_classes=torch.tensor([2, 0]))
    assert onehot.class_ids.tolist() == [2, 0] and onehot.class_logits[0].tolist() == pytest.approx([0, 0, 0.8])
    empty = detic_outputs_to_detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, 16), num_classes=3)
    assert len(empty) == 0 and empty.dim == 16
    with pytest.raises(ValueError, match="columns"):
        detic_outputs_to_detections(boxes, scores, probs[:, :2], feats, num_classes=3)
    with pytest.raises(ValueError, match="vocabulary"):
        detic_outputs_to_detections(boxes, scores, probs, feats, num_classes=3, pred_classes=[0, 7])


def test_detic_instances_like_objects():
    boxes = SimpleNamespace(tensor=torch.tensor([[1.0, 2, 3, 4]]))
    inst = SimpleNamespace(
        pred_boxes=boxes, scores=torch.tensor([0.5]), pred_classes=torch.tensor([1]),
        logit_classes=torch.tensor([[0.2, 0.5, 0.3]]), box_feats=torch.tensor([[1.0, 1.0]]),
    )
    d = instances_to_detections(inst, num_classes=2)
    assert d.xyxy[0].tolist() == [1, 2, 3, 4] and d.class_logits.shape == (1, 2)
    with pytest.raises(ValueError, match="box features"):
        instances_to_detections(SimpleNamespace(pred_boxes=boxes, scores=torch.tensor([0.5])), num_classes=2)


# A stand-in with the structure of Detic's cascade ROI heads: _forward_box calls
# self._run_stage per stage (which sets proposals' .feat), each predictor's predict_probs,
# and the module-level fast_rcnn_inference, whose kept indices it discards.
def fast_rcnn_inference(boxes, scores, image_sizes):
    kept = [torch.tensor([2, 0]) for _ in scores]
    return [SimpleNamespace(n=len(k)) for k in kept], kept


class _FakeCascadeHeads:
    def __init__(self):
        self.box_predictor = [SimpleNamespace(predict_probs=self._probs(k)) for k in range(2)]

    @staticmethod
    def _probs(k):
        return lambda: [torch.full((3, 4), float(k + 1)) + torch.arange(3.0)[:, None]]

    def _run_stage(self, features, proposals, stage):
        for p in proposals:
            p.feat = torch.arange(6.0).reshape(3, 2) + 10 * stage
        return None

    def _forward_box(self):
        proposals = [SimpleNamespace()]
        for k in range(2):
            self._run_stage(None, proposals, k)
        scores = [p.predict_probs() for p in self.box_predictor]
        instances, _ = fast_rcnn_inference(None, scores[-1], None)
        return instances


def test_detic_capture_of_discarded_outputs():
    heads = _FakeCascadeHeads()
    capture = _RoiCapture(heads)
    with capture.active():
        heads._forward_box()
    probs, feats = capture.per_image(0)
    assert probs.tolist() == [[3.5] * 4, [1.5] * 4]  # stage mean (1+2)/2 + row, rows 2 and 0
    assert feats.tolist() == [[14.0, 15.0], [10.0, 11.0]]  # last stage's features, rows 2 and 0
    assert sys.modules[__name__].fast_rcnn_inference is fast_rcnn_inference  # restored
    assert "_run_stage" not in vars(heads)


@pytest.mark.skipif(detic_available(), reason="detectron2/Detic are installed here")
def test_detic_missing_is_a_clear_error():
    with pytest.raises(DetectorError, match="docs/detic.md"):
        make_detector("detic", NAMES)


@pytest.mark.skipif(not detic_available(), reason="detectron2 and Detic are not installed: run tools/install_detic.sh")
def test_detic_real_model():  # pragma: no cover - needs detectron2, Detic and its weights
    from utils.detect.detectors.detic import check_weights

    problem = check_weights()
    if problem:  # the random-weight model is tested in tests/test_detic.py
        pytest.skip(f"DETIC's trained weights cannot be had here: {problem}")
    det = make_detector("detic", NAMES, device="cpu", batch_size=1)
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[60:180, 100:220] = 255
    (out,) = det.detect([frame])
    assert out.num_classes == len(NAMES)
    if len(out):
        assert np.all(out.xyxy[:, 2] <= 320) and np.all(out.xyxy[:, 3] <= 240)


def test_detic_weights_offline_are_said_within_seconds(tmp_path, monkeypatch):
    """DETIC's checkpoint URL not downloaded yet and its host refusing: said at once, with the
    offline options (detectron2 itself is not needed for the check)."""
    import socket

    from utils.detect.detectors import detic

    monkeypatch.setattr(detic, "_clip_text_weights", lambda: None)
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "iopath"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/detic/model.pth"
    watch = Stopwatch()
    problem = detic.check_weights(url)
    assert watch.waited < 10
    assert problem is not None and url in problem and f"127.0.0.1:{port} refused" in problem
    assert "--model" in problem and "owlv2" in problem
    assert "do not exist" in detic.check_weights(str(tmp_path / "none.pth"))
    local = tmp_path / "model.pth"
    local.write_bytes(b"weights")
    assert detic.check_weights(str(local)) is None
    monkeypatch.setattr(detic, "_iopath_cached", lambda _url: local)  # downloaded before: no network needed
    assert detic.check_weights(url) is None


# ---------------------------------------------------------------------------- OWLv2 speed options


def test_owlv2_random_base_is_the_published_architecture(tmp_path):
    """``random:owlv2-base``: google/owlv2-base-patch16-ensemble's shapes (ViT-B/16 at 960 px,
    12-layer 512-wide text tower, 155M parameters) with random weights, built offline."""
    from utils.detect.detectors.owlv2 import OwlV2Detector
    from utils.detect.stage import expected_weights_id

    det = OwlV2Detector(NAMES, "random:owlv2-base", device="cpu", cache_dir=tmp_path, local_files_only=True)
    vision, text = det.model.config.vision_config, det.model.config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size,
            vision.patch_size, vision.image_size) == (768, 12, 12, 3072, 16, 960)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size,
            text.vocab_size, text.max_position_embeddings) == (512, 12, 8, 2048, 49408, 16)
    assert det.model.config.projection_dim == 512
    params = sum(p.numel() for p in det.model.parameters())
    assert 150e6 < params < 160e6
    assert det.processor.image_processor.size["height"] == 960
    assert det.text_embeds.shape == (len(NAMES), 512)
    assert det.weights_id == "random:owlv2-base" == expected_weights_id("owlv2", "random:owlv2-base")
    with pytest.raises(DetectorError, match="random:owlv2-base"):
        OwlV2Detector(NAMES, "random:owlv2-huge", device="cpu", cache_dir=tmp_path)


def test_owlv2_prepared_batches_give_the_same_detections(tiny_owlv2, tmp_path, monkeypatch):
    """What the pipeline hands over (``prepare``) detects as the frames themselves, also when
    the out-of-memory back-off splits it."""
    det = _owl(tiny_owlv2, tmp_path, batch_size=8, min_score=0.0)
    frames = [_rand_frame(48, 64, s) for s in range(5)]
    expected = det.detect(frames)
    prepared = det.prepare(frames)
    assert len(prepared) == 5 and prepared.shapes == [(48, 64)] * 5

    def same(got):
        for a, b in zip(got, expected, strict=True):
            for name in ("xyxy", "score", "class_logits", "embedding"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name

    same(det.detect(prepared))
    real = det._detect_batch
    sizes = []

    def flaky(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(chunk)

    monkeypatch.setattr(det, "_detect_batch", flaky)
    split = det.detect(det.prepare(frames))
    assert sizes[:4] == [5, 2, 1, 1] and det.batch_size == 1
    for a, b in zip(split, expected, strict=True):  # other batch sizes round float32 sums differently
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-4)


def test_owlv2_precision_options(tiny_owlv2, tmp_path):
    frames = [_rand_frame(48, 64, s) for s in range(3)]
    auto = _owl(tiny_owlv2, tmp_path, min_score=0.0)
    fp32 = _owl(tiny_owlv2, tmp_path, min_score=0.0, precision="fp32")
    assert not auto.half and auto.dtype == torch.float32  # auto on CPU: float32, as before
    for a, b in zip(auto.detect(frames), fp32.detect(frames), strict=True):
        assert np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.class_logits, b.class_logits)
    bf16 = _owl(tiny_owlv2, tmp_path, min_score=0.0, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.autocast_dtype == torch.bfloat16  # autocast, float32 weights
    assert bf16.provenance()["precision"] == "bf16"
    low = bf16.detect(frames)
    for a, b in zip(auto.detect(frames), low, strict=True):
        assert b.xyxy.dtype == np.float32 and np.all(np.isfinite(b.class_logits))
        # bfloat16 keeps about 3 digits: the same boxes within a pixel or two of a 64 px frame
        assert abs(len(a.score) - len(b.score)) <= max(2, len(a.score) // 4)
    with pytest.raises(ValueError, match="precision"):
        _owl(tiny_owlv2, tmp_path, precision="int8")


@pytest.mark.slow
def test_owlv2_compiled_image_side_detects_the_same(tiny_owlv2, tmp_path):
    """``compile=True`` (torch.compile of the image side; about a minute to compile on CPU)."""
    frames = [_rand_frame(48, 64, s) for s in range(3)]
    plain = _owl(tiny_owlv2, tmp_path, min_score=0.0).detect(frames)
    compiled = _owl(tiny_owlv2, tmp_path, min_score=0.0, compile=True)
    assert compiled.compiled
    for a, b in zip(plain, compiled.detect(frames), strict=True):
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.class_logits, b.class_logits, atol=1e-3)
