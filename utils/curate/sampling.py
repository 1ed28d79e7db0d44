"""Pure sampling logic behind ``curate_db.py``: which rows of the track index go into a subset.

Everything works on numpy columns of the index (one entry per track); selections are row
indices sorted ascending, so that a subset is written in index order. Nothing here reads files.

* ``sample_random``: a seeded uniform sample without replacement among eligible rows. With the
  same seed and mask, smaller subsets are contained in larger ones (82K in 184K in ...).
* ``rank_within_class``: the order in which a class-balanced subset takes each class's rows (it
  keeps the first ``Nc``): ``T=0`` the highest scores first (ties: lower row first), ``T=inf``
  uniformly random, finite ``T>0`` sampling without replacement with probabilities
  ``softmax(score / T)`` (Gumbel-top-k: sort by ``score / T + Gumbel noise``, which needs no
  exponentials). The ranking is shared by every ``Nc``, so with the same seed CB100 is
  contained in CB300, etc.
* ``min_redundancy``: per class, ``Nc`` tracks whose minimum pairwise embedding distance is as
  large as possible (``sample_min_red``): start from the top ``Nc`` of the T=0 ranking, then
  swap greedily (see the function). Deterministic: no seed is involved.
* ``eligible_by_video``: the mask that keeps the verified evaluation videos out of every subset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike


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


def check_temperature(temperature: float) -> float:
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
    t = check_temperature(temperature)

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


# --------------------------------------------------------------------------------------------
# minimum redundancy (sample_min_red)
# --------------------------------------------------------------------------------------------
class MinRedResult(NamedTuple):
    """Result of ``min_redundancy``.

    ``selected``: positions into the candidate list, ascending. ``start_min_dist`` /
    ``min_dist``: smallest pairwise Euclidean distance of the start (the first ``k``) and of the
    result (NaN when fewer than 2 are selected or when no swap was possible: ``k >= candidates``,
    where nothing is computed). ``swaps``: swaps made. ``converged``: stopped because no swap
    improved (False: stopped by ``max_swaps``).
    """

    selected: np.ndarray
    start_min_dist: float
    min_dist: float
    swaps: int
    converged: bool


MIN_RED_SWAPS_PER_TRACK = 2  # default swap cap: this many swaps per selected track


class _TopTwo:
    """Per candidate row, its two nearest selected tracks (squared distance, position in the
    selection); for a selected row, the two nearest among the others. ``fresh[row] == now``:
    exact for the current selection; otherwise exact for an older one that differs only by
    tracks added since (removals are always applied at once), so the stored values are upper
    bounds of the true ones."""

    def __init__(self, x: np.ndarray, k: int, chunk: int):
        self.x = x
        self.sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
        self.k = k
        self.chunk = chunk
        m = x.shape[0]
        self.member_rows = np.arange(k, dtype=np.int64)  # row at each position of the selection
        self.pos = np.full(m, -1, dtype=np.int64)  # position of each row, -1: a candidate
        self.pos[:k] = np.arange(k)
        self.sel = np.array(x[:k], order="C")  # vectors of the selection, by position (a copy)
        self.sel_sq = self.sq[:k].copy()
        self.d1 = np.empty(m, np.float32)
        self.d2 = np.empty(m, np.float32)
        self.p1 = np.empty(m, np.int64)
        self.p2 = np.empty(m, np.int64)
        self.fresh = np.zeros(m, np.int64)
        self.now = 0
        for lo in range(0, m, chunk):
            self.refresh(np.arange(lo, min(m, lo + chunk)))

    def refresh(self, rows: np.ndarray) -> None:
        """Exact top two of ``rows`` against the current selection (one matrix product)."""
        for lo in range(0, rows.size, self.chunk):
            part = rows[lo:lo + self.chunk]
            d = self.sq[part, None] + self.sel_sq[None, :] - 2.0 * (self.x[part] @ self.sel.T)
            np.maximum(d, 0.0, out=d)
            own = self.pos[part]
            inside = np.flatnonzero(own >= 0)
            d[inside, own[inside]] = np.inf  # a selected track is not its own neighbour
            two = np.argpartition(d, 1, axis=1)[:, :2]  # k >= 2
            at = np.arange(part.size)
            first, second = d[at, two[:, 0]], d[at, two[:, 1]]
            self.d1[part], self.p1[part] = first, two[:, 0]
            # a selected row of a 2-track selection has one neighbour: no second position
            self.d2[part], self.p2[part] = second, np.where(np.isinf(second), -1, two[:, 1])
            self.fresh[part] = self.now

    def without(self, p: int, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Squared distance of ``rows`` to the selection without position ``p``."""
        return np.where(self.p1[rows] == p, self.d2[rows], self.d1[rows])

    def swap(self, p: int, new_row: int) -> None:
        """Replace the track at position ``p`` with candidate ``new_row``."""
        old_row = int(self.member_rows[p])
        to_new = self.sq[self.member_rows] + self.sq[new_row] - 2.0 * (self.sel @ self.x[new_row])
        np.maximum(to_new, 0.0, out=to_new)
        self.now += 1
        self.member_rows[p] = new_row
        self.pos[old_row], self.pos[new_row] = -1, p
        self.sel[p] = self.x[new_row]
        self.sel_sq[p] = self.sq[new_row]
        # rows whose two nearest included the removed track: recompute against the new selection
        lost = np.flatnonzero((self.p1 == p) | (self.p2 == p))
        lost = lost[lost != old_row]
        # the removed track: its two nearest among the others are still exact; add the new one
        members = self.member_rows
        self._merge(np.concatenate([members[np.arange(self.k) != p], [old_row]]),
                    np.concatenate([to_new[np.arange(self.k) != p], [to_new[p]]]), p)
        self.refresh(np.union1d(lost, [new_row]))
        self.fresh[members] = self.now
        self.fresh[old_row] = self.now

    def _merge(self, rows: np.ndarray, dist: np.ndarray, p: int) -> None:
        """Offer a track at position ``p`` at squared distance ``dist`` to ``rows``."""
        rows_ok = (self.p1[rows] != p) & (self.p2[rows] != p)
        rows, dist = rows[rows_ok], dist[rows_ok].astype(np.float32)
        first = dist < self.d1[rows]
        second = ~first & (dist < self.d2[rows])
        r1, r2 = rows[first], rows[second]
        self.d2[r1], self.p2[r1] = self.d1[r1], self.p1[r1]
        self.d1[r1], self.p1[r1] = dist[first], p
        self.d2[r2], self.p2[r2] = dist[second], p


