"""How one object track is cut into a clip: pure box geometry, no video decoding.

This module reproduces the geometry of the released TrackVerse clips:

1. ``smooth_boxes``: each box coordinate is smoothed over time with a Gaussian of
   ``sigma = int(0.66 s / mean timestep)`` samples.
2. ``hold_aspect``: every box is grown about its centre to one aspect ratio per track (the mean
   ``w/h`` clamped to [2/3, 3/2]), shrunk if it became larger than the frame, and shifted into
   the frame. Crops are therefore never padded.
3. ``output_size``: the clip's frame size is the mean box size rounded down to even numbers.
4. ``ClipPlan.box_at``: for a decoded frame at time ``t`` the box is linearly interpolated between
   the neighbouring track timestamps (held constant before the first and after the last one) and
   turned into an integer crop ``frame[y0:y1, x0:x1]``, which the caller resizes to
   ``ClipPlan.out_size``. The clip spans ``[t_start, t_end]``: the first track timestamp up to the
   last one, at most ``max_duration`` seconds.

Edge cases (decided here, the original crashed or produced invalid crops on them):

* A single timestamp is accepted: no smoothing, ``t_start == t_end``, and every frame gets that
  box; the extractor writes the frame(s) at that instant only.
* Boxes with zero width or height are treated as missing samples: they are dropped before
  smoothing and ``box_at`` interpolates across them. A track whose boxes are all zero-sized is
  rejected. Negative sizes, NaN/inf values, empty tracks, mismatched lengths and
  decreasing timestamps raise ``BadGeometryError`` (a ``ValueError``). Repeated timestamps are allowed.
* Boxes partly (or wholly) outside the frame are shifted inside (and shrunk if larger than the
  frame, aspect kept), as in the original: the crop window always lies inside the frame.
* A box both taller and wider than the frame is fitted by its binding side (the original could
  leave such a box larger than the frame).

Smoothing uses scipy's default boundary mode ``"reflect"``, which is what the original's
``scipy.ndimage.gaussian_filter`` call used; pass ``mode="nearest"`` to change it.

Track de-duplication (``track_overlap`` / ``deduplicate_tracks``) follows the original's
``Track.overlap`` and its removal loop; see ``deduplicate_tracks``.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
from numpy.typing import ArrayLike

from utils.core.errors import BadGeometryError, ZeroSizeTrackError

SMOOTH_SECONDS = 0.66
MIN_ASPECT = 2.0 / 3.0
MAX_ASPECT = 3.0 / 2.0
DEFAULT_MAX_DURATION = 180.0
DEDUP_THRESHOLD = 0.9

__all__ = [
    "DEDUP_THRESHOLD",
    "DEFAULT_MAX_DURATION",
    "MAX_ASPECT",
    "MIN_ASPECT",
    "SMOOTH_SECONDS",
    "ClipPlan",
    "deduplicate_tracks",
    "hold_aspect",
    "output_size",
    "plan_clip",
    "smooth_boxes",
    "smoothing_sigma",
    "track_overlap",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _as_track(ts: ArrayLike, boxes: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (ts (T,), boxes (T, 4)) as float64 after checking shapes, finiteness and order."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    box_arr = np.asarray(boxes, dtype=np.float64)
    if ts_arr.ndim != 1:
        raise BadGeometryError(f"timestamps must be 1-D, got shape {ts_arr.shape}")
    if ts_arr.size == 0:
        raise BadGeometryError("empty track: no timestamps")
    if box_arr.ndim != 2 or box_arr.shape[1] != 4:
        raise BadGeometryError(f"boxes must have shape (T, 4) [x, y, w, h], got {box_arr.shape}")
    if box_arr.shape[0] != ts_arr.shape[0]:
        raise BadGeometryError(f"mismatched lengths: {ts_arr.shape[0]} timestamps but {box_arr.shape[0]} boxes")
    if not np.all(np.isfinite(ts_arr)):
        raise BadGeometryError("timestamps contain NaN or inf")
    if not np.all(np.isfinite(box_arr)):
        raise BadGeometryError("boxes contain NaN or inf")
    if np.any(np.diff(ts_arr) < 0):
        raise BadGeometryError("timestamps must be non-decreasing")
    return ts_arr, box_arr


def _as_frame_hw(frame_hw: Sequence[int]) -> tuple[int, int]:
    if len(frame_hw) != 2:
        raise BadGeometryError(f"frame_hw must be (height, width), got {frame_hw!r}")
    fh, fw = (int(v) for v in frame_hw)
    if fh <= 0 or fw <= 0:
        raise BadGeometryError(f"frame size must be positive, got (h={fh}, w={fw})")
    return fh, fw


# --------------------------------------------------------------------------------------------
# geometry steps
# --------------------------------------------------------------------------------------------
def smoothing_sigma(ts: ArrayLike) -> int:
    """Gaussian sigma in samples: ``int(0.66 s / mean timestep)``; 0 for one instant."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    if ts_arr.size < 2:
        return 0
    step = np.diff(ts_arr).mean()
    if not step > 0:  # every timestamp equal: a single instant
        return 0
    return int(SMOOTH_SECONDS / step)


