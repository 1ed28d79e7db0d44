"""DETIC through detectron2: the original TrackVerse detector, for exact reproduction.

Optional and installed apart (``tools/install_detic.sh`` from source snapshots, or
``docs/detic.md`` from the repositories): detectron2, CLIP and Detic are imported only when a
:class:`DeticDetector` is built, and their absence raises :class:`DetectorError` naming the
install command. Settings of the original: config
``Detic_LCOCOI21k_CLIP_SwinB_896b32_4x_ft4x_max-size``, a custom vocabulary encoded by
Detic's CLIP text encoder from ``"a <prompt>"``, test size 480 px, score threshold 0.1,
NMS 0.7, one class per proposal.

Per box it returns what the original tracker consumed: ``score`` (the instance score) and
``class_logits`` (the cascade-averaged per-class probabilities, background column dropped:
the original called them ``logit_classes``). The embedding is the final cascade stage's ROI
box-head feature, by default projected by that stage's zero-shot classifier into the space of
the text embeddings (``embedding="classifier"``, 512-D: what :meth:`DeticDetector.embed_text`
returns text in, so tracks can be relabelled and searched), or as is
(``embedding="box_head"``, 1024-D: the original's ``box_feats``); L2-normalised either way.
The conversion from detectron2 outputs is the pure function :func:`detic_outputs_to_detections`.

``weights="random:detic-swinb"`` builds the model of that Detic config (the original's Swin-B) and
the CLIP text encoder at full size with seeded random weights, nothing downloaded: the real
model's cost for benchmarks and tests; its detections mean nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from utils.core.models import resolve_device
from utils.core.network import unreachable
from utils.detect.detectors.base import Detections, Detector, DetectorError, check_frames, detect_in_batches

__all__ = [
    "DETIC_CONFIG_NAME",
    "DETIC_WEIGHTS_URL",
    "EMBEDDINGS",
    "INSTALL_COMMAND",
    "PRECISIONS",
    "RANDOM_MODELS",
    "RANDOM_PREFIX",
    "DeticDetector",
    "DeticPreparedBatch",
    "check_weights",
    "detic_available",
    "detic_outputs_to_detections",
    "instances_to_detections",
    "random_model_config",
]

log = logging.getLogger(__name__)

DETIC_CONFIG_NAME = "Detic_LCOCOI21k_CLIP_SwinB_896b32_4x_ft4x_max-size"
DETIC_WEIGHTS_URL = f"https://dl.fbaipublicfiles.com/detic/{DETIC_CONFIG_NAME}.pth"
_DOC = "docs/detic.md"
CLIP_TEXT_MODEL = "ViT-B/32"  # what Detic's text encoder loads through OpenAI's clip package
#: the one command that installs detectron2, CLIP and Detic from the source snapshots (../shared/vendor-src)
INSTALL_COMMAND = "tools/install_detic.sh"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EMBEDDINGS = ("classifier", "box_head")
RANDOM_PREFIX = "random:"
#: ``random:<name>`` -> the Detic config whose architecture is built with random weights. Only
#: the Swin-B of the original: Detic's R50 configs build their backbone through an API of timm
#: 0.4 that the timm pinned here (1.x) no longer has.
RANDOM_MODELS = {"detic-swinb": DETIC_CONFIG_NAME}
RANDOM_SEED = 0


def _iopath_cached(url: str) -> Path:
    """Where detectron2's checkpointer (iopath) caches ``url`` once downloaded."""
    try:
        from iopath.common.file_io import get_cache_dir

        root = Path(get_cache_dir())
    except ImportError:
        root = Path(os.environ.get("FVCORE_CACHE") or "~/.torch/iopath_cache").expanduser()
    return root / os.path.dirname(urlsplit(url).path.lstrip("/")) / url.split("/")[-1]


def _clip_text_weights() -> tuple[str, Path] | None:
    """(URL, cached file) of the CLIP model Detic's text encoder loads, or None without clip."""
    try:
        from clip import clip as openai_clip
    except ImportError:
        return None
    url = openai_clip._MODELS[CLIP_TEXT_MODEL]
    return url, Path("~/.cache/clip").expanduser() / os.path.basename(url)


