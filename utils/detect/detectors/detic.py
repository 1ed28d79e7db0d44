"""DETIC through detectron2: the original TrackVerse detector, for exact reproduction.

Optional and installed apart (see ``docs/detic.md``): detectron2 and Detic are imported only
when a :class:`DeticDetector` is built, and their absence raises :class:`DetectorError`
naming that document. Settings of the original: config
``Detic_LCOCOI21k_CLIP_SwinB_896b32_4x_ft4x_max-size``, a custom vocabulary encoded by
Detic's CLIP text encoder from ``"a <prompt>"``, test size 480 px, score threshold 0.1,
NMS 0.7, one class per proposal.

Per box it returns what the original tracker consumed: ``score`` (the instance score),
``class_logits`` (the cascade-averaged per-class probabilities, background column dropped:
the original called them ``logit_classes``), and the ROI box-head feature of the final
cascade stage as the embedding (L2-normalised here). The conversion from detectron2 outputs
is the pure function :func:`detic_outputs_to_detections`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from utils.core.models import resolve_device
from utils.core.network import unreachable
from utils.detect.detectors.base import Detections, Detector, DetectorError, check_frames

__all__ = [
    "DETIC_CONFIG_NAME",
    "DETIC_WEIGHTS_URL",
    "DeticDetector",
    "check_weights",
    "detic_available",
    "detic_outputs_to_detections",
    "instances_to_detections",
]

DETIC_CONFIG_NAME = "Detic_LCOCOI21k_CLIP_SwinB_896b32_4x_ft4x_max-size"
DETIC_WEIGHTS_URL = f"https://dl.fbaipublicfiles.com/detic/{DETIC_CONFIG_NAME}.pth"
_DOC = "docs/detic.md"
CLIP_TEXT_MODEL = "ViT-B/32"  # what Detic's text encoder loads through OpenAI's clip package


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
    """Whether detectron2 and Detic can be imported."""
    try:
        _import_detic()
    except DetectorError:
        return False
    return True


def _import_detic() -> dict[str, Any]:
    try:
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
            f"the 'detic' detector needs detectron2, CenterNet2 and Detic installed ({exc}). "
            f"They are not pip-installable from PyPI: follow {_DOC}, or use the default 'owlv2' detector."
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


class DeticDetector(Detector):
    """DETIC (detectron2) over a custom vocabulary; see the module docstring and docs/detic.md.

    Args:
        class_names: the vocabulary.
        prompts: class descriptions for the text encoder (default ``class_names``; the
            original used the full prompt lines), formatted with ``prompt_template``.
        config_file: Detic config (default: ``configs/<DETIC_CONFIG_NAME>.yaml`` next to the
            installed ``detic`` package).
        weights: checkpoint path or URL (default: the Detic model zoo URL).
        input_size: test-time shortest and longest side (480, as the original).
        score_threshold, nms_threshold: test thresholds (0.1 and 0.7, as the original).
        device: ``"auto"``, ``"cpu"``, ``"cuda:0"``...
        input_format: channel order the network expects; default: the config's
            ``INPUT.FORMAT`` (frames are RGB and are converted when it says BGR).
        batch_size: frames per forward pass.
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
    ) -> None:
        mods = _import_detic()
        import detic as detic_pkg
        import torch

        self.class_names = [str(c) for c in class_names]
        self.prompts = [str(p) for p in (prompts if prompts is not None else self.class_names)]
        if len(self.prompts) != len(self.class_names):
            raise ValueError(f"{len(self.prompts)} prompts for {len(self.class_names)} classes")
        self.weights_id = str(weights)
        self.batch_size = max(1, int(batch_size))
        device = resolve_device(device)
        detic_root = Path(detic_pkg.__file__).resolve().parent.parent
        if config_file is None:
            config_file = str(detic_root / "configs" / f"{DETIC_CONFIG_NAME}.yaml")
        if not Path(config_file).is_file():
            raise DetectorError(f"Detic config not found: {config_file} (pass config_file=; see {_DOC})")

        problem = check_weights(self.weights_id)
        if problem:
            raise DetectorError(problem)

        cfg = mods["get_cfg"]()
        mods["add_centernet_config"](cfg)
        mods["add_detic_config"](cfg)
        cfg.merge_from_file(config_file)
        cfg.MODEL.DEVICE = str(device)
        cfg.MODEL.WEIGHTS = self.weights_id
        cfg.MODEL.MASK_ON = False
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_threshold)
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = float(nms_threshold)
        cfg.MODEL.ROI_HEADS.ONE_CLASS_PER_PROPOSAL = True
        cfg.MODEL.ROI_BOX_HEAD.ADD_FEATURE_TO_PROP = True
        cfg.MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH = "rand"  # replaced by the custom vocabulary below
        cat_freq = detic_root / "datasets" / "metadata" / "lvis_v1_train_cat_info.json"
        if cat_freq.is_file():
            cfg.MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH = str(cat_freq)
        else:  # only training uses the federated loss
            cfg.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
        cfg.INPUT.MIN_SIZE_TEST = int(input_size)
        cfg.INPUT.MAX_SIZE_TEST = int(input_size)
        cfg.freeze()
        self.cfg = cfg
        self.input_format = (input_format or cfg.INPUT.FORMAT).upper()
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.prompt_template = prompt_template

        try:
            model = mods["build_model"](cfg)
            model.eval()
            mods["DetectionCheckpointer"](model).load(cfg.MODEL.WEIGHTS)
        except (OSError, RuntimeError, AssertionError) as exc:
            raise DetectorError(f"cannot load DETIC weights {self.weights_id!r}: {exc} (see {_DOC})") from exc
        text_encoder = mods["build_text_encoder"](pretrain=True).eval().to(cfg.MODEL.DEVICE)
        with torch.no_grad():
            texts = [prompt_template.format(p) for p in self.prompts]
            classifier = text_encoder(texts).permute(1, 0).contiguous()
        del text_encoder
        mods["reset_cls_test"](model, classifier, len(self.class_names))
        self.model = model
        self.aug = mods["T"].ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    def _detect_batch(self, frames: list[np.ndarray]) -> list[Detections]:
        import torch

        inputs = []
        for frame in frames:
            h, w = frame.shape[:2]
            img = frame if self.input_format == "RGB" else frame[:, :, ::-1]
            img = self.aug.get_transform(img).apply_image(img)
            tensor = torch.as_tensor(np.ascontiguousarray(img).astype("float32").transpose(2, 0, 1))
            inputs.append({"image": tensor, "height": h, "width": w})
        capture = _RoiCapture(self.model.roi_heads)
        with torch.no_grad(), capture.active():
            outputs = self.model.inference(inputs)
        results = []
        for i, (out, frame) in enumerate(zip(outputs, frames, strict=True)):
            inst = out["instances"].to("cpu")
            if inst.has("box_feats") and inst.has("logit_classes"):  # TrackVerse's Detic fork
                probs, feats = inst.logit_classes, inst.box_feats
            else:
                probs, feats = capture.per_image(i)
            results.append(
                detic_outputs_to_detections(
                    inst.pred_boxes,
                    inst.scores,
                    probs,
                    feats,
                    num_classes=len(self.class_names),
                    pred_classes=inst.pred_classes,
                    image_size=frame.shape[:2],
                )
            )
        return results

    def detect(self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None) -> list[Detections]:
        """Detections per frame (``timestamps`` are ignored)."""
        frames = check_frames(frames)
        results: list[Detections] = []
        for i in range(0, len(frames), self.batch_size):
            results.extend(self._detect_batch(frames[i : i + self.batch_size]))
        return results

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompt lines through Detic's CLIP text encoder, formatted with ``prompt_template``
        as the vocabulary was (the classifier weights ``reset_cls_test`` installs):
        (len(prompts), 512) float32, L2-normalised. The encoder is built for the call and
        dropped (it is not needed while detecting).

        Caveat (not tested end to end here: detectron2 is not installed on the build machine):
        these live in the space of Detic's zero-shot classifier, which box features reach only
        through the last cascade stage's projection (``cls_score.linear``); a track embedding of
        another length is refused by relabel_tracks.py with a message saying so."""
        import torch

        mods = _import_detic()
        encoder = mods["build_text_encoder"](pretrain=True).eval().to(self.cfg.MODEL.DEVICE)
        texts = [self.prompt_template.format(str(p)) for p in prompts]
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 256):
                emb = encoder(texts[i : i + 256]).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        del encoder
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 512), np.float32)

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov.update(
            config=DETIC_CONFIG_NAME,
            prompt_template=self.prompt_template,
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            input_size=int(self.cfg.INPUT.MIN_SIZE_TEST),
        )
        return prov
