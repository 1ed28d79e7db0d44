"""Open-vocabulary object detectors behind one interface.

    from utils.detect.detectors import make_detector
    detector = make_detector("owlv2", class_names, batch_size=8)
    per_frame = detector.detect(frames)            # list[Detections], boxes in source pixels

Backends: ``owlv2`` (default, transformers), ``detic`` (detectron2, optional, see
docs/detic.md), plug-ins registered by name when imported (the test and example detectors), or any ``"package.module:callable"``.
Backend modules are imported only when built, so importing this package stays cheap.
"""

from utils.core.boxes import nms
from utils.detect.detectors.base import (
    Detections,
    Detector,
    DetectorError,
    check_frames,
    l2_normalize,
    nms_detections,
)
from utils.detect.detectors.registry import available_detectors, make_detector, register_detector
from utils.records.prompts import vocabulary_hash

DEFAULT_DETECTOR = "owlv2"

__all__ = [
    "DEFAULT_DETECTOR",
    "Detections",
    "Detector",
    "DetectorError",
    "available_detectors",
    "check_frames",
    "l2_normalize",
    "make_detector",
    "nms",
    "nms_detections",
    "register_detector",
    "vocabulary_hash",
]