def check_weights(weights: str = DETIC_WEIGHTS_URL) -> str | None:
    """Why DETIC cannot get its weights now, decided in seconds, or None: a local checkpoint
    must exist; a URL not downloaded yet (nor the CLIP ViT-B/32 of its text encoder) needs its
    host to answer (:func:`utils.core.network.unreachable`), where the loaders would otherwise
    wait on their own timeouts."""
    needed: list[tuple[str, str, str]] = []
    if weights.startswith(("http://", "https://")):
        cached = _iopath_cached(weights)
        if not cached.is_file():
            needed.append(("DETIC weights", weights, f"pass that file with --model (or put it at {cached})"))
    elif not Path(weights).expanduser().is_file():
        return f"DETIC weights {weights} do not exist (see {_DOC})"
    clip_weights = _clip_text_weights()
    if clip_weights is not None and not clip_weights[1].is_file():
        needed.append((f"CLIP {CLIP_TEXT_MODEL} (Detic's text encoder)", clip_weights[0], f"put it at {clip_weights[1]}"))
    for what, url, where in needed:
        why = unreachable(url)
        if why:
            return (f"cannot fetch {what} from {url}: {why}. Offline options: download it on a connected machine "
                    f"and {where}; or use the default 'owlv2' detector (see {_DOC})")
    return None


def _to_numpy(x: Any, dtype: Any = np.float32) -> np.ndarray:
    if x is None:
        return None  # type: ignore[return-value]
    if hasattr(x, "tensor") and not hasattr(x, "detach"):  # detectron2 Boxes
        x = x.tensor
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if dtype is np.float32 else x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _rows(name: str, arr: np.ndarray, n: int) -> np.ndarray:
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"{name} must be ({n}, K), got shape {arr.shape}")
    return arr


def detic_outputs_to_detections(
    pred_boxes: Any,
    scores: Any,
    class_logits: Any | None,
    features: Any,
    *,
    num_classes: int,
    pred_classes: Any | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    image_size: tuple[int, int] | None = None,
) -> Detections:
    """Detections from DETIC's per-instance outputs (tensors or arrays).

    Args:
        pred_boxes: (N, 4) ``xyxy`` (a tensor, an array, or detectron2 ``Boxes``).
        scores: (N,) instance scores (probabilities; clipped to [0, 1]).
        class_logits: (N, C) or (N, C + 1) per-class scores; a trailing background column
            (C + 1) is dropped. ``None``: built from ``pred_classes`` (the instance score at
            its class, 0 elsewhere).
        features: (N, D) ROI features; L2-normalised into ``embedding``.
        num_classes: C, the vocabulary size.
        pred_classes: (N,) class indices (needed only without ``class_logits``; checked
            against the vocabulary otherwise).
        scale: ``(sx, sy)`` multiplying x and y coordinates (network input -> source pixels;
            detectron2 already returns source pixels when given ``height``/``width``).
        image_size: ``(h, w)`` of the source frame: boxes are clipped to it.
    """
    boxes = _to_numpy(pred_boxes).reshape(-1, 4).copy()
    sc = _to_numpy(scores).reshape(-1)
    n = boxes.shape[0]
    if sc.shape[0] != n:
        raise ValueError(f"{sc.shape[0]} scores for {n} boxes")
    classes = None if pred_classes is None else _to_numpy(pred_classes, np.int64).reshape(-1)
    if classes is not None:
        if classes.shape[0] != n:
            raise ValueError(f"{classes.shape[0]} pred_classes for {n} boxes")
        if n and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"pred_classes outside the vocabulary of {num_classes} classes")
    if class_logits is None:
        if classes is None:
            raise ValueError("need class_logits or pred_classes")
        logits = np.zeros((n, num_classes), np.float32)
        logits[np.arange(n), classes] = sc
    else:
        logits = _rows("class_logits", _to_numpy(class_logits), n)
        if logits.shape[1] == num_classes + 1:
            logits = logits[:, :num_classes]
        elif logits.shape[1] != num_classes:
            raise ValueError(f"class_logits have {logits.shape[1]} columns for {num_classes} classes (+1 background)")
    feats = _rows("features", _to_numpy(features), n)
    if feats.shape[1] == 0:
        raise ValueError("features have zero dimensions")
    sx, sy = scale
    boxes[:, [0, 2]] *= float(sx)
    boxes[:, [1, 3]] *= float(sy)
    if image_size is not None:
        h, w = image_size
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    # Degenerate boxes (x2 < x1 from numerical noise) are collapsed, not rejected.
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0])
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1])
    norms = np.linalg.norm(feats.astype(np.float64), axis=1, keepdims=True)
    emb = (feats / np.maximum(norms, 1e-12)).astype(np.float32)
    zero = norms[:, 0] <= 1e-12
    if np.any(zero):  # an all-zero feature has no direction: give it a fixed unit vector
        emb[zero] = 0.0
        emb[zero, 0] = 1.0
    return Detections(xyxy=boxes, score=np.clip(sc, 0.0, 1.0), class_logits=logits, embedding=emb)