def smooth_boxes(ts: ArrayLike, boxes: ArrayLike, *, mode: str = "reflect") -> np.ndarray:
    """Smooth each box coordinate over time (Gaussian, sigma from ``smoothing_sigma``).

    Returns a new float64 (T, 4) array; sigma 0 or a single timestamp leaves boxes unchanged.
    """
    ts_arr, box_arr = _as_track(ts, boxes)
    sigma = smoothing_sigma(ts_arr)
    if sigma <= 0:
        return box_arr.copy()
    return ndi.gaussian_filter1d(box_arr, sigma, axis=0, mode=mode)


def hold_aspect(boxes: ArrayLike, frame_hw: Sequence[int]) -> tuple[np.ndarray, float]:
    """Give every box the track's aspect ratio and keep it inside the frame.

    Target aspect (w/h) = mean box aspect clamped to [2/3, 3/2]. Each box grows its height
    (too wide) or its width (too tall) about its centre; boxes then larger than the frame shrink
    to fit (aspect kept), and every box is shifted to lie inside the frame.
    Returns the new float64 (T, 4) [x, y, w, h] boxes and the target aspect.
    """
    box_arr = np.array(boxes, dtype=np.float64)
    if box_arr.ndim != 2 or box_arr.shape[1] != 4 or box_arr.shape[0] == 0:
        raise BadGeometryError(f"boxes must have shape (T, 4) with T >= 1, got {box_arr.shape}")
    if not np.all(np.isfinite(box_arr)):
        raise BadGeometryError("boxes contain NaN or inf")
    frame_h, frame_w = _as_frame_hw(frame_hw)
    x, y, w, h = box_arr.T.copy()
    if np.any(w <= 0) or np.any(h <= 0):
        raise BadGeometryError("boxes must have positive width and height")

    cx, cy, ar = x + w / 2, y + h / 2, w / h
    target = float(np.clip(ar.mean(), MIN_ASPECT, MAX_ASPECT))

    wide, tall = ar > target, ar < target
    h[wide] = w[wide] / target
    w[tall] = h[tall] * target

    # Too large for the frame: fit the binding side (width wins ties, as in the original).
    too_tall, too_wide = h > frame_h, w > frame_w
    by_width = too_wide & (w / frame_w >= h / frame_h)
    by_height = too_tall & ~by_width
    h[by_height] = frame_h
    w[by_height] = frame_h * target
    w[by_width] = frame_w
    h[by_width] = frame_w / target

    y = np.clip(cy - h / 2, 0, np.maximum(frame_h - h, 0))
    x = np.clip(cx - w / 2, 0, np.maximum(frame_w - w, 0))
    return np.stack([x, y, w, h], axis=1), target


def output_size(boxes: ArrayLike) -> tuple[int, int]:
    """Clip frame size (w, h): mean box width and height rounded down to even, at least 2."""
    box_arr = np.asarray(boxes, dtype=np.float64)
    if box_arr.ndim != 2 or box_arr.shape[1] != 4 or box_arr.shape[0] == 0:
        raise BadGeometryError(f"boxes must have shape (T, 4) with T >= 1, got {box_arr.shape}")
    out_w = int(box_arr[:, 2].mean()) // 2 * 2
    out_h = int(box_arr[:, 3].mean()) // 2 * 2
    return max(out_w, 2), max(out_h, 2)


