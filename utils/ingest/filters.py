"""Optional content filters for scene segments (pipeline step 3): cartoons and low aesthetics.

- **cartoon**: the original TrackVerse ResNet-18 two-class classifier (class 0 = cartoon) on
  frames sampled at 2 fps from the first 8 s of a segment (Resize 256, CenterCrop 224,
  ImageNet normalisation); the segment is dropped when the mean cartoon logit wins over the
  mean logit of the other class.
- **aesthetics**: CLIP ViT-L/14 image embedding (open_clip, OpenAI weights, QuickGELU as
  trained), L2-normalised, through the LAION linear aesthetic head (the original's
  ``aesthetic_predictor_vit_l14_linear.pth``, byte-identical to LAION's
  ``sa_0_4_vit_l_14_linear.pth``); the mean over the same frames must reach 4.0.

Weights come from their public locations, verified and cached (:data:`WEIGHTS`), or from a
local path; ``"random"`` builds the same architecture with seeded random weights (tests).
Scores are recorded per segment (:func:`apply_filters` fills ``SegmentCandidate.scores``) so
that :func:`rethreshold` can apply other thresholds later without recomputing anything;
:func:`verdict` is the one place where scores become "keep" or "drop".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.core.assets import AssetError, cache_root, fetch_verified
from utils.core.models import IMAGENET_MEAN, IMAGENET_STD, torch_device
from utils.core.network import hub_cache_dir, hub_endpoint, hub_offline, unreachable
from utils.core.video import VideoError, read_frames
from utils.ingest.scenes import SegmentCandidate

log = logging.getLogger(__name__)

__all__ = [
    "CARTOON_CLASS",
    "WEIGHTS",
    "AestheticScorer",
    "CartoonClassifier",
    "FilterSettings",
    "WeightsError",
    "apply_filters",
    "resolve_clip_weights",
    "resolve_weights",
    "rethreshold",
    "sample_segment_frames",
    "verdict",
]

CARTOON_CLASS = 0  # the original tests ``mean_logits[0]``: index 0 is "cartoon"
DEFAULT_MIN_AESTHETIC_SCORE = 4.0
RANDOM = "random"


class WeightsError(AssetError):
    """Model weights that cannot be found, fetched or loaded (a systemic fault)."""


@dataclass(frozen=True)
class WeightSource:
    """A public weights file: where to get it and how to know it is the right one."""

    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    git_blob_sha1: str | None = None  # the id git gives the file: sha1("blob <size>\\0" + bytes)

    def check(self, data: bytes) -> None:
        if self.sha256 and hashlib.sha256(data).hexdigest() != self.sha256:
            raise WeightsError(f"{self.filename}: sha256 mismatch (expected {self.sha256})")
        if self.git_blob_sha1:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            if blob != self.git_blob_sha1:
                raise WeightsError(f"{self.filename}: git blob id {blob} is not {self.git_blob_sha1}")


_TRACKVERSE_V1 = "https://raw.githubusercontent.com/MMPLab/TrackVerse/66a8b6dbc78dcd28ac408c17b352ccb98dde6bdc"
_LAION_AESTHETIC = "https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/6d122adad522ab246644d9dc1c6d7a3810ee255f"

WEIGHTS: dict[str, WeightSource] = {
    # The original's cartoon classifier (branch v1 of the TrackVerse repository).
    "trackverse": WeightSource(
        "cartoon_detector.pth",
        (f"{_TRACKVERSE_V1}/assets/cartoon_detector.pth",),
        git_blob_sha1="3352177d037c59842ee356762e087bd5b575155d",
    ),
    # LAION's linear aesthetic head for CLIP ViT-L/14; the TrackVerse copy is the same file.
    "laion": WeightSource(
        "sa_0_4_vit_l_14_linear.pth",
        (f"{_LAION_AESTHETIC}/sa_0_4_vit_l_14_linear.pth",
         f"{_TRACKVERSE_V1}/assets/aesthetic_predictor_vit_l14_linear.pth"),
        sha256="2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba",
        git_blob_sha1="d4135b63efbaac587bcb1cdfa02ac082071a5e40",
    ),
}
CLIP_ARCH = "ViT-L-14"
CLIP_HUB_REPO = "timm/vit_large_patch14_clip_224.openai"  # where open_clip fetches pretrained="openai"
CLIP_HUB = f"https://huggingface.co/{CLIP_HUB_REPO}"
_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def weights_cache_dir() -> Path:
    """``weights`` under the project's cache root (:func:`utils.core.assets.cache_root`)."""
    return cache_root() / "weights"


