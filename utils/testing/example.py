"""The small end-to-end example (example.py): videos made of real photographs moving over
textured backgrounds, and a template-matching detector that finds those photographs.

The photographs are scikit-image's bundled samples (a cat, a coffee cup, a rocket, an
astronaut), so a real open-vocabulary detector (OWLv2) has something to find, and the
template detector gives a deterministic, offline stand-in for CI and machines without weights.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.detect.detectors.base import Detections, Detector, l2_normalize
from utils.testing.synthetic import ObjectSpec, SceneSpec, make_synthetic_video

# class name (as in the prompts file) -> scikit-image sample
PHOTOS = {"cat": "chelsea", "coffee cup": "coffee", "rocket": "rocket", "person": "astronaut"}
PROMPTS = [
    "cat (also known as domestic cat, house cat)",
    "coffee cup (also known as mug)",
    "rocket (also known as spacecraft)",
    "person (also known as human, astronaut)",
    "dog (also known as domestic dog)",
    "car (also known as automobile)",
]
WIDTH, HEIGHT, FPS = 480, 270, 25.0
OBJECT_SIZE = (130, 120)  # (w, h): 12% of the frame, above the 10% area filter


@functools.lru_cache(maxsize=16)
def photo(class_name: str, size: tuple[int, int]) -> np.ndarray:
    """The class's photograph resized to ``size`` = (w, h), RGB uint8."""
    import skimage.data

    image = getattr(skimage.data, PHOTOS[class_name])()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.resize(image[..., :3], size, interpolation=cv2.INTER_AREA)


def _texture(class_name: str, size: tuple[int, int]) -> np.ndarray:
    return photo(class_name, size)


@dataclass(frozen=True)
class ExampleVideo:
    yid: str
    scenes: tuple[SceneSpec, ...]


def example_videos() -> list[ExampleVideo]:
    """Three short videos; the second has a hard cut, so two segments."""
    w, h = OBJECT_SIZE
    return [
        ExampleVideo("exampleCat1", (SceneSpec(7.0, (
            ObjectSpec("cat", (w, h), (10, 20), (300, 120)),
            ObjectSpec("coffee cup", (w, h), (340, 140), (60, 130), appear=0.5),
        )),)),
        ExampleVideo("exampleRkt2", (
            SceneSpec(5.0, (ObjectSpec("rocket", (w, h), (20, 140), (330, 20)),)),
            SceneSpec(5.0, (ObjectSpec("person", (w, h), (330, 60), (30, 110)),)),
        )),
        ExampleVideo("examplePpl3", (SceneSpec(6.0, (
            ObjectSpec("person", (w, h), (20, 40), (200, 130)),
            ObjectSpec("cat", (w, h), (320, 120), (300, 10)),
        )),)),
    ]


def make_example_videos(folder: Path) -> list[Path]:
    """Write ``<folder>/<yid>.mp4`` for every example video (720p-like H.264, 25 fps)."""
    paths = []
    for i, video in enumerate(example_videos()):
        path = folder / f"{video.yid}.mp4"
        if not path.exists():
            make_synthetic_video(path, list(video.scenes), width=WIDTH, height=HEIGHT, fps=FPS, seed=i,
                                 keyframe_interval=2.0, texture=_texture)
        paths.append(path)
    return paths


class TemplateDetector(Detector):
    """Finds the example's photographs by normalised cross-correlation (OpenCV), at the
    scale they were pasted in frames of the example's size (any frame size is rescaled).
    Score = correlation; logits favour the matched class; embedding = colour histogram.
    Only classes with an example photograph can be found."""

    name = "example_templates"

    def __init__(self, class_names: Sequence[str], threshold: float = 0.7, max_per_class: int = 3,
                 **_options: object):
        from utils.records.prompts import label_of

        self.class_names = [str(c) for c in class_names]
        self.prompts = list(self.class_names)
        self.weights_id = None
        self.labels = [label_of(c) for c in self.class_names]
        self.threshold = threshold
        self.max_per_class = max_per_class

    def detect(self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None) -> list[Detections]:
        return [self._detect_one(frame) for frame in frames]

    def _detect_one(self, frame: np.ndarray) -> Detections:
        h, w = frame.shape[:2]
        scale = w / WIDTH
        size = (max(8, round(OBJECT_SIZE[0] * scale)), max(8, round(OBJECT_SIZE[1] * scale)))
        boxes, scores, logits, embeddings = [], [], [], []
        for c, label in enumerate(self.labels):
            if label not in PHOTOS:
                continue
            response = cv2.matchTemplate(frame, photo(label, size), cv2.TM_CCOEFF_NORMED)
            for _ in range(self.max_per_class):
                y, x = np.unravel_index(int(response.argmax()), response.shape)
                best = float(response[y, x])
                if best < self.threshold:
                    break
                boxes.append([x, y, x + size[0], y + size[1]])
                scores.append(min(best, 1.0))
                row = np.full(len(self.class_names), -6.0, np.float32)
                row[c] = 12.0 * (best - 0.5)
                logits.append(row)
                crop = frame[y:y + size[1], x:x + size[0]]
                hist = cv2.calcHist([crop], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
                embeddings.append(hist)
                response[max(0, y - size[1] // 2):y + size[1] // 2, max(0, x - size[0] // 2):x + size[0] // 2] = -1
        if not boxes:
            return Detections.empty(len(self.class_names), 512)
        return Detections(
            np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.stack(logits),
            l2_normalize(np.asarray(embeddings, np.float32)),
        )
