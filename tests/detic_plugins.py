"""DETIC with its proposals replaced by a synthetic video's ground truth, for tests.

A randomly initialised DETIC proposes random boxes; here its CenterNet proposal generator is
swapped for the ground-truth boxes of each frame (scaled, like the frame, to DETIC's test size)
and its cascade's box regression is zeroed, so DETIC's own output boxes are those boxes, carried
through the model, its post-processing and :class:`~utils.detect.detectors.detic.DeticDetector`'s
conversion back to frame pixels. Everything else (backbone, ROI heads, the three-stage class
scores, the box features, the text encoder) is the real random model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tests.tiny_models import GROUND_TRUTH_ENV, FixtureDetector
from utils.detect.detectors.base import Detections, check_frames
from utils.detect.detectors.detic import DeticDetector, DeticPreparedBatch

__all__ = ["DeticOnGroundTruthProposals"]


def _proposal_module(pending: list[tuple[np.ndarray, tuple[int, int]]]) -> Any:
    import torch
    from detectron2.structures import Boxes, Instances

    class GroundTruthProposals(torch.nn.Module):
        """Stands in for CenterNet: each image's pending boxes (frame pixels) scaled to the size
        the image was resized to, every one with proposal score 1."""

        def forward(self, images: Any, features: Any, gt_instances: Any = None) -> tuple[list[Any], dict]:
            out = []
            for (boxes, (h, w)), (ih, iw) in zip(pending, images.image_sizes, strict=True):
                scale = torch.tensor([iw / w, ih / h, iw / w, ih / h], dtype=torch.float32)
                inst = Instances((int(ih), int(iw)))
                xyxy = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale
                inst.proposal_boxes = Boxes(xyxy.to(images.tensor.device))
                inst.objectness_logits = torch.ones(len(xyxy), device=images.tensor.device)
                out.append(inst)
            return out, {}

    return GroundTruthProposals()


class DeticOnGroundTruthProposals(DeticDetector):
    """``DeticDetector`` (default ``weights="random:detic-swinb"``, score threshold 0) whose
    proposals are the ground truth that ``ground_truth`` (or ``$TRACKVERSE_TEST_GROUND_TRUTH``,
    written by :func:`tests.tiny_models.write_ground_truth`) gives for each frame's timestamp."""

    def __init__(self, class_names: Sequence[str], ground_truth: str | os.PathLike | None = None,
                 **options: Any) -> None:
        import torch

        options.setdefault("weights", "random:detic-swinb")
        options.setdefault("score_threshold", 0.0)
        super().__init__(class_names, **options)
        self.truth = FixtureDetector(self.class_names, ground_truth or os.environ.get(GROUND_TRUTH_ENV))
        self.pending: list[tuple[np.ndarray, tuple[int, int]]] = []
        self.model.proposal_generator = _proposal_module(self.pending)
        with torch.no_grad():
            for predictor in self.model.roi_heads.box_predictor:
                last = predictor.bbox_pred[-1] if isinstance(predictor.bbox_pred, torch.nn.Sequential) \
                    else predictor.bbox_pred
                last.weight.zero_()
                last.bias.zero_()

    def detect(self, frames: Sequence[np.ndarray] | DeticPreparedBatch,
               timestamps: Sequence[float] | None = None) -> list[Detections]:
        shapes = frames.shapes if isinstance(frames, DeticPreparedBatch) else [f.shape[:2] for f in check_frames(frames)]
        blanks = [np.zeros((h, w, 3), np.uint8) for h, w in shapes]
        truth = self.truth.detect(blanks, timestamps)
        if isinstance(frames, DeticPreparedBatch):
            batch = frames
        else:
            batch = self.prepare(frames)
        out: list[Detections] = []
        for i in range(len(batch)):  # one frame per forward pass: its own proposals
            self.pending[:] = [(truth[i].xyxy, shapes[i])]
            out.extend(super().detect(batch[i : i + 1]))
        return out
