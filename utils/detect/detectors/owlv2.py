"""OWLv2 (Hugging Face transformers), the default open-vocabulary detector.

Per box (one per image patch, before filtering):

- ``score = sigmoid(objectness_logit) * sigmoid(max_c class_logit_c)``: the probability that
  the patch holds *an* object times the probability of its best class. It plays the role of
  the original pipeline's objectness-weighted class score: tracker thresholds compare it,
  and ``utils.records.tracks`` weights logits by it;
- ``class_logits``: OWLv2's per-class logits over the vocabulary (shifted/scaled cosine
  similarities to the prompt embeddings; ``sigmoid`` gives the class probability);
- ``embedding``: the patch's ``class_embeds`` (the image-side vector compared with the text
  embeddings), L2-normalised: the appearance descriptor the tracker matches.

Boxes come out of the model in ``[0, 1]`` coordinates of the *padded square* image: OWLv2's
processor pads each frame at the bottom/right to ``max(h, w)`` before resizing, so both axes
are scaled by ``max(h, w)`` (not by ``w`` and ``h``) and then clipped to the frame.

Prompt text embeddings are computed once per (model, prompt list) and cached on disk as
``<cache_dir>/owlv2-text/<sha256>.npy``; the image side then runs without the text tower.

Precision (``precision``): ``auto`` keeps float16 weights on CUDA and float32 on CPU;
``fp32`` runs float32 everywhere; ``bf16``/``fp16`` keep float32 weights and run the image side
under autocast. ``compile=True`` wraps the image side in ``torch.compile``.

``model_id="random:owlv2-base"`` builds the architecture of
``google/owlv2-base-patch16-ensemble`` with random weights and a locally built tokenizer
(:func:`build_random_owlv2`): the real model's FLOPs and memory without any download, for
benchmarks; its detections mean nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.core.assets import cache_root
from utils.core.boxes import nms
from utils.core.io import cached_rows
from utils.core.models import torch_device
from utils.core.network import hub_cache_dir, hub_endpoint, hub_offline, unreachable
from utils.detect.detectors.base import Detections, Detector, DetectorError, check_frames, detect_in_batches

__all__ = ["DEFAULT_MODEL_ID", "PRECISIONS", "RANDOM_PREFIX", "OwlV2Detector", "PreparedBatch", "build_random_owlv2",
           "check_weights", "spread_random_heads"]

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "google/owlv2-base-patch16-ensemble"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RANDOM_PREFIX = "random:"

# The published configuration of google/owlv2-base-patch16-ensemble (ViT-B/16 at 960 px, CLIP
# text tower), for weight-free benchmarking at the real model's cost.
_RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "owlv2-base": {
        "text_config": dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                            num_attention_heads=8, max_position_embeddings=16),
        "vision_config": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=960, patch_size=16),
        "projection_dim": 512,
    },
}


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _offline_help(model_id: str) -> str:
    return (
        f"Offline options: (1) a local folder with the model and processor, passed with --model DIR (make it on a "
        f"connected machine with `hf download {model_id} --local-dir DIR`, or `huggingface-cli download`, and copy "
        "it here); (2) that machine's Hugging Face cache (HF_HOME, filled by `hf download "
        f"{model_id}`) copied here, with HF_HUB_OFFLINE=1 set; (3) only to try the pipeline, no weights at all: "
        "`python example.py` with no flags builds its example dataset offline, with its own template detector."
    )


def _in_hub_cache(model_id: str) -> bool:
    """Whether the Hugging Face cache holds the model's config and its processor's (either
    file name transformers writes)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(model_id, name), str)

    return cached("config.json") and (cached("preprocessor_config.json") or cached("processor_config.json"))


def check_weights(model_id: str = DEFAULT_MODEL_ID, local_files_only: bool = False) -> tuple[bool, str | None]:
    """Where OWLv2 weights ``model_id`` can come from, decided in seconds without loading them:
    ``(local only, problem)``. A local folder is read as is; a hub id is fetched from the hub
    when it answers (:func:`utils.core.network.unreachable`), else read from the Hugging Face
    cache (also with ``local_files_only`` or ``HF_HUB_OFFLINE=1``). ``problem`` is None, or
    why they cannot be loaded, with the offline options."""
    if Path(model_id).expanduser().is_dir():
        return True, None
    if not _HUB_ID.fullmatch(model_id):
        return True, f"OWLv2 model folder {model_id} does not exist. {_offline_help(DEFAULT_MODEL_ID)}"
    cached = _in_hub_cache(model_id)
    if local_files_only or hub_offline():
        if cached:
            return True, None
        told = "local_files_only was asked" if local_files_only else "HF_HUB_OFFLINE is set"
        return True, (f"OWLv2 weights '{model_id}' are not in the Hugging Face cache ({hub_cache_dir()}) and {told}, "
                      f"so they are not fetched. {_offline_help(model_id)}")
    endpoint = hub_endpoint()
    why = unreachable(endpoint)
    if why is None:
        return False, None
    if cached:
        log.warning("the Hugging Face hub (%s) is unreachable (%s): using the cached copy of %s", endpoint, why, model_id)
        return True, None
    return True, (f"cannot fetch OWLv2 weights '{model_id}': the Hugging Face hub ({endpoint}) is unreachable ({why}) "
                  f"and they are not in its cache ({hub_cache_dir()}). {_offline_help(model_id)}")


