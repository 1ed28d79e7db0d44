"""ByteTrack multi-object tracker with appearance fusion (arrays in, arrays out).

Per frame (:meth:`ByteTracker.update`):

1. Every live track is advanced by the Kalman filter (:mod:`utils.detect.tracking.kalman`) by the time
   since the previous frame, in frames (``dt = (timestamp - previous) * frame_rate``).
2. High-score detections (``score >= track_thresh``) are matched to confirmed and lost tracks by
   Hungarian assignment on the fused cost
   ``motion_weight * (1 - IoU) + (1 - motion_weight) * (1 - cos(track_embedding, det_embedding))``
   (``1 - IoU`` alone when there are no embeddings or ``motion_weight == 1``).
   **Gating**: a pair is admissible only if its IoU is above ``min_iou`` (so never when the
   boxes do not overlap) and its cost is at most ``match_thresh`` (``motion_only_thresh`` for
   the IoU-only cost). With the defaults a perfect appearance match needs only some overlap,
   while two different-looking objects (cosine distance near 1) are never swapped, however
   well their boxes overlap.
3. Confirmed tracks left over are matched to low-score detections
   (``low_thresh <= score < track_thresh``) by IoU alone, needing ``IoU >= low_match_iou``
   (0.5, as in ByteTrack); low-score detections never start a track. Still-unmatched tracks
   become lost.
4. Unconfirmed tracks (born on the previous frame) are matched to the remaining high-score
   detections with the step-2 cost; an unmatched unconfirmed track is dropped.
5. Remaining detections with ``score >= track_thresh + new_track_margin`` start unconfirmed
   tracks (confirmed at once on the first frame after a reset, as in ByteTrack). Track ids are
   given at confirmation, so they are consecutive, and never reused by the same tracker
   (not even across :meth:`ByteTracker.reset`).
6. A lost track is finished once unseen for more than
   ``max_time_lost = int(frame_rate / 30 * track_buffer)`` frames, or when its prediction
   duplicates a tracked object (IoU above ``duplicate_iou``).

A track's appearance is the exponential moving average (``ema_alpha``) of the embeddings of
its high-score detections, renormalised. Each track keeps its history (the *detection* boxes,
scores, class-logit rows and timestamps of the frames it was matched on) for
:class:`TrackHistory` records; see :meth:`ByteTracker.finished_tracks`,
:meth:`ByteTracker.all_tracks` and :meth:`ByteTracker.flush`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.optimize import linear_sum_assignment

from utils.core.boxes import iou_matrix
from utils.detect.tracking.kalman import KalmanBoxFilter, xyah_to_xyxy, xyxy_to_xyah

_INFEASIBLE = 1e6


class TrackState(IntEnum):
    """Life cycle of a track."""

    NEW = 0  # born on the last frame it was seen, not yet confirmed (no id)
    TRACKED = 1  # confirmed and matched on the latest frame
    LOST = 2  # confirmed, unmatched for a while, may be recovered
    REMOVED = 3  # finished


@dataclass(frozen=True)
class TrackOutput:
    """Confirmed tracks matched on one frame, sorted by detection index.

    ``ids`` (M,) int64, ``xyxy`` (M, 4) the matched detection boxes, ``scores`` (M,) their scores,
    ``det_index`` (M,) int64 their rows in the frame's input arrays.
    """

    ids: np.ndarray
    xyxy: np.ndarray
    scores: np.ndarray
    det_index: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def ids_per_detection(self, num_detections: int) -> np.ndarray:
        """``(num_detections,)`` track id of every input detection, -1 where none."""
        out = np.full(num_detections, -1, dtype=np.int64)
        out[self.det_index] = self.ids
        return out


@dataclass
class TrackHistory:
    """Everything a confirmed track was matched with, one row per matched frame.

    ``timestamps`` (T,) seconds, ``xyxy`` (T, 4) detection boxes, ``scores`` (T,),
    ``class_logits`` (T, C) or None, ``embedding_mean`` (D,) L2-normalised mean of the track's
    high-score detection embeddings or None, ``finished``: the track can no longer be extended.
    """

    track_id: int
    timestamps: np.ndarray
    xyxy: np.ndarray
    scores: np.ndarray
    class_logits: np.ndarray | None
    embedding_mean: np.ndarray | None
    finished: bool

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def duration(self) -> float:
        """Seconds between the first and the last matched frame."""
        return float(self.timestamps[-1] - self.timestamps[0]) if len(self.timestamps) else 0.0


def _assign(cost: np.ndarray, admissible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost matching restricted to admissible pairs -> (rows, cols)."""
    if not admissible.any():
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    rows, cols = linear_sum_assignment(np.where(admissible, cost, _INFEASIBLE))
    keep = admissible[rows, cols]
    return rows[keep], cols[keep]


