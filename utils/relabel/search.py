"""search_tracks.py: the tracks of an index that best match a text, from their stored embeddings.

Each query is encoded once by the text encoder of the detector that made the embeddings
(:mod:`utils.relabel.text`, cached) and scored against every indexed track's embedding (cosine
similarity, :func:`utils.relabel.scoring.top_matches`). The best ``--top`` tracks scoring at least
``--min_score`` become a subset file, ``tracks_subsets/<dataset>-search-<query>[-<hash>]-top<top>[-min<S>]
.jsonl.gzip``, named after the request (never after the hits found, so two requests never share a
file; ``<hash>`` is added unless the query is plain words, :func:`subset_name`), best first: the index's own lines (gzip members copied and checked, as curate_db.py's subsets are),
so qa.py, export_tracks.py and the training loader read it as any subset; beside it
``<stem>.report.json`` lists the query, the encoder and every hit's score. The top hits are printed.

Embeddings are gathered per video (:func:`utils.records.track_embeddings.index_embedding_source`),
keyed to the index rows by ``tid`` and ``fn``; videos whose embeddings file is missing or belongs to
another version of their metadata are left out and counted. Memory: the embeddings of at most
``ROWS_PER_PASS`` index rows at a time (float32), plus the scores of every row.

Why here and not in utils/curate: search needs the detector's text encoder, which this package
already reaches (one declared module, ``utils.relabel.text``); the subset writer it needs is the
index reader of ``utils.records.index_file``, shared by every step, so no curate code is needed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.core.config import base_dir_option, log_level_option, option
from utils.core.errors import UsageError
from utils.core.io import atomic_path, atomic_write_json
from utils.core.layout import (
    SUBSET_EXT,
    DatasetLayout,
    report_path,
    require_dataset,
    require_dataset_root,
    validate_name,
)
from utils.records.index_file import IndexReader, check_index, load_track_table
from utils.records.prompts import label_with_dashes
from utils.records.released import KEY_STYLE_HELP, KEY_STYLES, restyle_member
from utils.records.track_embeddings import index_embedding_source
from utils.relabel.scoring import best_rows
from utils.relabel.text import encoder_of_embeddings, text_embeddings
from utils.runner.stage import check_dataset_name

log = logging.getLogger("trackverse.relabel")

#: index rows whose embeddings are held at once (float32: 1M x 512 = 2 GB)
ROWS_PER_PASS = 1 << 20
_GROUP = "search_tracks"


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of a search (one field per flag; the queries are the positional arguments)."""

    index_file: Path = option(group=_GROUP, help="the index (curate_db.py --action index) to search; relative paths "
                                                 "are under --base_dir")
    queries_file: Path | None = option(None, group=_GROUP, help="more queries, one per line (blank and # lines skipped)")
    top: int = option(200, group=_GROUP, help="tracks kept per query, best first (default: 200)")
    min_score: float | None = option(None, group=_GROUP,
                                     help="keep only tracks whose cosine similarity to the query (-1 to 1) is at "
                                          "least this (default: none, every track ranks)")
    show: int = option(10, group=_GROUP, help="hits printed per query (default: 10)")
    dataset_name: str | None = option(None, group=_GROUP,
                                      help="dataset whose track embeddings are searched (default: the index's)")
    key_style: str = option("compact", group=_GROUP, choices=KEY_STYLES, help=KEY_STYLE_HELP)
    base_dir: Path = base_dir_option(_GROUP)
    log_level: str = log_level_option(_GROUP)
    queries: tuple[str, ...] = option((), positional="query", help="texts to search for, e.g. 'a red umbrella'")


@dataclass
class SearchResult:
    query: str
    subset: Path
    rows: np.ndarray
    scores: np.ndarray
    hits: list[dict]  # per row, best first: tid, fn, label, score


def read_queries(config: SearchConfig) -> list[str]:
    """The positional queries then the file's lines, each once, in order."""
    queries = [q.strip() for q in config.queries]
    if config.queries_file is not None:
        if config.queries_file.is_dir():
            raise UsageError(f"--queries_file {config.queries_file} is a folder, not a file")
        try:
            lines = config.queries_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--queries_file {config.queries_file}: cannot read: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not from_file:
            raise UsageError(f"--queries_file {config.queries_file} has no query (it is empty or only blank and "
                             "# comment lines): one query per line")
        queries += from_file
    queries = [q for q in dict.fromkeys(queries) if q]
    if not queries:
        raise UsageError("no query: give one or more texts, or --queries_file")
    return queries


_PLAIN_QUERY = re.compile(r"^[A-Za-z0-9_]+( [A-Za-z0-9_]+)*$")


def subset_name(dataset: str, query: str, top: int, min_score: float | None = None) -> str:
    """The subset file of one request: the query, ``--top`` and ``--min_score``; never the number
    of hits, so requests that differ never share a file. A plain query (words of letters, digits
    and ``_`` with single spaces, 60 characters at most) is spelt with dashes for spaces
    (``a red umbrella`` -> ``a-red-umbrella``); any other gets a hash of its exact text too, since
    its spelling cannot be told back from the name (``a-rocket`` and ``a rocket``)."""
    slug = label_with_dashes(query)[:60]
    if not (_PLAIN_QUERY.match(query) and len(query) <= 60):
        slug += "-" + hashlib.sha256(query.encode("utf-8")).hexdigest()[:8]
    threshold = "" if min_score is None else f"-min{min_score:g}"
    return validate_name(f"{dataset}-search-{slug}-top{top}{threshold}{SUBSET_EXT}", "subset file name")


