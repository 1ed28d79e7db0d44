"""Box overlap (utils/core/boxes.py): the one IoU and NMS the tracker, the detectors, subset
curation and the MOT evaluation share, on literal boxes whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from utils.core.boxes import (
    iou_matrix,
    nms,
    paired_intersection_xywh,
    paired_iou_xywh,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

# ---------------------------------------------------------------------------- conventions


def test_xyxy_xywh_conversions_on_literal_boxes():
    xyxy = np.array([[1, 2, 4, 6], [0, 0, 0, 0], [5, 5, 5, 9]], dtype=np.float32)
    xywh = xyxy_to_xywh(xyxy)
    assert xywh.dtype == np.float32 and xywh.tolist() == [[1, 2, 3, 4], [0, 0, 0, 0], [5, 5, 0, 4]]
    assert xyxy.tolist()[0] == [1, 2, 4, 6]  # the input is left alone
    assert xywh_to_xyxy(xywh).tolist() == xyxy.tolist()
    assert xywh_to_xyxy(np.array([10.5, 20.0, 0.5, 1.0])).tolist() == [10.5, 20.0, 11.0, 21.0]  # one box
    assert xyxy_to_xywh(np.zeros((0, 4))).shape == (0, 4)


# ---------------------------------------------------------------------------- xyxy, pairwise


def test_iou_matrix_on_literal_boxes():
    a = [[0, 0, 10, 10], [0, 0, 4, 4]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [2, 2, 4, 4], [2, 2, 6, 6], [20, 20, 30, 30]]
    expected = [
        [1.0, 50 / 150, 4 / 100, 16 / 100, 0.0],
        [16 / 100, 0.0, 4 / 16, 4 / 28, 0.0],
    ]
    got = iou_matrix(np.array(a), np.array(b))
    assert got.shape == (2, 5) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(iou_matrix(b, a), np.transpose(expected), rtol=0, atol=1e-12)


def test_iou_matrix_degenerate_boxes_are_zero_never_nan():
    point = [5, 5, 5, 5]  # zero area
    line = [5, 0, 5, 10]  # zero width, inside the square
    inverted = [10, 10, 0, 0]  # x2 < x1: zero area, not a negative one
    square = [0, 0, 10, 10]
    got = iou_matrix(np.array([point, line, inverted, square]), np.array([point, line, square]))
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got[:3], 0.0)  # nothing overlaps a zero-area box, itself included
    np.testing.assert_array_equal(got[3], [0.0, 0.0, 1.0])


def test_iou_matrix_empty_and_flat_inputs():
    assert iou_matrix(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    assert iou_matrix(np.zeros((2, 4)), np.zeros((0, 4))).shape == (2, 0)
    assert iou_matrix([0, 0, 2, 2], [1, 0, 3, 2]).tolist() == [[2 / 6]]  # one box, flat


def test_iou_matrix_agrees_with_torchvision_on_proper_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (40, 2))], 1)
    ours = iou_matrix(boxes[:25], boxes[15:])
    theirs = box_iou(torch.from_numpy(boxes[:25]), torch.from_numpy(boxes[15:])).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert (ours > 0).any() and (ours == 0).any()  # both overlapping and disjoint pairs


# ---------------------------------------------------------------------------- xywh, paired


def test_paired_xywh_on_literal_boxes():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4], [0, 0, 10, 10]], dtype=np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [2, 2, 4, 4], [20, 20, 5, 5]], dtype=np.float64)
    np.testing.assert_allclose(paired_intersection_xywh(a, b), [100, 50, 4, 0], rtol=0, atol=0)
    np.testing.assert_allclose(paired_iou_xywh(a, b), [1.0, 50 / 150, 4 / 28, 0.0], rtol=0, atol=1e-15)
    # the same boxes as corners give the same IoU through the pairwise function
    to_xyxy = lambda w: np.concatenate([w[:, :2], w[:, :2] + w[:, 2:]], 1)  # noqa: E731
    np.testing.assert_allclose(np.diag(iou_matrix(to_xyxy(a), to_xyxy(b))), paired_iou_xywh(a, b), atol=1e-15)


def test_paired_xywh_degenerate_boxes_are_zero_never_nan():
    a = np.array([[3, 3, 0, 0], [3, 3, 0, 5], [0, 0, 10, 10]], dtype=np.float64)
    b = np.array([[3, 3, 0, 0], [3, 3, 0, 5], [4, 4, 0, 0]], dtype=np.float64)
    assert paired_intersection_xywh(a, b).tolist() == [0.0, 0.0, 0.0]
    iou = paired_iou_xywh(a, b)
    assert iou.tolist() == [0.0, 0.0, 0.0] and not np.isnan(iou).any()
    assert paired_iou_xywh(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0,)


# ---------------------------------------------------------------------------- NMS

# box 3 is box 0 with a higher score; IoU(0, 1) = 81 / 119 = 0.68; box 2 overlaps nothing
BOXES = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]]
SCORES = [0.9, 0.8, 0.7, 0.95]


def test_nms_on_literal_boxes():
    assert nms(BOXES, SCORES, 0.5).tolist() == [3, 2]
    assert nms(BOXES, SCORES, 0.7).tolist() == [3, 1, 2]  # 0.68 survives a 0.7 threshold
    assert nms(BOXES, SCORES, 0.5, class_ids=[0, 1, 0, 0]).tolist() == [3, 1, 2]  # 1 is another class
    assert nms(BOXES, SCORES, 1.0).tolist() == [3, 0, 1, 2]  # off: everything, by score
    assert nms(BOXES, SCORES, 0.5, max_det=1).tolist() == [3]
    tensors = nms(torch.tensor(BOXES, dtype=torch.float64), torch.tensor(SCORES), 0.5)
    assert tensors.dtype == np.int64 and tensors.tolist() == [3, 2]


def test_nms_keeps_zero_area_boxes_and_ties_in_input_order():
    # a zero-area box overlaps nothing, not even its twin: nothing suppresses it
    assert nms([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], [0.9, 0.8, 0.7], 0.5).tolist() == [0, 1, 2]
    assert nms([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], [0.5, 0.5, 0.5], 1.0).tolist() == [0, 1, 2]


def test_nms_rejects_malformed_inputs():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="nms needs boxes"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="nms needs boxes"):
        nms(np.zeros((3, 4)), np.zeros(2), 0.5)
