"""THE metadata record: one JSON line per track.

:class:`TrackRecord` owns the schema; every stage imports it. Keys (released TrackVerse):

=================  ==========================================================================
``yid``            YouTube id (11 characters)
``tid``            track id: :func:`compute_tid` (md5 of yid, timestamps and boxes)
``fn``             ``<yid[:2]>/<yid>-<label-with-dashes>-<tid>.mp4`` (:func:`track_filename`)
``video_size``     ``[h, w]`` of the source video frames the boxes refer to
``track_ts``       per-frame timestamps (seconds, in the source video)
``track_bbox``     per-frame ``[x, y, w, h]`` in source pixels
``top10_lbl``      top-10 class indices, by mean objectness-weighted logit
``top10_desc``     their class names
``top10_logit_mu`` / ``top10_logit_std``    mean / std over frames of the raw class logit
``top10_wlogit_mu`` / ``top10_wlogit_std``  same for the weighted logit (logit x frame score)
=================  ==========================================================================

Added keys: ``segment`` (``[start, end]`` of the scene), ``detector`` (its name),
``vocab_hash`` (sha256 of the prompt lines), ``scores`` (per-frame detection score). Any
other key is kept as is in :attr:`TrackRecord.extra` and written back.

Readers accept the released subsets' spelling too: ``track_mp4_filename`` (fn),
``frame_ts`` (track_ts; their own ``track_ts`` is the ``[start, end]`` span, kept as
``track_span`` when it says more than the frames do), ``frame_bboxes`` (track_bbox),
``track_id`` (tid), ``top10_label_ids`` (top10_lbl), ``top10_label_names`` (top10_desc), and
the original pipeline's ``top10_cls`` / ``top10_wcls`` (``[mu, std]`` pairs) and
``frame_obj`` (scores). Records are always written in the canonical spelling. Files of records: :mod:`utils.records.track_files`;
what made a file: :mod:`utils.records.provenance`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from utils.core.boxes import xywh_to_xyxy, xyxy_to_xywh
from utils.core.layout import validate_yid
from utils.records.prompts import file_label, label_of

__all__ = [
    "TS_DECIMALS",
    "BBOX_DECIMALS",
    "CANONICAL_KEYS",
    "RELABELLED",
    "RecordsFileError",
    "TrackRecord",
    "TrackRecordError",
    "compute_tid",
    "track_filename",
]

#: timestamps are stored (and hashed into the tid) rounded to 0.1 ms; 4 decimals write
#: multiples of 1/16 s (the sampling rate) exactly, far from any rounding boundary
TS_DECIMALS = 4
#: box coordinates are stored (and hashed into the tid) rounded to 1/100 pixel
BBOX_DECIMALS = 2
#: the per-class statistics (top10_*logit*) are written with 5 decimals, by parse and relabel alike
STAT_DECIMALS = 5
_SCORE_DECIMALS = 4


class TrackRecordError(ValueError):
    """A metadata record that breaks the schema."""


class RecordsFileError(ValueError):
    """A metadata file that cannot be read (corrupt, truncated, or holding a bad record)."""


# ---------------------------------------------------------------------------- ids and names


def compute_tid(yid: str, track_ts: Sequence[float], track_bbox: Sequence[Sequence[float]]) -> str:
    """The track id: md5 (hex, 32 characters) of the UTF-8 text

        ``<yid>|<t_1>,<t_2>,...|<x,y,w,h>;<x,y,w,h>;...``

    with each timestamp written ``%.4f`` (:data:`TS_DECIMALS`) and each box value ``%.2f``
    (:data:`BBOX_DECIMALS`). Records store values rounded the same way, so the tid of a
    record read back from JSON recomputes exactly.
    """
    ts = ",".join(f"{float(t):.{TS_DECIMALS}f}" for t in track_ts)
    boxes = ";".join(",".join(f"{float(v):.{BBOX_DECIMALS}f}" for v in box) for box in track_bbox)
    return hashlib.md5(f"{yid}|{ts}|{boxes}".encode()).hexdigest()


def track_filename(yid: str, class_name: str, tid: str) -> str:
    """``<yid[:2]>/<yid>-<label-with-dashes>-<tid>.mp4``; ``class_name`` may be a full prompt
    line (the released naming rule: :func:`utils.records.prompts.file_label`)."""
    return f"{yid[:2]}/{yid}-{file_label(class_name)}-{tid}.mp4"


# ---------------------------------------------------------------------------- the record

CANONICAL_KEYS = (
    "yid",
    "tid",
    "fn",
    "video_size",
    "track_ts",
    "track_bbox",
    "top10_lbl",
    "top10_desc",
    "top10_logit_mu",
    "top10_logit_std",
    "top10_wlogit_mu",
    "top10_wlogit_std",
    "segment",
    "detector",
    "vocab_hash",
    "scores",
)
#: the extra key relabel_tracks.py adds (a JSON object: from which dataset and vocabulary, which score)
RELABELLED = "relabelled"
_TOP10 = ("top10_lbl", "top10_desc", "top10_logit_mu", "top10_logit_std", "top10_wlogit_mu", "top10_wlogit_std")
# canonical key -> other spellings, in order of preference (track_ts is handled apart)
_ALIASES = {
    "fn": ("track_mp4_filename", "mp4_filename"),
    "tid": ("track_id",),
    "track_bbox": ("frame_bboxes",),
    "top10_lbl": ("top10_label_ids",),
    "top10_desc": ("top10_label_names",),
    "scores": ("frame_obj",),
}


def _finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass
class TrackRecord:
    """One track's metadata (see the module docstring for the keys).

    Construction coerces types (numpy arrays are fine) and validates; a violation raises
    :class:`TrackRecordError` naming the record and the field. Optional keys are ``None``
    when absent and are then left out of the JSON.
    """

    yid: str
    tid: str
    fn: str
    track_ts: list[float]
    track_bbox: list[list[float]]
    video_size: list[int] | None = None
    top10_lbl: list[int] | None = None
    top10_desc: list[str] | None = None
    top10_logit_mu: list[float] | None = None
    top10_logit_std: list[float] | None = None
    top10_wlogit_mu: list[float] | None = None
    top10_wlogit_std: list[float] | None = None
    segment: list[float] | None = None
    detector: str | None = None
    vocab_hash: str | None = None
    scores: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._coerce()
        self.validate()

    # ------------------------------------------------------------------ validation
    def _fail(self, message: str) -> TrackRecordError:
        who = f"track {getattr(self, 'yid', '?')}/{getattr(self, 'tid', '?')}"
        return TrackRecordError(f"{who}: {message}")

    def _coerce(self) -> None:
        def floats(name: str, value: Any) -> list[float]:
            try:
                return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
            except (TypeError, ValueError) as exc:
                raise self._fail(f"{name} must be numbers: {exc}") from None

        try:
            self.yid = str(self.yid)
            self.tid = str(self.tid)
            self.fn = str(self.fn)
            self.track_ts = floats("track_ts", self.track_ts)
            bbox = np.asarray(self.track_bbox, dtype=np.float64)
            if bbox.size == 0:
                bbox = bbox.reshape(0, 4)
            if bbox.ndim != 2 or bbox.shape[1] != 4:
                raise self._fail(f"track_bbox must be a list of [x, y, w, h], got shape {bbox.shape}")
            self.track_bbox = bbox.tolist()
            if self.video_size is not None:
                vs = np.asarray(self.video_size).reshape(-1)
                if vs.size != 2 or np.any(vs != np.round(vs.astype(np.float64))):
                    raise self._fail(f"video_size must be [h, w] integers, got {self.video_size!r}")
                self.video_size = [int(v) for v in vs]
            if self.top10_lbl is not None:
                lbl = np.asarray(self.top10_lbl).reshape(-1)
                if lbl.size and (lbl.dtype.kind not in "iuf" or np.any(lbl != np.round(lbl.astype(np.float64)))):
                    raise self._fail(f"top10_lbl must be integer class indices, got {self.top10_lbl!r}")
                self.top10_lbl = [int(v) for v in lbl]
            if self.top10_desc is not None:
                self.top10_desc = [str(v) for v in self.top10_desc]
            for name in ("top10_logit_mu", "top10_logit_std", "top10_wlogit_mu", "top10_wlogit_std", "segment", "scores"):
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, floats(name, value))
            if self.detector is not None:
                self.detector = str(self.detector)
            if self.vocab_hash is not None:
                self.vocab_hash = str(self.vocab_hash)
            self.extra = dict(self.extra or {})
        except TrackRecordError:
            raise
        except (TypeError, ValueError) as exc:
            raise self._fail(f"malformed field: {exc}") from None

    def validate(self) -> None:
        """Check the schema; raises :class:`TrackRecordError`."""
        try:
            validate_yid(self.yid)
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        if not self.tid:
            raise self._fail("tid is empty")
        fn = self.fn
        if not fn.endswith(".mp4") or fn.startswith("/") or "\\" in fn or ".." in Path(fn).parts:
            raise self._fail(f"fn must be a relative '<yid[:2]>/<name>.mp4' path, got {fn!r}")
        n = len(self.track_ts)
        if n == 0:
            raise self._fail("track_ts is empty")
        if not _finite(self.track_ts):
            raise self._fail("track_ts has NaN or infinite values")
        if any(b < a for a, b in zip(self.track_ts, self.track_ts[1:], strict=False)):
            raise self._fail("track_ts is not in increasing order")
        if len(self.track_bbox) != n:
            raise self._fail(f"{len(self.track_bbox)} boxes in track_bbox for {n} timestamps in track_ts")
        for i, box in enumerate(self.track_bbox):
            if not _finite(box):
                raise self._fail(f"track_bbox[{i}] has NaN or infinite values: {box}")
            if box[2] < 0 or box[3] < 0:
                raise self._fail(f"track_bbox[{i}] has a negative width or height: {box}")
        if self.video_size is not None and (self.video_size[0] <= 0 or self.video_size[1] <= 0):
            raise self._fail(f"video_size must be positive [h, w], got {self.video_size}")
        present = {name: getattr(self, name) for name in _TOP10 if getattr(self, name) is not None}
        lengths = {name: len(v) for name, v in present.items()}
        if len(set(lengths.values())) > 1:
            raise self._fail(f"top-10 lists differ in length: {lengths}")
        if self.top10_lbl is not None and any(v < 0 for v in self.top10_lbl):
            raise self._fail(f"top10_lbl has negative class indices: {self.top10_lbl}")
        for name in ("top10_logit_mu", "top10_logit_std", "top10_wlogit_mu", "top10_wlogit_std"):
            value = present.get(name)
            if value is not None and not _finite(value):
                raise self._fail(f"{name} has NaN or infinite values")
            if value is not None and name.endswith("_std") and any(v < 0 for v in value):
                raise self._fail(f"{name} has negative values")
        if self.segment is not None:
            if len(self.segment) != 2 or not _finite(self.segment) or self.segment[1] < self.segment[0]:
                raise self._fail(f"segment must be [start, end] with start <= end, got {self.segment}")
        if self.scores is not None:
            if len(self.scores) != n:
                raise self._fail(f"{len(self.scores)} scores for {n} timestamps")
            if not _finite(self.scores):
                raise self._fail("scores has NaN or infinite values")
        clash = set(self.extra) & set(CANONICAL_KEYS)
        if clash:
            raise self._fail(f"extra keys shadow schema keys: {sorted(clash)}")

    # ------------------------------------------------------------------ derived
    def __len__(self) -> int:
        return len(self.track_ts)

    @property
    def duration(self) -> float:
        """Seconds from the first to the last timestamp."""
        return self.track_ts[-1] - self.track_ts[0]

    @property
    def label(self) -> str | None:
        """The top-1 class label (``None`` without ``top10_desc``)."""
        return label_of(self.top10_desc[0]) if self.top10_desc else None

    def bboxes_xyxy(self) -> np.ndarray:
        """(T, 4) float64 ``[x1, y1, x2, y2]``."""
        return xywh_to_xyxy(np.asarray(self.track_bbox, dtype=np.float64).reshape(-1, 4))

    def expected_tid(self) -> str:
        """:func:`compute_tid` of this record's yid, timestamps and boxes."""
        return compute_tid(self.yid, self.track_ts, self.track_bbox)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_history(
        cls,
        yid: str,
        timestamps: Sequence[float],
        boxes_xyxy: Any,
        class_logits: Any,
        scores: Any,
        class_names: Sequence[str],
        video_size: Sequence[int],
        *,
        segment: Sequence[float] | None = None,
        detector: str | None = None,
        vocab_hash: str | None = None,
        top_k: int = 10,
        extra: dict[str, Any] | None = None,
        file_labels: Sequence[str] | None = None,
    ) -> TrackRecord:
        """A record from a tracker's per-frame history.

        Args:
            timestamps: (T,) seconds.
            boxes_xyxy: (T, 4) ``[x1, y1, x2, y2]`` in source pixels.
            class_logits: (T, C) per-frame class logits over ``class_names``.
            scores: (T,) per-frame detection scores (objectness-like, in [0, 1]).
            video_size: ``(h, w)`` of the frames the boxes refer to.
            file_labels: per class, what file names carry (:attr:`Vocabulary.file_labels`); default the
                class name.

        The top-``top_k`` classes are those with the highest mean weighted logit, where the
        weighted logit of a frame is ``logit * score``; ties keep the lower class index.
        Timestamps are rounded to :data:`TS_DECIMALS`, boxes to :data:`BBOX_DECIMALS`, then
        ``tid`` and ``fn`` are derived from them.
        """
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        t = ts.shape[0]
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        logits = np.asarray(class_logits, dtype=np.float64)
        sc = np.asarray(scores, dtype=np.float64).reshape(-1)
        if t == 0:
            raise TrackRecordError(f"track of {yid}: empty history")
        if boxes.shape[0] != t or sc.shape[0] != t or logits.ndim != 2 or logits.shape[0] != t:
            raise TrackRecordError(
                f"track of {yid}: history shapes disagree: {t} timestamps, boxes {boxes.shape}, "
                f"class_logits {logits.shape}, scores {sc.shape}"
            )
        if logits.shape[1] != len(class_names):
            raise TrackRecordError(
                f"track of {yid}: class_logits have {logits.shape[1]} classes, class_names {len(class_names)}"
            )
        weighted = logits * sc[:, None]
        order = np.argsort(-weighted.mean(axis=0), kind="stable")[: max(1, int(top_k))]

        def stat(a: np.ndarray) -> list[float]:
            return [round(float(v), STAT_DECIMALS) for v in a[order]]

        track_ts = [round(float(v), TS_DECIMALS) for v in ts]
        track_bbox = [[round(float(v), BBOX_DECIMALS) for v in row] for row in xyxy_to_xywh(boxes)]
        tid = compute_tid(yid, track_ts, track_bbox)
        names = [str(class_names[i]) for i in order]
        return cls(
            yid=yid,
            tid=tid,
            fn=track_filename(yid, file_labels[order[0]] if file_labels is not None else names[0], tid),
            video_size=[int(v) for v in video_size],
            track_ts=track_ts,
            track_bbox=track_bbox,
            top10_lbl=[int(i) for i in order],
            top10_desc=names,
            top10_logit_mu=stat(logits.mean(axis=0)),
            top10_logit_std=stat(logits.std(axis=0)),
            top10_wlogit_mu=stat(weighted.mean(axis=0)),
            top10_wlogit_std=stat(weighted.std(axis=0)),
            segment=None if segment is None else [float(v) for v in segment],
            detector=detector,
            vocab_hash=vocab_hash,
            scores=[round(float(v), _SCORE_DECIMALS) for v in sc],
            extra=dict(extra or {}),
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Canonical keys in schema order (``None`` ones left out), then the extra keys."""
        out: dict[str, Any] = {}
        for name in CANONICAL_KEYS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        """One JSON line (no newline), canonical spelling."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], validate: bool = True) -> TrackRecord:
        """A record from a parsed JSON object in either spelling (see the module docstring).

        ``validate=False`` skips validation and coercion (fast bulk loading of trusted files).
        """
        if not isinstance(data, dict):
            raise TrackRecordError(f"a track record must be a JSON object, got {type(data).__name__}")
        rest = dict(data)
        values: dict[str, Any] = {}

        def take(name: str) -> Any:
            if name in rest:
                return rest.pop(name)
            for alias in _ALIASES.get(name, ()):
                if alias in rest:
                    return rest.pop(alias)
            return None

        try:  # the object's shape (wrong types where lists are expected) is the data's fault
            # Per-frame timestamps: released subsets call them frame_ts and use track_ts for the span.
            if "frame_ts" in rest:
                values["track_ts"] = rest.pop("frame_ts")
                span = rest.pop("track_ts", None)
                if span is not None and list(span) != list(values["track_ts"]):
                    ts = values["track_ts"]
                    if not (len(span) == 2 and ts and span[0] == ts[0] and span[-1] == ts[-1]):
                        rest["track_span"] = span
            else:
                values["track_ts"] = rest.pop("track_ts", None)
            for name in CANONICAL_KEYS:
                if name != "track_ts":
                    values[name] = take(name)
            # The original pipeline stored [mu, std] pairs.
            for old, (mu, std) in (("top10_cls", ("top10_logit_mu", "top10_logit_std")),
                                   ("top10_wcls", ("top10_wlogit_mu", "top10_wlogit_std"))):
                pair = rest.get(old)
                if values[mu] is None and isinstance(pair, (list, tuple)) and len(pair) == 2:
                    values[mu], values[std] = pair[0], pair[1]
                    del rest[old]

            missing = [k for k in ("yid", "track_ts", "track_bbox") if values[k] is None]
            if missing:
                raise TrackRecordError(f"track record misses {missing} (keys: {sorted(data)})")
            if values["tid"] is None:
                values["tid"] = compute_tid(str(values["yid"]), values["track_ts"], values["track_bbox"])
            if values["fn"] is None:
                if not values["top10_desc"]:
                    raise TrackRecordError(f"track {values['yid']}/{values['tid']}: no fn and no top10_desc to name it")
                values["fn"] = track_filename(str(values["yid"]), values["top10_desc"][0], str(values["tid"]))
        except (TypeError, KeyError, IndexError, AttributeError) as exc:
            raise TrackRecordError(f"malformed track record ({type(exc).__name__}: {exc}; keys: {sorted(data)})") from None
        if validate:
            return cls(**values, extra=rest)
        record = cls.__new__(cls)
        for f in fields(cls):
            setattr(record, f.name, rest if f.name == "extra" else values[f.name])
        return record

    @classmethod
    def from_json(cls, line: str | bytes | dict[str, Any], validate: bool = True) -> TrackRecord:
        """A record from one JSON line (or an already-parsed dict), either spelling."""
        if isinstance(line, dict):
            return cls.from_dict(line, validate)
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrackRecordError(f"not a JSON line: {exc}") from None
        return cls.from_dict(data, validate)
