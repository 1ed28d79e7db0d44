"""The detector interface every backend implements.

``Detector.detect(frames, timestamps=None) -> list[Detections]``: one ``Detections`` per
frame, boxes in *source-frame pixels*. ``Detections`` validates itself on construction, so a
backend that returns malformed output fails where the fault is, not three stages later.

Backends are built by name with :func:`utils.detect.detectors.registry.make_detector`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.core.boxes import nms, xyxy_to_xywh
from utils.records.prompts import vocabulary_hash

__all__ = [
    "Detections",
    "Detector",
    "DetectorError",
    "check_frames",
    "embed_prompts",
    "has_text_encoder",
    "l2_normalize",
    "nms",
    "nms_detections",
    "vocabulary_hash",
]

log = logging.getLogger("trackverse")

# Unit-norm tolerance of ``Detections.embedding`` rows (float32 arithmetic, fp16 models).
_NORM_ATOL = 1e-3


class DetectorError(RuntimeError):
    """A systemic detector fault (backend not installed, weights missing, out of memory at
    batch size 1): the run should stop with this message rather than fail item after item."""


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32). Rows of zeros raise ``ValueError``."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.reshape(x.shape)
    norms = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    if np.any(norms <= eps):
        raise ValueError("cannot L2-normalise an all-zero embedding")
    return (x / norms).astype(np.float32)


# ---------------------------------------------------------------------------- Detections


def _as_float32(name: str, value: Any, ndim: int) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().float().cpu().numpy()
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim != ndim:
        raise ValueError(f"Detections.{name} must have {ndim} dimension(s), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


@dataclass(eq=False)
class Detections:
    """The boxes of one frame.

    Attributes (N boxes, C classes in the vocabulary, D embedding dimensions):
        xyxy: (N, 4) float32, ``[x1, y1, x2, y2]`` in source-frame pixels, ``x2 >= x1``,
            ``y2 >= y1``.
        score: (N,) float32 in [0, 1]: objectness x class confidence, what tracker
            thresholds compare against.
        class_logits: (N, C) float32: per-class scores over the vocabulary (backend-defined
            scale: OWLv2 logits, DETIC probabilities), used for the track's top-10 labels.
        embedding: (N, D) float32, each row L2-normalised: the appearance descriptor.

    Arrays (numpy or torch) are converted to contiguous float32 numpy and validated.
    """

    xyxy: np.ndarray
    score: np.ndarray
    class_logits: np.ndarray
    embedding: np.ndarray

    def __post_init__(self) -> None:
        self.xyxy = _as_float32("xyxy", self.xyxy, 2)
        self.score = _as_float32("score", self.score, 1)
        self.class_logits = _as_float32("class_logits", self.class_logits, 2)
        self.embedding = _as_float32("embedding", self.embedding, 2)
        n = self.xyxy.shape[0]
        if self.xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy must be (N, 4), got {self.xyxy.shape}")
        for name in ("score", "class_logits", "embedding"):
            m = getattr(self, name).shape[0]
            if m != n:
                raise ValueError(f"Detections.{name} has {m} rows but xyxy has {n}")
        for name in ("xyxy", "score", "class_logits", "embedding"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"Detections.{name} contains NaN or infinite values")
        if n:
            if np.any(self.xyxy[:, 2] < self.xyxy[:, 0]) or np.any(self.xyxy[:, 3] < self.xyxy[:, 1]):
                raise ValueError("Detections.xyxy has boxes with x2 < x1 or y2 < y1")
            if np.any(self.score < 0) or np.any(self.score > 1):
                raise ValueError(
                    f"Detections.score must lie in [0, 1] (got min {self.score.min():.4g}, "
                    f"max {self.score.max():.4g})"
                )
            if self.embedding.shape[1] == 0:
                raise ValueError("Detections.embedding has zero dimensions")
            norms = np.linalg.norm(self.embedding, axis=1)
            if np.any(np.abs(norms - 1.0) > _NORM_ATOL):
                raise ValueError(
                    "Detections.embedding rows must be L2-normalised "
                    f"(norms range {norms.min():.4g}..{norms.max():.4g}); use l2_normalize()"
                )

    # -- construction
    @classmethod
    def empty(cls, num_classes: int, dim: int) -> Detections:
        """No boxes, with the shapes of a vocabulary of ``num_classes`` and ``dim``-D embeddings."""
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            score=np.zeros((0,), np.float32),
            class_logits=np.zeros((0, num_classes), np.float32),
            embedding=np.zeros((0, dim), np.float32),
        )

    @classmethod
    def concatenate(cls, items: Sequence[Detections]) -> Detections:
        """All boxes of ``items`` in order (all must share C and D)."""
        items = list(items)
        if not items:
            raise ValueError("Detections.concatenate needs at least one Detections (use Detections.empty)")
        c, d = items[0].num_classes, items[0].dim
        for it in items[1:]:
            if it.num_classes != c or it.dim != d:
                raise ValueError(
                    f"cannot concatenate Detections with (C, D) = ({c}, {d}) and ({it.num_classes}, {it.dim})"
                )
        return cls(
            xyxy=np.concatenate([it.xyxy for it in items]),
            score=np.concatenate([it.score for it in items]),
            class_logits=np.concatenate([it.class_logits for it in items]),
            embedding=np.concatenate([it.embedding for it in items]),
        )

    # -- access
    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: Any) -> Detections:
        """Subset by boolean mask, integer indices, a slice, or one integer (kept 2-D)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        elif hasattr(index, "detach"):
            index = index.detach().cpu().numpy()
        idx = np.asarray(index) if not isinstance(index, slice) else index
        if isinstance(idx, np.ndarray) and idx.dtype == bool and idx.shape != (len(self),):
            raise IndexError(f"boolean mask of shape {idx.shape} for {len(self)} detections")
        if isinstance(idx, np.ndarray) and idx.size == 0:
            idx = idx.astype(np.int64)
        return Detections(
            xyxy=self.xyxy[idx],
            score=self.score[idx],
            class_logits=self.class_logits[idx],
            embedding=self.embedding[idx],
        )

    @property
    def num_classes(self) -> int:
        return int(self.class_logits.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def class_ids(self) -> np.ndarray:
        """(N,) int64: the arg-max class of each box."""
        if len(self) == 0:
            return np.zeros((0,), np.int64)
        return self.class_logits.argmax(axis=1).astype(np.int64)

    @property
    def xywh(self) -> np.ndarray:
        """(N, 4) float32 ``[x, y, w, h]`` (the metadata record's box format)."""
        return xyxy_to_xywh(self.xyxy)


# ---------------------------------------------------------------------------- NMS


def nms_detections(
    dets: Detections, iou_threshold: float, class_agnostic: bool = True, max_det: int | None = None
) -> Detections:
    """``dets`` after NMS (:func:`utils.core.boxes.nms`) on ``score`` (per arg-max class when not ``class_agnostic``), sorted
    by decreasing score."""
    if len(dets) == 0:
        return dets
    keep = nms(dets.xyxy, dets.score, iou_threshold, None if class_agnostic else dets.class_ids, max_det)
    return dets[keep]


# ---------------------------------------------------------------------------- interface


def check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate a batch of HxWx3 uint8 RGB frames; returns them as a list."""
    frames = list(frames)
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            desc = f"{type(f).__name__} {getattr(f, 'shape', '')} {getattr(f, 'dtype', '')}"
            raise ValueError(f"frame {i} must be an HxWx3 uint8 RGB numpy array, got {desc}")
        if f.shape[0] == 0 or f.shape[1] == 0:
            raise ValueError(f"frame {i} is empty ({f.shape})")
    return frames


class Detector(abc.ABC):
    """An object detector over a fixed vocabulary.

    Subclasses set ``name`` and ``class_names`` and implement :meth:`detect`. ``timestamps``
    (seconds, one per frame) are optional: real detectors ignore them; detectors fed by
    known ground truth (``ground_truth``) need them.

    Optional text encoder: ``embed_text(prompts) -> (len(prompts), D) float32``, L2-normalised
    embeddings of prompt lines in the space of ``Detections.embedding`` (described the way the
    detector describes its own classes, e.g. OWLv2's prompt template), so that a track's stored
    embedding can be scored against any vocabulary or query without detecting again
    (relabel_tracks.py, search_tracks.py). OWLv2 and DETIC have one; plug-ins may
    (:func:`embed_prompts` calls it and checks what it returns).
    """

    name: str = "detector"
    class_names: list[str]
    #: the text each class was described by (defaults to ``class_names``); hashed into provenance
    prompts: list[str]
    #: an id of the weights (hub id, path, URL); ``None`` for weight-free detectors
    weights_id: str | None = None

    @abc.abstractmethod
    def detect(self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None) -> list[Detections]:
        """One :class:`Detections` per frame (HxWx3 uint8 RGB), boxes in source pixels."""

    def __call__(self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None) -> list[Detections]:
        return self.detect(frames, timestamps)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def provenance(self) -> dict[str, Any]:
        """What produced the detections: ``detector`` name, ``weights`` id and ``vocab_hash``
        (sha256 of the prompt lines, see :func:`vocabulary_hash`), plus backend settings."""
        prompts = getattr(self, "prompts", None) or self.class_names
        return {"detector": self.name, "weights": self.weights_id, "vocab_hash": vocabulary_hash(prompts)}


# ---------------------------------------------------------------------------- text side


def has_text_encoder(detector: Any) -> bool:
    """Whether ``detector`` has the optional ``embed_text`` (see :class:`Detector`)."""
    return callable(getattr(detector, "embed_text", None))


def embed_prompts(detector: Any, prompts: Sequence[str]) -> np.ndarray:
    """``detector.embed_text(prompts)`` checked: (len(prompts), D) finite float32 rows,
    L2-normalised here. :class:`DetectorError` when the detector has no text encoder or it
    returns something else."""
    name = getattr(detector, "name", type(detector).__name__)
    if not has_text_encoder(detector):
        raise DetectorError(f"detector {name!r} has no text encoder (embed_text): its track embeddings cannot be "
                            "scored against text")
    prompts = [str(p) for p in prompts]
    out = np.asarray(detector.embed_text(prompts) if prompts else np.zeros((0, 0)), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(prompts) or (prompts and out.shape[1] == 0):
        raise DetectorError(f"detector {name!r}: embed_text returned shape {out.shape} for {len(prompts)} prompts")
    if not np.all(np.isfinite(out)):
        raise DetectorError(f"detector {name!r}: embed_text returned NaN or infinite values")
    try:
        return l2_normalize(out)
    except ValueError as exc:
        raise DetectorError(f"detector {name!r}: embed_text returned an all-zero embedding") from exc


# ---------------------------------------------------------------------------- batches


def detect_in_batches(detector: Any, name: str, total: int, chunk_at: Callable[[int, int], Any],
                      frame_size: Callable[[Any], tuple[int, int]], advice: str) -> list[Detections]:
    """``detector._detect_batch`` over ``total`` frames, ``detector.batch_size`` at a time
    (``chunk_at(start, count)`` makes each chunk). On CUDA out-of-memory the batch size is
    halved, and kept halved, until it fits; at one frame it raises :class:`DetectorError` naming
    the frame's size (``frame_size(chunk)``: ``(h, w)``) and ``advice`` (``name``: the model,
    for messages)."""
    import torch

    results: list[Detections] = []
    i = 0
    while i < total:
        n = min(detector.batch_size, total - i)
        chunk = chunk_at(i, n)
        try:
            out = detector._detect_batch(chunk)
        except torch.cuda.OutOfMemoryError as exc:
            if detector.device.type == "cuda":
                torch.cuda.empty_cache()
            if n <= 1:
                h, w = frame_size(chunk)
                raise DetectorError(f"{name} ran out of GPU memory on a single {w}x{h} frame on {detector.device}: "
                                    f"{advice}") from exc
            detector.batch_size = max(1, n // 2)
            log.warning("%s: CUDA out of memory with %d frames; batch size now %d", name, n, detector.batch_size)
            continue
        results.extend(out)
        i += n
    return results
