"""Text embeddings of a vocabulary or of queries, in the space of a detector's track embeddings,
computed once and cached.

The embeddings come from the text encoder of the detector that made the track embeddings
(``embed_text``, :mod:`utils.detect.detectors.base`), built on the CPU from what the embeddings
files record (its ``--detector`` spec and weights id). This module is the one place where a stage
of this package reaches into ``utils.detect``: a declared exception of the layer rule
(tests/test_architecture.py), since only the detector knows how to encode text into its space.

Cache: ``<cache root>/text-embeddings/<key>.npy`` (:func:`utils.core.assets.cache_root`), the key
being the sha256 of the spec, the weights id (with the size and time of every file of a local
weights folder or file), the sha256 of a plug-in detector's module source (``module:callable``:
an edited ``embed_text`` is a new encoder, with or without weights) and the texts; a hit builds no
model at all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.core.assets import cache_root
from utils.core.errors import SystemicError
from utils.core.io import cached_rows, file_sha256, file_signature
from utils.detect.detectors.base import DetectorError, embed_prompts
from utils.detect.detectors.registry import build_text_encoder
from utils.records.track_embeddings import EmbeddingsError, embeddings_info, embeddings_path

log = logging.getLogger("trackverse.relabel")

__all__ = ["Encoder", "encoder_of", "encoder_of_embeddings", "text_cache_path", "text_embeddings"]


def _weights_signature(weights: str | None) -> list:
    """Size and time of a local weights file, or of every file of a local weights folder."""
    if weights is None or not os.path.exists(weights):
        return []
    path = Path(weights)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.relative_to(path)) if path.is_dir() else p.name, file_signature(p)] for p in files]


def plugin_code_signature(spec: str) -> str | None:
    """sha256 of the source file of a plug-in detector's module (``package.module:callable``), found
    without importing it; None for a registry name (our own code) or a module without a source file."""
    if ":" not in spec:
        return None
    module_name = spec.split(":", 1)[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):  # a parent package that does not import: building it will say why
        return None
    origin = found.origin if found is not None else None
    if not origin or not os.path.isfile(origin):
        return None
    return file_sha256(origin)


def text_cache_path(spec: str, weights: str | None, texts: Sequence[str]) -> Path:
    key = {"detector": spec, "weights": weights, "files": _weights_signature(weights), "texts": list(texts)}
    code = plugin_code_signature(spec)
    if code is not None:
        key["code"] = code
    payload = json.dumps(key, ensure_ascii=False, sort_keys=True)
    return cache_root() / "text-embeddings" / f"{hashlib.sha256(payload.encode('utf-8')).hexdigest()}.npy"


def text_embeddings(spec: str, weights: str | None, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
    """(len(texts), D) float32 unit rows: ``texts`` (prompt lines or queries) through the text
    encoder of the detector ``spec`` with ``weights``. A detector that cannot be built or has no
    text encoder is a :class:`~utils.core.errors.SystemicError` (every item would fail)."""
    texts = [str(t) for t in texts]

    def encode() -> np.ndarray:
        try:
            detector = build_text_encoder(spec, texts, weights, device="cpu")
            return embed_prompts(detector, texts)
        except (DetectorError, ImportError, OSError, ValueError, TypeError) as exc:
            raise SystemicError(f"cannot encode text with detector {spec!r} (weights {weights or 'none'}), the one "
                                f"that made the track embeddings: {exc}") from exc

    arr, _ = cached_rows(text_cache_path(spec, weights, texts), len(texts), encode, use_cache,
                         what="text-embedding cache")
    return arr


@dataclass(frozen=True)
class Encoder:
    """What made a dataset's track embeddings: the ``--detector`` spec (what encodes text into
    their space), its weights id, and the detector's name."""

    spec: str
    weights: str | None
    detector: str | None

    def describe(self) -> str:
        return f"detector {self.spec}, weights {self.weights or 'none'}"


def encoder_of(meta_path: Path) -> Encoder | None:
    """The encoder recorded by a metadata file's embeddings file (None: no usable one)."""
    return encoder_of_embeddings(embeddings_path(meta_path))


def encoder_of_embeddings(path: Path) -> Encoder | None:
    """The encoder an embeddings file records (None: unreadable, or it records none)."""
    try:
        info = embeddings_info(path)
    except EmbeddingsError:
        return None
    spec = info.get("detector_spec")
    return Encoder(str(spec), info.get("weights"), info.get("detector")) if spec else None
