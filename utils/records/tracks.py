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

A metadata file written by parse_tracks.py also says what produced it as a whole, even when it
holds no record: its :class:`Provenance` (detector, weights id, vocabulary hash, class count)
is JSON in the gzip header's extra field (RFC 1952 ``FEXTRA``, subfield ``TV``), which every
gzip reader skips, so the lines stay plain records. :func:`records_to_jsonl_gz_bytes` writes
it, :func:`read_provenance` reads it without decompressing anything (and falls back to the
first record's ``detector`` / ``weights`` / ``vocab_hash`` for files written before).

Readers accept the released subsets' spelling too: ``track_mp4_filename`` (fn),
``frame_ts`` (track_ts; their own ``track_ts`` is the ``[start, end]`` span, kept as
``track_span`` when it says more than the frames do), ``frame_bboxes`` (track_bbox),
``track_id`` (tid), ``top10_label_ids`` (top10_lbl), ``top10_label_names`` (top10_desc), and
the original pipeline's ``top10_cls`` / ``top10_wcls`` (``[mu, std]`` pairs) and
``frame_obj`` (scores). Records are always written in the canonical spelling.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Annotated, Any, BinaryIO

import msgspec
import numpy as np

from utils.core.boxes import xywh_to_xyxy, xyxy_to_xywh
from utils.core.io import GZIP_MAGIC, GZIP_STREAM_ERRORS, JsonLine, iter_json_lines, open_maybe_gzip
from utils.core.layout import validate_yid
from utils.records.prompts import label_of, label_with_dashes

__all__ = [
    "TS_DECIMALS",
    "BBOX_DECIMALS",
    "RELABELLED",
    "Provenance",
    "RecordsFileError",
    "RecordsRead",
    "TrackRecord",
    "TrackRecordError",
    "canonical_line_scalars",
    "compute_tid",
    "iter_records",
    "read_provenance",
    "read_records",
    "jsonl_to_gz_bytes",
    "records_to_jsonl_bytes",
    "records_to_jsonl_gz_bytes",
    "track_filename",
    "write_records",
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
    line (its label is taken, see :func:`utils.records.prompts.label_of`)."""
    return f"{yid[:2]}/{yid}-{label_with_dashes(label_of(class_name))}-{tid}.mp4"


# ---------------------------------------------------------------------------- the record

_CANONICAL = (
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
        clash = set(self.extra) & set(_CANONICAL)
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
    ) -> TrackRecord:
        """A record from a tracker's per-frame history.

        Args:
            timestamps: (T,) seconds.
            boxes_xyxy: (T, 4) ``[x1, y1, x2, y2]`` in source pixels.
            class_logits: (T, C) per-frame class logits over ``class_names``.
            scores: (T,) per-frame detection scores (objectness-like, in [0, 1]).
            video_size: ``(h, w)`` of the frames the boxes refer to.

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
            fn=track_filename(yid, names[0], tid),
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
        for name in _CANONICAL:
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
            for name in _CANONICAL:
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


# ---------------------------------------------------------------------------- fast check

# Constraints msgspec checks while it parses. Numbers below 2**53 in magnitude: an integer
# written where a float belongs is exact then, so msgspec reads the value the full way's
# json.loads + int -> float coercion gives (a bigger one only costs the full way).
_Number = Annotated[float, msgspec.Meta(gt=-(2.0**53), lt=2.0**53)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0, lt=2.0**53)]
_Index = Annotated[int, msgspec.Meta(ge=0, lt=1 << 31)]
_Size = Annotated[int, msgspec.Meta(gt=0, lt=1 << 31)]
_Unset = msgspec.UnsetType
_UNSET = msgspec.UNSET


class _CanonicalLine(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A record line in canonical spelling: msgspec checks types and the bounds above while it
    parses (no dict, no coercion step). Optional keys default to UNSET, so an explicit ``null``
    (which the canonical form leaves out) does not match."""

    yid: str
    tid: Annotated[str, msgspec.Meta(min_length=1)]
    fn: str
    video_size: tuple[_Size, _Size] | _Unset = _UNSET
    track_ts: Annotated[list[_Number], msgspec.Meta(min_length=1)]
    track_bbox: list[tuple[_Number, _Number, _NonNegative, _NonNegative]]
    top10_lbl: list[_Index] | _Unset = _UNSET
    top10_desc: list[str] | _Unset = _UNSET
    top10_logit_mu: list[_Number] | _Unset = _UNSET
    top10_logit_std: list[_NonNegative] | _Unset = _UNSET
    top10_wlogit_mu: list[_Number] | _Unset = _UNSET
    top10_wlogit_std: list[_NonNegative] | _Unset = _UNSET
    segment: tuple[_Number, _Number] | _Unset = _UNSET
    detector: str | _Unset = _UNSET
    vocab_hash: str | _Unset = _UNSET
    scores: list[_Number] | _Unset = _UNSET
    # the one extra key our own stages write (relabel_tracks.py); any other extra key costs the full way
    relabelled: dict[str, Any] | _Unset = _UNSET


assert _CanonicalLine.__struct_fields__ == (*_CANONICAL, RELABELLED)
_decode_canonical = msgspec.json.Decoder(_CanonicalLine).decode


_label_cache: dict[str, str] = {}


def _label(desc: str) -> str:
    label = _label_cache.get(desc)
    if label is None:
        if len(_label_cache) > 100_000:
            _label_cache.clear()
        label = _label_cache[desc] = label_of(desc)
    return label


def canonical_line_scalars(text: bytes, expected_yid: str) -> tuple | None:
    """The index's scalars of one JSON line (``yid tid fn label label_id score logit duration
    num_frames t_start t_end video_h video_w``) when the line is a record in canonical spelling
    (keys of :data:`_CANONICAL`, no ``null``, no other key but :data:`RELABELLED`) of video ``expected_yid`` that
    passes :meth:`TrackRecord.validate`: then reading it the full way (``json.loads``,
    :meth:`TrackRecord.from_dict`) gives the same values, ``to_dict()`` equals what was read,
    and the line is kept as read. None when it cannot say so cheaply (another spelling, an
    explicit null, NaN, a number beyond 2**53, a bad value): read it the full way to know. Never accepts
    a line the full way rejects; ``tests/test_curate_db.py`` holds the two ways to the same
    result on every kind of line."""
    try:
        rec = _decode_canonical(text)
    except msgspec.DecodeError:  # also ValidationError: a type, bound, key or null the canonical form does not have
        return None
    yid, fn, ts = rec.yid, rec.fn, rec.track_ts
    n = len(ts)
    if yid != expected_yid or len(rec.track_bbox) != n or sorted(ts) != ts:
        return None
    if not fn.endswith(".mp4") or fn.startswith("/") or "\\" in fn or ".." in fn:
        return None
    lbl, desc, wmu, mu = rec.top10_lbl, rec.top10_desc, rec.top10_wlogit_mu, rec.top10_logit_mu
    lengths = {len(v) for v in (lbl, desc, mu, rec.top10_logit_std, wmu, rec.top10_wlogit_std) if v is not _UNSET}
    if len(lengths) > 1:
        return None
    seg, scores = rec.segment, rec.scores
    if (seg is not _UNSET and seg[1] < seg[0]) or (scores is not _UNSET and len(scores) != n):
        return None
    video_h, video_w = rec.video_size or (-1, -1)
    return (yid, rec.tid, fn, _label(desc[0]) if desc else None, lbl[0] if lbl else -1,
            wmu[0] if wmu else math.nan, mu[0] if mu else math.nan,
            ts[-1] - ts[0], n, ts[0], ts[-1], video_h, video_w)


# ---------------------------------------------------------------------------- provenance

#: the gzip ``FEXTRA`` subfield id (RFC 1952) under which a metadata file's provenance is kept
PROVENANCE_SUBFIELD = b"TV"
_GZIP_FEXTRA = 0x04
_PROVENANCE_VERSION = 1


@dataclass(frozen=True)
class Provenance:
    """What produced a metadata file (every record of it, or its empty result).

    ``detector`` is the detector's name (what records' ``detector`` holds), ``weights`` its
    weights id (the ``--model`` given, else the backend's default; ``None`` for weight-free
    detectors), ``vocab_hash`` the sha256 of the prompt lines and ``classes`` their number.
    ``detector_spec`` is the ``--detector`` flag that built it. ``source`` says where it was
    read: ``"header"`` (the file's gzip header) or ``"records"`` (the first record of a file
    written before headers: no ``classes`` nor ``detector_spec`` then).
    """

    detector: str | None = None
    weights: str | None = None
    vocab_hash: str | None = None
    classes: int | None = None
    detector_spec: str | None = None
    source: str = "header"

    @property
    def known(self) -> bool:
        """Whether it says which detector and vocabulary (files of the original pipeline, or
        written by other tools, may not)."""
        return self.detector is not None and self.vocab_hash is not None

    def key(self) -> tuple[str | None, str | None, str | None]:
        """(detector, weights, vocab_hash): what makes two files' tracks comparable."""
        return (self.detector, self.weights, self.vocab_hash)

    def describe(self) -> str:
        """``detector X, weights Y, vocabulary 0123456789ab (N classes)`` for messages."""
        vocab = self.vocab_hash[:12] if self.vocab_hash else "unknown"
        classes = "" if self.classes is None else f" ({self.classes} class{'es' if self.classes != 1 else ''})"
        return f"detector {self.detector_spec or self.detector or 'unknown'}, weights {self.weights or 'none'}, " \
               f"vocabulary {vocab}{classes}"

    def to_header_bytes(self) -> bytes:
        payload = {k: v for k, v in asdict(self).items() if k != "source" and v is not None}
        return json.dumps({"v": _PROVENANCE_VERSION, **payload}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False).encode("ascii")

    @classmethod
    def from_header_bytes(cls, data: bytes) -> Provenance:
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"provenance header is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("provenance header is not a JSON object")

        def text(key: str) -> str | None:
            v = value.get(key)
            return None if v is None else str(v)

        classes = value.get("classes")
        return cls(detector=text("detector"), weights=text("weights"), vocab_hash=text("vocab_hash"),
                   classes=classes if isinstance(classes, int) and not isinstance(classes, bool) else None,
                   detector_spec=text("detector_spec"), source="header")

    @classmethod
    def from_record(cls, record: dict[str, Any] | TrackRecord) -> Provenance:
        """What a record says about its producer (files written before the header)."""
        data = record.to_dict() if isinstance(record, TrackRecord) else record
        weights = data.get("weights")
        return cls(detector=None if data.get("detector") is None else str(data["detector"]),
                   weights=None if weights is None else str(weights),
                   vocab_hash=None if data.get("vocab_hash") is None else str(data["vocab_hash"]),
                   source="records")


