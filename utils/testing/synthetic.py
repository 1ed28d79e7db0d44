"""Deterministic synthetic videos with known ground truth, for tests, benchmarks and the
example: textured objects moving over textured backgrounds, with hard scene cuts at known
times, written as H.264 mp4.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from utils.core.video import VideoWriter


@dataclass(frozen=True)
class ObjectSpec:
    class_name: str
    size: tuple[int, int]  # (w, h) pixels
    start_xy: tuple[float, float]  # top-left at appearance
    end_xy: tuple[float, float]  # top-left at disappearance
    appear: float = 0.0  # seconds from the scene start
    disappear: float | None = None  # seconds from the scene start (None: scene end)


@dataclass(frozen=True)
class SceneSpec:
    duration: float
    objects: tuple[ObjectSpec, ...] = ()


@dataclass(frozen=True)
class GroundTruthBox:
    frame: int
    time: float
    scene: int
    identity: int  # unique over the whole video
    class_name: str
    xyxy: tuple[float, float, float, float]


@dataclass
class SyntheticVideo:
    path: Path
    width: int
    height: int
    fps: float
    duration: float
    num_frames: int
    cut_times: list[float]  # start times of scenes 2..n
    boxes: list[GroundTruthBox] = field(default_factory=list)

    def boxes_at_frame(self, frame: int) -> list[GroundTruthBox]:
        return [b for b in self.boxes if b.frame == frame]

    def boxes_at(self, time: float) -> list[GroundTruthBox]:
        """Ground truth of the frame displayed at ``time``."""
        return self.boxes_at_frame(int(round(time * self.fps)))

    def identities(self) -> dict[int, list[GroundTruthBox]]:
        out: dict[int, list[GroundTruthBox]] = {}
        for b in self.boxes:
            out.setdefault(b.identity, []).append(b)
        return out

    def scene_spans(self) -> list[tuple[float, float]]:
        edges = [0.0, *self.cut_times, self.duration]
        return list(zip(edges[:-1], edges[1:], strict=True))


def _seed_of(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def procedural_texture(class_name: str, size: tuple[int, int]) -> np.ndarray:
    """A deterministic, high-contrast texture per class name (stripes + blobs)."""
    w, h = size
    rng = np.random.default_rng(_seed_of("texture", class_name))
    colors = rng.integers(30, 226, size=(3, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    period = rng.integers(6, 14)
    angle = rng.uniform(0, np.pi)
    stripes = ((xx * np.cos(angle) + yy * np.sin(angle)) // period).astype(int) % 2
    img = np.where(stripes[..., None] == 1, colors[0], colors[1]).astype(np.uint8)
    border = max(2, min(w, h) // 12)
    img[:border] = img[-border:] = colors[2]
    img[:, :border] = img[:, -border:] = colors[2]
    return img


def _background(width: int, height: int, scene: int, seed: int) -> np.ndarray:
    """Smooth random background whose mean colour changes strongly from scene to scene."""
    rng = np.random.default_rng(_seed_of("background", scene, seed))
    small = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    base = np.array([[60, 90, 200], [200, 120, 40], [40, 170, 90], [170, 60, 150]][scene % 4], np.float32)
    return np.clip(0.45 * big + 0.55 * base, 0, 255).astype(np.uint8)


def default_scenes() -> list[SceneSpec]:
    """Three scenes (cuts at 4.0 s and 7.5 s) with objects that stay long and short."""
    return [
        SceneSpec(4.0, (
            ObjectSpec("cat", (80, 60), (10, 20), (200, 120)),
            ObjectSpec("cup", (50, 70), (250, 150), (120, 40), appear=0.5),
        )),
        SceneSpec(3.5, (
            ObjectSpec("rocket", (60, 90), (30, 100), (220, 20)),
            ObjectSpec("cup", (40, 40), (150, 180), (170, 170), appear=1.0, disappear=2.0),  # short
        )),
        SceneSpec(4.5, (
            ObjectSpec("person", (70, 110), (200, 60), (20, 90)),
        )),
    ]


def make_synthetic_video(
    path: str | Path,
    scenes: Sequence[SceneSpec] | None = None,
    width: int = 320,
    height: int = 240,
    fps: float = 25.0,
    keyframe_interval: float = 1.0,
    seed: int = 0,
    texture: Callable[[str, tuple[int, int]], np.ndarray] = procedural_texture,
) -> SyntheticVideo:
    """Write the video and return its ground truth. Boxes are exact: each object is pasted
    at integer pixel positions interpolated linearly over its lifetime."""
    scenes = list(default_scenes() if scenes is None else scenes)
    path = Path(path)
    video = SyntheticVideo(path, width, height, fps, 0.0, 0, [])
    textures: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
    frame_index = 0
    identity = 0
    with VideoWriter(path, width, height, fps, keyframe_interval=keyframe_interval, crf=18) as writer:
        for s, scene in enumerate(scenes):
            if s > 0:
                video.cut_times.append(round(frame_index / fps, 6))
            background = _background(width, height, s, seed)
            ids = list(range(identity, identity + len(scene.objects)))
            identity += len(scene.objects)
            n_frames = int(round(scene.duration * fps))
            for f in range(n_frames):
                t_local = f / fps
                image = background.copy()
                for obj, oid in zip(scene.objects, ids, strict=True):
                    end = scene.duration if obj.disappear is None else obj.disappear
                    if not obj.appear <= t_local < end:
                        continue
                    a = (t_local - obj.appear) / max(end - obj.appear, 1e-9)
                    x = int(round(obj.start_xy[0] + a * (obj.end_xy[0] - obj.start_xy[0])))
                    y = int(round(obj.start_xy[1] + a * (obj.end_xy[1] - obj.start_xy[1])))
                    w, h = obj.size
                    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
                    if x1 <= x0 or y1 <= y0:
                        continue
                    key = (obj.class_name, obj.size)
                    if key not in textures:
                        textures[key] = texture(obj.class_name, obj.size)
                    image[y0:y1, x0:x1] = textures[key][y0 - y:y1 - y, x0 - x:x1 - x]
                    video.boxes.append(GroundTruthBox(
                        frame_index, frame_index / fps, s, oid, obj.class_name,
                        (float(x0), float(y0), float(x1), float(y1)),
                    ))
                writer.write(image)
                frame_index += 1
    video.num_frames = frame_index
    video.duration = frame_index / fps
    return video
