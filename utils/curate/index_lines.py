"""The index's fast path: one canonical record line checked against the schema's types and bounds
while msgspec parses it, and the index's scalar columns taken from it, with no dict and no
:class:`~utils.records.tracks.TrackRecord` built. What our stages write takes this way; anything else
goes the full way (``json.loads``, ``TrackRecord``), with the same result."""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec

from utils.records.prompts import label_of
from utils.records.tracks import CANONICAL_KEYS, RELABELLED

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


assert _CanonicalLine.__struct_fields__ == (*CANONICAL_KEYS, RELABELLED)
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
    (keys of :data:`~utils.records.tracks.CANONICAL_KEYS`, no ``null``, no other key but :data:`RELABELLED`) of video ``expected_yid`` that
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