def min_redundancy(
    vectors: ArrayLike, k: int, max_swaps: int | None = None, batch: int = 64, chunk: int = 4096
) -> MinRedResult:
    """Choose ``k`` of the candidates (``vectors``, one row each, best-ranked first) whose
    minimum pairwise Euclidean distance is as large as possible.

    Start from the first ``k`` rows (e.g. the top-``k`` by score: the T=0 ranking), then swap
    greedily: find the closest selected pair (a, b); for each of a and b, the candidate whose
    distance to the rest of the selection is largest; take the swap whose new minimum pairwise
    distance is largest (ties: the larger candidate distance, then removing the later-ranked of
    a and b, then the earliest-ranked candidate) and make it if that candidate is farther than
    d(a, b) from the rest. Each swap raises the minimum distance or removes one of the pairs at
    it, so the loop ends; it also stops after ``max_swaps`` swaps (default
    ``MIN_RED_SWAPS_PER_TRACK * k``). Deterministic: no randomness, ties by rank.

    Cost: one pass of ``candidates x k`` distances (chunked matrix products, memory
    ``chunk x k``) to set up, then per swap a few O(candidates) vector operations plus exact
    distances for the candidates that may beat the best (upper bounds kept lazily, refreshed
    ``batch`` at a time). Arithmetic in float32 (``|x|^2 + |y|^2 - 2 x.y``): on L2-normalised
    embeddings distances are good to about 1e-3, which is also the resolution of ties.
    ``vectors`` is not modified.
    """
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D (candidates, D), got shape {x.shape}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.size and not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or inf: leave tracks without an embedding out")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    m = x.shape[0]
    if k >= m or k < 2:
        return MinRedResult(np.arange(min(k, m)), math.nan, math.nan, 0, True)
    cap = MIN_RED_SWAPS_PER_TRACK * k if max_swaps is None else int(max_swaps)
    if cap < 0:
        raise ValueError(f"max_swaps must be >= 0, got {max_swaps}")
    top = _TopTwo(x, k, chunk)
    start = float(top.d1[:k].min())
    swaps, converged = 0, False
    while True:
        members = top.member_rows
        i = int(np.argmin(top.d1[members]))
        d_min = float(top.d1[members[i]])
        pair = (i, int(top.p1[members[i]]))
        if swaps >= cap:
            break
        best: tuple[float, float] | None = None
        choice = (-1, -1)
        for p in sorted(pair, key=lambda q: -members[q]):  # the later-ranked first
            rest = top.without(p, members)
            rest[p] = np.inf
            rest_min = float(rest.min())
            row, dist = _farthest_candidate(top, p, batch)
            if row < 0:
                continue
            key = (min(rest_min, dist), dist)
            if best is None or key > best:
                best, choice = key, (p, row)
        if best is None or not best[1] > d_min:
            converged = True
            break
        top.swap(*choice)
        swaps += 1
    selected = np.sort(top.member_rows)
    return MinRedResult(selected, math.sqrt(start), math.sqrt(d_min), swaps, converged)


def _farthest_candidate(top: _TopTwo, p: int, batch: int) -> tuple[int, float]:
    """(row, squared distance) of the candidate farthest from the selection without position
    ``p`` (first in rank order among equals), refreshing stale upper bounds as needed."""
    bound = top.without(p)
    bound[top.member_rows] = -np.inf
    while True:
        row = int(np.argmax(bound))
        if bound[row] == -np.inf:
            return -1, -math.inf
        if top.fresh[row] == top.now:
            return row, float(bound[row])
        n = min(batch, bound.size - 1)
        cand = np.argpartition(bound, -n)[-n:] if n > 0 else np.array([row])
        cand = np.union1d(cand[(top.fresh[cand] != top.now) & (bound[cand] > -np.inf)], [row])
        top.refresh(cand)
        bound[cand] = top.without(p, cand)
