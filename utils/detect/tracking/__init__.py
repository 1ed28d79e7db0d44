"""Multi-object tracking: ByteTrack with motion + appearance association."""

from utils.core.boxes import iou_matrix
from utils.detect.tracking.bytetrack import ByteTracker, TrackHistory, TrackOutput, TrackState
from utils.detect.tracking.kalman import KalmanBoxFilter, xyah_to_xyxy, xyxy_to_xyah

__all__ = [
    "ByteTracker",
    "KalmanBoxFilter",
    "TrackHistory",
    "TrackOutput",
    "TrackState",
    "iou_matrix",
    "xyah_to_xyxy",
    "xyxy_to_xyah",
]
