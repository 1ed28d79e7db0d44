"""Tests for utils/clips/geometry.py: hand-computed geometry of track clips."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from utils.clips.geometry import (
    ClipPlan,
    deduplicate_tracks,
    hold_aspect,
    output_size,
    plan_clip,
    smooth_boxes,
    smoothing_sigma,
    track_overlap,
)
from utils.core.errors import BadGeometryError, ZeroSizeTrackError


def _ts(n: int, dt: float, t0: float = 0.0) -> np.ndarray:
    return t0 + dt * np.arange(n)


# --------------------------------------------------------------------------------------------
# smoothing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dt", "sigma"),
    [(1 / 16, 10), (0.5, 1), (0.33, 2), (1.0, 0), (2.0, 0)],
)
def test_sigma_from_timestep(dt: float, sigma: int) -> None:
    # int(0.66 / 0.0625) = int(10.56) = 10, int(0.66 / 0.5) = 1, int(0.66 / 0.33) = 2, 0.66 -> 0
    assert smoothing_sigma(_ts(50, dt)) == sigma


def test_sigma_single_and_repeated_instant() -> None:
    assert smoothing_sigma([3.0]) == 0
    assert smoothing_sigma([3.0, 3.0, 3.0]) == 0


def test_constant_boxes_stay_constant() -> None:
    boxes = np.tile([10.0, 20.0, 30.0, 40.0], (40, 1))
    out = smooth_boxes(_ts(40, 1 / 16), boxes)
    np.testing.assert_allclose(out, boxes, rtol=0, atol=1e-9)


def test_step_is_smoothed_symmetrically() -> None:
    n = 120  # the step is 60 samples (> 4 sigma, scipy's kernel radius) from either end
    x = np.where(np.arange(n) < n // 2, 0.0, 10.0)
    boxes = np.stack([x, np.zeros(n), np.full(n, 5.0), np.full(n, 5.0)], axis=1)
    out = smooth_boxes(_ts(n, 1 / 16), boxes)[:, 0]  # sigma 10
    np.testing.assert_allclose(out + out[::-1], 10.0, atol=1e-9)  # odd symmetry about the step
    assert np.all(np.diff(out) >= -1e-12)  # still monotone
    assert 0 < out[n // 2 - 1] < 5 < out[n // 2] < 10  # edges softened
    assert out[0] == pytest.approx(0, abs=1e-12) and out[-1] == pytest.approx(10, abs=1e-12)


def test_smoothing_matches_the_original_filter_call() -> None:
    rng = np.random.default_rng(3)
    ts = _ts(80, 1 / 16)
    boxes = rng.uniform(10, 200, size=(80, 4))
    expected = np.stack([ndi.gaussian_filter(b, 10) for b in boxes.T], 1)
    np.testing.assert_array_equal(smooth_boxes(ts, boxes), expected)


def test_sigma_zero_and_single_timestamp_unchanged() -> None:
    boxes = np.array([[1.0, 2, 3, 4], [9, 8, 7, 6], [1, 1, 1, 1]])
    np.testing.assert_array_equal(smooth_boxes(_ts(3, 1.0), boxes), boxes)  # sigma int(0.66) = 0
    np.testing.assert_array_equal(smooth_boxes([5.0], boxes[:1]), boxes[:1])


def test_nearest_mode_is_available() -> None:
    n = 30
    boxes = np.stack([np.arange(n, dtype=float)] * 4, axis=1) + 1
    reflect = smooth_boxes(_ts(n, 0.1), boxes)
    nearest = smooth_boxes(_ts(n, 0.1), boxes, mode="nearest")
    assert not np.allclose(reflect, nearest)
    np.testing.assert_allclose(nearest, ndi.gaussian_filter1d(boxes, 6, axis=0, mode="nearest"))


# --------------------------------------------------------------------------------------------
# aspect ratio and frame bounds
# --------------------------------------------------------------------------------------------
def test_tall_box_is_clamped_to_two_thirds() -> None:
    boxes, aspect = hold_aspect([[100.0, 100.0, 10.0, 100.0]], (1000, 1000))
    assert aspect == pytest.approx(2 / 3)
    x, y, w, h = boxes[0]
    assert h == 100 and w == pytest.approx(100 * 2 / 3)
    assert x + w / 2 == pytest.approx(105) and y + h / 2 == pytest.approx(150)  # centre kept


def test_wide_box_is_clamped_to_three_halves() -> None:
    boxes, aspect = hold_aspect([[0.0, 200.0, 300.0, 10.0]], (1000, 1000))
    assert aspect == pytest.approx(1.5)
    x, y, w, h = boxes[0]
    assert w == 300 and h == pytest.approx(200) and y + h / 2 == pytest.approx(205)


def test_mean_aspect_inside_range_is_kept() -> None:
    # aspects 1.0 and 1.2 -> target 1.1: the first grows its width, the second its height
    boxes, aspect = hold_aspect([[100, 100, 100, 100], [300, 300, 120, 100]], (1000, 1000))
    assert aspect == pytest.approx(1.1)
    np.testing.assert_allclose(boxes[0], [100 - 5, 100, 110, 100])
    np.testing.assert_allclose(boxes[1], [300, 300 + 50 - 120 / 1.1 / 2, 120, 120 / 1.1])
    np.testing.assert_allclose(boxes[:, 2] / boxes[:, 3], 1.1)


def test_box_grown_beyond_frame_shrinks_and_shifts() -> None:
    # frame h=100, w=200; box 50x150 (aspect 1/3 -> 2/3): grows to 100x150, too tall ->
    # 66.7 x 100 about the same centre x, y clamped to 0.
    boxes, aspect = hold_aspect([[20.0, -10.0, 50.0, 150.0]], (100, 200))
    x, y, w, h = boxes[0]
    assert aspect == pytest.approx(2 / 3)
    assert h == 100 and w == pytest.approx(200 / 3)
    assert y == 0 and x == pytest.approx(45 - 100 / 3)


def test_box_past_the_edge_shifts_inside() -> None:
    boxes, _ = hold_aspect([[180.0, 90.0, 40.0, 40.0]], (100, 200))
    np.testing.assert_allclose(boxes[0], [160, 60, 40, 40])
    boxes, _ = hold_aspect([[-30.0, -5.0, 40.0, 40.0]], (100, 200))
    np.testing.assert_allclose(boxes[0], [0, 0, 40, 40])


def test_box_taller_and_wider_than_frame_fits() -> None:
    # aspect 4/3 on a 200x100 (w x h) frame: the height binds -> 133.3 x 100
    boxes, aspect = hold_aspect([[-50.0, -50.0, 400.0, 300.0]], (100, 200))
    x, y, w, h = boxes[0]
    assert aspect == pytest.approx(4 / 3)
    assert h == 100 and w == pytest.approx(400 / 3)
    assert 0 <= x and x + w <= 200 + 1e-9 and y == 0


def test_too_wide_box_shrinks_by_width() -> None:
    boxes, _ = hold_aspect([[0.0, 0.0, 300.0, 200.0]], (500, 200))
    np.testing.assert_allclose(boxes[0, 2:], [200, 200 / 1.5])


def test_hold_aspect_rejects_degenerate_boxes() -> None:
    with pytest.raises(ValueError, match="positive"):
        hold_aspect([[0, 0, 0, 10]], (100, 100))
    with pytest.raises(ValueError, match="frame size"):
        hold_aspect([[0, 0, 10, 10]], (0, 100))


def test_output_size_is_even() -> None:
    assert output_size([[0, 0, 33.7, 21.0], [0, 0, 33.7, 21.0]]) == (32, 20)
    assert output_size([[0, 0, 30.0, 40.0], [0, 0, 36.0, 42.0]]) == (32, 40)  # means 33, 41
    assert output_size([[0, 0, 1.5, 0.5]]) == (2, 2)


# --------------------------------------------------------------------------------------------
# the clip plan
# --------------------------------------------------------------------------------------------
def _plain_plan(max_duration: float = 180.0) -> ClipPlan:
    # dt = 1 s -> sigma 0; equal aspects; inside the frame: processed boxes == input boxes
    ts = [10.0, 11.0, 12.0]
    boxes = [[10, 10, 20, 20], [30, 50, 20, 20], [30, 50, 20, 20]]
    return plan_clip(ts, boxes, (480, 640), max_duration=max_duration)


def test_plan_keeps_plain_boxes() -> None:
    plan = _plain_plan()
    assert plan.sigma == 0 and plan.aspect == 1.0
    np.testing.assert_array_equal(plan.boxes[1], [30, 50, 20, 20])
    assert plan.out_size == (20, 20)
    assert (plan.t_start, plan.t_end, plan.duration) == (10.0, 12.0, 2.0)


def test_interpolation_at_mid_timestamps() -> None:
    plan = _plain_plan()
    assert plan.box_at(10.0) == (10, 10, 30, 30)
    assert plan.box_at(10.5) == (20, 30, 40, 50)
    assert plan.box_at(10.25) == (15, 20, 35, 40)
    assert plan.box_at(10.3) == (16, 22, 36, 42)  # x 16.0, y 22.0 truncated
    assert plan.box_at(10.33) == (16, 23, 36, 43)  # x 16.6, y 23.2 truncated
    assert plan.box_at(11.0) == (30, 50, 50, 70)
    assert plan.box_at(9.0) == (10, 10, 30, 30)  # clamped before the start
    assert plan.box_at(99.0) == (30, 50, 50, 70)  # and after the end
    boxes = plan.boxes_at([10.0, 10.5, 11.0])
    assert boxes.dtype == np.int64 and boxes.shape == (3, 4)
    np.testing.assert_array_equal(boxes[1], [20, 30, 40, 50])
    np.testing.assert_allclose(plan.interpolate([10.75])[0], [25, 40, 20, 20])


def test_max_duration_caps_the_end() -> None:
    plan = _plain_plan(max_duration=1.5)
    assert plan.t_start == 10.0 and plan.t_end == 11.5
    ts = _ts(4000, 1 / 16, t0=3.0)  # 250 s
    boxes = np.tile([100.0, 100.0, 50.0, 60.0], (4000, 1))
    assert plan_clip(ts, boxes, (480, 640)).t_end == pytest.approx(183.0)


def test_crop_boxes_stay_inside_frame() -> None:
    rng = np.random.default_rng(0)
    n = 200
    ts = np.cumsum(rng.uniform(0.02, 0.1, n))
    boxes = np.stack(
        [
            rng.uniform(-100, 700, n),
            rng.uniform(-100, 500, n),
            rng.uniform(0.5, 900, n),
            rng.uniform(0.5, 700, n),
        ],
        axis=1,
    )
    plan = plan_clip(ts, boxes, (480, 640))
    crops = plan.boxes_at(np.linspace(ts[0] - 1, ts[-1] + 1, 999))
    x0, y0, x1, y1 = crops.T
    assert np.all(x0 >= 0) and np.all(y0 >= 0) and np.all(x1 <= 640) and np.all(y1 <= 480)
    assert np.all(x1 > x0) and np.all(y1 > y0)
    assert 2 / 3 - 1e-9 <= plan.aspect <= 1.5 + 1e-9
    w, h = plan.out_size
    assert w % 2 == 0 and h % 2 == 0 and 2 <= w <= 640 and 2 <= h <= 480


def test_tiny_box_gives_a_non_empty_crop() -> None:
    plan = plan_clip([0.0, 1.0], [[639.5, 479.5, 0.3, 0.3], [639.5, 479.5, 0.3, 0.3]], (480, 640))
    x0, y0, x1, y1 = plan.box_at(0.5)
    assert x1 - x0 >= 1 and y1 - y0 >= 1 and x1 <= 640 and y1 <= 480


def test_single_timestamp_is_a_one_instant_clip() -> None:
    plan = plan_clip([4.0], [[10, 20, 30, 30]], (100, 100))
    assert plan.t_start == plan.t_end == 4.0 and plan.duration == 0
    assert plan.box_at(4.0) == plan.box_at(5.0) == (10, 20, 40, 50)


def test_zero_size_boxes_are_skipped() -> None:
    plan = plan_clip([0.0, 1.0, 2.0], [[0, 0, 10, 10], [50, 50, 0, 0], [20, 0, 10, 10]], (100, 100))
    np.testing.assert_array_equal(plan.ts, [0.0, 2.0])
    assert plan.box_at(1.0) == (10, 0, 20, 10)
    assert (plan.t_start, plan.t_end) == (0.0, 2.0)


@pytest.mark.parametrize(
    ("ts", "boxes", "message"),
    [
        ([], np.zeros((0, 4)), "empty"),
        ([0.0, 1.0], [[0, 0, 1, 1]], "mismatched"),
        ([0.0, np.nan], [[0, 0, 1, 1], [0, 0, 1, 1]], "NaN"),
        ([0.0, 1.0], [[0, 0, 1, 1], [0, np.nan, 1, 1]], "NaN"),
        ([0.0, 1.0], [[0, 0, 0, 1], [0, 0, 1, 0]], "zero width or height"),
        ([1.0, 0.0], [[0, 0, 1, 1], [0, 0, 1, 1]], "non-decreasing"),
        ([0.0, 1.0], [[0, 0, -1, 1], [0, 0, 1, 1]], "negative"),
        ([0.0, 1.0], [[0, 0, 1], [0, 0, 1]], r"\(T, 4\)"),
    ],
)
def test_plan_validation(ts: list, boxes: list, message: str) -> None:
    with pytest.raises(BadGeometryError, match=message) as raised:
        plan_clip(ts, boxes, (100, 100))
    # the category is the error's type, whatever its message says
    zero = message == "zero width or height"
    assert isinstance(raised.value, ZeroSizeTrackError) == zero
    assert raised.value.category == ("zero_size" if zero else "bad_geometry")


def test_plan_rejects_bad_frame_and_duration() -> None:
    with pytest.raises(ValueError, match="frame size"):
        plan_clip([0.0], [[0, 0, 1, 1]], (100, -1))
    with pytest.raises(ValueError, match="max_duration"):
        plan_clip([0.0], [[0, 0, 1, 1]], (100, 100), max_duration=0)
    with pytest.raises(ValueError, match="NaN"):
        _plain_plan().box_at(float("nan"))


# --------------------------------------------------------------------------------------------
# overlap and de-duplication
# --------------------------------------------------------------------------------------------
def _loop_overlap(ts_a, boxes_a, ts_b, boxes_b) -> float:
    """Reference: the overlap rule spelled out one timestamp at a time."""
    if ts_a[0] > ts_b[-1] or ts_a[-1] < ts_b[0]:
        return 0.0
    inter_sum = union_sum = 0.0
    for t, box in zip(ts_a, boxes_a, strict=True):
        if t < ts_b[0] or t > ts_b[-1]:
            union_sum += box[2] * box[3]
            continue
        other = boxes_b[np.abs(t - ts_b).argmin()]
        iw = max(0.0, min(box[0] + box[2], other[0] + other[2]) - max(box[0], other[0]))
        ih = max(0.0, min(box[1] + box[3], other[1] + other[3]) - max(box[1], other[1]))
        inter = iw * ih
        inter_sum += inter
        union_sum += box[2] * box[3] + other[2] * other[3] - inter
    return inter_sum / union_sum


def test_overlap_of_identical_tracks_is_one() -> None:
    ts, boxes = _ts(20, 0.1), np.tile([5.0, 5.0, 10.0, 20.0], (20, 1))
    assert track_overlap(ts, boxes, ts, boxes) == 1.0


def test_overlap_disjoint_in_time_is_zero() -> None:
    boxes = np.tile([5.0, 5.0, 10.0, 20.0], (5, 1))
    assert track_overlap(_ts(5, 0.1), boxes, _ts(5, 0.1, t0=10), boxes) == 0.0
    assert track_overlap(_ts(5, 0.1, t0=10), boxes, _ts(5, 0.1), boxes) == 0.0


def test_overlap_half_shifted_boxes() -> None:
    # 10x10 boxes shifted by 5: intersection 50, union 150
    ts = _ts(4, 0.5)
    a = np.tile([0.0, 0.0, 10.0, 10.0], (4, 1))
    b = np.tile([5.0, 0.0, 10.0, 10.0], (4, 1))
    assert track_overlap(ts, a, ts, b) == pytest.approx(1 / 3)


def test_overlap_outside_b_span_counts_a_area_only() -> None:
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    a_ts, a = np.array([0.0, 1.0, 2.0, 3.0]), np.repeat(box, 4, axis=0)
    b_ts, b = np.array([1.0, 2.0]), np.repeat(box, 2, axis=0)
    assert track_overlap(a_ts, a, b_ts, b) == pytest.approx(200 / 400)
    assert track_overlap(b_ts, b, a_ts, a) == 1.0  # not symmetric


def test_overlap_uses_nearest_timestamp_earliest_on_ties() -> None:
    a_ts, a = np.array([1.0]), np.array([[0.0, 0.0, 10.0, 10.0]])
    b_ts = np.array([0.5, 1.5])
    b = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 10.0]])
    assert track_overlap(a_ts, a, b_ts, b) == 1.0  # tie -> the box at 0.5
    assert track_overlap(np.array([1.2]), a, b_ts, b) == pytest.approx(1 / 3)  # nearer 1.5


def test_overlap_matches_reference_loop_exactly() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        na, nb = rng.integers(1, 40, size=2)
        ts_a = np.sort(rng.uniform(0, 5, na))
        ts_b = np.sort(rng.choice(np.round(rng.uniform(0, 5, nb), 1), nb))  # repeats possible
        a = np.column_stack([rng.uniform(0, 50, (na, 2)), rng.uniform(1, 30, (na, 2))])
        b = np.column_stack([rng.uniform(0, 50, (nb, 2)), rng.uniform(1, 30, (nb, 2))])
        assert track_overlap(ts_a, a, ts_b, b) == _loop_overlap(ts_a, a, ts_b, b)


def _shifted(dx: float, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return _ts(n, 0.1), np.tile([dx, 0.0, 100.0, 100.0], (n, 1))


def test_dedup_keeps_one_of_two_identical_tracks() -> None:
    assert deduplicate_tracks([_shifted(0), _shifted(0)]) == [0]
    assert deduplicate_tracks([_shifted(0), _shifted(0), _shifted(500)]) == [0, 2]
    assert deduplicate_tracks([]) == []


def test_dedup_removed_tracks_remove_nothing() -> None:
    # overlap(shift 3) = 9700/10300 = 0.94 > 0.9; overlap(shift 6) = 9400/10600 = 0.89
    assert deduplicate_tracks([_shifted(0), _shifted(3), _shifted(6)]) == [0, 2]
    assert deduplicate_tracks([_shifted(0), _shifted(6)]) == [0, 1]
    assert deduplicate_tracks([_shifted(0), _shifted(3)], threshold=0.95) == [0, 1]


def test_dedup_earlier_track_wins_even_if_shorter() -> None:
    # the short track's every timestamp lies inside the long one: overlap(short, long) = 1,
    # overlap(long, short) = 5/20. The earlier-listed track is kept either way it can be.
    short = (_ts(5, 0.1, t0=0.5), np.tile([0.0, 0.0, 10.0, 10.0], (5, 1)))
    long = (_ts(20, 0.1), np.tile([0.0, 0.0, 10.0, 10.0], (20, 1)))
    assert deduplicate_tracks([short, long]) == [0]
    assert deduplicate_tracks([long, short]) == [0, 1]


def _reference_crops(ts, boxes, frame_hw, frame_times):
    """Reference: the released clips' geometry written out step by step, one frame at a time."""
    sigma = int(0.66 / np.diff(ts).mean())
    sm = np.stack([ndi.gaussian_filter(b, sigma) for b in boxes.T], 1)
    x, y, w, h = sm.copy().T
    cx, cy, ar = x + w / 2, y + h / 2, w / h
    target = min(max(ar.mean(), 2 / 3), 3 / 2)
    h[ar > target] = w[ar > target] / target
    w[ar < target] = h[ar < target] * target
    too_tall, too_wide = h > frame_hw[0], w > frame_hw[1]
    h[too_tall], w[too_tall] = frame_hw[0], frame_hw[0] * target
    w[too_wide], h[too_wide] = frame_hw[1], frame_hw[1] / target
    y = np.clip(cy - h / 2, 0, frame_hw[0] - h)
    x = np.clip(cx - w / 2, 0, frame_hw[1] - w)
    norm = np.stack([x, y, w, h], 1)
    crops = []
    for t in frame_times:
        later = np.where(ts > t)[0]
        if len(later) == 0:
            box = norm[-1]
        elif later[0] == 0:
            box = norm[0]
        else:
            k = later[0]
            alpha = (float(t) - ts[k - 1]) / (ts[k] - ts[k - 1])
            box = norm[k - 1] * (1 - alpha) + norm[k] * alpha
        bx, by, bw, bh = (int(v) for v in box)
        crops.append((bx, by, bx + bw, by + bh))
    size = (int(w.mean()) // 2 * 2, int(h.mean()) // 2 * 2)
    return crops, size


def test_plan_reproduces_reference_geometry() -> None:
    rng = np.random.default_rng(11)
    n = 96  # 6 s at 16 fps, a wandering box that sometimes leaves the 480x640 frame
    ts = 2.0 + np.arange(n) / 16
    walk = np.cumsum(rng.normal(0, 8, (n, 2)), axis=0) + [300, 200]
    size = np.abs(np.cumsum(rng.normal(0, 4, (n, 2)), axis=0) + [120, 260])
    boxes = np.column_stack([walk, size])
    frame_times = np.arange(1.9, 8.1, 1 / 29.97)
    expected, expected_size = _reference_crops(ts, boxes, (480, 640), frame_times)
    plan = plan_clip(ts, boxes, (480, 640))
    assert [tuple(c) for c in plan.boxes_at(frame_times).tolist()] == expected
    assert plan.out_size == expected_size


def test_box_at_is_boxes_at_for_one_time() -> None:
    """The scalar fast path gives exactly the vectorised boxes, at, between and beyond timestamps."""
    rng = np.random.default_rng(1)
    n = 120
    ts = np.round(np.cumsum(rng.uniform(0.02, 0.1, n)), 4)
    boxes = np.stack([rng.uniform(-50, 600, n), rng.uniform(-50, 400, n),
                      rng.uniform(0.5, 500, n), rng.uniform(0.5, 400, n)], axis=1)
    plan = plan_clip(ts, boxes, (480, 640))
    times = np.concatenate([ts, np.linspace(ts[0] - 1, ts[-1] + 1, 2001), [ts[0] - 1e-9, ts[-1] + 1e-9]])
    assert [plan.box_at(t) for t in times] == [tuple(b) for b in plan.boxes_at(times).tolist()]
    with pytest.raises(ValueError):
        plan.box_at(float("nan"))
