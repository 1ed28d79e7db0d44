"""What every stage that runs a torch model shares: device choice and ImageNet normalisation."""

from __future__ import annotations

# per-channel RGB normalisation of torchvision's ImageNet-trained models
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; anything else is kept."""
    if device == "auto":
        import torch  # imported here: core stays importable without loading torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
