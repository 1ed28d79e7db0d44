"""Box overlap shared by the tracker, the detectors' NMS, subset curation and MOT evaluation.

Two conventions: ``xyxy`` (corners: detectors and the tracker) and ``xywh`` (top-left corner
and size: the metadata record's ``track_bbox``). A pair whose union is empty (two zero-area
boxes) has IoU 0, never NaN. IoU stays in float64 numpy (per-frame sizes, where a round trip
through torch costs more than it saves); NMS is torchvision's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["iou_matrix", "nms", "paired_intersection_xywh", "paired_iou_xywh", "xywh_to_xyxy", "xyxy_to_xywh"]


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[x1, y1, x2, y2]`` -> ``[x, y, w, h]`` along the last axis (a new array, same dtype)."""
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` along the last axis (a new array, same dtype)."""
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """Pairwise IoU of ``(K, 4)`` and ``(N, 4)`` xyxy boxes -> ``(K, N)`` float64.

    A box with ``x2 < x1`` or ``y2 < y1`` has zero area."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def paired_intersection_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of paired ``[x, y, w, h]`` boxes, ``(n, 4)`` each -> ``(n,)``."""
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    return np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)


def paired_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired ``[x, y, w, h]`` boxes, ``(n, 4)`` each -> ``(n,)``; 0 where the union is empty."""
    inter = paired_intersection_xywh(a, b)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(
    xyxy: Any,
    scores: Any,
    iou_threshold: float,
    class_ids: Any | None = None,
    max_det: int | None = None,
) -> np.ndarray:
    """Indices of the boxes non-maximum suppression keeps, by decreasing score.

    Class-agnostic unless ``class_ids`` is given (then boxes of different classes never
    suppress each other). ``iou_threshold`` >= 1 keeps every box (sorted, ties in input
    order). Inputs may be numpy arrays or torch tensors; the result is an int64 numpy array.
    """
    import torch  # imported here: core stays importable without loading torch
    from torchvision.ops import batched_nms
    from torchvision.ops import nms as tv_nms

    boxes = torch.as_tensor(np.asarray(xyxy, dtype=np.float32) if not torch.is_tensor(xyxy) else xyxy).float()
    sc = torch.as_tensor(np.asarray(scores, dtype=np.float32) if not torch.is_tensor(scores) else scores).float()
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or sc.shape != boxes.shape[:1]:
        raise ValueError(f"nms needs boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(sc.shape)}")
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    if iou_threshold >= 1.0:
        keep = torch.argsort(sc, descending=True, stable=True)
    elif class_ids is None:
        keep = tv_nms(boxes, sc, float(iou_threshold))
    else:
        ids = torch.as_tensor(np.asarray(class_ids) if not torch.is_tensor(class_ids) else class_ids).long()
        keep = batched_nms(boxes, sc, ids.to(boxes.device), float(iou_threshold))
    if max_det is not None:
        keep = keep[: int(max_det)]
    return keep.cpu().numpy().astype(np.int64)