def _local_clip_tokenizer(max_length: int) -> Any:
    """A CLIP tokenizer over letters only, built from files written here (no download): enough
    to turn prompts into ids for a random-weight text tower. Its end-of-text token has the
    highest id, where OWLv2 pools the text."""
    import tempfile

    from transformers import CLIPTokenizer

    vocab = {"!": 0}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="owlv2-random-tokenizer-") as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, pad_token="!", model_max_length=max_length)


def spread_random_heads(model: Any) -> None:
    """Give a randomly initialised OWLv2's detection heads fan-in scaled weights (uses the
    global torch generator): the library's initialisation saturates them (boxes of width 0 or
    1); these make boxes vary around the patch grid, as trained ones do."""
    import torch

    with torch.no_grad():
        for head in (model.box_head, model.objectness_head, model.class_head):
            for layer in head.modules():
                if isinstance(layer, torch.nn.Linear):
                    torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
                    torch.nn.init.zeros_(layer.bias)
        model.box_head.dense2.weight.mul_(0.3)


def build_random_owlv2(model_id: str, seed: int = 0) -> tuple[Any, Any]:
    """``Owlv2ForObjectDetection`` and ``Owlv2Processor`` for ``random:<name>`` (``name`` in
    ``owlv2-base``): the named published architecture with seeded random weights (detection
    heads scaled so boxes vary, as trained ones do) and a local tokenizer. Nothing is downloaded."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    name = model_id[len(RANDOM_PREFIX):] if model_id.startswith(RANDOM_PREFIX) else model_id
    if name not in _RANDOM_CONFIGS:
        raise DetectorError(f"unknown random OWLv2 model {model_id!r}: use one of "
                            + ", ".join(RANDOM_PREFIX + n for n in _RANDOM_CONFIGS))
    spec = _RANDOM_CONFIGS[name]
    tokenizer = _local_clip_tokenizer(spec["text_config"]["max_position_embeddings"])
    ids = tokenizer.get_vocab()
    text = dict(spec["text_config"], pad_token_id=0, bos_token_id=ids["<|startoftext|>"],
                eos_token_id=ids["<|endoftext|>"])
    config = Owlv2Config(text_config=text, vision_config=dict(spec["vision_config"]),
                         projection_dim=spec["projection_dim"])
    size = spec["vision_config"]["image_size"]
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": size, "width": size}),
                               tokenizer=tokenizer)
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's generator
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(config).eval()
        spread_random_heads(model)
    model.config._name_or_path = RANDOM_PREFIX + name
    return model, processor


class PreparedBatch:
    """Frames already turned into the model's input (:meth:`OwlV2Detector.prepare`): the
    pixel values on the detector's device and each frame's ``(h, w)``. Sliceable, so the
    out-of-memory back-off can split it."""

    def __init__(self, pixel_values: Any, shapes: Sequence[tuple[int, int]]) -> None:
        self.pixel_values = pixel_values
        self.shapes = list(shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: slice) -> PreparedBatch:
        return PreparedBatch(self.pixel_values[index], self.shapes[index])


class OwlV2Detector(Detector):
    """OWLv2 detector over ``class_names``.

    Args:
        class_names: the vocabulary (class ``i`` is ``class_names[i]``).
        model_id: hub id or local folder of the weights and processor
            (default ``google/owlv2-base-patch16-ensemble``).
        model, processor: an already-built ``Owlv2ForObjectDetection`` and ``Owlv2Processor``
            (tests, notebooks); then nothing is loaded. The model is moved to ``device``
            (and to float16 with ``half``) in place.
        prompts: text describing each class (default: ``class_names``), formatted with
            ``prompt_template`` before encoding.
        prompt_template: e.g. ``"a photo of a {}"``; ``"{}"`` uses the prompts verbatim.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:1"``...
        half: float16 weights with ``precision="auto"``; default: on CUDA only.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (autocast, float32 weights).
        compile: run the image side through ``torch.compile``.
        batch_size: frames per forward pass; halved on CUDA out-of-memory (down to 1).
        nms_threshold: IoU above which lower-scored boxes are suppressed (``>= 1`` disables).
        class_agnostic_nms: suppress across classes (default) or within each arg-max class.
        min_score: boxes scoring below are dropped before NMS.
        top_k: at most this many boxes per image after NMS (``None``: no limit).
        cache_dir: root of the text-embedding cache (default: the project's cache root,
            :func:`utils.core.assets.cache_root`).
        use_cache: read/write the text-embedding cache.
        local_files_only: never touch the network when loading weights.
    """

    name = "owlv2"

    def __init__(
        self,
        class_names: Sequence[str],
        model_id: str | os.PathLike | None = None,
        *,
        model: Any | None = None,
        processor: Any | None = None,
        prompts: Sequence[str] | None = None,
        prompt_template: str = "a photo of a {}",
        device: str | Any = "auto",
        half: bool | None = None,
        batch_size: int = 8,
        nms_threshold: float = 0.5,
        class_agnostic_nms: bool = True,
        min_score: float = 0.05,
        top_k: int | None = 100,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        local_files_only: bool = False,
        text_batch_size: int = 256,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        import torch

        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise ValueError("OWLv2 needs at least one class name")
        self.prompts = [str(p) for p in (prompts if prompts is not None else self.class_names)]
        if len(self.prompts) != len(self.class_names):
            raise ValueError(f"{len(self.prompts)} prompts for {len(self.class_names)} classes")
        if "{}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}', got {prompt_template!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.prompt_template = prompt_template
        self.texts = [prompt_template.format(p) for p in self.prompts]
        self.batch_size = int(batch_size)
        self.nms_threshold = float(nms_threshold)
        self.class_agnostic_nms = bool(class_agnostic_nms)
        self.min_score = float(min_score)
        self.top_k = None if top_k is None else int(top_k)
        self.device = torch_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        if precision == "auto":
            self.half = (self.device.type == "cuda") if half is None else bool(half)
        else:
            self.half = False  # fp32 weights; bf16/fp16 come from autocast
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.compiled = bool(compile)

        if (model is None) != (processor is None):
            raise ValueError("pass both model and processor, or neither")
        if model is None:
            model_id = str(model_id) if model_id is not None else DEFAULT_MODEL_ID
            if model_id.startswith(RANDOM_PREFIX):
                model, processor = build_random_owlv2(model_id)
            else:
                model, processor = self._load(model_id, local_files_only)
        else:
            model_id = str(model_id) if model_id is not None else (
                getattr(model.config, "_name_or_path", "") or "in-memory-owlv2"
            )
        self.weights_id = model_id
        self.model = model.eval()
        self.processor = processor
        self._check_sizes()

        # Text side first, in float32 (the cache is device/precision independent), then the
        # image side moves to its device and precision.
        self.model.to(self.device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
        self.use_cache = bool(use_cache)
        self.text_cache_hit = False
        self.text_cache_path: Path | None = None
        self.text_encoder_calls = 0
        self._text_batch_size = max(1, int(text_batch_size))
        text_embeds = self._text_embeddings()
        if self.half:
            self.model.half()
        self.dtype = next(self.model.parameters()).dtype
        self.text_embeds = torch.from_numpy(text_embeds).to(self.device, self.dtype)
        # compiled on the first batch, for any batch size at once (the last batch of a run is
        # smaller; the out-of-memory back-off changes it too): one compilation, not one per size
        self._forward = torch.compile(self._image_forward, dynamic=True) if self.compiled else self._image_forward
        self._pinned: list[tuple[Any, Any]] = []  # (host buffer, CUDA event) pairs, reused in turn
        self._pinned_next = 0

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _load(model_id: str, local_files_only: bool) -> tuple[Any, Any]:
        local_only, problem = check_weights(model_id, local_files_only)
        if problem:
            raise DetectorError(problem)
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        try:
            processor = Owlv2Processor.from_pretrained(model_id, local_files_only=local_only)
            model = Owlv2ForObjectDetection.from_pretrained(model_id, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            raise DetectorError(
                f"cannot load OWLv2 weights '{model_id}' ({type(exc).__name__}: {exc}). {_offline_help(model_id)}"
            ) from exc
        return model, processor

    def _check_sizes(self) -> None:
        image_size = self.model.config.vision_config.image_size
        size = getattr(self.processor.image_processor, "size", None) or {}
        if isinstance(size, dict):
            hw = (size.get("height"), size.get("width"))
        else:
            hw = (getattr(size, "height", None), getattr(size, "width", None))
        if isinstance(image_size, int) and None not in hw and hw != (image_size, image_size):
            raise DetectorError(
                f"OWLv2 processor resizes to {hw[0]}x{hw[1]} but the model expects {image_size}x{image_size}"
            )

    # ------------------------------------------------------------------ text side
    def _fingerprint(self) -> str:
        w = self.model.owlv2.text_projection.weight.detach().float().cpu().numpy()
        return hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()[:16]

    def cache_key(self, texts: Sequence[str] | None = None) -> str:
        """sha256 of the model id, a fingerprint of its text projection, and the texts
        (default: the prompt texts)."""
        payload = json.dumps(
            {"model": self.weights_id, "weights": self._fingerprint(),
             "texts": list(self.texts if texts is None else texts)},
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _text_embeddings(self, texts: Sequence[str] | None = None) -> np.ndarray:
        """Embeddings of ``texts`` (default: the prompt texts), from the on-disk cache when there."""
        texts = list(self.texts if texts is None else texts)
        path = self.cache_dir / "owlv2-text" / f"{self.cache_key(texts)}.npy"
        self.text_cache_path = path
        arr, hit = cached_rows(path, len(texts), lambda: self.encode_texts(texts), self.use_cache,
                               what="OWLv2 text cache")
        self.text_cache_hit = self.text_cache_hit or hit
        return arr

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """The text embeddings of prompt lines, formatted with ``prompt_template`` as the
        detector's own prompts are: (len(prompts), D) float32, L2-normalised, in the space of
        ``Detections.embedding`` (the class embeddings). Cached like the prompts' embeddings;
        float32 whatever ``half`` (a halved model is put back in float32 while it encodes, so
        cached values do not depend on the precision)."""
        texts = [self.prompt_template.format(str(p)) for p in prompts]
        if not texts:
            return np.zeros((0, int(self.text_embeds.shape[-1])), np.float32)
        if not self.half:
            return self._text_embeddings(texts)
        self.model.float()
        try:
            return self._text_embeddings(texts)
        finally:
            self.model.half()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised (len(texts), D) float32 text embeddings, as OWLv2's forward computes
        its query embeddings (text tower, pooled EOS token, projection, normalisation)."""
        import torch

        self.text_encoder_calls += 1
        tokenizer = self.processor.tokenizer
        max_len = int(self.model.config.text_config.max_position_embeddings)
        owl = self.model.owlv2
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self._text_batch_size):
                enc = tokenizer(
                    list(texts[i : i + self._text_batch_size]),
                    padding="max_length",
                    max_length=max_len,
                    truncation=True,
                    return_tensors="pt",
                )
                ids = enc["input_ids"].to(self.device)
                mask = enc["attention_mask"].to(self.device)
                pooled = owl.text_model(input_ids=ids, attention_mask=mask)[1]
                emb = owl.text_projection(pooled).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    # ------------------------------------------------------------------ image side
    def _pixel_values(self, frames: list[np.ndarray]) -> Any:
        ip = self.processor.image_processor
        kwargs: dict[str, Any] = {"return_tensors": "pt", "input_data_format": "channels_last"}
        if getattr(ip, "backend", None) == "torchvision" or type(ip).__name__.endswith("Fast"):
            kwargs["device"] = self.device
        pv = ip(images=frames, **kwargs)["pixel_values"]
        return pv.to(self.device, self.dtype)

    def _staged(self, frames: list[np.ndarray]) -> list[Any]:
        """The frames (all of one size) as tensors on the device, copied from one of two
        host buffers used in turn. On CUDA the buffers are page-locked and the copy does not
        block this thread; a buffer is refilled only once its previous copy has finished (an
        event recorded after it). On a CPU the tensors are the buffer itself, consumed by
        :meth:`prepare` before the buffer comes round again."""
        import torch

        cuda = self.device.type == "cuda"
        batch = np.stack(frames)
        buffer, event = self._pinned[self._pinned_next] if len(self._pinned) == 2 else (None, None)
        if event is not None:
            event.synchronize()
        if buffer is None or buffer.numel() < batch.size:
            buffer = torch.empty(batch.size, dtype=torch.uint8, pin_memory=cuda)
        host = buffer[: batch.size].view(batch.shape)
        host.numpy()[...] = batch
        on_device = host.to(self.device, non_blocking=True) if cuda else host
        if cuda:
            event = torch.cuda.Event()
            event.record()
        if len(self._pinned) < 2:
            self._pinned.append((buffer, event))
        else:
            self._pinned[self._pinned_next] = (buffer, event)
        self._pinned_next = (self._pinned_next + 1) % 2
        return list(on_device)

    def prepare(self, frames: Sequence[np.ndarray]) -> PreparedBatch:
        """``frames`` as model input on the device (pixel values), ready for :meth:`detect`:
        a pipeline prepares the next batch while the current one runs. Frames of one size
        travel as one tensor (on CUDA through page-locked memory, then resized on the GPU by
        the processor's torchvision backend)."""
        import torch

        frames = check_frames(frames)
        images: list[Any] = frames
        if len({f.shape for f in frames}) == 1:
            images = self._staged(frames)
        with torch.inference_mode():
            pv = self._pixel_values(images)
        return PreparedBatch(pv, [(int(f.shape[0]), int(f.shape[1])) for f in frames])

    def _image_forward(self, pv: Any, text_embeds: Any) -> tuple[Any, Any, Any, Any]:
        """The image side of OWLv2 against cached text embeddings: class logits, class
        embeddings, objectness logits, boxes (cxcywh in [0, 1] of the padded square)."""
        model = self.model
        feature_map = model.image_embedder(pixel_values=pv)[0]
        b, gh, gw, d = feature_map.shape
        feats = feature_map.reshape(b, gh * gw, d)
        queries = text_embeds.unsqueeze(0).expand(b, -1, -1)
        logits, class_embeds = model.class_predictor(feats, queries, None)
        objectness = model.objectness_predictor(feats)
        boxes = model.box_predictor(feats, feature_map)
        return logits, class_embeds, objectness, boxes

    def _detect_batch(self, frames: list[np.ndarray] | PreparedBatch) -> list[Detections]:
        """One forward pass over ``frames`` (or a :meth:`prepare` d batch; no out-of-memory handling)."""
        import contextlib

        import torch

        with torch.inference_mode():
            if isinstance(frames, PreparedBatch):
                pv, shapes = frames.pixel_values, frames.shapes
            else:
                pv, shapes = self._pixel_values(frames), [f.shape[:2] for f in frames]
            autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                        if self.autocast_dtype is not None else contextlib.nullcontext())
            with autocast:
                logits, class_embeds, objectness, boxes = self._forward(pv, self.text_embeds)

            results = []
            for i, (h, w) in enumerate(shapes):
                lg = logits[i].float()
                score = torch.sigmoid(objectness[i].float()) * torch.sigmoid(lg.max(dim=-1).values)
                cx, cy, bw, bh = boxes[i].float().unbind(-1)
                side = float(max(h, w))
                xyxy = torch.stack(
                    [
                        ((cx - bw / 2) * side).clamp(0, w),
                        ((cy - bh / 2) * side).clamp(0, h),
                        ((cx + bw / 2) * side).clamp(0, w),
                        ((cy + bh / 2) * side).clamp(0, h),
                    ],
                    dim=-1,
                )
                valid = (score >= self.min_score) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
                idx = torch.nonzero(valid).flatten()
                class_ids = None if self.class_agnostic_nms else lg[idx].argmax(dim=-1)
                keep = nms(xyxy[idx], score[idx], self.nms_threshold, class_ids, self.top_k)
                idx = idx[torch.as_tensor(keep, device=idx.device)]
                emb = torch.nn.functional.normalize(class_embeds[i][idx].float(), dim=-1)
                results.append(
                    Detections(
                        xyxy=xyxy[idx].cpu().numpy(),
                        score=score[idx].clamp(0, 1).cpu().numpy(),
                        class_logits=lg[idx].cpu().numpy(),
                        embedding=emb.cpu().numpy(),
                    )
                )
        return results

    def detect(self, frames: Sequence[np.ndarray] | PreparedBatch,
               timestamps: Sequence[float] | None = None) -> list[Detections]:
        """Detections for each frame (``timestamps`` are ignored), frames as arrays or a
        :meth:`prepare` d batch. Runs ``batch_size`` frames at a time; on CUDA out-of-memory
        the batch size is halved (and kept halved) until it fits, and a failure at batch
        size 1 raises :class:`DetectorError`."""
        batch = frames if isinstance(frames, PreparedBatch) else check_frames(frames)
        return detect_in_batches(
            self, "OWLv2", len(batch), lambda i, n: batch[i : i + n],
            lambda chunk: chunk.shapes[0] if isinstance(chunk, PreparedBatch) else chunk[0].shape[:2],
            "free GPU memory, use a smaller vocabulary, or run on another device")

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov.update(
            prompt_template=self.prompt_template,
            score="sigmoid(objectness)*sigmoid(max class logit)",
            nms_threshold=self.nms_threshold,
            min_score=self.min_score,
            precision=self.precision,
        )
        return prov
