"""Per-track visual metrics (step 5a), computed from a clip.

- ``motion``: optical-flow magnitude quantiles (0, .1, .25, .5, .75, .9, 1) over frame pairs of
  the clip sampled at 16 fps, a pair every 4 frames, short side 360 px; per track the mean of
  each quantile over its pairs. RAFT (torchvision) on GPU, OpenCV DIS on CPU.
- ``embeddings``: ResNet-50 (ImageNet) penultimate features of the clip's keyframes at
  224x224, averaged, L2-normalised (2048-d).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

from utils.core.errors import SystemicError
from utils.core.models import IMAGENET_MEAN, IMAGENET_STD, resolve_device
from utils.core.network import unreachable
from utils.core.video import keyframe_times, probe_video, read_frames, read_frames_at

log = logging.getLogger("trackverse.metrics")


QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
QUANTILE_COLUMNS = ("q0", "q10", "q25", "q50", "q75", "q90", "q100")
FLOW_FPS = 16.0
PAIR_STEP = 4  # frames between the starts of two kept pairs
SHORT_SIDE = 360




def torchvision_cache_file(hub_weights) -> Path:
    """Where torch.hub keeps torchvision's ``hub_weights`` once downloaded (``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(hub_weights.url).path).name


def load_torchvision_model(build, hub_weights, weights: str, what: str, flag: str) -> torch.nn.Module:
    """``build(weights=...)`` with ``weights`` = ``default`` (torchvision's hub, cached), a local
    state-dict path, or ``none`` (random: tests). Failing to load is systemic; weights neither
    cached nor reachable (:func:`utils.core.network.unreachable`) are said so within seconds,
    where torch.hub's download would wait on the network without a timeout."""
    if weights == "default":
        cached = torchvision_cache_file(hub_weights)
        why = None if cached.is_file() else unreachable(hub_weights.url)
        if why:
            raise SystemicError(
                f"cannot fetch {what} weights from {hub_weights.url}: {why}. Offline options: download that file on a "
                f"connected machine and pass it with {flag} FILE (a state dict), or put it at {cached} "
                "(torch.hub's cache, $TORCH_HOME)")
    elif weights != "none" and not Path(weights).expanduser().is_file():
        raise SystemicError(f"{what} weights {weights} do not exist (pass a state dict file with {flag}, "
                            "or 'default' for torchvision's)")
    try:
        if weights == "default":
            return build(weights=hub_weights, progress=True)
        net = build(weights=None)
        if weights != "none":
            net.load_state_dict(torch.load(Path(weights).expanduser(), map_location="cpu"))
        return net
    except Exception as exc:
        raise SystemicError(f"cannot load {what} weights ({weights}): {exc}. Offline? pass a local state dict "
                            f"with {flag}") from exc


def flow_size(width: int, height: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """(w, h) with the short side ``short_side`` and both multiples of 8 (RAFT needs it)."""
    if width <= height:
        return short_side, max(8, int(height / width * short_side) // 8 * 8)
    return max(8, int(width / height * short_side) // 8 * 8), short_side


def frame_pairs(clip: Path, fps: float = FLOW_FPS, step: int = PAIR_STEP) -> list[tuple[np.ndarray, np.ndarray]]:
    info = probe_video(clip, decode_check=False)
    frames = [f.image for f in read_frames(clip, fps=fps, size=flow_size(info.width, info.height))]
    return [(frames[i], frames[i + 1]) for i in range(0, len(frames) - 1, step)]


def magnitude_quantiles(flow: np.ndarray) -> np.ndarray:
    """Quantiles of the per-pixel flow magnitude of an (H, W, 2) flow field."""
    magnitude = np.sqrt((flow.astype(np.float64) ** 2).sum(axis=-1)).ravel()
    return np.quantile(magnitude, QUANTILES)


class DISFlow:
    """OpenCV's DIS optical flow (CPU)."""

    name = "dis"

    def __init__(self) -> None:
        import cv2

        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        gray = self._cv2.cvtColor
        return [self._dis.calc(gray(a, self._cv2.COLOR_RGB2GRAY), gray(b, self._cv2.COLOR_RGB2GRAY), None)
                for a, b in pairs]


class RAFTFlow:
    """torchvision's RAFT (GPU; runs on CPU too, slowly). ``weights``: ``default`` (torchvision
    hub), a local state-dict path, or ``none`` (random: tests)."""

    name = "raft"

    def __init__(self, weights: str = "default", device: str = "auto", model: str = "large", batch_size: int = 8):
        from torchvision.models import optical_flow

        self.device = resolve_device(device)
        build = {"large": optical_flow.raft_large, "small": optical_flow.raft_small}[model]
        hub = {"large": optical_flow.Raft_Large_Weights.DEFAULT, "small": optical_flow.Raft_Small_Weights.DEFAULT}
        net = load_torchvision_model(build, hub[model], weights, f"RAFT-{model}", "--flow_weights")
        self.model = net.to(self.device).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i in range(0, len(pairs), self.batch_size):
            batch = pairs[i:i + self.batch_size]
            a = torch.from_numpy(np.stack([p[0] for p in batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
            b = torch.from_numpy(np.stack([p[1] for p in batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
            flows = self.model(a.to(self.device), b.to(self.device))[-1]  # last refinement
            out.extend(flows.permute(0, 2, 3, 1).cpu().numpy())
        return out


def track_motion(clip: Path, flow: DISFlow | RAFTFlow) -> tuple[np.ndarray, int]:
    """Mean quantiles over the clip's frame pairs (NaN when it has no pair) and the pair count."""
    pairs = frame_pairs(clip)
    if not pairs:
        return np.full(len(QUANTILES), np.nan), 0
    stats = np.stack([magnitude_quantiles(f) for f in flow(pairs)])
    return stats.mean(axis=0), len(pairs)


class ClipEmbedder:
    """ResNet-50 features (2048-d) of a clip's keyframes, averaged and L2-normalised.
    ``weights``: ``default`` (torchvision's ImageNet weights, as the original), a local
    state-dict path, or ``none`` (random: tests)."""

    def __init__(self, weights: str = "default", device: str = "auto", batch_size: int = 32):
        from torchvision.models import ResNet50_Weights, resnet50

        self.device = resolve_device(device)
        net = load_torchvision_model(resnet50, ResNet50_Weights.IMAGENET1K_V1, weights, "ResNet-50",
                                     "--embedding_weights")
        net.fc = torch.nn.Identity()
        self.model = net.to(self.device).eval()
        self.batch_size = batch_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, clip: Path) -> np.ndarray:
        times = keyframe_times(clip) or [0.0]
        frames = np.stack([f.image for f in read_frames_at(clip, times, size=(224, 224))])
        feats = []
        for i in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(frames[i:i + self.batch_size]).permute(0, 3, 1, 2).float() / 255
            x = (x - self.mean) / self.std
            feats.append(self.model(x.to(self.device)).cpu())
        vector = torch.cat(feats).mean(0).numpy().astype(np.float32)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)
