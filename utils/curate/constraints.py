"""Optional constraints of class-balanced subsets, as pure algorithms over columns.

``min_motion`` is a mask (:func:`motion_levels`, :func:`picks_by_level`); ``min_nn_dist``
(embedding distance to the tracks already accepted in the class) and ``max_spt_iou``
(spatio-temporal IoU with accepted tracks of the same video) walk a class's ranking track by
track (:func:`walk_class`). A class that cannot fill ``max(Nc)`` is walked again with relaxed
thresholds (x0.8 per round), and the fifth round drops them, as in the original; the round
that accepted each track is kept. A track without the value a constraint needs is never
selected by it, not even once relaxed off.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from utils.core.boxes import paired_iou_xywh
from utils.curate.sampling import (
    format_number,
    rank_within_class,
)
from utils.records.metrics_store import VectorSource

log = logging.getLogger("trackverse.curation")


RELAX_ROUNDS = 5  # rounds 0-3: thresholds x RELAX_FACTOR**round; round 4: constraints off
RELAX_FACTOR = 0.8
NO_VALUE = RELAX_ROUNDS  # relaxation level of a track without the metric value

# --------------------------------------------------------------------------- constraints


def spt_iou(ts_a: np.ndarray, box_a: np.ndarray, ts_b: np.ndarray, box_b: np.ndarray,
            tbuff: float = math.inf) -> float:
    """Spatio-temporal overlap of two tracks (timestamps (n,), ``[x, y, w, h]`` boxes (n, 4)).

    Frames are paired in time: over the common time span, the frames of each track inside it
    (the longer list thinned evenly to the shorter one's length); for tracks that do not
    overlap in time, the last frame of the earlier one with the first frame of the later one;
    if the common span holds no frame of one track, the two frames closest in time. The result
    is the mean over pairs of IoU x decay, where decay = 1 / max(sqrt(|dt| / tbuff), 1): no
    penalty for pairs less than ``tbuff`` seconds apart, then a slow decay (``tbuff`` = inf:
    none). Two tracks far apart in time thus overlap only with a finite ``tbuff``.
    """
    ts_a, ts_b = np.asarray(ts_a, np.float64), np.asarray(ts_b, np.float64)
    box_a, box_b = np.asarray(box_a, np.float64).reshape(-1, 4), np.asarray(box_b, np.float64).reshape(-1, 4)
    if ts_a[-1] < ts_b[0]:
        ia, ib = np.array([ts_a.size - 1]), np.array([0])
    elif ts_b[-1] < ts_a[0]:
        ia, ib = np.array([0]), np.array([ts_b.size - 1])
    else:
        lo, hi = max(ts_a[0], ts_b[0]), min(ts_a[-1], ts_b[-1])
        ia = np.flatnonzero((ts_a >= lo) & (ts_a <= hi))
        ib = np.flatnonzero((ts_b >= lo) & (ts_b <= hi))
        if ia.size == 0 or ib.size == 0:
            gap = np.abs(np.subtract.outer(ts_a, ts_b))
            i, j = np.unravel_index(np.argmin(gap), gap.shape)
            ia, ib = np.array([i]), np.array([j])
        elif ia.size != ib.size:
            m = min(ia.size, ib.size)
            ia = ia[np.linspace(0, ia.size - 1, m).astype(np.int64)]
            ib = ib[np.linspace(0, ib.size - 1, m).astype(np.int64)]
    iou = paired_iou_xywh(box_a[ia], box_b[ib])
    if math.isfinite(tbuff):
        iou = iou / np.maximum(np.sqrt(np.abs(ts_a[ia] - ts_b[ib]) / tbuff), 1.0)
    return float(iou.mean())


def relaxed_threshold(value: float, round_: int, kind: str) -> float | None:
    """The threshold of relaxation round ``round_`` (None: off). ``kind``: ``min`` (a lower
    bound, x0.8 per round) or ``max_iou`` (an upper bound in [0, 1], 1 - (1 - v) x 0.8)."""
    if round_ >= RELAX_ROUNDS - 1:
        return None
    factor = RELAX_FACTOR**round_
    return value * factor if kind == "min" else 1.0 - (1.0 - value) * factor


def motion_levels(motion: np.ndarray, min_motion: float) -> np.ndarray:
    """Per track, the first relaxation round whose ``min_motion`` threshold it passes (0-3),
    ``RELAX_ROUNDS - 1`` when only dropping the threshold admits it, ``NO_VALUE`` without a value."""
    motion = np.asarray(motion, dtype=np.float64)
    level = np.full(motion.shape, NO_VALUE, dtype=np.int8)
    has = np.isfinite(motion)
    level[has] = RELAX_ROUNDS - 1
    for r in range(RELAX_ROUNDS - 2, -1, -1):
        level[has & (motion >= relaxed_threshold(min_motion, r, "min"))] = r
    return level


def picks_by_level(codes: np.ndarray, ranks: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Pick position of every row in its class (-1: never) when the only constraints are
    per-track thresholds (``min_motion``): by relaxation level first, then by rank. This is what
    :func:`walk_class` does round by round, in one vectorised pass."""
    ranks = np.asarray(ranks, dtype=np.int64)
    ok = (ranks >= 0) & (level < NO_VALUE)
    key = -(level.astype(np.float64) * (ranks.size + 1) + ranks)
    return rank_within_class(codes, key, 0.0, eligible_mask=ok)


def class_groups(class_sizes: Sequence[int], row_bytes: int, budget_bytes: float) -> list[tuple[int, int]]:
    """Split consecutive classes (``class_sizes[c]`` rows each) into groups ``[first, end)`` whose
    rows take at most ``budget_bytes`` at ``row_bytes`` each; a class over the budget alone is a
    group of its own (a class is never split)."""
    groups: list[tuple[int, int]] = []
    first, held = 0, 0
    for c, size in enumerate(int(v) for v in class_sizes):
        if c > first and held + size * row_bytes > budget_bytes:
            groups.append((first, c))
            first, held = c, 0
        held += size * row_bytes
    if len(class_sizes):
        groups.append((first, len(class_sizes)))
    return groups


class ClassVectors:
    """Embeddings of the tracks ``rows``, per class, holding at most ``budget_bytes`` of vectors:
    all of them at once when they fit (the usual case), else one group of whole classes at a
    time (:func:`class_groups`), read when a class of the group is first asked for, after a
    first pass over the files that only finds which tracks have an embedding. Classes are
    asked for in ascending code order, so each group is read once per such pass."""

    def __init__(self, source: VectorSource, rows: np.ndarray, codes: np.ndarray, budget_bytes: float):
        rows = np.asarray(rows, dtype=np.int64)
        self.source = source
        self.order = rows[np.argsort(codes[rows], kind="stable")]
        order_codes = codes[self.order]
        self.dim = source.dim
        class_codes, starts = np.unique(order_codes, return_index=True)
        bounds = np.r_[starts, self.order.size].astype(np.int64)
        by_class = class_groups(np.diff(bounds), 4 * self.dim, budget_bytes)
        self.groups = [(int(bounds[a]), int(bounds[b])) for a, b in by_class]
        self.group_of = {int(code): g for g, (a, b) in enumerate(by_class) for code in class_codes[a:b]}
        self.codes = codes
        self.present = np.zeros(len(codes), dtype=bool)  # per index row
        self.slot = np.full(len(codes), -1, dtype=np.int64)  # index row -> row of the loaded group
        self._loaded: int | None = None
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self.bytes_needed = self.order.size * 4 * self.dim
        if len(self.groups) == 1:
            self._load(0)
        elif self.groups:
            found = source.load(self.order, keep_vectors=False)
            self.present[self.order[found.present]] = True
        self.report = dataclasses.replace(source.report, with_value=int(self.present[self.order].sum()),
                                          index_rows=int(self.order.size))

    def _load(self, g: int) -> None:
        lo, hi = self.groups[g]
        rows = self.order[lo:hi]
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)  # let the previous group go first
        if self._loaded is not None:
            before_lo, before_hi = self.groups[self._loaded]
            self.slot[self.order[before_lo:before_hi]] = -1
        got = self.source.load(rows)
        self.present[rows] = got.present
        self.slot[rows] = np.arange(rows.size)
        self._vectors, self._loaded = got.vectors, g

    def select_class(self, code: int) -> None:
        """Make the vectors of class ``code`` available (reads its group if it is not held)."""
        g = self.group_of.get(int(code))
        if g is not None and g != self._loaded:
            self._load(g)

    def vector(self, row: int) -> np.ndarray:
        """The embedding of ``row``, whose class is selected and which has one (``present``)."""
        return self._vectors[self.slot[row]]

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings (len(rows), D) of rows of one class that all have one; selects the class.
        Read-only: a view of the held vectors where the rows are consecutive in them."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size:
            self.select_class(int(self.codes[rows[0]]))
        slots = self.slot[rows]
        if slots.size and slots[-1] - slots[0] == slots.size - 1 and (np.diff(slots) == 1).all():
            return self._vectors[slots[0]:slots[-1] + 1]  # a view: no copy of a large class
        return self._vectors[slots]