def instances_to_detections(instances: Any, num_classes: int, image_size: tuple[int, int] | None = None) -> Detections:
    """:func:`detic_outputs_to_detections` of a detectron2 ``Instances``-like object with
    ``pred_boxes``, ``scores``, ``pred_classes`` and the per-instance ``logit_classes``
    (or ``class_logits``) and ``box_feats`` (or ``features``) fields."""

    def field(*names: str) -> Any:
        for name in names:
            has = getattr(instances, "has", None)
            if callable(has):
                if has(name):
                    return getattr(instances, name)
            elif hasattr(instances, name):
                return getattr(instances, name)
        return None

    feats = field("box_feats", "features")
    if feats is None:
        raise ValueError("DETIC instances carry no box features (box_feats)")
    return detic_outputs_to_detections(
        field("pred_boxes"),
        field("scores"),
        field("logit_classes", "class_logits"),
        feats,
        num_classes=num_classes,
        pred_classes=field("pred_classes"),
        image_size=image_size,
    )


def detic_available() -> bool:
    """Whether detectron2, CLIP and Detic (with CenterNet2) can be imported."""
    try:
        _import_detic()
    except DetectorError:
        return False
    return True


def _import_detic() -> dict[str, Any]:
    try:
        import clip  # noqa: F401  (Detic's text encoder tokenizes with it)
        from centernet.config import add_centernet_config
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model
        from detic.config import add_detic_config
        from detic.modeling.text.text_encoder import build_text_encoder
        from detic.modeling.utils import reset_cls_test
    except ImportError as exc:
        raise DetectorError(
            f"the 'detic' detector needs detectron2, CLIP, CenterNet2 and Detic installed ({exc}). "
            f"They are not on PyPI: run {INSTALL_COMMAND} (from source snapshots) or follow {_DOC}, "
            "or use the default 'owlv2' detector."
        ) from exc
    return {
        "add_centernet_config": add_centernet_config,
        "add_detic_config": add_detic_config,
        "DetectionCheckpointer": DetectionCheckpointer,
        "get_cfg": get_cfg,
        "T": T,
        "build_model": build_model,
        "build_text_encoder": build_text_encoder,
        "reset_cls_test": reset_cls_test,
    }


def random_model_config(weights: str) -> str | None:
    """The Detic config name of a ``random:<name>`` weights id (None for real weights); an
    unknown name is a :class:`DetectorError` listing the known ones."""
    if not weights.startswith(RANDOM_PREFIX):
        return None
    name = weights[len(RANDOM_PREFIX):]
    if name not in RANDOM_MODELS:
        raise DetectorError(f"unknown random DETIC model {weights!r}: use one of "
                            + ", ".join(RANDOM_PREFIX + n for n in RANDOM_MODELS))
    return RANDOM_MODELS[name]