def _rows(a: np.ndarray, n: int, name: str) -> np.ndarray:
    """Check that ``a`` is ``(n, D)`` (a 1-D ``a`` is one row when ``n == 1``)."""
    if a.ndim == 1 and n == 1:
        a = a[None]
    if a.ndim != 2 or len(a) != n:
        raise ValueError(f"{name} must have shape ({n}, D), got {a.shape}")
    return a


def _unmatched(n: int, matched: np.ndarray) -> np.ndarray:
    """Indices in ``range(n)`` not in ``matched``."""
    mask = np.ones(n, dtype=bool)
    mask[matched] = False
    return np.flatnonzero(mask)


class _Track:
    """Mutable per-track state (internal)."""

    __slots__ = (
        "mean", "cov", "state", "track_id", "embedding", "emb_sum", "last_time",
        "times", "boxes", "scores", "logits",
    )

    def __init__(self, mean: np.ndarray, cov: np.ndarray, state: TrackState) -> None:
        self.mean = mean
        self.cov = cov
        self.state = state
        self.track_id = -1
        self.embedding: np.ndarray | None = None  # EMA, unit norm
        self.emb_sum: np.ndarray | None = None
        self.last_time = 0.0
        self.times: list[float] = []
        self.boxes: list[np.ndarray] = []
        self.scores: list[float] = []
        self.logits: list[np.ndarray] | None = []

    def add(self, t: float, box: np.ndarray, score: float, logits: np.ndarray | None) -> None:
        self.last_time = t
        self.times.append(t)
        self.boxes.append(box)
        self.scores.append(score)
        if logits is None or self.logits is None:
            self.logits = None  # a track has logits only if every row has them
        else:
            self.logits.append(logits)

    def add_embedding(self, emb: np.ndarray, alpha: float) -> None:
        if self.embedding is None:
            self.embedding = emb.copy()
            self.emb_sum = emb.astype(np.float64)
            return
        e = alpha * self.embedding + (1.0 - alpha) * emb
        self.embedding = e / max(float(np.linalg.norm(e)), 1e-12)
        self.emb_sum += emb

    def history(self) -> TrackHistory:
        emb_mean = None
        if self.emb_sum is not None:
            emb_mean = (self.emb_sum / max(float(np.linalg.norm(self.emb_sum)), 1e-12)).astype(np.float32)
        return TrackHistory(
            track_id=self.track_id,
            timestamps=np.asarray(self.times, dtype=np.float64),
            xyxy=np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4),
            scores=np.asarray(self.scores, dtype=np.float64),
            class_logits=np.stack(self.logits) if self.logits else None,
            embedding_mean=emb_mean,
            finished=self.state == TrackState.REMOVED,
        )


@dataclass(frozen=True)
class TrackerDefaults:
    """The tuned settings parse_tracks.py exposes as flags: defined here, once."""

    track_thresh: float = 0.55
    low_thresh: float = 0.1
    match_thresh: float = 0.45
    track_buffer: int = 24
    motion_weight: float = 0.4


DEFAULTS = TrackerDefaults()


