"""The small end-to-end example (example.py): videos made of real photographs moving over
textured backgrounds, and a template-matching detector that finds those photographs and encodes
text into the space of its box embeddings (so relabel_tracks.py and search_tracks.py run offline).

The photographs are scikit-image's bundled samples (a cat, a coffee cup, a rocket, an
astronaut), so a real open-vocabulary detector (OWLv2) has something to find, and the
template detector gives a deterministic, offline stand-in for CI and machines without weights.
"""

from __future__ import annotations

import functools
import hashlib
import re
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


# Words that name each photograph's class, in any text (a prompt line, its "also known as" synonyms, a query).
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "cat": ("cat", "cats", "kitten", "kitty", "domestic cat", "house cat"),
    "coffee cup": ("coffee cup", "cup", "mug", "coffee"),
    "rocket": ("rocket", "spacecraft", "spaceship"),
    "person": ("person", "people", "human", "astronaut", "man", "woman"),
}
_CLASS_PATTERNS = {c: re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
                   for c, words in CLASS_WORDS.items()}
# The embedding space: one axis per photograph's class (what a box found by that photograph
# carries, and what a text naming that class points at), then the box's colour histogram
# (appearance, for the tracker), then axes only texts naming no photograph use: such a text
# scores exactly 0 against every track.
CLASS_AXES = tuple(PHOTOS)
HISTOGRAM_BINS = 8 * 8 * 8
OTHER_TEXT_AXES = 64
EMBEDDING_DIM = len(CLASS_AXES) + HISTOGRAM_BINS + OTHER_TEXT_AXES


def classes_named(text: str) -> list[str]:
    """The photographs' classes ``text`` names (``"an astronaut"`` -> ``["person"]``), in
    :data:`CLASS_AXES` order; empty when it names none."""
    return [c for c in CLASS_AXES if _CLASS_PATTERNS[c].search(text)]


def text_embedding(text: str) -> np.ndarray:
    """The unit direction of ``text`` in the template detector's embedding space: the mean of the
    axes of the classes it names, else a direction of its own among the axes no box carries."""
    vector = np.zeros(EMBEDDING_DIM, np.float32)
    named = classes_named(text)
    if named:
        for c in named:
            vector[CLASS_AXES.index(c)] = 1.0
    else:
        digest = hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).digest()
        other = np.frombuffer(digest * (OTHER_TEXT_AXES // len(digest) + 1), np.uint8)[:OTHER_TEXT_AXES]
        vector[-OTHER_TEXT_AXES:] = other.astype(np.float32) - 127.5
    return vector / np.linalg.norm(vector)


def box_embedding(class_name: str, crop: np.ndarray) -> np.ndarray:
    """What a box of ``class_name``'s photograph carries: its class axis and the crop's colour
    histogram (unit length), with equal weight; unit length overall."""
    hist = cv2.calcHist([crop], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
    vector = np.zeros(EMBEDDING_DIM, np.float32)
    vector[CLASS_AXES.index(class_name)] = 1.0
    vector[len(CLASS_AXES):len(CLASS_AXES) + HISTOGRAM_BINS] = hist / max(float(np.linalg.norm(hist)), 1e-12)
    return vector / np.linalg.norm(vector)


class TemplateDetector(Detector):
    """Finds the example's photographs by normalised cross-correlation (OpenCV), at the
    scale they were pasted in frames of the example's size (any frame size is rescaled).

    A class of the vocabulary is searched for with the photograph its text names
    (:data:`CLASS_WORDS`: ``"mug"`` finds the coffee cup); a class naming none is never found.
    Score = correlation; logits favour the classes naming the matched photograph. Embedding: the
    photograph's class axis plus the box's colour histogram; :meth:`embed_text` puts any text in
    the same space (:func:`text_embedding`), so relabel_tracks.py and search_tracks.py work on
    this detector's tracks, offline."""

    name = "example_templates"

    def __init__(self, class_names: Sequence[str], threshold: float = 0.7, max_per_class: int = 3,
                 prompts: Sequence[str] | None = None, **_options: object):
        self.class_names = [str(c) for c in class_names]
        self.prompts = [str(p) for p in prompts] if prompts is not None else list(self.class_names)
        if len(self.prompts) != len(self.class_names):
            raise ValueError(f"{len(self.prompts)} prompts for {len(self.class_names)} classes")
        self.weights_id = None
        # photograph -> the classes (vocabulary indices) whose text names it
        self.searched: dict[str, list[int]] = {}
        for c, text in enumerate(self.prompts):
            for photo_class in classes_named(text):
                self.searched.setdefault(photo_class, []).append(c)
        self.threshold = threshold
        self.max_per_class = max_per_class

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), EMBEDDING_DIM) unit rows: each text's direction (:func:`text_embedding`)."""
        return np.stack([text_embedding(t) for t in texts]) if texts else np.zeros((0, EMBEDDING_DIM), np.float32)

    def detect(self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None) -> list[Detections]:
        return [self._detect_one(frame) for frame in frames]

    def _detect_one(self, frame: np.ndarray) -> Detections:
        h, w = frame.shape[:2]
        scale = w / WIDTH
        size = (max(8, round(OBJECT_SIZE[0] * scale)), max(8, round(OBJECT_SIZE[1] * scale)))
        boxes, scores, logits, embeddings = [], [], [], []
        for photo_class, classes in self.searched.items():
            response = cv2.matchTemplate(frame, photo(photo_class, size), cv2.TM_CCOEFF_NORMED)
            for _ in range(self.max_per_class):
                y, x = np.unravel_index(int(response.argmax()), response.shape)
                best = float(response[y, x])
                if best < self.threshold:
                    break
                boxes.append([x, y, x + size[0], y + size[1]])
                scores.append(min(best, 1.0))
                row = np.full(len(self.class_names), -6.0, np.float32)
                row[classes] = 12.0 * (best - 0.5)
                logits.append(row)
                embeddings.append(box_embedding(photo_class, frame[y:y + size[1], x:x + size[0]]))
                response[max(0, y - size[1] // 2):y + size[1] // 2, max(0, x - size[0] // 2):x + size[0] // 2] = -1
        if not boxes:
            return Detections.empty(len(self.class_names), EMBEDDING_DIM)
        return Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.stack(logits),
                          l2_normalize(np.asarray(embeddings, np.float32)))
