"""Pure sampling logic behind ``curate_db.py``: which rows of the track index go into a subset.

Every function works on numpy columns of the index (one entry per track) and returns row indices,
sorted ascending, so that a subset is written in index order. Nothing here reads files.

* ``sample_random``: a seeded uniform sample without replacement among eligible rows. With the
  same seed and mask, smaller subsets are contained in larger ones (82K in 184K in ...).
* ``sample_class_balanced``: at most ``Nc`` rows per class, ranked within each class by score:
  ``T=0`` takes the highest scores (ties: lower row first), ``T=inf`` a uniform random sample,
  finite ``T>0`` a sample without replacement with probabilities ``softmax(score / T)``
  (Gumbel-top-k: sort by ``score / T + Gumbel noise``, which needs no exponentials). The ranking
  is shared by every ``Nc``, so with the same seed CB100 is contained in CB300, etc.
* ``eligible_by_video``: the mask that keeps the verified evaluation videos out of every subset.
* ``SamplingConstraints``: optional filters and the suffix each adds to the subset name.
* ``subset_name``: file names of subsets, e.g. ``TrackVerseLVIS-CB1000-392K-T0.jsonl.gzip``.

Name suffixes (appended in this order, numbers printed like temperatures):

=================  ==================  ==========================================================
constraint         suffix              meaning
=================  ==================  ==========================================================
``min_motion``     ``-MM<v>``          per-track motion value >= v (e.g. ``-MM1``), a mask
``min_nn_dist``    ``-NN<v>``          diversity: embedding distance to kept tracks >= v
``max_spt_iou``    ``-IoU<v>[B<b>]``   overlap: spatio-temporal IoU with kept tracks of the same
                                       video <= v, optional time buffer b seconds
=================  ==================  ==========================================================

Only ``min_motion`` is implemented. Diversity and overlap are not masks: they must walk the
ranking (``rank_within_class``) track by track and accept a track only if it is far enough from
those already accepted; that sequential pass belongs after ranking and before the ``Nc`` cut.
Asking for them raises ``NotImplementedError`` instead of silently ignoring them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "RandomSample",
    "SamplingConstraints",
    "eligible_by_video",
    "format_number",
    "rank_within_class",
    "sample_class_balanced",
    "sample_random",
    "subset_name",
]

SUBSET_EXT = ".jsonl.gzip"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _eligible(n_total: int, eligible_mask: ArrayLike | None) -> np.ndarray:
    """Boolean mask (n_total,), all True when no mask is given."""
    if eligible_mask is None:
        return np.ones(n_total, dtype=bool)
    mask = np.asarray(eligible_mask)
    if mask.dtype != bool:
        raise ValueError(f"eligible_mask must be boolean, got dtype {mask.dtype}")
    if mask.shape != (n_total,):
        raise ValueError(f"eligible_mask has shape {mask.shape}, expected ({n_total},)")
    return mask


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if math.isnan(t) or t < 0:
        raise ValueError(f"temperature must be >= 0 (or inf), got {temperature!r}")
    return t


def format_number(value: float) -> str:
    """Print a number for a file name: ``0``, ``inf``, ``0.5``, ``2`` (no trailing zeros)."""
    v = float(value)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if math.isnan(v):
        raise ValueError("cannot format NaN for a subset name")
    if v.is_integer():
        return str(int(v))
    return np.format_float_positional(v, trim="-")


def eligible_by_video(yids: ArrayLike, excluded_yids: Iterable[str]) -> np.ndarray:
    """Mask (M,) that is False for tracks whose video id is in ``excluded_yids``.

    Used to keep the verified evaluation videos out of every subset.
    """
    excluded = {str(y) for y in excluded_yids}
    yid_arr = np.asarray(yids)
    if not excluded:
        return np.ones(yid_arr.shape[0], dtype=bool)
    return np.fromiter((str(y) not in excluded for y in yid_arr), dtype=bool, count=yid_arr.shape[0])


# --------------------------------------------------------------------------------------------
# random subsets
# --------------------------------------------------------------------------------------------
class RandomSample(NamedTuple):
    """Result of ``sample_random``: sorted row indices, and whether fewer than N were eligible."""

    indices: np.ndarray
    truncated: bool


def sample_random(
    n_total: int, N: int, seed: int = 0, eligible_mask: ArrayLike | None = None
) -> RandomSample:
    """Uniformly sample ``N`` distinct eligible rows out of ``n_total`` (seeded).

    When ``N`` exceeds the number of eligible rows, every eligible row is returned and
    ``truncated`` is True. Same seed and mask: the sample for a smaller N is a subset of the
    sample for a larger N.
    """
    if n_total < 0 or N < 0:
        raise ValueError(f"n_total and N must be >= 0, got n_total={n_total}, N={N}")
    idx = np.flatnonzero(_eligible(n_total, eligible_mask))
    if N >= idx.size:
        return RandomSample(idx, N > idx.size)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(idx)[:N]
    chosen.sort()
    return RandomSample(chosen, False)


# --------------------------------------------------------------------------------------------
# class-balanced subsets
# --------------------------------------------------------------------------------------------
def _class_codes(labels: np.ndarray) -> np.ndarray:
    """Integer class codes (same grouping and order as the labels).

    Integer labels spanning fewer than 65536 values become uint16 (numpy radix-sorts those);
    non-integer labels go through np.unique.
    """
    if labels.dtype.kind not in "iub":
        return np.unique(labels, return_inverse=True)[1].reshape(-1)
    if labels.size and labels.dtype.itemsize > 2:
        lo, hi = int(labels.min()), int(labels.max())
        if hi - lo < 2**16:
            return (labels - lo).astype(np.uint16)
    return labels


def rank_within_class(
    labels: ArrayLike,
    scores: ArrayLike | None,
    temperature: float,
    seed: int = 0,
    eligible_mask: ArrayLike | None = None,
) -> np.ndarray:
    """Rank of every row inside its class (0 = picked first), -1 for ineligible rows.

    Order within a class: ``T=0`` by descending score, ties by row index; ``T=inf`` uniformly
    random; finite ``T>0`` the order of sampling without replacement with probabilities
    ``softmax(score / T)`` (Gumbel-top-k). ``scores`` may be None only for ``T=inf``.
    """
    lab = np.asarray(labels).reshape(-1)
    n = lab.shape[0]
    mask = _eligible(n, eligible_mask)
    t = _check_temperature(temperature)

    rows = np.flatnonzero(mask)
    ranks = np.full(n, -1, dtype=np.int64)
    if rows.size == 0:
        return ranks
    codes = _class_codes(lab)[rows]

    rng = np.random.default_rng(seed)
    if math.isinf(t):
        key = rng.random(rows.size)
    else:
        if scores is None:
            raise ValueError("scores are required unless temperature is inf")
        sc = np.asarray(scores, dtype=np.float64).reshape(-1)
        if sc.shape[0] != n:
            raise ValueError(f"scores has {sc.shape[0]} rows but labels has {n}")
        key = sc[rows]
        if not np.all(np.isfinite(key)):
            raise ValueError("scores of eligible rows contain NaN or inf")
        if t > 0:
            key = key / t + rng.gumbel(size=rows.size)

    # Descending key (stable: equal keys keep row order), then group by class (stable again).
    order = np.argsort(-key, kind="stable")
    order = order[np.argsort(codes[order], kind="stable")]
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    group_len = np.diff(np.r_[starts, sorted_codes.size])
    rank_sorted = np.arange(sorted_codes.size) - np.repeat(starts, group_len)
    ranks[rows[order]] = rank_sorted
    return ranks


def sample_class_balanced(
    labels: ArrayLike,
    scores: ArrayLike | None,
    Nc: int,
    temperature: float,
    seed: int = 0,
    eligible_mask: ArrayLike | None = None,
) -> np.ndarray:
    """Sorted row indices with at most ``Nc`` eligible rows per class (see ``rank_within_class``)."""
    if Nc < 0:
        raise ValueError(f"Nc must be >= 0, got {Nc}")
    ranks = rank_within_class(labels, scores, temperature, seed=seed, eligible_mask=eligible_mask)
    return np.flatnonzero((ranks >= 0) & (ranks < Nc))


# --------------------------------------------------------------------------------------------
# optional constraints
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingConstraints:
    """Optional subset constraints; a value at its neutral setting (None, 0, 1) is off.

    ``min_motion``: keep tracks whose motion value (e.g. the q90 optical-flow magnitude of
    visual_metrics.py) is >= this; tracks without a value (NaN) are dropped.
    ``min_nn_dist`` / ``max_spt_iou`` (+ ``iou_tbuff``): diversity and overlap, not implemented.
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

    def mask(self, n_total: int, motion: ArrayLike | None = None) -> np.ndarray:
        """Boolean mask (n_total,) of rows passing the mask-type constraints (min_motion).

        Combine it with the video eligibility mask (``&``) before sampling.
        """
        if self.uses_diversity or self.uses_overlap:
            raise NotImplementedError(
                "diversity (min_nn_dist) and overlap (max_spt_iou) constraints need a sequential "
                "pass over rank_within_class; not implemented yet"
            )
        keep = np.ones(n_total, dtype=bool)
        if self.uses_motion:
            if motion is None:
                raise ValueError("min_motion needs the per-track motion values (run visual_metrics.py)")
            mot = np.asarray(motion, dtype=np.float64).reshape(-1)
            if mot.shape[0] != n_total:
                raise ValueError(f"motion has {mot.shape[0]} rows, expected {n_total}")
            with np.errstate(invalid="ignore"):
                keep &= mot >= self.min_motion
        return keep


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------
def subset_name(
    dataset_name: str,
    kind: str,
    *,
    N: float | None = None,
    Nc: int | None = None,
    total: int | None = None,
    temperature: float | None = None,
    constraints: SamplingConstraints | None = None,
) -> str:
    """File name of a subset.

    ``kind="random"``: ``<dataset_name>-<N>K-RND[suffix].jsonl.gzip`` with ``N`` in thousands
    as given. ``kind="class_balanced"``: ``<dataset_name>-CB<Nc>-<total//1000>K-T<T>[suffix]``
    ``.jsonl.gzip`` with ``total`` the number of tracks selected. ``sample_`` prefixes are
    accepted (the ``--action`` names). ``[suffix]`` comes from ``constraints``.
    """
    kind_key = kind.removeprefix("sample_")
    suffix = constraints.suffix() if constraints is not None else ""
    if kind_key == "random":
        if N is None:
            raise ValueError("a random subset name needs N (thousands)")
        return f"{dataset_name}-{format_number(N)}K-RND{suffix}{SUBSET_EXT}"
    if kind_key == "class_balanced":
        if Nc is None or total is None or temperature is None:
            raise ValueError("a class-balanced subset name needs Nc, total and temperature")
        temp = format_number(_check_temperature(temperature))
        return f"{dataset_name}-CB{int(Nc)}-{int(total) // 1000}K-T{temp}{suffix}{SUBSET_EXT}"
    raise ValueError(f"unknown subset kind {kind!r}: expected 'random' or 'class_balanced'")
