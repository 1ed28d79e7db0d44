"""A detector fed by known ground truth, for tests and examples.

It "detects" exactly the boxes it is given for each frame timestamp, so the tracker and
everything after it can be tested against known identities without any model:

- ``score``: ``score`` (0.9 by default), or the entry's own 4th element;
- ``class_logits``: ``logit_low`` everywhere and ``logit_high`` at the true class;
- ``embedding``: a fixed random unit vector per identity (seeded by ``seed`` and the
  identity) plus small seeded noise per (identity, timestamp), renormalised: the same
  object looks alike over time, different objects do not. With ``embedding="class"`` it is
  instead the class's direction (:func:`text_direction` of its name) plus ``track_noise`` times
  the identity's vector plus the per-frame noise, renormalised: an open-vocabulary detector
  whose box embeddings live in its text space, with a known answer;
- ``embed_text(prompts)``: each prompt's direction (:func:`text_direction` of its label), the
  text encoder of that space: the class direction of a box is what its class name encodes to.

Ground truth is a table ``{timestamp: [(xyxy, class_index, identity[, score]), ...]}`` (or
the path of a JSON file with that content, timestamps as keys), or a callable
``source(timestamp) -> entries``. Frames are matched to table timestamps within
``time_tolerance`` seconds, so :meth:`GroundTruthDetector.detect` needs ``timestamps``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.detect.detectors.base import Detections, Detector, check_frames, l2_normalize
from utils.detect.detectors.registry import register_detector
from utils.records.prompts import label_of

__all__ = ["GroundTruthDetector", "GroundTruthEntry", "identity_embedding", "text_direction"]

#: ``(xyxy, class_index, identity)`` or ``(xyxy, class_index, identity, score)``
GroundTruthEntry = tuple[Any, ...]


def _seeded_rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(repr(p) for p in parts).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def identity_embedding(identity: Hashable, dim: int, seed: int = 0) -> np.ndarray:
    """The fixed unit vector of one identity (float32, ``dim``)."""
    v = _seeded_rng("identity", seed, identity).standard_normal(dim)
    return l2_normalize(v[None].astype(np.float32))[0]


def text_direction(text: str, dim: int, seed: int = 0) -> np.ndarray:
    """The unit vector (float32, ``dim``) a prompt encodes to: seeded by its label, lower-cased,
    without a leading article (``"cat (also known as kitty)"``, ``"Cat"`` and ``"a cat"`` are one
    direction)."""
    label = re.sub(r"^(?:a|an|the)\s+", "", label_of(text).lower())
    v = _seeded_rng("text", seed, label).standard_normal(dim)
    return l2_normalize(v[None].astype(np.float32))[0]


def _load_table(table: Mapping[Any, Any] | str | os.PathLike) -> dict[float, list[GroundTruthEntry]]:
    if isinstance(table, (str, os.PathLike)):
        with open(table, encoding="utf-8") as f:
            table = json.load(f)
    if not isinstance(table, Mapping):
        raise TypeError(f"ground-truth table must be a mapping timestamp -> entries, got {type(table).__name__}")
    return {float(ts): [tuple(e) for e in entries] for ts, entries in table.items()}


@register_detector("ground_truth")
class GroundTruthDetector(Detector):
    """Returns known boxes per timestamp (see the module docstring).

    Args:
        class_names: the vocabulary.
        table: ``{timestamp: entries}`` or the path of such a JSON file.
        source: alternatively, a callable ``timestamp -> entries``.
        score: score of entries that carry none.
        dim: embedding dimension.
        logit_high, logit_low: class logit of the true class / of the others.
        noise: standard deviation of the per-frame embedding noise (before renormalising).
        embedding: ``"identity"`` (an identity's own vector) or ``"class"`` (the class's text
            direction plus ``track_noise`` times the identity's vector).
        track_noise: in ``"class"`` mode, how far each track's embedding strays from its class.
        seed: seeds identity vectors and noise.
        time_tolerance: how far (s) a frame's timestamp may be from a table timestamp.
        clip: clip boxes to the frame and drop those left empty.
    """

    name = "ground_truth"

    def __init__(
        self,
        class_names: Sequence[str],
        table: Mapping[Any, Any] | str | os.PathLike | None = None,
        *,
        source: Callable[[float], Sequence[GroundTruthEntry]] | None = None,
        score: float = 0.9,
        dim: int = 64,
        logit_high: float = 4.0,
        logit_low: float = -4.0,
        noise: float = 0.02,
        embedding: str = "identity",
        track_noise: float = 0.5,
        seed: int = 0,
        time_tolerance: float = 1e-3,
        clip: bool = True,
    ) -> None:
        if (table is None) == (source is None):
            raise ValueError("give the ground truth as exactly one of table= or source=")
        self.class_names = [str(c) for c in class_names]
        self.prompts = list(self.class_names)
        self.weights_id = None
        self._source = source
        self._table: dict[float, list[GroundTruthEntry]] = {} if table is None else _load_table(table)
        self._keys = np.array(sorted(self._table), dtype=np.float64)
        self.score = float(score)
        self.dim = int(dim)
        self.logit_high = float(logit_high)
        self.logit_low = float(logit_low)
        self.noise = float(noise)
        if embedding not in ("identity", "class"):
            raise ValueError(f"embedding must be 'identity' or 'class', got {embedding!r}")
        self.embedding = embedding
        self.track_noise = float(track_noise)
        self.seed = int(seed)
        self.time_tolerance = float(time_tolerance)
        self.clip = bool(clip)
        self._identity_cache: dict[Hashable, np.ndarray] = {}

    @classmethod
    def from_mot_file(
        cls,
        path: str | os.PathLike,
        class_names: Sequence[str],
        fps: float,
        class_index: int = 0,
        **options: Any,
    ) -> GroundTruthDetector:
        """Ground truth from a MOTChallenge ``gt.txt`` (``frame, id, left, top, width, height,
        conf, ...``; frame 1 is at t = 0, rows with conf 0 are ignored)."""
        table: dict[float, list[GroundTruthEntry]] = {}
        for line in Path(path).read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 6 or not parts[0]:
                continue
            frame, ident = int(float(parts[0])), int(float(parts[1]))
            x, y, w, h = (float(v) for v in parts[2:6])
            if len(parts) > 6 and float(parts[6]) == 0:
                continue
            ts = round((frame - 1) / float(fps), 6)
            table.setdefault(ts, []).append(([x, y, x + w, y + h], class_index, ident))
        return cls(class_names, table, **options)

    def timestamps(self) -> list[float]:
        """The table's timestamps, sorted (empty for a ``source`` callable)."""
        return self._keys.tolist()

    def entries_at(self, ts: float) -> list[GroundTruthEntry]:
        """Ground-truth entries of the table timestamp nearest ``ts`` (within tolerance)."""
        if self._source is not None:
            return list(self._source(float(ts)) or [])
        if self._keys.size == 0:
            return []
        j = int(np.searchsorted(self._keys, ts))
        best = None
        for k in (j - 1, j):
            if 0 <= k < self._keys.size and abs(self._keys[k] - ts) <= self.time_tolerance:
                if best is None or abs(self._keys[k] - ts) < abs(self._keys[best] - ts):
                    best = k
        return [] if best is None else self._table[float(self._keys[best])]

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """Each prompt's :func:`text_direction`: (len(prompts), dim) float32, unit rows."""
        return np.stack([text_direction(p, self.dim, self.seed) for p in prompts]) if len(prompts) else \
            np.zeros((0, self.dim), np.float32)

    def _embedding(self, identity: Hashable, ts: float, class_index: int) -> np.ndarray:
        key = (identity, class_index) if self.embedding == "class" else identity
        base = self._identity_cache.get(key)
        if base is None:
            base = identity_embedding(identity, self.dim, self.seed)
            if self.embedding == "class":
                direction = text_direction(self.class_names[class_index], self.dim, self.seed)
                base = l2_normalize((direction + self.track_noise * base)[None])[0]
            self._identity_cache[key] = base
        if self.noise <= 0:
            return base
        jitter = _seeded_rng("noise", self.seed, identity, round(float(ts), 6)).standard_normal(self.dim)
        return l2_normalize((base + self.noise * jitter).astype(np.float32)[None])[0]

    def detect(self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None) -> list[Detections]:
        """The ground truth of each frame's timestamp; ``timestamps`` are required."""
        frames = check_frames(frames)
        if timestamps is None:
            raise ValueError("the ground_truth detector needs the timestamp of each frame (detect(frames, timestamps))")
        if len(timestamps) != len(frames):
            raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
        c = len(self.class_names)
        out = []
        for frame, ts in zip(frames, timestamps, strict=True):
            h, w = frame.shape[:2]
            boxes, scores, logits, embs = [], [], [], []
            for entry in self.entries_at(float(ts)):
                if len(entry) not in (3, 4):
                    raise ValueError(f"ground-truth entry must be (xyxy, class, identity[, score]), got {entry!r}")
                xyxy = np.asarray(entry[0], dtype=np.float32).reshape(4)
                cls_idx = int(entry[1])
                if not 0 <= cls_idx < c:
                    raise ValueError(f"class index {cls_idx} outside the vocabulary of {c} classes")
                if self.clip:
                    xyxy = np.clip(xyxy, 0, [w, h, w, h]).astype(np.float32)
                    if xyxy[2] <= xyxy[0] or xyxy[3] <= xyxy[1]:
                        continue
                row = np.full(c, self.logit_low, np.float32)
                row[cls_idx] = self.logit_high
                boxes.append(xyxy)
                scores.append(float(entry[3]) if len(entry) == 4 else self.score)
                logits.append(row)
                embs.append(self._embedding(entry[2], float(ts), cls_idx))
            if boxes:
                out.append(Detections(np.stack(boxes), np.asarray(scores), np.stack(logits), np.stack(embs)))
            else:
                out.append(Detections.empty(c, self.dim))
        return out
