"""What every stage that runs a torch model shares: device choice and ImageNet normalisation."""

from __future__ import annotations

from typing import Any

# per-channel RGB normalisation of torchvision's ImageNet-trained models
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEVICE_HELP = "auto (CUDA if available), cpu, cuda, cuda:1 ..."


def resolve_device(device: Any) -> str:
    """The one device policy: ``auto`` (or empty, or None) becomes ``cuda`` when a GPU is
    visible, else ``cpu``; anything else (``cpu``, ``cuda:1``, a ``torch.device``) is kept,
    as a string."""
    if device is None or str(device) in ("", "auto"):
        import torch  # imported here: core stays importable without loading torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def torch_device(device: Any) -> Any:
    """:func:`resolve_device` as a ``torch.device`` (an unknown name raises there)."""
    import torch

    return torch.device(resolve_device(device))