@dataclass
class WalkInputs:
    """What the per-class walk needs for the sequential constraints."""

    constraints: SamplingConstraints
    video_codes: np.ndarray
    level: np.ndarray | None = None  # motion_levels, or None without min_motion
    vectors: ClassVectors | None = None  # embeddings, for min_nn_dist
    geometry: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None  # row -> (ts, boxes)


def walk_class(candidates: np.ndarray, nc_max: int, inputs: WalkInputs) -> tuple[list[int], list[int]]:
    """Accept up to ``nc_max`` of ``candidates`` (rows in ranking order) under the constraints,
    relaxing round by round; returns (accepted rows in acceptance order, their rounds)."""
    cons = inputs.constraints
    accepted: list[int] = []
    rounds: list[int] = []
    taken = np.zeros(len(candidates), dtype=bool)
    dim = inputs.vectors.dim if inputs.vectors is not None else 0
    chosen = np.empty((nc_max, dim), dtype=np.float64) if cons.uses_diversity else None
    same_video: dict[int, list[int]] = defaultdict(list)
    geometry: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    ious: dict[tuple[int, int], float] = {}

    def overlap(row: int, other: int) -> float:
        key = (row, other)
        if key not in ious:
            for r in key:
                if r not in geometry:
                    geometry[r] = inputs.geometry(r)
            ious[key] = spt_iou(*geometry[row], *geometry[other], tbuff=cons.iou_tbuff)
        return ious[key]

    for round_ in range(RELAX_ROUNDS):
        nn_t = relaxed_threshold(cons.min_nn_dist, round_, "min") if cons.uses_diversity else None
        iou_t = relaxed_threshold(cons.max_spt_iou, round_, "max_iou") if cons.uses_overlap else None
        for j, row in enumerate(candidates.tolist()):
            if taken[j]:
                continue
            if inputs.level is not None and inputs.level[row] > round_:
                continue
            if iou_t is not None:
                others = same_video.get(int(inputs.video_codes[row]))
                if others and max(overlap(row, o) for o in others) > iou_t:
                    continue
            if chosen is not None:
                vec = inputs.vectors.vector(row)
                k = len(accepted)
                if nn_t is not None and k and np.sqrt(((chosen[:k] - vec) ** 2).sum(axis=1).min()) < nn_t:
                    continue
                chosen[k] = vec
            taken[j] = True
            accepted.append(row)
            rounds.append(round_)
            same_video[int(inputs.video_codes[row])].append(row)
            if len(accepted) >= nc_max:
                return accepted, rounds
    return accepted, rounds


