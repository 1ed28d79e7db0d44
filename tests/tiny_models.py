"""Small detectors for tests and benchmarks, no download needed.

- :func:`build_tiny_owlv2`: a randomly initialised ``Owlv2ForObjectDetection`` (hidden 32,
  2 layers, 64-px images, 16-px patches) and a processor with a tiny CLIP tokenizer: the real
  transformers code path; :func:`save_tiny_owlv2` writes both to a folder that
  ``--model`` (``from_pretrained``) loads.
- :class:`FixtureDetector`: the ground truth of a synthetic video (see
  :func:`write_ground_truth`) served through ``GroundTruthDetector``, answering in the
  pixels of the frames it is given, as real detectors do. Build it through the registry as
  ``--detector tests.tiny_models:FixtureDetector``; it reads the ground-truth file named by
  ``$TRACKVERSE_TEST_GROUND_TRUTH``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.detect.detectors import Detections, Detector
from utils.testing.ground_truth import GroundTruthDetector
from utils.testing.synthetic import SyntheticVideo

GROUND_TRUTH_ENV = "TRACKVERSE_TEST_GROUND_TRUTH"


# ---------------------------------------------------------------------------- tiny OWLv2


def build_tiny_owlv2(tokenizer_dir: str | os.PathLike) -> tuple[Any, Any]:
    """A random-weight ``Owlv2ForObjectDetection`` and its ``Owlv2Processor`` (the CLIP
    tokenizer's files are written to ``tokenizer_dir``). Deterministic (seeded)."""
    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    from utils.detect.detectors.owlv2 import spread_random_heads

    folder = Path(tokenizer_dir)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"!": 0}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # highest id: OWLv2 pools the text at the argmax id
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), pad_token="!", model_max_length=16)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    config = Owlv2Config(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, pad_token_id=0,
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=64, patch_size=16,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config).eval()
    spread_random_heads(model)
    return model, processor


def save_tiny_owlv2(folder: str | os.PathLike) -> Path:
    """Write the tiny OWLv2 model and processor to ``folder`` (for ``--model folder``)."""
    folder = Path(folder)
    model, processor = build_tiny_owlv2(folder / "tokenizer-src")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------- ground truth


def write_ground_truth(
    video: SyntheticVideo, path: str | os.PathLike, *, delay_s: float = 0.0, marker: str | os.PathLike | None = None,
    **detector_options: Any,
) -> Path:
    """Write a synthetic video's boxes for :class:`FixtureDetector`. ``delay_s`` slows each
    ``detect`` call; ``marker`` is a file touched after each call (tests that kill a run);
    ``detector_options`` go to ``GroundTruthDetector`` (e.g. ``embedding="class"``,
    ``track_noise=0.3``: box embeddings that are their class's text direction plus noise)."""
    boxes: dict[str, list] = {}
    for b in video.boxes:
        boxes.setdefault(repr(round(b.time, 6)), []).append([list(b.xyxy), b.class_name, b.identity])
    spec = {
        "size": [video.width, video.height], "boxes": boxes, "delay_s": float(delay_s),
        "marker": None if marker is None else str(marker), "options": detector_options,
    }
    path = Path(path)
    path.write_text(json.dumps(spec))
    return path


class FixtureDetector(Detector):
    """Ground truth of a synthetic video in the pixels of the given frames (see the module
    docstring). Options the stage passes (device, batch size, prompts...) are kept in
    ``options`` and otherwise ignored."""

    name = "fixture_ground_truth"

    def __init__(self, class_names: Sequence[str], ground_truth: str | os.PathLike | None = None, **options: Any):
        path = ground_truth or os.environ.get(GROUND_TRUTH_ENV)
        if not path:
            raise ValueError(f"FixtureDetector needs ground_truth= or ${GROUND_TRUTH_ENV}")
        spec = json.loads(Path(path).read_text())
        self.class_names = [str(c) for c in class_names]
        self.prompts = list(self.class_names)
        self.weights_id = None
        self.options = options
        self.source_w, self.source_h = spec["size"]
        self.delay_s = float(spec.get("delay_s") or 0.0)
        self.marker = spec.get("marker")
        # objects of classes outside the vocabulary are not detected (a text-only build for a
        # search query or another vocabulary names none of them)
        table = {
            float(ts): [(xyxy, self.class_names.index(label), identity) for xyxy, label, identity in entries
                        if label in self.class_names]
            for ts, entries in spec["boxes"].items()
        }
        self.inner = GroundTruthDetector(self.class_names, table, clip=False, **(spec.get("options") or {}))
        self.calls = 0

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """The ground-truth detector's text encoder (see ``GroundTruthDetector``)."""
        return self.inner.embed_text(prompts)

    def detect(self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None) -> list[Detections]:
        out = []
        for frame, dets in zip(frames, self.inner.detect(frames, timestamps), strict=True):
            h, w = frame.shape[:2]
            scale = np.array([w / self.source_w, h / self.source_h] * 2, dtype=np.float32)
            out.append(Detections(dets.xyxy * scale, dets.score, dets.class_logits, dets.embedding))
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.marker:
            Path(self.marker).write_text(str(self.calls))
        return out