def _gzip_with_provenance(data: bytes, provenance: Provenance, compresslevel: int = 6) -> bytes:
    """One gzip member of ``data`` whose header carries ``provenance`` in its extra field
    (mtime 0, so the bytes depend on the content only)."""
    payload = provenance.to_header_bytes()
    extra = PROVENANCE_SUBFIELD + struct.pack("<H", len(payload)) + payload
    if len(extra) > 0xFFFF:
        raise ValueError(f"provenance too long for a gzip header ({len(payload)} bytes)")
    header = struct.pack("<BBBBLBB", 0x1F, 0x8B, 8, _GZIP_FEXTRA, 0, 0, 255) + struct.pack("<H", len(extra)) + extra
    trailer = struct.pack("<LL", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + zlib.compress(data, level=compresslevel, wbits=-15) + trailer


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    return data if len(data) == n else b""


def _header_provenance(f: BinaryIO) -> tuple[bool, Provenance | None]:
    """(is gzip, the provenance in its header or None), reading only the header's first bytes."""
    head = _read_exact(f, 10)
    if len(head) < 10 or head[:2] != GZIP_MAGIC:
        return False, None
    if not head[3] & _GZIP_FEXTRA:
        return True, None
    size = _read_exact(f, 2)
    if not size:
        raise ValueError("gzip header cut in its extra field")
    extra = _read_exact(f, struct.unpack("<H", size)[0])
    if not extra:
        raise ValueError("gzip header cut in its extra field")
    pos = 0
    while pos + 4 <= len(extra):
        sub, length = extra[pos:pos + 2], struct.unpack("<H", extra[pos + 2:pos + 4])[0]
        if sub == PROVENANCE_SUBFIELD:
            return True, Provenance.from_header_bytes(extra[pos + 4:pos + 4 + length])
        pos += 4 + length
    return True, None


def read_provenance(path: str | os.PathLike, from_records: bool = True) -> Provenance | None:
    """The provenance of a metadata file: from its gzip header (a few hundred bytes read,
    nothing decompressed), else, with ``from_records``, from its first record (``source
    == "records"``; fields it lacks are ``None``). ``None``: no header and no record (an empty
    file written before headers). Raises :class:`RecordsFileError` for a file whose header or
    first line cannot be read, ``OSError`` when it cannot be opened."""
    try:
        with open(path, "rb") as f:
            _, found = _header_provenance(f)
    except ValueError as exc:
        raise RecordsFileError(f"{path}: {exc}") from None
    if found is not None or not from_records:
        return found
    try:
        with open_maybe_gzip(path) as f:
            for line in iter_json_lines(f):
                if line.error is not None or not isinstance(line.value, dict):
                    raise RecordsFileError(f"{path}:{line.lineno}: not a JSON record")
                return Provenance.from_record(line.value)
    except GZIP_STREAM_ERRORS as exc:
        raise RecordsFileError(f"{path}: damaged or truncated before its first record: {exc}") from exc
    return None


# ---------------------------------------------------------------------------- files


def records_to_jsonl_bytes(records: Iterable[TrackRecord | dict[str, Any]]) -> bytes:
    """The canonical JSON lines of ``records``, uncompressed (what a metadata file holds)."""
    lines = []
    for r in records:
        rec = r if isinstance(r, TrackRecord) else TrackRecord.from_dict(r)
        lines.append(rec.to_json().encode("utf-8") + b"\n")
    return b"".join(lines)


def records_to_jsonl_gz_bytes(records: Iterable[TrackRecord | dict[str, Any]],
                              provenance: Provenance | None = None) -> bytes:
    """Gzip-compressed JSON lines of ``records`` (deterministic: no timestamp in the header),
    with ``provenance`` in the gzip header when given (see :func:`read_provenance`).
    Write them atomically, e.g. with ``utils.core.io.atomic_write_bytes``."""
    return jsonl_to_gz_bytes(records_to_jsonl_bytes(records), provenance)


def jsonl_to_gz_bytes(data: bytes, provenance: Provenance | None = None) -> bytes:
    """:func:`records_to_jsonl_gz_bytes` for lines already made by :func:`records_to_jsonl_bytes`."""
    if provenance is not None:
        return _gzip_with_provenance(data, provenance)
    return gzip.compress(data, compresslevel=6, mtime=0)


def write_records(fileobj: IO[bytes], records: Iterable[TrackRecord | dict[str, Any]]) -> int:
    """Write ``records`` as one gzip member to a binary file object; returns how many."""
    data = records_to_jsonl_bytes(records)
    with gzip.GzipFile(fileobj=fileobj, mode="wb", mtime=0) as gz:
        gz.write(data)
    return data.count(b"\n")


class RecordsRead(list):
    """The records read from one file (a ``list``), plus what stopped the reading:
    ``truncated`` is true when a damaged or cut gzip stream ended it early (``error``
    says how, ``lines`` how many lines were read)."""

    def __init__(self, path: str, records: Iterable[TrackRecord] = ()) -> None:
        super().__init__(records)
        self.path = path
        self.truncated = False
        self.error: str | None = None
        self.lines = 0


def iter_records(path: str | os.PathLike, validate: bool = True) -> Iterator[TrackRecord]:
    """Records of a gzip (or plain) JSONL file, one by one; raises :class:`RecordsFileError`
    on a truncated stream or a bad line (naming the file and line)."""
    lineno = 0
    try:
        with open_maybe_gzip(path) as f:
            for line in iter_json_lines(f):
                lineno = line.lineno
                yield _record_of(path, line, validate)
    except GZIP_STREAM_ERRORS as exc:
        raise RecordsFileError(f"{path}: damaged or truncated after line {lineno}: {exc}") from exc


def read_records(path: str | os.PathLike, tolerant: bool = False, validate: bool = True) -> RecordsRead:
    """All records of a gzip (or plain) JSONL file.

    With ``tolerant=True`` a truncated or damaged gzip stream (a killed writer, a cut copy)
    or a torn last line ends the reading instead of raising: the complete lines before it are
    returned and the result's ``truncated``/``error`` say what happened. Invalid records
    always raise :class:`RecordsFileError`.
    """
    out = RecordsRead(str(path))
    try:
        with open_maybe_gzip(path) as f:
            for line in iter_json_lines(f):
                out.lines = line.lineno
                if line.torn and tolerant:
                    out.truncated, out.error = True, f"torn last line {line.lineno}"
                    break
                out.append(_record_of(path, line, validate))
    except GZIP_STREAM_ERRORS as exc:
        message = f"damaged or truncated after line {out.lines}: {type(exc).__name__}: {exc}"
        if not tolerant:
            raise RecordsFileError(f"{path}: {message}") from exc
        out.truncated, out.error = True, message
    return out


def _record_of(path: str | os.PathLike, line: JsonLine, validate: bool) -> TrackRecord:
    if line.torn:
        raise RecordsFileError(f"{path}:{line.lineno}: torn last line")
    if line.error is not None:
        raise RecordsFileError(f"{path}:{line.lineno}: not a JSON line: {line.error}")
    try:
        return TrackRecord.from_dict(line.value, validate)
    except TrackRecordError as exc:
        raise RecordsFileError(f"{path}:{line.lineno}: {exc}") from None