def resolve_weights(spec: str, what: str, cache_dir: Path | None = None) -> Path | None:
    """A weights file from ``spec``: a known name (:data:`WEIGHTS`, fetched once and cached),
    an http(s) URL (cached), a local file, or ``"random"`` (returns None)."""
    if spec == RANDOM:
        return None
    cache_dir = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    if spec in WEIGHTS:
        return _fetch(WEIGHTS[spec], cache_dir, what)
    if spec.startswith(("http://", "https://")):
        name = spec.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "weights.pth"
        digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
        return _fetch(WeightSource(f"{digest}-{name}", (spec,)), cache_dir, what)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    known = ", ".join(sorted(WEIGHTS))
    raise WeightsError(f"{what} weights {spec!r}: not a file, an http(s) URL, {RANDOM!r} or a known name ({known})")


# flag that passes a local copy, flag that skips the filter: named in offline messages
_FLAGS = {
    "cartoon classifier": ("--cartoon_weights", "--skip_cartoon_filter"),
    "aesthetic head": ("--aesthetics_head_weights", "--skip_aesthetics_filter"),
    "CLIP ViT-L/14": ("--aesthetics_clip_weights", "--skip_aesthetics_filter"),
}


def _offline_options(what: str, url: str, where: Path | str) -> str:
    flag, skip = _FLAGS.get(what, ("the weights flag", None))
    text = f"Offline options: download {url} on a connected machine and pass it with {flag} FILE (or put it at {where})"
    return text + (f"; or leave this filter out with {skip}" if skip else "")


def _fetch(source: WeightSource, cache_dir: Path, what: str) -> Path:
    target = cache_dir / source.filename
    if target.is_file():
        return target
    hint = _offline_options(what, source.urls[0], target)
    # A quick question first: a host that does not answer would otherwise cost fetch_verified's
    # long read timeout for each address.
    reachable, down = [], []
    for url in source.urls:
        why = unreachable(url)
        if why:
            down.append(f"{url}: {why}")
        else:
            reachable.append(url)
    if not reachable:
        raise WeightsError(f"cannot fetch {what} weights {source.filename}: no host answers "
                           f"({'; '.join(down)}). {hint}")
    try:
        return fetch_verified(reachable, target, source.check, f"{what} weights {source.filename}", hint)
    except AssetError as exc:
        raise WeightsError(str(exc)) from exc


