"""Tracker evaluation on MOTChallenge ground truth fed back as degraded detections.

Used by ``tests/test_tracking.py`` and ``benchmarks/bench_tracker.py``. The TUD-Campus and
TUD-Stadtmitte ground truth (MOT15, 25 fps) ships inside the ``motmetrics`` wheel; it is located
without importing ``motmetrics`` (which fails to import with numpy 2). Ground-truth boxes become
detections after seeded degradation (jitter, drops, false positives, noisy scores, one random
appearance vector per identity plus noise), and the tracker's output is scored with TrackEval's
CLEAR (MOTA, ID switches) and Identity (IDF1) metrics, computed in memory.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.core.boxes import iou_matrix
from utils.detect.tracking.bytetrack import ByteTracker

TUD_SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
TUD_FRAME_RATE = 25.0


@dataclass
class GroundTruth:
    """One annotated sequence: per frame (0-based) the ids ``(K,)`` and xyxy boxes ``(K, 4)``."""

    name: str
    frame_rate: float
    ids: list[np.ndarray]
    xyxy: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class FrameDetections:
    """Synthetic detector output for one frame; ``identity`` is the source GT id (-1: false positive)."""

    xyxy: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray
    identity: np.ndarray


# A step takes one frame's detections and its timestamp, returns (track ids (M,), boxes (M, 4)).
TrackStep = Callable[[FrameDetections, float], tuple[np.ndarray, np.ndarray]]


def motmetrics_data_dir() -> Path | None:
    """``motmetrics/data`` of the installed wheel, or None (found without importing motmetrics)."""
    spec = importlib.util.find_spec("motmetrics")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if all((data / name / "gt.txt").is_file() for name in TUD_SEQUENCES):
            return data
    return None


def load_mot_gt(path: str | Path, name: str = "", frame_rate: float = TUD_FRAME_RATE) -> GroundTruth:
    """Read a MOTChallenge ``gt.txt`` (frame, id, x, y, w, h, conf, ...); rows with conf 0 are ignored."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    rows = rows[rows[:, 6] != 0] if rows.shape[1] > 6 else rows
    frames = rows[:, 0].astype(np.int64)
    num_frames = int(frames.max()) if len(frames) else 0
    ids, boxes = [], []
    for f in range(1, num_frames + 1):
        r = rows[frames == f]
        ids.append(r[:, 1].astype(np.int64))
        boxes.append(np.stack([r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5]], axis=1))
    return GroundTruth(name or Path(path).parent.name, frame_rate, ids, boxes)


def load_tud(name: str) -> GroundTruth:
    """Load one of :data:`TUD_SEQUENCES` from the motmetrics wheel (FileNotFoundError if absent)."""
    data = motmetrics_data_dir()
    if data is None:
        raise FileNotFoundError("motmetrics (with its bundled MOTChallenge data) is not installed")
    return load_mot_gt(data / name / "gt.txt", name, TUD_FRAME_RATE)