# --------------------------------------------------------------------------------------------
# the plan for one clip
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ClipPlan:
    """Everything needed to cut one track out of its source video.

    ``ts``/``boxes``: the processed (smoothed, aspect-held, in-frame) float [x, y, w, h] boxes at
    the track timestamps that had non-degenerate boxes. ``out_size`` is (w, h) of the clip;
    frames with ``t_start <= t <= t_end`` are cropped with ``box_at(t)`` and resized to it.
    """

    ts: np.ndarray
    boxes: np.ndarray
    frame_hw: tuple[int, int]
    out_size: tuple[int, int]
    aspect: float
    sigma: int
    t_start: float
    t_end: float

    @property
    def duration(self) -> float:
        """Clip length in seconds (0 for a single-instant track)."""
        return self.t_end - self.t_start

    def interpolate(self, times: ArrayLike) -> np.ndarray:
        """Float [x, y, w, h] boxes at ``times`` (N,): linear between neighbours, clamped at ends."""
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(t)):
            raise BadGeometryError("times contain NaN or inf")
        n = self.ts.shape[0]
        nxt = np.searchsorted(self.ts, t, side="right")  # first timestamp strictly after t
        lo = np.clip(nxt - 1, 0, n - 1)
        hi = np.clip(nxt, 0, n - 1)
        span = self.ts[hi] - self.ts[lo]
        safe = np.where(span > 0, span, 1.0)
        alpha = np.where(span > 0, (t - self.ts[lo]) / safe, 0.0)[:, None]
        return self.boxes[lo] * (1 - alpha) + self.boxes[hi] * alpha

    def boxes_at(self, times: ArrayLike) -> np.ndarray:
        """Integer crop boxes (N, 4) as (x0, y0, x1, y1): inside the frame, at least 1x1 pixel.

        Truncates x, y, w, h to integers (x1 = int(x) + int(w)), as the released clips did.
        """
        xywh = self.interpolate(times)
        frame_h, frame_w = self.frame_hw
        ints = np.trunc(xywh).astype(np.int64)
        x0 = np.clip(ints[:, 0], 0, frame_w - 1)
        y0 = np.clip(ints[:, 1], 0, frame_h - 1)
        x1 = np.clip(ints[:, 0] + ints[:, 2], x0 + 1, frame_w)
        y1 = np.clip(ints[:, 1] + ints[:, 3], y0 + 1, frame_h)
        return np.stack([x0, y0, x1, y1], axis=1)

    def box_at(self, t: float) -> tuple[int, int, int, int]:
        """Integer crop box (x0, y0, x1, y1) for a frame at time ``t`` (seconds): ``boxes_at``
        for one time, in plain Python (called once per clip frame, where numpy's per-call
        overhead on 4 numbers cost more than the arithmetic)."""
        t = float(t)
        if not math.isfinite(t):
            raise BadGeometryError("times contain NaN or inf")
        ts, boxes = self._lists
        last = len(ts) - 1
        nxt = bisect.bisect_right(ts, t)
        lo, hi = min(max(nxt - 1, 0), last), min(nxt, last)
        span = ts[hi] - ts[lo]
        alpha = (t - ts[lo]) / span if span > 0 else 0.0
        x, y, w, h = (int(a * (1 - alpha) + b * alpha) for a, b in zip(boxes[lo], boxes[hi], strict=True))
        frame_h, frame_w = self.frame_hw
        x0, y0 = min(max(x, 0), frame_w - 1), min(max(y, 0), frame_h - 1)
        return x0, y0, min(max(x + w, x0 + 1), frame_w), min(max(y + h, y0 + 1), frame_h)

    @functools.cached_property
    def _lists(self) -> tuple[list[float], list[list[float]]]:
        return self.ts.tolist(), self.boxes.tolist()