def _cached_clip_checkpoint() -> str | None:
    """The open_clip checkpoint of CLIP ViT-L/14 (OpenAI) in the Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in _CLIP_HUB_FILES:
        found = try_to_load_from_cache(CLIP_HUB_REPO, filename)
        if isinstance(found, str):
            return found
    return None


def resolve_clip_weights(spec: str, cache_dir: Path | None = None) -> str | None:
    """What open_clip is given for CLIP ViT-L/14 ``spec``, decided in seconds: None for
    ``"random"``; ``"openai"`` when the Hugging Face hub answers; the cached checkpoint's path
    when it does not (or with ``HF_HUB_OFFLINE=1``); a local file or URL as
    :func:`resolve_weights`. Raises WeightsError, with the offline options, when none works."""
    if spec == RANDOM:
        return None
    if spec != "openai":
        return str(resolve_weights(spec, "CLIP ViT-L/14", cache_dir))
    offline = hub_offline()
    why = None if offline else unreachable(hub_endpoint())
    if not offline and why is None:
        return "openai"
    cached = _cached_clip_checkpoint()
    if cached:
        if why:
            log.warning("the Hugging Face hub is unreachable (%s): using the cached CLIP %s", why, cached)
        return cached
    reason = "HF_HUB_OFFLINE is set" if offline else f"the Hugging Face hub ({hub_endpoint()}) is unreachable ({why})"
    raise WeightsError(
        f"cannot fetch CLIP {CLIP_ARCH} weights 'openai': {reason} and they are not in its cache "
        f"({hub_cache_dir()}). Offline options: on a connected machine `hf download {CLIP_HUB_REPO} "
        f"{_CLIP_HUB_FILES[0]}` and copy its Hugging Face cache (HF_HOME) here, or pass the file with "
        "--aesthetics_clip_weights FILE; or leave this filter out with --skip_aesthetics_filter"
    )


def _load_state_dict(path: Path, what: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{what} weights {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{what} weights {path} are not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _frozen_module(build: Callable[[], Any], seed: int, path: Path | None, what: str, shape: str) -> Any:
    """``build()`` with torch seeded (random weights are reproducible when no file is given),
    then the state dict at ``path`` loaded into it; a file that does not fit ``shape`` is a
    WeightsError naming both."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    if path is not None:
        try:
            module.load_state_dict(_load_state_dict(path, what))
        except RuntimeError as exc:
            raise WeightsError(f"{what} weights {path} do not fit {shape}: {exc}") from exc
    return module.eval()


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class CartoonClassifier:
    """The original's ResNet-18 with a two-class head; ``logits(frames)`` is (N, 2)."""

    def __init__(self, weights: str = "trackverse", device: str = "auto", batch_size: int = 16,
                 cache_dir: Path | None = None):
        import torch
        from torchvision.models import resnet18

        self.device = torch_device(device)
        self.batch_size = max(1, batch_size)
        path = resolve_weights(weights, "cartoon classifier", cache_dir)

        def build() -> Any:
            model = resnet18(weights=None)
            model.fc = torch.nn.Linear(model.fc.in_features, 2)
            return model

        model = _frozen_module(build, 0, path, "cartoon classifier", "a 2-class ResNet-18")
        self.model = model.to(self.device)
        self.weights = weights
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _prepare(self, frames: Sequence[np.ndarray]) -> Any:
        import torch
        from torchvision.transforms.v2 import functional as F

        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).to(self.device)
        x = F.resize(x, 256, antialias=True)
        x = F.center_crop(x, [224, 224])
        return (x.float() / 255.0 - self._mean) / self._std

    def logits(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if not len(frames):
            return np.zeros((0, 2), np.float32)
        out = []
        with torch.inference_mode():
            for batch in _batches(frames, self.batch_size):
                out.append(self.model(self._prepare(batch)).float().cpu().numpy())
        return np.concatenate(out)


class AestheticScorer:
    """CLIP ViT-L/14 image embedding + linear aesthetic head; ``scores(frames)`` is (N,)."""

    def __init__(self, clip_weights: str = "openai", head_weights: str = "laion", device: str = "auto",
                 batch_size: int = 16, cache_dir: Path | None = None):
        import open_clip
        import torch

        self.device = torch_device(device)
        self.batch_size = max(1, batch_size)
        pretrained = resolve_clip_weights(clip_weights, cache_dir)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    CLIP_ARCH, pretrained=pretrained, force_quick_gelu=True)
        except Exception as exc:  # download or checkpoint errors come in many types
            raise WeightsError(
                f"cannot load CLIP {CLIP_ARCH} weights {clip_weights!r} ({type(exc).__name__}: {exc}). "
                f"Without network, download the open_clip checkpoint of {CLIP_HUB} on a connected machine "
                "and pass it with --aesthetics_clip_weights, or reuse that machine's Hugging Face cache (HF_HOME)"
            ) from exc
        self.visual = model.visual.eval().to(self.device)  # the text tower is not needed
        del model
        self.preprocess = preprocess
        head_path = resolve_weights(head_weights, "aesthetic head", cache_dir)
        dim = self.visual.output_dim
        head = _frozen_module(lambda: torch.nn.Linear(dim, 1), 1, head_path, "aesthetic head", f"Linear({dim}, 1)")
        self.head = head.to(self.device)
        self.clip_weights, self.head_weights = clip_weights, head_weights

    def scores(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        if not len(frames):
            return np.zeros((0,), np.float32)
        out = []
        with torch.inference_mode():
            for batch in _batches(frames, self.batch_size):
                x = torch.stack([self.preprocess(Image.fromarray(f)) for f in batch]).to(self.device)
                emb = self.visual(x).float()
                emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                out.append(self.head(emb).squeeze(-1).float().cpu().numpy())
        return np.concatenate(out)


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class FilterSettings:
    """Which filters run and their thresholds; frames at ``fps`` from the first ``seconds``."""

    cartoon: bool = True
    aesthetics: bool = True
    min_aesthetic_score: float = DEFAULT_MIN_AESTHETIC_SCORE
    fps: float = 2.0
    seconds: float = 8.0

    @property
    def any(self) -> bool:
        return self.cartoon or self.aesthetics


def verdict(scores: dict[str, Any], settings: FilterSettings) -> str | None:
    """Why a segment with these scores is dropped (``cartoon``, ``low_aesthetics``,
    ``no_frames``), or None to keep it. Filters that are off, or were not scored, pass."""
    if not settings.any:
        return None
    if scores.get("frames", 0) == 0 and ("cartoon_logits" in scores or "aesthetic_score" in scores):
        return "no_frames"
    logits = scores.get("cartoon_logits")
    if settings.cartoon and logits is not None:
        others = [v for i, v in enumerate(logits) if i != CARTOON_CLASS]
        if logits[CARTOON_CLASS] > max(others):
            return "cartoon"
    aesthetic = scores.get("aesthetic_score")
    if settings.aesthetics and aesthetic is not None and aesthetic < settings.min_aesthetic_score:
        return "low_aesthetics"
    return None


def sample_segment_frames(path: str | os.PathLike, start: float, end: float, fps: float = 2.0,
                          seconds: float = 8.0) -> list[np.ndarray]:
    """RGB frames at ``fps`` from the first ``seconds`` of ``[start, end)``."""
    return [f.image for f in read_frames(path, fps=fps, start=start, end=min(end, start + seconds))]


def apply_filters(
    path: str | os.PathLike,
    candidates: list[SegmentCandidate],
    settings: FilterSettings,
    cartoon: CartoonClassifier | None = None,
    aesthetic: AestheticScorer | None = None,
) -> None:
    """Score every segment that survived the length rules with the enabled models (both
    scores are kept even when the first already drops it, for later re-thresholding), then
    set each one's verdict."""
    for candidate in candidates:
        if not candidate.kept or not settings.any:
            continue
        try:
            frames = sample_segment_frames(path, candidate.start, candidate.end, settings.fps, settings.seconds)
        except VideoError as exc:
            log.warning("%s: segment %.3f-%.3f: %s", path, candidate.start, candidate.end, exc)
            frames = []
        scores: dict[str, Any] = {"frames": len(frames)}
        if settings.cartoon and cartoon is not None:
            logits = cartoon.logits(frames)
            scores["cartoon_logits"] = [round(float(v), 5) for v in logits.mean(0)] if len(logits) else None
        if settings.aesthetics and aesthetic is not None:
            values = aesthetic.scores(frames)
            scores["aesthetic_score"] = round(float(values.mean()), 5) if len(values) else None
        candidate.scores.update(scores)
        candidate.reason = verdict(candidate.scores, settings)


def rethreshold(
    sidecar: str | os.PathLike | dict[str, Any],
    min_aesthetic_score: float | None = None,
    cartoon: bool | None = None,
    aesthetics: bool | None = None,
) -> list[tuple[float, float]]:
    """Segments a video would keep under other thresholds, from its scores sidecar (what
    download_videos.py writes beside the video) without decoding or running any model.
    Arguments left at None keep the values the sidecar was made with."""
    record = sidecar if isinstance(sidecar, dict) else json.loads(Path(sidecar).read_text())
    made_with = record.get("filters", {})
    settings = FilterSettings(
        cartoon=made_with.get("cartoon", False) if cartoon is None else cartoon,
        aesthetics=made_with.get("aesthetics", False) if aesthetics is None else aesthetics,
        min_aesthetic_score=(made_with.get("min_aesthetic_score", DEFAULT_MIN_AESTHETIC_SCORE)
                             if min_aesthetic_score is None else min_aesthetic_score),
    )
    kept = []
    for segment in record.get("segments", []):
        if segment.get("reason") == "too_short":
            continue
        scores = segment.get("scores", {})
        for wanted, key in ((settings.cartoon, "cartoon_logits"), (settings.aesthetics, "aesthetic_score")):
            if wanted and key not in scores:
                raise ValueError(f"the sidecar has no {key} (that filter was skipped when it was made): "
                                 "re-run the stage on this video with the filter enabled")
        if verdict(scores, settings) is None:
            kept.append((segment["start"], segment["end"]))
    return kept