# --------------------------------------------------------------------------------------------
# optional constraints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConstraints:
    """Optional subset constraints; a value at its neutral setting (None, 0, 1) is off.

    ``min_motion``: tracks whose motion value (e.g. the q90 optical-flow magnitude of
    visual_metrics.py) is >= this (:func:`motion_levels`, :func:`picks_by_level`); tracks
    without a value are never picked. ``min_nn_dist`` / ``max_spt_iou`` (+ ``iou_tbuff``):
    diversity and overlap, applied by :func:`walk_class`.
    """

    min_motion: float | None = None
    min_nn_dist: float | None = None
    max_spt_iou: float | None = None
    iou_tbuff: float = math.inf

    def __post_init__(self) -> None:
        for name in ("min_motion", "min_nn_dist", "max_spt_iou", "iou_tbuff"):
            value = getattr(self, name)
            if value is not None and math.isnan(float(value)):
                raise ValueError(f"{name} is NaN")
        if self.iou_tbuff <= 0:
            raise ValueError(f"iou_tbuff must be positive, got {self.iou_tbuff}")

    @property
    def uses_motion(self) -> bool:
        return self.min_motion is not None and self.min_motion > 0

    @property
    def uses_diversity(self) -> bool:
        return self.min_nn_dist is not None and self.min_nn_dist > 0

    @property
    def uses_overlap(self) -> bool:
        return self.max_spt_iou is not None and self.max_spt_iou < 1

    def suffix(self) -> str:
        """Subset-name suffix of the active constraints, '' when none."""
        parts = []
        if self.uses_motion:
            parts.append(f"-MM{format_number(self.min_motion)}")
        if self.uses_diversity:
            parts.append(f"-NN{format_number(self.min_nn_dist)}")
        if self.uses_overlap:
            buf = "" if math.isinf(self.iou_tbuff) else f"B{format_number(self.iou_tbuff)}"
            parts.append(f"-IoU{format_number(self.max_spt_iou)}{buf}")
        return "".join(parts)