def plan_clip(
    ts: ArrayLike,
    boxes: ArrayLike,
    frame_hw: Sequence[int],
    max_duration: float = DEFAULT_MAX_DURATION,
    *,
    smooth_mode: str = "reflect",
) -> ClipPlan:
    """Build the ``ClipPlan`` of one track (timestamps in s, [x, y, w, h] boxes in source px)."""
    ts_arr, box_arr = _as_track(ts, boxes)
    frame_hw = _as_frame_hw(frame_hw)
    if not max_duration > 0:
        raise BadGeometryError(f"max_duration must be positive, got {max_duration}")
    if np.any(box_arr[:, 2:] < 0):
        raise BadGeometryError("boxes have negative width or height")
    valid = (box_arr[:, 2] > 0) & (box_arr[:, 3] > 0)
    if not valid.any():
        raise ZeroSizeTrackError("every box of the track has zero width or height")

    vts, vboxes = ts_arr[valid], box_arr[valid]
    sigma = smoothing_sigma(vts)
    smoothed = smooth_boxes(vts, vboxes, mode=smooth_mode)
    held, aspect = hold_aspect(smoothed, frame_hw)

    t_start = float(ts_arr[0])
    t_end = t_start + min(float(ts_arr[-1] - ts_arr[0]), float(max_duration))
    return ClipPlan(
        ts=vts,
        boxes=held,
        frame_hw=frame_hw,
        out_size=output_size(held),
        aspect=aspect,
        sigma=sigma,
        t_start=t_start,
        t_end=t_end,
    )


# --------------------------------------------------------------------------------------------
# duplicates among the tracks of one video
# --------------------------------------------------------------------------------------------
def track_overlap(ts_a: ArrayLike, boxes_a: ArrayLike, ts_b: ArrayLike, boxes_b: ArrayLike) -> float:
    """Overlap of track A with track B, measured over A's timestamps (not symmetric).

    For each timestamp of A inside B's time span, B's box at its nearest timestamp (earliest on
    ties) gives an intersection and a union; a timestamp of A outside B's span adds A's box area
    to the union only. Returns sum(intersections) / sum(unions); 0 when the spans are disjoint or
    the union is empty. Sums run in timestamp order, like the original.
    """
    ta, ba = _as_track(ts_a, boxes_a)
    tb, bb = _as_track(ts_b, boxes_b)
    if ta[0] > tb[-1] or ta[-1] < tb[0]:
        return 0.0

    inside = (ta >= tb[0]) & (ta <= tb[-1])
    t_in = ta[inside]
    right = np.clip(np.searchsorted(tb, t_in, side="left"), 0, tb.size - 1)
    left = np.clip(right - 1, 0, tb.size - 1)
    nearest = np.where(np.abs(t_in - tb[left]) <= np.abs(t_in - tb[right]), left, right)
    nearest = np.searchsorted(tb, tb[nearest], side="left")  # first of repeated timestamps
    a, b = ba[inside], bb[nearest]

    x_lo = np.maximum(a[:, 0], b[:, 0])
    y_lo = np.maximum(a[:, 1], b[:, 1])
    x_hi = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y_hi = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.maximum(0.0, x_hi - x_lo) * np.maximum(0.0, y_hi - y_lo)

    inters = np.zeros(ta.size)
    unions = ba[:, 2] * ba[:, 3]
    inters[inside] = inter
    unions[inside] = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    # cumsum adds strictly left to right (np.sum would sum pairwise).
    union_sum = float(np.cumsum(unions)[-1])
    if union_sum <= 0:
        return 0.0
    return float(np.cumsum(inters)[-1]) / union_sum


def deduplicate_tracks(
    tracks: Sequence[tuple[ArrayLike, ArrayLike]], threshold: float = DEDUP_THRESHOLD
) -> list[int]:
    """Indices (ascending) of the tracks to extract, given (timestamps, boxes) per track.

    "Tracks of the same video that overlap more than 0.9 are extracted once": tracks are visited
    in listed order; a kept track ``i`` removes every later track ``j`` with
    ``track_overlap(i, j) > threshold``, so the earlier-listed track is the one kept. A removed
    track removes nothing. This is the original's rule (its removal loop in extract_tracks.py).
    All tracks must come from the same video.
    """
    data = [_as_track(ts, boxes) for ts, boxes in tracks]
    removed = [False] * len(data)
    for i, (ts_i, boxes_i) in enumerate(data):
        if removed[i]:
            continue
        for j in range(i + 1, len(data)):
            if not removed[j] and track_overlap(ts_i, boxes_i, *data[j]) > threshold:
                removed[j] = True
    return [i for i, gone in enumerate(removed) if not gone]
