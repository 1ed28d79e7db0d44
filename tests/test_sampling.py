"""Tests for utils/curate/sampling.py: random and class-balanced subsets, constraints, names."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import ArrayLike

from utils.curate.constraints import NO_VALUE, RELAX_ROUNDS, SamplingConstraints, motion_levels
from utils.curate.report import motion_name, size_label, subset_name
from utils.curate.sampling import (
    MIN_RED_SWAPS_PER_TRACK,
    eligible_by_video,
    format_number,
    min_redundancy,
    rank_within_class,
    sample_random,
)


def sample_class_balanced(labels: ArrayLike, scores: ArrayLike | None, Nc: int, temperature: float,
                          seed: int = 0, eligible_mask: ArrayLike | None = None) -> np.ndarray:
    """Sorted rows of at most ``Nc`` eligible rows per class: what a class-balanced subset
    takes from :func:`rank_within_class` (as ``utils.curate.subsets`` does)."""
    if Nc < 0:
        raise ValueError(f"Nc must be >= 0, got {Nc}")
    ranks = rank_within_class(labels, scores, temperature, seed=seed, eligible_mask=eligible_mask)
    return np.flatnonzero((ranks >= 0) & (ranks < Nc))


# --------------------------------------------------------------------------------------------
# random
# --------------------------------------------------------------------------------------------
def test_random_is_reproducible_sorted_and_unique() -> None:
    a = sample_random(10_000, 500, seed=3)
    b = sample_random(10_000, 500, seed=3)
    c = sample_random(10_000, 500, seed=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert a.indices.size == 500 and not a.truncated
    assert np.all(np.diff(a.indices) > 0)
    assert a.indices.min() >= 0 and a.indices.max() < 10_000


def test_random_subsets_are_nested() -> None:
    small = sample_random(5000, 100, seed=1).indices
    large = sample_random(5000, 1000, seed=1).indices
    assert np.isin(small, large).all()


def test_random_respects_mask_and_flags_shortfall() -> None:
    mask = np.zeros(100, dtype=bool)
    mask[::10] = True
    idx, truncated = sample_random(100, 5, seed=0, eligible_mask=mask)
    assert mask[idx].all() and idx.size == 5 and not truncated
    idx, truncated = sample_random(100, 50, seed=0, eligible_mask=mask)
    np.testing.assert_array_equal(idx, np.arange(0, 100, 10))
    assert truncated
    idx, truncated = sample_random(100, 10, seed=0, eligible_mask=mask)
    assert idx.size == 10 and not truncated


def test_random_validates_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        sample_random(10, 2, eligible_mask=np.ones(9, dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        sample_random(3, 2, eligible_mask=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        sample_random(10, -1)


# --------------------------------------------------------------------------------------------
# class-balanced
# --------------------------------------------------------------------------------------------
def _toy(n_classes: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, 5000)
    scores = rng.normal(size=5000)
    return labels, scores


@pytest.mark.parametrize("temperature", [0.0, 0.5, 3.0, math.inf])
def test_class_balanced_caps_each_class(temperature: float) -> None:
    labels, scores = _toy()
    counts_all = np.bincount(labels, minlength=50)
    idx = sample_class_balanced(labels, scores, 60, temperature, seed=1)
    counts = np.bincount(labels[idx], minlength=50)
    np.testing.assert_array_equal(counts, np.minimum(counts_all, 60))
    assert np.all(np.diff(idx) > 0)


@pytest.mark.parametrize("temperature", [0.0, 0.5, math.inf])
def test_class_balanced_is_reproducible_and_nested(temperature: float) -> None:
    labels, scores = _toy()
    a = sample_class_balanced(labels, scores, 40, temperature, seed=5)
    b = sample_class_balanced(labels, scores, 40, temperature, seed=5)
    np.testing.assert_array_equal(a, b)
    small = sample_class_balanced(labels, scores, 10, temperature, seed=5)
    assert np.isin(small, a).all()
    if temperature > 0:
        other = sample_class_balanced(labels, scores, 40, temperature, seed=6)
        assert not np.array_equal(a, other)


def test_temperature_zero_takes_top_scores_ties_by_index() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3, 0.2, 0.4, 0.7])
    np.testing.assert_array_equal(sample_class_balanced(labels, scores, 2, 0.0), [1, 3, 4, 6])
    np.testing.assert_array_equal(sample_class_balanced(labels, scores, 3, 0.0), [1, 3, 4, 5, 6, 7])
    ranks = rank_within_class(labels, scores, 0.0)
    np.testing.assert_array_equal(ranks, [4, 0, 3, 1, 1, 2, 0, 2])
    # seeds do not matter at T=0
    np.testing.assert_array_equal(
        sample_class_balanced(labels, scores, 2, 0.0, seed=1),
        sample_class_balanced(labels, scores, 2, 0.0, seed=2),
    )


def test_temperature_zero_large_matches_sorting() -> None:
    labels, scores = _toy()
    idx = sample_class_balanced(labels, scores, 20, 0.0)
    for c in range(50):
        members = np.flatnonzero(labels == c)
        top = members[np.argsort(-scores[members], kind="stable")[:20]]
        np.testing.assert_array_equal(np.sort(top), idx[labels[idx] == c])


def _picked_positions(
    n_classes: int, per_class: int, scores_per_pos: np.ndarray, temperature: float
) -> np.ndarray:
    labels = np.repeat(np.arange(n_classes), per_class)
    position = np.tile(np.arange(per_class), n_classes)
    scores = np.tile(scores_per_pos, n_classes)
    idx = sample_class_balanced(labels, scores, 1, temperature, seed=2024)
    assert idx.size == n_classes
    return np.bincount(position[idx], minlength=per_class)


def test_temperature_inf_is_uniform_within_class() -> None:
    # 4000 classes of 10 tracks each, 1 pick per class: ~400 picks per position (sd ~19);
    # scores strongly favour the last position but must be ignored.
    counts = _picked_positions(4000, 10, np.arange(10) * 100.0, math.inf)
    assert counts.sum() == 4000
    assert np.all(np.abs(counts - 400) < 100), counts


def test_finite_temperature_prefers_higher_scores() -> None:
    # softmax(score / T) with neighbour ratio 1.5: p = 1.5**k / sum -> .076 .114 .171 .256 .384
    temperature = 0.5
    scores = np.arange(5) * temperature * math.log(1.5)
    counts = _picked_positions(20_000, 5, scores, temperature)
    assert np.all(np.diff(counts) > 0), counts
    expected = 1.5 ** np.arange(5)
    expected = 20_000 * expected / expected.sum()
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), (counts, expected)


def test_finite_temperature_samples_without_replacement() -> None:
    labels = np.repeat(np.arange(300), 4)
    scores = np.tile([5.0, 0.0, 0.0, -5.0], 300)
    idx = sample_class_balanced(labels, scores, 3, 1.0, seed=0)
    assert np.bincount(labels[idx]).tolist() == [3] * 300
    assert np.unique(idx).size == idx.size


def test_large_finite_scores_are_stable() -> None:
    labels = np.zeros(4, dtype=np.int64)
    scores = np.array([1e6, 2e6, 3e6, 4e6])  # softmax(score / 0.01) would overflow a naive exp
    np.testing.assert_array_equal(sample_class_balanced(labels, scores, 2, 0.01, seed=0), [2, 3])


def test_verified_eval_videos_are_never_sampled() -> None:
    rng = np.random.default_rng(1)
    yids = np.array([f"vid{v:08d}xx" for v in rng.integers(0, 300, 6000)])
    labels = rng.integers(0, 20, 6000)
    scores = rng.normal(size=6000)
    verified = {f"vid{v:08d}xx" for v in range(0, 300, 7)}
    scores[np.isin(yids, list(verified))] += 100  # the best tracks are all in evaluation videos
    mask = eligible_by_video(yids, verified)
    assert mask.sum() == np.sum(~np.isin(yids, list(verified))) and not mask.all()
    for temperature in (0.0, 0.5, math.inf):
        idx = sample_class_balanced(labels, scores, 100, temperature, seed=3, eligible_mask=mask)
        assert idx.size > 0 and mask[idx].all()
        assert not set(yids[idx]) & verified
    idx = sample_random(6000, 5000, seed=0, eligible_mask=mask).indices
    assert not set(yids[idx]) & verified
    ranks = rank_within_class(labels, scores, 0.0, eligible_mask=mask)
    assert np.all(ranks[~mask] == -1) and np.all(ranks[mask] >= 0)


def test_eligible_by_video_without_exclusions() -> None:
    assert eligible_by_video(["a", "b"], []).tolist() == [True, True]
    assert eligible_by_video(["a", "b"], ["b"]).tolist() == [True, False]


def test_string_labels_and_scoreless_uniform() -> None:
    labels = np.array(["cat", "dog", "cat", "cat", "dog"])
    scores = np.array([0.1, 0.2, 0.9, 0.5, 0.1])
    np.testing.assert_array_equal(sample_class_balanced(labels, scores, 1, 0.0), [1, 2])
    idx = sample_class_balanced(labels, None, 2, math.inf, seed=0)
    assert sorted(np.bincount(np.unique(labels, return_inverse=True)[1][idx]).tolist()) == [2, 2]


def test_class_balanced_validation() -> None:
    labels = np.array([0, 1])
    with pytest.raises(ValueError, match="temperature"):
        sample_class_balanced(labels, [1.0, 2.0], 1, -1.0)
    with pytest.raises(ValueError, match="temperature"):
        sample_class_balanced(labels, [1.0, 2.0], 1, float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        sample_class_balanced(labels, [1.0, np.nan], 1, 0.0)
    with pytest.raises(ValueError, match="scores are required"):
        sample_class_balanced(labels, None, 1, 1.0)
    with pytest.raises(ValueError, match="rows"):
        sample_class_balanced(labels, [1.0], 1, 0.0)
    with pytest.raises(ValueError, match="Nc"):
        sample_class_balanced(labels, [1.0, 2.0], -1, 0.0)
    assert sample_class_balanced(labels, [1.0, 2.0], 0, 0.0).size == 0
    none = np.zeros(2, dtype=bool)
    assert sample_class_balanced(labels, [1.0, 2.0], 5, 0.0, eligible_mask=none).size == 0


def test_million_rows_runs() -> None:
    # Speed is a requirement (4M tracks x 1200 classes in seconds) but is not asserted here.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1200, 1_000_000)
    scores = rng.normal(size=1_000_000)
    mask = rng.random(1_000_000) > 0.01
    idx = sample_class_balanced(labels, scores, 300, 0.5, seed=0, eligible_mask=mask)
    counts = np.bincount(labels[idx], minlength=1200)
    assert counts.max() <= 300 and mask[idx].all()
    np.testing.assert_array_equal(counts, np.minimum(np.bincount(labels[mask], minlength=1200), 300))


# --------------------------------------------------------------------------------------------
# constraints
# --------------------------------------------------------------------------------------------
def test_min_motion_levels() -> None:
    """Round 0 passes min_motion itself, each later round x0.8, the last drops it; no value: never."""
    motion = np.array([0.5, 1.0, 2.0, np.nan, 0.99])
    assert motion_levels(motion, 1.0).tolist() == [RELAX_ROUNDS - 1, 0, 0, NO_VALUE, 1]
    assert SamplingConstraints(min_motion=1.0).suffix() == "-MM1"


def test_neutral_constraints_are_off() -> None:
    for c in (SamplingConstraints(), SamplingConstraints(min_motion=0, min_nn_dist=0, max_spt_iou=1)):
        assert c.suffix() == ""
        assert not (c.uses_motion or c.uses_diversity or c.uses_overlap)


def test_constraint_suffixes_and_validation() -> None:
    c = SamplingConstraints(min_motion=0.5, min_nn_dist=0.25, max_spt_iou=0.5, iou_tbuff=2.0)
    assert c.suffix() == "-MM0.5-NN0.25-IoU0.5B2"
    assert c.uses_motion and c.uses_diversity and c.uses_overlap
    assert SamplingConstraints(max_spt_iou=0.3).suffix() == "-IoU0.3"
    with pytest.raises(ValueError, match="NaN"):
        SamplingConstraints(min_motion=float("nan"))
    with pytest.raises(ValueError, match="iou_tbuff"):
        SamplingConstraints(max_spt_iou=0.5, iou_tbuff=0)


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (0.0, "0"), (math.inf, "inf"), (0.5, "0.5"), (2.0, "2"), (0.1, "0.1"), (1e-5, "0.00001")],
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


def test_random_names_give_the_tracks_held() -> None:
    assert subset_name("TrackVerseLVIS", "random", total=82_000) == "TrackVerseLVIS-82K-RND.jsonl.gzip"
    assert subset_name("TrackVerseLVIS", "sample_random", total=392_000) == "TrackVerseLVIS-392K-RND.jsonl.gzip"
    # issue 14: "1000K-RND" / "0.05K-RND" named what was asked for, not what the subset holds
    assert subset_name("TrackVerseLVIS", "random", total=6) == "TrackVerseLVIS-6-RND.jsonl.gzip"
    assert subset_name("TrackVerseLVIS", "random", total=999) == "TrackVerseLVIS-999-RND.jsonl.gzip"
    assert subset_name("TrackVerseLVIS", "random", total=1000) == "TrackVerseLVIS-1K-RND.jsonl.gzip"


@pytest.mark.parametrize(("total", "text"), [(0, "0"), (6, "6"), (999, "999"), (1000, "1K"), (1999, "1K"),
                                             (82_000, "82K"), (392_417, "392K")])
def test_size_label(total: int, text: str) -> None:
    assert size_label(total) == text


@pytest.mark.parametrize(
    ("Nc", "total", "temperature", "name"),
    [
        (1000, 392_417, 0.0, "TrackVerseLVIS-CB1000-392K-T0.jsonl.gzip"),
        (300, 184_999, 0, "TrackVerseLVIS-CB300-184K-T0.jsonl.gzip"),
        (100, 82_000, math.inf, "TrackVerseLVIS-CB100-82K-Tinf.jsonl.gzip"),
        (500, 259_100, 0.5, "TrackVerseLVIS-CB500-259K-T0.5.jsonl.gzip"),
        (500, 259_100, 2.0, "TrackVerseLVIS-CB500-259K-T2.jsonl.gzip"),
        (10, 999, 1.0, "TrackVerseLVIS-CB10-999-T1.jsonl.gzip"),
        (5, 6, 0, "TrackVerseLVIS-CB5-6-T0.jsonl.gzip"),  # issue 14: was CB5-0K
        (100, 1_203, 0, "TrackVerseLVIS-CB100-1K-T0.jsonl.gzip"),  # the released names are kept
    ],
)
def test_class_balanced_names(Nc: int, total: int, temperature: float, name: str) -> None:
    assert (
        subset_name("TrackVerseLVIS", "class_balanced", Nc=Nc, total=total, temperature=temperature) == name
    )


def test_names_with_constraints_and_errors() -> None:
    mm = SamplingConstraints(min_motion=1.0)
    assert (
        subset_name(
            "TrackVerseLVIS", "sample_class_balanced", Nc=1000, total=200_500, temperature=0.0, constraints=mm
        )
        == "TrackVerseLVIS-CB1000-200K-T0-MM1.jsonl.gzip"
    )
    with pytest.raises(ValueError, match="unknown subset kind"):
        subset_name("X", "balanced", Nc=1, total=1, temperature=0)
    with pytest.raises(ValueError, match="needs total"):
        subset_name("X", "random")
    with pytest.raises(ValueError, match="needs Nc"):
        subset_name("X", "class_balanced", Nc=1)


def test_max_motion_and_min_red_names() -> None:
    assert (subset_name("TrackVerseLVIS", "sample_max_motion", Nc=1000, total=392_417)
            == "TrackVerseLVIS-MaxQ90Motion-CB1000-392K.jsonl.gzip")
    assert (subset_name("TrackVerseLVIS", "max_motion", Nc=100, total=999, motion_column="q50")
            == "TrackVerseLVIS-MaxQ50Motion-CB100-999.jsonl.gzip")
    assert subset_name("X", "min_red", Nc=3, total=0) == "X-MinRed-CB3-0.jsonl.gzip"
    assert (subset_name("TrackVerseLVIS", "sample_min_red", Nc=300, total=184_999)
            == "TrackVerseLVIS-MinRed-CB300-184K.jsonl.gzip")
    assert motion_name("q90") == "Q90" and motion_name("Q75") == "Q75"
    for bad in ("q-90", "", "q 90", "../x"):
        with pytest.raises(ValueError, match="letters and digits"):
            motion_name(bad)
    with pytest.raises(ValueError, match="needs Nc"):
        subset_name("X", "min_red", Nc=3)


# --------------------------------------------------------------------------------------------
# minimum redundancy
# --------------------------------------------------------------------------------------------
def _min_red_reference(x: np.ndarray, k: int, cap: int) -> tuple[list[int], int]:
    """The documented rule, computed from the full distance matrix."""
    d = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    sel, swaps = list(range(k)), 0
    while swaps < cap:
        sub = d[np.ix_(sel, sel)]
        i = int(np.argmin(sub.min(1)))
        j = int(np.argmin(sub[i]))
        best, choice = None, None
        for p in sorted((i, j), key=lambda q: -sel[q]):
            rest = [s for q, s in enumerate(sel) if q != p]
            rest_min = d[np.ix_(rest, rest)].min()
            cands = [c for c in range(len(x)) if c not in sel]
            to_rest = d[np.ix_(cands, rest)].min(1)
            key = (min(rest_min, to_rest.max()), to_rest.max())
            if best is None or key > best:
                best, choice = key, (p, cands[int(np.argmax(to_rest))])
        if not best[1] > sub[i, j]:
            break
        sel[choice[0]] = choice[1]
        swaps += 1
    return sorted(sel), swaps


def test_min_redundancy_follows_the_documented_rule() -> None:
    rng = np.random.default_rng(0)
    for case in range(40):
        m = int(rng.integers(4, 30))
        k = int(rng.integers(2, m))
        x = rng.normal(size=(m, 4)).astype(np.float32)
        if case % 2:  # clustered: many near-duplicates
            x = (rng.normal(size=(3, 4))[rng.integers(0, 3, m)] * 5 + rng.normal(size=(m, 4)) * 0.1).astype(np.float32)
        cap = int(rng.integers(0, 2 * k)) if case % 5 == 0 else 10 * k
        got = min_redundancy(x, k, max_swaps=cap, batch=int(rng.integers(1, 5)), chunk=int(rng.integers(1, 9)))
        expected, swaps = _min_red_reference(x, k, cap)
        assert got.selected.tolist() == expected and got.swaps == swaps, case
        assert got.converged == (swaps < cap)


def test_min_redundancy_spreads_clustered_points_deterministically() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(12, 32))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = (centres[rng.integers(0, 12, 3000)] + rng.normal(scale=0.02, size=(3000, 32))).astype(np.float32)
    x[:10] = centres[0] + rng.normal(scale=0.02, size=(10, 32))  # the start: one cluster
    before = x.copy()
    result = min_redundancy(x, 10)
    again = min_redundancy(x, 10)
    np.testing.assert_array_equal(result.selected, again.selected)
    np.testing.assert_array_equal(x, before)  # the input is not modified
    chosen = x[result.selected].astype(np.float64)
    dist = np.sqrt(((chosen[:, None] - chosen[None]) ** 2).sum(-1))[np.triu_indices(10, 1)]
    assert result.start_min_dist < 0.3 and dist.min() == pytest.approx(result.min_dist, abs=1e-4)
    assert result.min_dist > 0.5  # one track per cluster
    assert result.converged and 0 < result.swaps <= MIN_RED_SWAPS_PER_TRACK * 10
    assert np.all(np.diff(result.selected) > 0)


def test_min_redundancy_edge_cases() -> None:
    x = np.random.default_rng(2).normal(size=(5, 3))
    assert min_redundancy(x, 5).selected.tolist() == [0, 1, 2, 3, 4]  # nothing to choose
    assert min_redundancy(x, 9).selected.tolist() == [0, 1, 2, 3, 4]
    assert min_redundancy(x, 1).selected.tolist() == [0]  # no pair: the best-ranked
    assert min_redundancy(x, 0).selected.size == 0
    capped = min_redundancy(np.repeat(x, 2, axis=0), 2, max_swaps=0)
    assert capped.selected.tolist() == [0, 1] and capped.swaps == 0 and not capped.converged
    assert min_redundancy(np.zeros((4, 2)), 2).swaps == 0  # all equal: no swap improves
    with pytest.raises(ValueError, match="NaN"):
        min_redundancy(np.array([[0.0, np.nan], [1, 1], [2, 2]]), 2)
    with pytest.raises(ValueError, match="2-D"):
        min_redundancy(np.zeros(4), 2)