class ByteTracker:
    """ByteTrack (two-stage association by score) with motion + appearance cost.

    Args:
        track_thresh: detections at or above are "high" (first association, may start tracks).
        low_thresh: detections below are ignored; between the two they are "low".
        match_thresh: maximum fused cost of a first-stage match.
        track_buffer: lost-track patience in 30-fps frames (scaled by ``frame_rate``).
        frame_rate: frames per second of the input (timestamps are converted to frames).
        motion_weight: weight of ``1 - IoU`` in the fused cost (1.0: motion only).
        min_iou: a pair must overlap by more than this IoU to be matched at all.
        motion_only_thresh: maximum ``1 - IoU`` cost when no appearance is used (ByteTrack: 0.8).
        low_match_iou: minimum IoU for the second (low-score) association.
        new_track_margin: new tracks need ``score >= track_thresh + new_track_margin``.
        ema_alpha: weight of the old embedding in the track-appearance moving average.
        duplicate_iou: a lost track overlapping a tracked one above this IoU is finished.
    """

    def __init__(
        self,
        track_thresh: float = DEFAULTS.track_thresh,
        low_thresh: float = DEFAULTS.low_thresh,
        match_thresh: float = DEFAULTS.match_thresh,
        track_buffer: int = DEFAULTS.track_buffer,
        frame_rate: float = 16,
        motion_weight: float = DEFAULTS.motion_weight,
        min_iou: float = 0.0,
        motion_only_thresh: float = 0.8,
        low_match_iou: float = 0.5,
        new_track_margin: float = 0.1,
        ema_alpha: float = 0.9,
        duplicate_iou: float = 0.85,
    ) -> None:
        if not 0.0 <= motion_weight <= 1.0:
            raise ValueError(f"motion_weight must be in [0, 1], got {motion_weight}")
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        self.track_thresh = track_thresh
        self.low_thresh = low_thresh
        self.match_thresh = match_thresh
        self.frame_rate = float(frame_rate)
        self.max_time_lost = int(frame_rate / 30.0 * track_buffer)
        self.motion_weight = motion_weight
        self.min_iou = min_iou
        self.motion_only_thresh = motion_only_thresh
        self.low_match_iou = low_match_iou
        self.new_track_thresh = track_thresh + new_track_margin
        self.ema_alpha = ema_alpha
        self.duplicate_iou = duplicate_iou
        self.kalman = KalmanBoxFilter()
        self._next_id = 1
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget every track, finished ones included (e.g. at a scene cut); ids keep counting."""
        self._tracks: list[_Track] = []  # alive: NEW, TRACKED, LOST
        self._finished: list[_Track] = []  # confirmed, REMOVED, not yet popped
        self._last_time: float | None = None
        self._frames = 0  # frames since the last reset

    def finished_tracks(self, pop: bool = False) -> list[TrackHistory]:
        """Histories of confirmed tracks that ended; ``pop=True`` also forgets them (saves memory)."""
        out = [tr.history() for tr in self._finished]
        if pop:
            self._finished = []
        return out

    def all_tracks(self) -> list[TrackHistory]:
        """Histories of every confirmed track since the last reset (finished, tracked and lost)."""
        alive = [tr for tr in self._tracks if tr.track_id >= 0]
        return sorted((tr.history() for tr in self._finished + alive), key=lambda h: h.track_id)

    def flush(self) -> list[TrackHistory]:
        """:meth:`all_tracks`, then :meth:`reset`: call at a scene cut or the end of a video."""
        out = self.all_tracks()
        self.reset()
        return out

    @property
    def num_alive(self) -> int:
        """Tracks that can still be extended (unconfirmed, tracked or lost)."""
        return len(self._tracks)

    # ----------------------------------------------------------------- update

    def update(
        self,
        xyxy: np.ndarray,
        scores: np.ndarray,
        embeddings: np.ndarray | None = None,
        class_logits: np.ndarray | None = None,
        timestamp: float | None = None,
    ) -> TrackOutput:
        """Feed one frame's detections; return the confirmed tracks matched on it.

        ``xyxy`` (N, 4) pixels, ``scores`` (N,), ``embeddings`` (N, D) L2-normalised or None,
        ``class_logits`` (N, C) or None (stored in the histories), ``timestamp`` seconds
        (default: one frame after the previous call). N may be 0.
        """
        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(boxes)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != n:
            raise ValueError(f"{n} boxes but {len(scores)} scores")
        emb = None if embeddings is None else _rows(np.asarray(embeddings, dtype=np.float32), n, "embeddings")
        logits = None if class_logits is None else _rows(np.asarray(class_logits), n, "class_logits")

        t = self._advance_clock(timestamp)
        self._predict(t)  # 1) Kalman prediction of every alive track

        high = np.flatnonzero(scores >= self.track_thresh)
        low = np.flatnonzero((scores >= self.low_thresh) & (scores < self.track_thresh))
        unconfirmed = [tr for tr in self._tracks if tr.state == TrackState.NEW]
        pool = [tr for tr in self._tracks if tr.state != TrackState.NEW]
        matches: list[tuple[_Track, int]] = []

        # 2) high-score detections vs confirmed + lost tracks, motion + appearance.
        rows, cols = self._match(pool, boxes[high], None if emb is None else emb[high], fused=True)
        matches += [(pool[r], int(high[c])) for r, c in zip(rows, cols, strict=True)]
        left_tracks = _unmatched(len(pool), rows)
        left_high = np.delete(high, cols)

        # 3) still-unmatched tracked (not lost) tracks vs low-score detections, IoU only.
        tracked = [pool[i] for i in left_tracks if pool[i].state == TrackState.TRACKED]
        rows, cols = self._match(tracked, boxes[low], None, fused=False, min_iou=self.low_match_iou)
        matches += [(tracked[r], int(low[c])) for r, c in zip(rows, cols, strict=True)]
        for i in _unmatched(len(tracked), rows):
            tracked[i].state = TrackState.LOST

        # 4) unconfirmed tracks vs the high-score detections left over; unmatched ones die.
        rows, cols = self._match(
            unconfirmed, boxes[left_high], None if emb is None else emb[left_high], fused=True
        )
        matches += [(unconfirmed[r], int(left_high[c])) for r, c in zip(rows, cols, strict=True)]
        dead = {id(unconfirmed[i]) for i in _unmatched(len(unconfirmed), rows)}
        left_high = np.delete(left_high, cols)

        self._apply_matches(matches, t, boxes, scores, emb, logits)

        # 5) births.
        births = left_high[scores[left_high] >= self.new_track_thresh]
        self._tracks = [tr for tr in self._tracks if id(tr) not in dead]
        if len(births):
            means, covs = self.kalman.initiate(xyxy_to_xyah(boxes[births]))
            first = self._frames == 1
            for k, d in enumerate(births):
                tr = _Track(means[k], covs[k], TrackState.TRACKED if first else TrackState.NEW)
                if first:
                    tr.track_id = self._new_id()
                self._add_detection(tr, int(d), t, boxes, scores, emb, logits)
                self._tracks.append(tr)
                if first:
                    matches.append((tr, int(d)))

        # 6) lost tracks that expired or duplicate a tracked object.
        self._retire_lost(t)

        confirmed = [(tr, d) for tr, d in matches if tr.state == TrackState.TRACKED]
        confirmed.sort(key=lambda m: m[1])
        det_index = np.asarray([d for _, d in confirmed], dtype=np.int64)
        return TrackOutput(
            ids=np.asarray([tr.track_id for tr, _ in confirmed], dtype=np.int64),
            xyxy=boxes[det_index].reshape(-1, 4),
            scores=scores[det_index],
            det_index=det_index,
        )

    # ---------------------------------------------------------------- helpers

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _advance_clock(self, timestamp: float | None) -> float:
        if timestamp is None:
            t = 0.0 if self._last_time is None else self._last_time + 1.0 / self.frame_rate
        else:
            t = float(timestamp)
        self._frames += 1
        return t

    def _predict(self, t: float) -> None:
        """Advance every alive track's Kalman state to time ``t`` (one batched call)."""
        previous, self._last_time = self._last_time, t
        if previous is None or not self._tracks:
            return
        dt = (t - previous) * self.frame_rate
        if dt <= 0:
            return
        means = np.stack([tr.mean for tr in self._tracks])
        covs = np.stack([tr.cov for tr in self._tracks])
        lost = np.fromiter((tr.state != TrackState.TRACKED for tr in self._tracks), bool, len(self._tracks))
        means[lost, 7] = 0.0  # no height change while unseen (as ByteTrack)
        means, covs = self.kalman.predict(means, covs, dt)
        for k, tr in enumerate(self._tracks):
            tr.mean, tr.cov = means[k], covs[k]

    def _match(
        self,
        tracks: list[_Track],
        det_boxes: np.ndarray,
        det_emb: np.ndarray | None,
        fused: bool,
        min_iou: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gated Hungarian matching of ``tracks`` to detections -> (track rows, detection cols)."""
        if not tracks or len(det_boxes) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        track_boxes = xyah_to_xyxy(np.stack([tr.mean for tr in tracks]))
        iou = iou_matrix(track_boxes, det_boxes)
        if min_iou is not None:  # IoU-only stage with its own threshold
            return _assign(1.0 - iou, iou >= min_iou)
        cost = 1.0 - iou
        thresh = np.full((len(tracks), 1), self.motion_only_thresh)
        w = self.motion_weight
        if fused and det_emb is not None and w < 1.0:
            has_emb = np.fromiter((tr.embedding is not None for tr in tracks), bool, len(tracks))
            if has_emb.any():
                dim = det_emb.shape[1]
                track_emb = np.stack([tr.embedding if tr.embedding is not None else np.zeros(dim, np.float32)
                                      for tr in tracks])
                app = np.clip(1.0 - track_emb @ det_emb.T, 0.0, 1.0)
                cost = np.where(has_emb[:, None], w * cost + (1.0 - w) * app, cost)
                thresh[has_emb] = self.match_thresh
        return _assign(cost, (iou > self.min_iou) & (cost <= thresh))

    def _add_detection(
        self,
        tr: _Track,
        d: int,
        t: float,
        boxes: np.ndarray,
        scores: np.ndarray,
        emb: np.ndarray | None,
        logits: np.ndarray | None,
    ) -> None:
        tr.add(t, boxes[d], float(scores[d]), None if logits is None else logits[d].copy())
        if emb is not None and scores[d] >= self.track_thresh:
            tr.add_embedding(emb[d], self.ema_alpha)

    def _apply_matches(
        self,
        matches: list[tuple[_Track, int]],
        t: float,
        boxes: np.ndarray,
        scores: np.ndarray,
        emb: np.ndarray | None,
        logits: np.ndarray | None,
    ) -> None:
        """Kalman-correct all matched tracks at once, record the detections, update states."""
        if not matches:
            return
        det_idx = np.asarray([d for _, d in matches])
        means = np.stack([tr.mean for tr, _ in matches])
        covs = np.stack([tr.cov for tr, _ in matches])
        means, covs = self.kalman.update(means, covs, xyxy_to_xyah(boxes[det_idx]))
        for k, (tr, d) in enumerate(matches):
            tr.mean, tr.cov = means[k], covs[k]
            if tr.track_id < 0:
                tr.track_id = self._new_id()
            tr.state = TrackState.TRACKED
            tr.add(t, boxes[d], float(scores[d]), None if logits is None else logits[d].copy())
        if emb is None:
            return
        # Appearance EMA of the tracks matched to high-score detections, batched.
        high = [(tr, d) for tr, d in matches if scores[d] >= self.track_thresh]
        ema = [(tr, d) for tr, d in high if tr.embedding is not None]
        for tr, d in high:
            if tr.embedding is None:
                tr.add_embedding(emb[d], self.ema_alpha)  # first embedding of this track
        if ema:
            old = np.stack([tr.embedding for tr, _ in ema])
            new = self.ema_alpha * old + (1.0 - self.ema_alpha) * emb[[d for _, d in ema]]
            new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
            for k, (tr, d) in enumerate(ema):
                tr.embedding = new[k]
                tr.emb_sum += emb[d]

    def _retire_lost(self, t: float) -> None:
        lost = [tr for tr in self._tracks if tr.state == TrackState.LOST]
        if not lost:
            return
        retired: set[int] = set()
        for tr in lost:
            if (t - tr.last_time) * self.frame_rate > self.max_time_lost + 1e-6:
                retired.add(id(tr))
        tracked = [tr for tr in self._tracks if tr.state == TrackState.TRACKED]
        if tracked:
            iou = iou_matrix(xyah_to_xyxy(np.stack([tr.mean for tr in lost])),
                             xyah_to_xyxy(np.stack([tr.mean for tr in tracked])))
            for k in np.flatnonzero((iou > self.duplicate_iou).any(axis=1)):
                retired.add(id(lost[k]))
        if not retired:
            return
        keep = []
        for tr in self._tracks:
            if id(tr) in retired:
                tr.state = TrackState.REMOVED
                self._finished.append(tr)
            else:
                keep.append(tr)
        self._tracks = keep
