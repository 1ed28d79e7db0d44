"""Scoring stored track embeddings against text embeddings: pure array code, no files.

A track's score for a text is the cosine similarity of the track's embedding (the L2-normalised
mean of its detections' class embeddings) and the text's embedding (both unit vectors, so a dot
product). Rows are scored in chunks, so memory stays ``chunk x classes`` floats whatever the
number of tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.records.tracks import STAT_DECIMALS

__all__ = ["TopK", "best_rows", "relabel_fields", "score_tracks", "top_matches"]

#: rows scored at a time: 16384 x 1203 classes x 4 bytes = 79 MB of scores
CHUNK_ROWS = 16384


@dataclass
class TopK:
    """``ids[i]``: the ``k`` best classes of track ``i``, best first (ties: lower class id);
    ``scores[i]`` their cosine similarities (float32)."""

    ids: np.ndarray
    scores: np.ndarray


def _top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) of each row's ``k`` largest, best first, ties to the lower id.

    A lower bound of each row's k-th largest is the smallest of the maxima of k disjoint blocks of
    columns (k distinct values at least that large); only the columns reaching it (a few dozen of
    1,203 with real scores) are sorted, exactly. Several times faster than ``np.argpartition`` on
    whole rows."""
    n, c = scores.shape
    if k >= c:
        ids = np.argsort(-scores, axis=1, kind="stable")
        return ids.astype(np.int32), np.take_along_axis(scores, ids, axis=1)
    step = c // k
    bound = np.maximum.reduceat(scores[:, : step * k], np.arange(0, step * k, step), axis=1).min(axis=1)
    rows, cols = np.nonzero(scores >= bound[:, None])  # row-major: each row's columns together, ascending
    counts = np.bincount(rows, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    dense = np.full((n, int(counts.max())), -np.inf, np.float32)
    ids = np.zeros(dense.shape, np.int32)
    pos = np.arange(rows.size) - starts[rows]
    dense[rows, pos] = scores[rows, cols]
    ids[rows, pos] = cols
    order = np.argsort(-dense, axis=1, kind="stable")[:, :k]  # stable: equal scores keep the lower id first
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(dense, order, axis=1)


def score_tracks(embeddings: np.ndarray, text: np.ndarray, k: int = 10, chunk: int = CHUNK_ROWS) -> TopK:
    """The ``k`` best classes of every track: ``embeddings`` (n, D) (float16 or float32, unit
    rows) against ``text`` (C, D) unit rows."""
    emb = np.asarray(embeddings)
    t = np.ascontiguousarray(np.asarray(text, dtype=np.float32).T)
    k = min(int(k), t.shape[1])
    if emb.shape[0] == 0:
        return TopK(np.zeros((0, k), np.int32), np.zeros((0, k), np.float32))
    if emb.ndim != 2 or t.shape[0] != emb.shape[1]:
        raise ValueError(f"track embeddings of shape {emb.shape} do not match text embeddings of dimension {t.shape[0]}")
    ids = np.zeros((emb.shape[0], k), np.int32)
    scores = np.zeros((emb.shape[0], k), np.float32)
    for lo in range(0, emb.shape[0], chunk):
        block = emb[lo:lo + chunk].astype(np.float32, copy=False) @ t
        ids[lo:lo + chunk], scores[lo:lo + chunk] = _top_k_rows(block, k)
    return TopK(ids, scores)


def relabel_fields(top: TopK, labels: tuple[str, ...] | list[str], frame_scores: list[np.ndarray]) -> list[dict]:
    """The record fields of each track from its top classes: ``top10_lbl``, ``top10_desc``,
    ``top10_logit_mu`` (the cosine score: one value per track, so no std), and the weighted score
    ``top10_wlogit_mu`` / ``_std``: the cosine times each frame's detection score, as a detected
    track's weighted logit is its logit times the frame score (mean and std over frames)."""
    out = []
    for i, frames in enumerate(frame_scores):
        ids, cos = top.ids[i], top.scores[i].astype(np.float64)
        s = np.asarray(frames, dtype=np.float64)
        mean, std = (float(s.mean()), float(s.std())) if s.size else (1.0, 0.0)
        out.append({
            "top10_lbl": [int(c) for c in ids], "top10_desc": [labels[int(c)] for c in ids],
            "top10_logit_mu": [round(float(v), STAT_DECIMALS) for v in cos],
            "top10_wlogit_mu": [round(float(v * mean), STAT_DECIMALS) for v in cos],
            "top10_wlogit_std": [round(float(abs(v) * std), STAT_DECIMALS) for v in cos],
        })
    return out


def best_rows(scores: np.ndarray, present: np.ndarray | None = None, top: int = 200,
              min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of the ``top`` best ``scores`` (n,), best first (ties: lower row), among
    the rows that are ``present`` and score at least ``min_score``."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    ok = np.isfinite(scores) if present is None else np.asarray(present, bool) & np.isfinite(scores)
    if min_score is not None:
        ok &= scores >= min_score
    rows = np.flatnonzero(ok)
    order = np.lexsort((rows, -scores[rows]))[: max(0, int(top))]
    return rows[order], scores[rows[order]]


def top_matches(query: np.ndarray, embeddings: np.ndarray, present: np.ndarray | None = None, top: int = 200,
                min_score: float | None = None, chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_rows` of the cosine similarities of ``embeddings`` (n, D) to ``query`` (D,)."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    n = embeddings.shape[0]
    scores = np.empty(n, np.float32)
    for lo in range(0, n, chunk):
        scores[lo:lo + chunk] = embeddings[lo:lo + chunk].astype(np.float32, copy=False) @ q
    return best_rows(scores, present, top, min_score)