class _RoiCapture:
    """Records, during one ``model.inference`` call, what the original TrackVerse fork of
    Detic attached to each instance: the per-stage class probabilities, the final stage's
    box features, and which proposals survived NMS. Upstream Detic computes all three and
    discards them; this wraps the three calls (and restores them on exit) instead of
    vendoring a modified copy."""

    def __init__(self, roi_heads: Any) -> None:
        self.roi_heads = roi_heads
        self.stage_probs: list[list[Any]] = []
        self.last_proposals: list[Any] | None = None
        self.kept: list[Any] | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[_RoiCapture]:
        heads = self.roi_heads
        module = sys.modules[type(heads)._forward_box.__module__]
        orig_inference = module.fast_rcnn_inference
        orig_run_stage = heads._run_stage
        predictors = list(heads.box_predictor)
        orig_probs = [p.predict_probs for p in predictors]

        def fast_rcnn_inference(*args: Any, **kwargs: Any) -> Any:
            instances, kept = orig_inference(*args, **kwargs)
            self.kept = kept
            return instances, kept

        def run_stage(features: Any, proposals: Any, stage: int, *args: Any, **kwargs: Any) -> Any:
            out = orig_run_stage(features, proposals, stage, *args, **kwargs)
            self.last_proposals = proposals
            return out

        def wrap_probs(fn: Any) -> Any:
            def predict_probs(*args: Any, **kwargs: Any) -> Any:
                probs = fn(*args, **kwargs)
                self.stage_probs.append(list(probs))
                return probs

            return predict_probs

        module.fast_rcnn_inference = fast_rcnn_inference
        heads._run_stage = run_stage
        for p, fn in zip(predictors, orig_probs, strict=True):
            p.predict_probs = wrap_probs(fn)
        try:
            yield self
        finally:
            module.fast_rcnn_inference = orig_inference
            del heads._run_stage
            for p in predictors:
                with contextlib.suppress(AttributeError):
                    del p.predict_probs

    def per_image(self, i: int) -> tuple[Any, Any]:
        """(class probabilities (R_kept, C+1), features (R_kept, D)) of image ``i``."""
        if self.kept is None or self.last_proposals is None or not self.stage_probs:
            raise DetectorError("DETIC internals changed: could not capture class scores and box features")
        kept = self.kept[i]
        probs = sum(stage[i] for stage in self.stage_probs) / len(self.stage_probs)
        return probs[kept], self.last_proposals[i].feat[kept]


class DeticPreparedBatch:
    """Frames already turned into DETIC's input (:meth:`DeticDetector.prepare`): each resized to
    the test size, as a CHW float tensor on the detector's device, with the frame's ``(h, w)``.
    Sliceable, so the out-of-memory back-off can split it."""

    def __init__(self, inputs: list[dict[str, Any]]) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: slice) -> DeticPreparedBatch:
        return DeticPreparedBatch(self.inputs[index])

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(int(x["height"]), int(x["width"])) for x in self.inputs]