def run_search(config: SearchConfig) -> list[SearchResult]:
    """Score every query against the index's tracks; write one subset per query."""
    if config.top < 1:
        raise UsageError(f"--top must be at least 1, got {config.top}")
    queries = read_queries(config)
    layout = DatasetLayout(config.base_dir)
    index_file = layout.relative(config.index_file)
    meta, _ = check_index(index_file)
    require_dataset_root(config.base_dir, needs=("tracks_meta",))
    dataset = config.dataset_name or meta.get("dataset_name")
    if not dataset:
        raise UsageError(f"{index_file} does not say which dataset it was built from: give --dataset_name")
    check_dataset_name(dataset)
    require_dataset(config.base_dir, dataset, ("tracks_meta",), producers=("parse_tracks", "relabel_tracks"),
                    flag="--dataset_name" if config.dataset_name else f"the dataset {index_file.name} was built from "
                    "(--dataset_name)")
    started = time.perf_counter()
    table = load_track_table(index_file, columns=["yid", "tid", "fn", "label", "offset", "length", "crc32", "ulen"])
    if len(table) == 0:
        raise UsageError(f"{index_file} indexes no tracks: nothing to search (curate_db.py --action index found no "
                         f"track in tracks_meta/{dataset})")
    yids = table.table.column("yid").to_pylist()
    source, problems = index_embedding_source(config.base_dir, dataset, yids, table.strings("tid"), table.strings("fn"))
    encoders = {e for e in map(encoder_of_embeddings, source.keys.files) if e is not None}
    if not encoders:
        raise UsageError(f"no track embeddings for the videos of {index_file} in tracks_meta/{dataset}: "
                         "parse_tracks.py stores them (videos parsed before it did must be parsed again)")
    if len({(e.spec, e.weights) for e in encoders}) > 1:
        raise UsageError(f"the track embeddings of tracks_meta/{dataset} come from several detectors or weights "
                         f"({'; '.join(sorted(e.describe() for e in encoders))}): their spaces differ")
    encoder = next(iter(encoders))
    text = text_embeddings(encoder.spec, encoder.weights, queries)
    n = len(table)
    scores = np.full((len(queries), n), -np.inf, np.float32)
    with_embedding = 0
    for lo in range(0, n, ROWS_PER_PASS):
        rows = np.arange(lo, min(n, lo + ROWS_PER_PASS))
        vectors = source.load(rows)
        if vectors.present.any() and vectors.vectors.shape[1] != text.shape[1]:
            raise UsageError(f"track embeddings of {vectors.vectors.shape[1]} dimensions but {encoder.describe()} "
                             f"encodes text in {text.shape[1]}")
        with_embedding += int(vectors.present.sum())
        if vectors.present.any():
            block = vectors.vectors @ text.T
            scores[:, rows[vectors.present]] = block[vectors.present].T
    results = []
    with IndexReader(table) as reader:
        for q, query in enumerate(queries):
            rows, best = best_rows(scores[q], None, config.top, config.min_score)
            target = layout.subset_file(subset_name(dataset, query, config.top, config.min_score))
            if target.resolve() == index_file.resolve():
                raise UsageError(f"subset {target} would overwrite the index")
            with atomic_path(target) as tmp, open(tmp, "wb") as out:
                for row in rows.tolist():  # best first: copied one member at a time, each checked
                    member = reader.member(row)
                    out.write(member if config.key_style == "compact" else restyle_member(member, config.key_style))
            labels, tids, fns = (table.table.column(c).take(rows).to_pylist() for c in ("label", "tid", "fn"))
            hits = [{"tid": t, "fn": f, "label": lb, "score": round(float(s), 6)}
                    for t, f, lb, s in zip(tids, fns, labels, best, strict=True)]
            atomic_write_json(report_path(target), {
                "action": "search", "query": query, "index_file": str(index_file), "dataset_name": dataset,
                "detector": encoder.spec, "weights": encoder.weights, "score": "cosine(track mean embedding, query)",
                "top": config.top, "min_score": config.min_score, "key_style": config.key_style,
                "tracks": int(rows.size),
                "indexed_tracks": n, "tracks_with_embedding": with_embedding, "videos_without_embeddings": len(problems),
                "hits": hits,
            })
            results.append(SearchResult(query, target, rows, best, hits))
    log.info("searched %d tracks (%d with an embedding) for %d queries in %.1f s", n, with_embedding, len(queries),
             time.perf_counter() - started)
    if problems:
        log.warning("%d video(s) have no usable embeddings file, e.g. %s", len(problems), problems[0])
    return results


def result_lines(results: list[SearchResult], show: int) -> list[str]:
    """Each query's subset file and its best ``show`` hits."""
    lines = []
    for result in results:
        lines.append(f"{result.query!r}: {result.rows.size} tracks -> {result.subset}")
        lines += [f"  {i:3d}. {hit['score']:.4f}  {hit['label']}  {hit['fn']}"
                  for i, hit in enumerate(result.hits[: max(0, show)], start=1)]
    return lines