def degrade(
    gt: GroundTruth,
    seed: int = 0,
    jitter: float = 0.05,
    drop: float = 0.2,
    false_positives: float = 1.0,
    score_mean: float = 0.75,
    score_std: float = 0.15,
    emb_dim: int = 64,
    emb_noise: float = 0.7,
) -> list[FrameDetections]:
    """Turn ground truth into a seeded imperfect detector's output, frame by frame.

    Each GT box survives with probability ``1 - drop``; its centre moves by ``N(0, jitter)``
    box sizes and its width/height scale by ``exp(N(0, jitter))``; its score is
    ``N(score_mean, score_std)`` clipped to [0.01, 0.99] (so some fall in the low-score band).
    ``Poisson(false_positives)`` boxes per frame of GT-like size land anywhere in the GT extent
    with scores ``U(0.1, 0.75)`` and random embeddings. A true detection's embedding is its
    identity's random unit vector plus isotropic noise of norm about ``emb_noise``, renormalised.
    """
    rng = np.random.default_rng(seed)
    all_ids = np.unique(np.concatenate(gt.ids)) if len(gt) else np.empty(0, np.int64)
    protos = _unit(rng.standard_normal((len(all_ids), emb_dim)))
    proto_of = {int(i): protos[k] for k, i in enumerate(all_ids)}
    all_boxes = np.concatenate(gt.xyxy) if len(gt) else np.zeros((0, 4))
    sizes = all_boxes[:, 2:] - all_boxes[:, :2]
    lo, hi = all_boxes[:, :2].min(axis=0), all_boxes[:, 2:].max(axis=0)

    out = []
    for ids, boxes in zip(gt.ids, gt.xyxy, strict=True):
        keep = rng.random(len(ids)) >= drop
        ids, boxes = ids[keep], boxes[keep]
        wh = boxes[:, 2:] - boxes[:, :2]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + rng.normal(0, jitter, wh.shape) * wh
        wh = wh * np.exp(rng.normal(0, jitter, wh.shape))
        xyxy = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
        scores = np.clip(rng.normal(score_mean, score_std, len(ids)), 0.01, 0.99)
        emb = np.stack([proto_of[int(i)] for i in ids]) if len(ids) else np.zeros((0, emb_dim))
        emb = _unit(emb + rng.standard_normal(emb.shape) * emb_noise / np.sqrt(emb_dim))

        n_fp = rng.poisson(false_positives)
        fp_wh = sizes[rng.integers(0, len(sizes), n_fp)] if len(sizes) else np.ones((n_fp, 2))
        fp_xy = lo + rng.random((n_fp, 2)) * np.maximum(hi - lo - fp_wh, 1.0)
        xyxy = np.concatenate([xyxy, np.concatenate([fp_xy, fp_xy + fp_wh], axis=1)])
        scores = np.concatenate([scores, rng.uniform(0.1, 0.75, n_fp)])
        emb = np.concatenate([emb, _unit(rng.standard_normal((n_fp, emb_dim)))])
        identity = np.concatenate([ids, np.full(n_fp, -1, dtype=np.int64)])
        out.append(FrameDetections(xyxy, scores, emb.astype(np.float32), identity))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def run_sequence(
    step: TrackStep, detections: list[FrameDetections], frame_rate: float
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """Feed every frame to ``step``; return per-frame (ids, boxes) and the seconds spent in ``step``."""
    predictions, spent = [], 0.0
    for f, dets in enumerate(detections):
        t0 = time.perf_counter()
        ids, boxes = step(dets, f / frame_rate)
        spent += time.perf_counter() - t0
        predictions.append((np.asarray(ids, dtype=np.int64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)))
    return predictions, spent


def bytetracker_step(tracker: ByteTracker, use_embeddings: bool = True) -> TrackStep:
    """Adapter: a :class:`ByteTracker` as a :data:`TrackStep`."""

    def step(dets: FrameDetections, t: float) -> tuple[np.ndarray, np.ndarray]:
        out = tracker.update(dets.xyxy, dets.scores, dets.embeddings if use_embeddings else None, None, t)
        return out.ids, out.xyxy

    return step


def _trackeval_data(gt: GroundTruth, predictions: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The ``data`` dict TrackEval metrics' ``eval_sequence`` expect (ids made contiguous)."""
    if len(predictions) != len(gt):
        raise ValueError(f"{len(predictions)} predicted frames for {len(gt)} GT frames")
    gt_all = np.unique(np.concatenate(gt.ids)) if len(gt) else np.empty(0, np.int64)
    tr_all = np.unique(np.concatenate([p[0] for p in predictions])) if predictions else np.empty(0, np.int64)
    gt_ids, tr_ids, sims = [], [], []
    for g_ids, g_boxes, (p_ids, p_boxes) in zip(gt.ids, gt.xyxy, predictions, strict=True):
        gt_ids.append(np.searchsorted(gt_all, g_ids))
        tr_ids.append(np.searchsorted(tr_all, p_ids))
        sims.append(iou_matrix(g_boxes, p_boxes))
    return {
        "num_timesteps": len(gt),
        "num_gt_ids": len(gt_all),
        "num_tracker_ids": len(tr_all),
        "num_gt_dets": sum(len(i) for i in gt_ids),
        "num_tracker_dets": sum(len(i) for i in tr_ids),
        "gt_ids": gt_ids,
        "tracker_ids": tr_ids,
        "similarity_scores": sims,
    }


def _metrics() -> tuple:
    from trackeval.metrics import CLEAR, Identity

    config = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
    return CLEAR(config), Identity(config)


def evaluate(
    runs: Iterable[tuple[GroundTruth, list[tuple[np.ndarray, np.ndarray]]]],
) -> dict[str, float]:
    """CLEAR + Identity over several (ground truth, predictions) runs, combined as one benchmark.

    Returns MOTA, MOTP, IDF1, IDP, IDR (fractions), IDSW, FP, FN, TP, Frag, MT, ML (counts).
    """
    clear, identity = _metrics()
    clear_res, id_res = {}, {}
    for k, (gt, predictions) in enumerate(runs):
        data = _trackeval_data(gt, predictions)
        clear_res[k] = clear.eval_sequence(data)
        id_res[k] = identity.eval_sequence(data)
    c, i = clear.combine_sequences(clear_res), identity.combine_sequences(id_res)
    return {
        "MOTA": float(c["MOTA"]), "MOTP": float(c["MOTP"]), "IDF1": float(i["IDF1"]),
        "IDP": float(i["IDP"]), "IDR": float(i["IDR"]), "IDSW": int(c["IDSW"]), "FP": int(c["CLR_FP"]),
        "FN": int(c["CLR_FN"]), "TP": int(c["CLR_TP"]), "Frag": int(c["Frag"]), "MT": int(c["MT"]),
        "ML": int(c["ML"]),
    }


def evaluate_tracker(
    make_step: Callable[[float], TrackStep],
    seeds: Iterable[int] = (0, 1, 2),
    sequences: Iterable[str] = TUD_SEQUENCES,
    **degrade_kwargs: float,
) -> dict[str, float]:
    """Run a fresh tracker (``make_step(frame_rate)``) on every degraded (sequence, seed); score it.

    Adds ``ms_per_frame`` (time spent in the tracker) to :func:`evaluate`'s metrics.
    """
    runs, spent, frames = [], 0.0, 0
    for name in sequences:
        gt = load_tud(name)
        for seed in seeds:
            predictions, seconds = run_sequence(make_step(gt.frame_rate), degrade(gt, seed, **degrade_kwargs),
                                                gt.frame_rate)
            runs.append((gt, predictions))
            spent, frames = spent + seconds, frames + len(gt)
    result = evaluate(runs)
    result["ms_per_frame"] = 1000.0 * spent / max(frames, 1)
    return result