class DeticDetector(Detector):
    """DETIC (detectron2) over a custom vocabulary; see the module docstring and docs/detic.md.

    Args:
        class_names: the vocabulary.
        prompts: class descriptions for the text encoder (default ``class_names``; the
            original used the full prompt lines), formatted with ``prompt_template``.
        config_file: Detic config (default: the weights' config, ``configs/<name>.yaml`` of
            the installed Detic: :data:`DETIC_CONFIG_NAME` for the model-zoo weights).
        weights: checkpoint path or URL (default: the Detic model zoo URL), or
            ``random:detic-swinb``: the original config's architecture (Swin-B) and CLIP's
            text encoder at full size with seeded random weights, nothing downloaded
            (benchmarks and tests; detections mean nothing).
        input_size: test-time shortest and longest side (480, as the original).
        score_threshold, nms_threshold: test thresholds (0.1 and 0.7, as the original).
        device: ``"auto"``, ``"cpu"``, ``"cuda:0"``...
        input_format: channel order the network expects; default: the config's
            ``INPUT.FORMAT`` (frames are RGB and are converted when it says BGR).
        batch_size: frames per forward pass; halved on CUDA out-of-memory (down to 1).
        precision: ``auto`` (float16 autocast on CUDA, float32 on CPU), ``fp32``, ``fp16`` or
            ``bf16`` (autocast; weights stay float32).
        embedding: ``classifier`` (default): the final-stage box feature projected into the
            space of the zero-shot classifier (512-D, where :meth:`embed_text` puts text, so
            relabel_tracks.py and search_tracks.py can score tracks); ``box_head``: the 1024-D
            box-head feature itself (the original's ``box_feats``; not comparable with text).
    """

    name = "detic"

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        prompts: Sequence[str] | None = None,
        prompt_template: str = "a {}",
        config_file: str | None = None,
        weights: str = DETIC_WEIGHTS_URL,
        input_size: int = 480,
        score_threshold: float = 0.1,
        nms_threshold: float = 0.7,
        device: str = "auto",
        input_format: str | None = None,
        batch_size: int = 8,
        precision: str = "auto",
        embedding: str = "classifier",
    ) -> None:
        mods = _import_detic()
        import detic as detic_pkg
        import torch

        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise ValueError("DETIC needs at least one class name")
        self.prompts = [str(p) for p in (prompts if prompts is not None else self.class_names)]
        if len(self.prompts) != len(self.class_names):
            raise ValueError(f"{len(self.prompts)} prompts for {len(self.class_names)} classes")
        if "{}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}', got {prompt_template!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got {embedding!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.weights_id = str(weights)
        self.random_config = random_model_config(self.weights_id)
        self.batch_size = int(batch_size)
        self.device = torch.device(resolve_device(device))
        self.precision = precision
        autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        if precision == "auto" and self.device.type == "cuda":
            autocast = torch.float16
        self.autocast_dtype = autocast
        self.embedding_kind = embedding
        self.prompt_template = prompt_template
        detic_root = Path(detic_pkg.__file__).resolve().parent.parent
        if config_file is None:
            config_file = str(detic_root / "configs" / f"{self.random_config or DETIC_CONFIG_NAME}.yaml")
        if not Path(config_file).is_file():
            raise DetectorError(f"Detic config not found: {config_file} (pass config_file=; see {_DOC})")
        self.config_name = Path(config_file).stem

        if self.random_config is None:
            problem = check_weights(self.weights_id)
            if problem:
                raise DetectorError(problem)

        cfg = mods["get_cfg"]()
        mods["add_centernet_config"](cfg)
        mods["add_detic_config"](cfg)
        cfg.merge_from_file(config_file)
        cfg.MODEL.DEVICE = str(self.device)
        cfg.MODEL.WEIGHTS = "" if self.random_config else self.weights_id
        cfg.MODEL.MASK_ON = False
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_threshold)
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = float(nms_threshold)
        cfg.MODEL.ROI_HEADS.ONE_CLASS_PER_PROPOSAL = True
        cfg.MODEL.ROI_BOX_HEAD.ADD_FEATURE_TO_PROP = True
        cfg.MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH = "rand"  # replaced by the custom vocabulary below
        cat_freq = detic_root / "datasets" / "metadata" / "lvis_v1_train_cat_info.json"
        if cat_freq.is_file():  # read by the model's constructor (relative to Detic's folder)
            cfg.MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH = str(cat_freq)
        else:  # only training samples classes by their frequency
            cfg.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
            cfg.MODEL.DYNAMIC_CLASSIFIER = False
        cfg.INPUT.MIN_SIZE_TEST = int(input_size)
        cfg.INPUT.MAX_SIZE_TEST = int(input_size)
        cfg.freeze()
        self.cfg = cfg
        self.input_format = (input_format or cfg.INPUT.FORMAT).upper()
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)

        try:
            if self.random_config:
                with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's generator
                    torch.manual_seed(RANDOM_SEED)
                    model = mods["build_model"](cfg)
                    _open_random_proposals(model)
            else:
                model = mods["build_model"](cfg)
                mods["DetectionCheckpointer"](model).load(cfg.MODEL.WEIGHTS)
        except (OSError, RuntimeError, AssertionError, KeyError) as exc:
            raise DetectorError(f"cannot load DETIC weights {self.weights_id!r}: {exc} (see {_DOC})") from exc
        model.eval()
        self._text_encoder: Any = None
        classifier = torch.from_numpy(self.encode_texts([prompt_template.format(p) for p in self.prompts]))
        # reset_cls_test installs the classifier as (D, C+1) and normalises it: what the final
        # stage compares its projected box features with
        mods["reset_cls_test"](model, classifier.permute(1, 0).contiguous(), len(self.class_names))
        self.model = model
        self.aug = mods["T"].ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    # ------------------------------------------------------------------ text side
    def _encoder(self) -> Any:
        """Detic's CLIP text encoder (built once, on the detector's device: the LVIS vocabulary
        is 1203 prompts): CLIP ViT-B/32's text tower loaded from the clip package for real
        weights, the same architecture seeded for ``random:``."""
        if self._text_encoder is None:
            import torch

            build = _import_detic()["build_text_encoder"]
            if self.random_config:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_SEED + 1)
                    encoder = build(pretrain=False)
            else:
                try:
                    encoder = build(pretrain=True)
                except (OSError, RuntimeError) as exc:
                    raise DetectorError(f"cannot load CLIP {CLIP_TEXT_MODEL}, Detic's text encoder: {exc} "
                                        f"(see {_DOC})") from exc
            self._text_encoder = encoder.eval().to(self.device)
        return self._text_encoder

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 512) float32, L2-normalised: ``texts`` through Detic's CLIP text encoder.
        Its tokenizer keeps a random 77-token window of a longer text; the window is seeded
        here, so a text always encodes the same way."""
        import torch

        encoder = self._encoder()
        out = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            for i in range(0, len(texts), 256):
                emb = encoder(list(texts[i : i + 256])).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 512), np.float32)

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompt lines through Detic's CLIP text encoder, formatted with ``prompt_template``
        as the vocabulary was: (len(prompts), 512) float32, L2-normalised, in the space of the
        zero-shot classifier, which is that of the ``classifier`` track embeddings (a box's cosine
        with a text is what the final cascade stage scales into that class's logit)."""
        return self.encode_texts([self.prompt_template.format(str(p)) for p in prompts])

    # ------------------------------------------------------------------ image side
    def _inputs(self, frames: list[np.ndarray]) -> list[dict[str, Any]]:
        import torch

        inputs = []
        for frame in frames:
            h, w = frame.shape[:2]
            img = frame if self.input_format == "RGB" else frame[:, :, ::-1]
            img = self.aug.get_transform(img).apply_image(img)
            tensor = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
            inputs.append({"image": tensor.to(self.device, non_blocking=True).float(), "height": h, "width": w})
        return inputs

    def prepare(self, frames: Sequence[np.ndarray]) -> DeticPreparedBatch:
        """``frames`` resized to the test size and on the device, ready for :meth:`detect`: a
        pipeline (``--decode_workers``) prepares the next batch while the current one runs."""
        return DeticPreparedBatch(self._inputs(check_frames(frames)))

    def _embeddings(self, feats: Any) -> Any:
        if self.embedding_kind == "box_head":
            return feats
        return self.model.roi_heads.box_predictor[-1].cls_score.linear(feats.to(self.device))

    def _detect_batch(self, batch: DeticPreparedBatch) -> list[Detections]:
        import torch

        capture = _RoiCapture(self.model.roi_heads)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        results = []
        with torch.no_grad():
            with autocast, capture.active():
                outputs = self.model.inference(batch.inputs)
            for i, (out, (h, w)) in enumerate(zip(outputs, batch.shapes, strict=True)):
                inst = out["instances"]
                if inst.has("box_feats") and inst.has("logit_classes"):  # TrackVerse's Detic fork
                    probs, feats = inst.logit_classes, inst.box_feats
                else:
                    probs, feats = capture.per_image(i)
                results.append(
                    detic_outputs_to_detections(
                        inst.pred_boxes,
                        inst.scores,
                        probs,
                        self._embeddings(feats.float()),
                        num_classes=len(self.class_names),
                        pred_classes=inst.pred_classes,
                        image_size=(h, w),
                    )
                )
        return results

    def detect(self, frames: Sequence[np.ndarray] | DeticPreparedBatch,
               timestamps: Sequence[float] | None = None) -> list[Detections]:
        """Detections per frame (``timestamps`` are ignored), frames as arrays or a
        :meth:`prepare` d batch. Runs ``batch_size`` frames at a time; on CUDA out-of-memory
        the batch size is halved (and kept halved) until it fits, and a failure at batch
        size 1 raises :class:`DetectorError`."""
        batch = frames if isinstance(frames, DeticPreparedBatch) else None
        arrays = None if batch is not None else check_frames(frames)  # type: ignore[arg-type]

        def chunk_at(i: int, n: int) -> DeticPreparedBatch:
            return batch[i : i + n] if batch is not None else DeticPreparedBatch(self._inputs(arrays[i : i + n]))

        return detect_in_batches(
            self, "DETIC", len(batch) if batch is not None else len(arrays or []), chunk_at, lambda chunk: chunk.shapes[0],
            "free GPU memory, use a smaller vocabulary or input_size, or run on another device")

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov.update(
            config=self.config_name,
            prompt_template=self.prompt_template,
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            input_size=int(self.cfg.INPUT.MIN_SIZE_TEST),
            precision=self.precision,
            embedding=self.embedding_kind,
        )
        return prov


def _open_random_proposals(model: Any) -> None:
    """Give a randomly initialised DETIC's CenterNet proposal heads a neutral prior: Detic
    initialises their heat-map biases for a trained prior of 0.01, which with random features
    leaves every instance score (the square root of class times proposal probability) under the
    0.1 threshold; at 0.5 boxes come out, as with trained weights (their number drives the
    tracker's share of the cost)."""
    import torch

    head = getattr(getattr(model, "proposal_generator", None), "centernet_head", None)
    if head is None:
        return
    with torch.no_grad():
        for name in ("agn_hm", "cls_logits"):
            layer = getattr(head, name, None)
            if isinstance(layer, torch.nn.Conv2d) and layer.bias is not None:
                layer.bias.zero_()
