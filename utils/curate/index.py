"""curate_db.py --action index: merge every per-video metadata file into the index.

Files are read sorted by path, records in file order; every record is validated and its
``yid`` must be the file's; the first occurrence of a ``tid`` or ``fn`` wins. A damaged or
truncated file keeps the lines before the damage and is named in the report; an invalid line
is reported and dropped. Anything else (out of memory, a bug) stops the run and leaves the
previous index as it was. Work is spread over ``num_workers`` processes (a bounded number of
chunks of files in flight) and the output does not depend on how many.

Speed: a file is decompressed whole (by ISA-L when it is one intact gzip member) and each
line that is a valid record in canonical spelling (what parse_tracks.py writes) is parsed and
checked by msgspec against the schema's types and bounds, without a dict or a
:class:`TrackRecord` (:func:`utils.records.tracks.canonical_line_scalars`), and written as read.
Any other line, and every line of a file whose gzip stream is damaged, goes the full way
(``json.loads``, :class:`TrackRecord`, line by line from a stream), so the kept lines and every
message are what that way gives. Each kept line becomes its own gzip member, compressed by
ISA-L (:func:`utils.records.index_file.compress_member`, index format 2). Per track of 8 KB,
on one core: inflate ~17 us, parse + check ~40-50 us, compress ~30 us, merge ~10 us.

Before merging, the provenance of every file is read (its gzip header, or the first record of a
file written before headers; :func:`utils.records.provenance.read_provenance`): each vocabulary
(hash, class count, detector, weights) is reported with its number of videos and tracks, and
files of several of them are not merged unless ``allow_mixed`` (``--allow_mixed_vocabularies``):
class indices and scores of different vocabularies or detectors do not compare. Files without
provenance that hold tracks count as one more vocabulary ("unknown"); empty ones without it and
unreadable ones are reported but mix nothing.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, islice
from pathlib import Path

import pyarrow as pa
from isal import isal_zlib

from utils.core.errors import UsageError, is_systemic
from utils.core.io import (
    GZIP_STREAM_ERRORS,
    JsonLine,
    atomic_path,
    atomic_write_json,
    is_temp_file,
    iter_json_lines,
)
from utils.core.layout import (
    META_SUFFIX,
    YID_PATTERN,
    DatasetLayout,
    companion_path,
    report_path,
    require_dataset,
    require_dataset_root,
    validate_name,
)
from utils.core.progress import progress_bar
from utils.core.resources import peak_memory_gb
from utils.curate.index_lines import canonical_line_scalars
from utils.records.index_file import COMPANION_SCHEMA, companion_table, compress_member, write_companion
from utils.records.provenance import read_provenance
from utils.records.tracks import RecordsFileError, TrackRecord, TrackRecordError

log = logging.getLogger("trackverse.curation")


META_GLOB = f"*/*{META_SUFFIX}"

_PROBLEMS_PER_FILE = 20


# ------------------------------------------------------------------------------------ index


@dataclass
class MetaFileResult:
    """What one worker made of one metadata file."""

    rel: str
    rows: list[tuple] = field(default_factory=list)  # per kept record: its companion columns from yid on
    members: list[bytes] = field(default_factory=list)  # one gzip member per kept record
    lines: int = 0
    bytes_in: int = 0
    bytes_raw: int = 0
    invalid: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: str | None = None

    def problem(self, message: str) -> None:
        if len(self.problems) < _PROBLEMS_PER_FILE:
            self.problems.append(message)


def _yid_of_meta_file(name: str) -> str | None:
    yid = name[: -len(META_SUFFIX)] if name.endswith(META_SUFFIX) else ""
    return yid if YID_PATTERN.match(yid) else None


def _record_scalars(rec: TrackRecord) -> tuple:
    video_h, video_w = rec.video_size if rec.video_size else (-1, -1)
    return (
        rec.yid,
        rec.tid,
        rec.fn,
        rec.label,
        rec.top10_lbl[0] if rec.top10_lbl else -1,
        rec.top10_wlogit_mu[0] if rec.top10_wlogit_mu else math.nan,
        rec.top10_logit_mu[0] if rec.top10_logit_mu else math.nan,
        rec.duration,
        len(rec),
        rec.track_ts[0],
        rec.track_ts[-1],
        video_h,
        video_w,
    )


def _parsed(lineno: int, text: bytes, torn: bool) -> JsonLine:
    """The line as :func:`utils.core.io.iter_json_lines` parses it (``json.loads``, whose errors
    and leniencies, NaN or huge integers, are the reference)."""
    try:
        return JsonLine(lineno, text, json.loads(text))
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError
        return JsonLine(lineno, text, error=exc, torn=torn)


def _index_line(line: JsonLine, expected_yid: str | None, result: MetaFileResult) -> None:
    if line.error is not None:
        result.invalid += 1
        if line.torn:
            result.problem(f"line {line.lineno}: torn last line")
            result.damaged = result.damaged or f"torn last line {line.lineno}"
        else:
            result.problem(f"line {line.lineno}: not JSON: {line.error}")
        return
    try:
        rec = TrackRecord.from_dict(line.value)
        if expected_yid is not None and rec.yid != expected_yid:
            raise TrackRecordError(f"record of video {rec.yid} in the metadata file of {expected_yid}")
        # as read when already canonical (no re-serialisation), else canonical
        text = line.text if line.value == rec.to_dict() else rec.to_json().encode("utf-8")
    except ValueError as exc:  # TrackRecordError, or a value JSON cannot write (NaN): a bad line
        result.invalid += 1
        result.problem(f"line {line.lineno}: {exc}")
        return
    _keep(bytes(text), _record_scalars(rec), result)


def _keep(text: bytes, scalars: tuple, result: MetaFileResult) -> None:
    data = text + b"\n"
    result.bytes_raw += len(data)
    result.members.append(compress_member(data))
    result.rows.append(scalars)


def _index_text(lineno: int, text: bytes, torn: bool, expected_yid: str | None, result: MetaFileResult) -> None:
    """One non-blank line: the fast path for what parse_tracks.py writes (a valid record in
    canonical form: :func:`canonical_line_scalars`), kept as read; anything else goes the full
    way (``json.loads``, :class:`TrackRecord`), as before."""
    scalars = canonical_line_scalars(text, expected_yid) if expected_yid is not None else None
    if scalars is not None:
        _keep(text, scalars, result)
    else:
        _index_line(_parsed(lineno, text, torn), expected_yid, result)


def _index_data(data: bytes, expected_yid: str | None, result: MetaFileResult) -> None:
    """Every line of a whole decompressed file, numbered as iterating the file numbers them."""
    lines = data.split(b"\n")
    last = len(lines) - 1
    if not lines[last]:
        lines.pop()
    result.lines = len(lines)
    for lineno, raw in enumerate(lines, start=1):
        text = raw.strip()
        if text:
            _index_text(lineno, text, lineno > last, expected_yid, result)


def _inflate_one_member(raw: bytes) -> bytes | None:
    """The data of ``raw`` when it is exactly one intact gzip member (what parse_tracks.py
    writes; checked against its CRC-32 and length), inflated by ISA-L at twice zlib's speed;
    None for anything else (several members, padding, damage), which the stdlib reads."""
    inflater = isal_zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(raw)
    except isal_zlib.error:
        return None
    return data if inflater.eof and not inflater.unused_data else None


def index_meta_file(task: tuple[str, str]) -> MetaFileResult:
    """Read, validate and compress one metadata file (runs in a worker process). Bad lines
    and a damaged or unreadable file are reported in the result; anything else raises.

    The file is decompressed whole; when that fails (a damaged file), it is read again line by
    line, so that exactly the lines before the damage are kept, as a streaming reader keeps them."""
    path, rel = task
    expected = _yid_of_meta_file(Path(path).name)
    try:
        with open(path, "rb") as f:
            data = _inflate_one_member(f.read())
        if data is None:
            with gzip.open(path, "rb") as f:
                data = f.read()
    except GZIP_STREAM_ERRORS:
        return _index_meta_file_streaming(path, rel, expected)
    except OSError as exc:
        if is_systemic(exc):
            raise
        return _index_meta_file_streaming(path, rel, expected)
    result = MetaFileResult(rel=rel)
    result.bytes_in = os.path.getsize(path)
    _index_data(data, expected, result)
    return result


def _index_meta_file_streaming(path: str, rel: str, expected: str | None) -> MetaFileResult:
    result = MetaFileResult(rel=rel)
    try:
        result.bytes_in = os.path.getsize(path)
        with gzip.open(path, "rb") as f:
            for line in iter_json_lines(_counted(f, result)):
                _index_line(line, expected, result)
    except GZIP_STREAM_ERRORS as exc:
        result.damaged = f"damaged or truncated after line {result.lines}: {type(exc).__name__}: {exc}"
    except OSError as exc:
        if is_systemic(exc):
            raise
        result.damaged = f"unreadable: {type(exc).__name__}: {exc}"
    return result


def _counted(lines: Iterable[bytes], result: MetaFileResult) -> Iterator[bytes]:
    """``lines``, counting every line read (blank ones too) in ``result.lines``."""
    for raw in lines:
        result.lines += 1
        yield raw


def _index_chunk(tasks: list[tuple[str, str]]) -> list[MetaFileResult]:
    return [index_meta_file(task) for task in tasks]


def _map_files(tasks: list[tuple[str, str]], num_workers: int) -> Iterator[MetaFileResult]:
    """Results in task order, whatever the number of workers. At most ``4 x workers`` chunks of
    files are in flight (queued, being read, or read and not yet merged), so memory stays
    bounded however far the workers run ahead of the merge."""
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(index_meta_file, tasks)
        return
    workers = min(num_workers, len(tasks))
    chunksize = max(1, min(64, len(tasks) // (workers * 8)))
    chunks = iter([tasks[lo:lo + chunksize] for lo in range(0, len(tasks), chunksize)])
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = deque(pool.apply_async(_index_chunk, (chunk,)) for chunk in islice(chunks, 4 * workers))
        while pending:
            results = pending.popleft().get()
            for chunk in islice(chunks, 1):
                pending.append(pool.apply_async(_index_chunk, (chunk,)))
            yield from results


# ------------------------------------------------------------------------------- vocabularies

#: group keys of files that say nothing about their vocabulary
UNKNOWN = ("unknown",)  # holding tracks: could be any vocabulary
UNKNOWN_EMPTY = ("unknown, no tracks",)  # written before provenance headers, no record
UNREADABLE = ("unreadable",)  # header or first line damaged (the merge reports how)

VocabKey = tuple


def file_vocabulary(path: str) -> tuple[VocabKey, int | None]:
    """(group key, class count) of one metadata file: ``(detector, weights, vocab_hash)``
    from its provenance, or one of :data:`UNKNOWN`, :data:`UNKNOWN_EMPTY`, :data:`UNREADABLE`.
    Reads the gzip header only (the first record for files written before headers)."""
    try:
        found = read_provenance(path)
    except (RecordsFileError, OSError) as exc:
        if is_systemic(exc):
            raise
        return UNREADABLE, None
    if found is None:
        return UNKNOWN_EMPTY, None
    if not found.known:
        return UNKNOWN, None
    return found.key(), found.classes


@dataclass
class VocabularyGroup:
    """The videos (metadata files) of one vocabulary and detector, and the tracks indexed from them."""

    key: VocabKey
    classes: int | None = None
    videos: int = 0
    tracks: int = 0

    @property
    def mixes(self) -> bool:
        """Whether its tracks make an index mixed (known vocabularies, and unknown ones with tracks)."""
        return self.key not in (UNKNOWN_EMPTY, UNREADABLE)

    def describe(self) -> str:
        if not self.mixes or self.key == UNKNOWN:
            what = {UNKNOWN: "no provenance (written before parse_tracks recorded it, or by another tool)",
                    UNKNOWN_EMPTY: "no provenance and no tracks (written before parse_tracks recorded it)",
                    UNREADABLE: "provenance unreadable (damaged file)"}[self.key]
        else:
            detector, weights, vocab_hash = self.key
            classes = "" if self.classes is None else f" ({self.classes} class{'es' if self.classes != 1 else ''})"
            what = f"vocabulary {str(vocab_hash)[:12]}{classes}, detector {detector}, weights {weights or 'none'}"
        return f"{what}: {self.videos} video{'s' if self.videos != 1 else ''}"

    def to_json(self) -> dict:
        if self.mixes and self.key != UNKNOWN:
            detector, weights, vocab_hash = self.key
            out = {"vocab_hash": vocab_hash, "classes": self.classes, "detector": detector, "weights": weights}
        else:
            out = {"vocab_hash": None, "what": self.key[0]}
        return {**out, "videos": self.videos, "tracks": self.tracks}


def scan_vocabularies(tasks: list[tuple[str, str]], threads: int) -> tuple[dict[str, VocabKey], list[VocabularyGroup]]:
    """(relative path -> group key, the groups, most videos first) of the metadata files."""
    paths = [path for path, _ in tasks]
    with ThreadPoolExecutor(max(1, min(32, threads, len(paths)))) as pool:
        found = list(pool.map(file_vocabulary, paths))
    groups: dict[VocabKey, VocabularyGroup] = {}
    of_file: dict[str, VocabKey] = {}
    for (_, rel), (key, classes) in zip(tasks, found, strict=True):
        group = groups.setdefault(key, VocabularyGroup(key))
        group.videos += 1
        if classes is not None:
            group.classes = max(classes, group.classes or 0)
        of_file[rel] = key
    ordered = sorted(groups.values(), key=lambda g: (not g.mixes, -g.videos, str(g.key)))
    return of_file, ordered


def check_vocabularies(groups: list[VocabularyGroup], folder: Path, allow_mixed: bool) -> None:
    """UsageError when the files come from more than one vocabulary or detector, unless allowed."""
    mixing = [g for g in groups if g.mixes]
    if len(mixing) > 1 and not allow_mixed:
        raise UsageError(
            f"the metadata files in {folder} come from {len(mixing)} different vocabularies or detectors: "
            + "; ".join(g.describe() for g in mixing)
            + ". Their class indices and scores do not compare: re-parse them with one vocabulary "
              "(parse_tracks.py --reparse_stale) or keep them under separate --dataset_name, or pass "
              "--allow_mixed_vocabularies to index them together"
        )


# ------------------------------------------------------------------------------------ summary


@dataclass
class IndexSummary:
    index_path: Path
    companion_path: Path
    report_path: Path
    files: int = 0
    damaged_files: int = 0
    files_with_invalid: int = 0
    lines: int = 0
    invalid: int = 0
    written: int = 0
    duplicate_tid: int = 0
    duplicate_fn: int = 0
    bytes_in: int = 0
    bytes_raw: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    problems: list[dict] = field(default_factory=list)
    vocabularies: list[VocabularyGroup] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.damaged_files or self.invalid else 0

    def lines_out(self, max_problems: int = 20) -> list[str]:
        mb_in, mb_raw = self.bytes_in / 1e6, self.bytes_raw / 1e6
        secs = max(self.seconds, 1e-9)
        out = [
            f"index: {self.written} tracks from {self.files} metadata files -> {self.index_path} "
            f"({self.bytes_out / 1e6:.1f} MB)",
            f"  read {self.lines} lines: {self.invalid} invalid (dropped), {self.duplicate_tid} duplicate tid "
            f"and {self.duplicate_fn} duplicate fn (later copies dropped)",
            f"  {self.damaged_files} damaged/truncated files (lines before the damage kept), "
            f"{self.files_with_invalid} files with invalid lines",
            f"  {self.seconds:.1f} s: {mb_in / secs:.1f} MB/s gzip in, {mb_raw / secs:.1f} MB/s JSON, "
            f"{self.written / secs:.0f} tracks/s; peak memory {peak_memory_gb():.2f} GB",
            f"  companion: {self.companion_path}; report: {self.report_path}",
        ]
        mixing = sum(g.mixes for g in self.vocabularies)
        out.append(f"  {mixing} vocabular{'y' if mixing == 1 else 'ies'}"
                   + (" (mixed: --allow_mixed_vocabularies)" if mixing > 1 else "") + ":")
        out.extend(f"    {g.describe()}, {g.tracks} track{'s' if g.tracks != 1 else ''}" for g in self.vocabularies)
        for problem in self.problems[:max_problems]:
            first = problem["messages"][0] if problem["messages"] else ""
            out.append(f"  PROBLEM {problem['file']}: {problem['kind']}: {first}"
                       + (f" (+{len(problem['messages']) - 1} more)" if len(problem["messages"]) > 1 else ""))
        if len(self.problems) > max_problems:
            out.append(f"  ... {len(self.problems) - max_problems} more files with problems in {self.report_path}")
        return out


class _Columns:
    """Companion rows, buffered per column in Python and turned into Arrow batches every
    ``batch`` rows."""

    def __init__(self, batch: int = 65536):
        self.batch = batch
        self.batches: list[pa.RecordBatch] = []
        self._cols: list[list] = [[] for _ in COMPANION_SCHEMA]

    def extend(self, columns: Iterable[Iterable]) -> None:
        """Append rows given column by column (every schema column, in order)."""
        for col, values in zip(self._cols, columns, strict=True):
            col.extend(values)
        if len(self._cols[0]) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self._cols[0]:
            self.batches.append(pa.record_batch(
                [pa.array(col, type=f.type) for col, f in zip(self._cols, COMPANION_SCHEMA, strict=True)],
                schema=COMPANION_SCHEMA,
            ))
            self._cols = [[] for _ in COMPANION_SCHEMA]

    def table(self) -> pa.Table:
        self.flush()
        return pa.Table.from_batches(self.batches, schema=COMPANION_SCHEMA)


def _first_occurrences(result: MetaFileResult, seen_tid: set[str], seen_fn: set[str],
                       duplicates: list[str]) -> tuple[list[tuple], list[bytes], int, int]:
    """(rows, members) of ``result`` whose tid and fn were not seen before (in this file or an
    earlier one; adds them to the seen sets), and the numbers of rows dropped for a tid, for an fn."""
    rows, members = [], []
    dup_tid = dup_fn = 0
    for row, member in zip(result.rows, result.members, strict=True):
        tid, fn = row[1], row[2]
        if tid in seen_tid:
            dup_tid += 1
            duplicates.append(f"tid {tid}")
        elif fn in seen_fn:
            dup_fn += 1
            duplicates.append(f"fn {fn}")
        else:
            seen_tid.add(tid)
            seen_fn.add(fn)
            rows.append(row)
            members.append(member)
    return rows, members, dup_tid, dup_fn


def list_meta_files(base_dir: str | os.PathLike, dataset_name: str) -> tuple[Path, list[tuple[str, str]]]:
    """(the metadata folder, sorted (path, relative path) of its ``*/*-meta.jsonl.gzip``)."""
    folder = DatasetLayout(Path(base_dir)).tracks_meta_dir(dataset_name)
    found = [p for p in folder.glob(META_GLOB) if p.is_file() and not is_temp_file(p)]
    tasks = sorted((str(p), p.relative_to(folder).as_posix()) for p in found)
    return folder, sorted(tasks, key=lambda t: t[1])


def build_index(
    base_dir: str | os.PathLike,
    dataset_name: str,
    index_path: str | os.PathLike,
    num_workers: int = 1,
    progress: bool = True,
    allow_mixed: bool = False,
) -> IndexSummary:
    """Merge the dataset's metadata files into ``index_path`` and its companion (atomically).
    Raises UsageError, before writing anything, when they come from several vocabularies or
    detectors and not ``allow_mixed``."""
    started = time.time()
    validate_name(dataset_name)
    index_path = Path(index_path)
    require_dataset_root(base_dir, needs=("tracks_meta",))
    require_dataset(base_dir, dataset_name, ("tracks_meta",), producers=("parse_tracks", "relabel_tracks"))
    for what, path in (("--index_file", index_path), ("the index's companion", companion_path(index_path)),
                       ("the index's report", report_path(index_path))):
        if path.is_dir():
            raise UsageError(f"{what} {path} is a folder: --index_file names the file to write "
                             f"(e.g. tracks_subsets/{dataset_name}/{dataset_name}-Full.jsonl.gzip)")
    if index_path.parent.exists() and not index_path.parent.is_dir():
        raise UsageError(f"--index_file {index_path}: its folder {index_path.parent} is a file")
    folder, tasks = list_meta_files(base_dir, dataset_name)
    if not tasks:
        raise UsageError(f"no metadata files ({META_GLOB}) under {folder}: run parse_tracks.py first")
    vocab_of_file, vocabularies = scan_vocabularies(tasks, threads=2 * max(1, num_workers))
    check_vocabularies(vocabularies, folder, allow_mixed)
    by_key = {g.key: g for g in vocabularies}
    summary = IndexSummary(index_path, companion_path(index_path), report_path(index_path), files=len(tasks),
                           vocabularies=vocabularies)
    seen_tid: set[str] = set()
    seen_fn: set[str] = set()
    columns = _Columns()
    bar = progress_bar(total=len(tasks), desc=f"index {dataset_name}", unit="file", enabled=progress)
    with atomic_path(summary.companion_path) as companion_tmp:
        with bar, atomic_path(index_path) as index_tmp, open(index_tmp, "wb") as out:
            offset = 0
            for result in _map_files(tasks, num_workers):
                summary.lines += result.lines
                summary.invalid += result.invalid
                summary.bytes_in += result.bytes_in
                summary.bytes_raw += result.bytes_raw
                duplicates: list[str] = []
                rows, kept, dup_tid, dup_fn = _first_occurrences(result, seen_tid, seen_fn, duplicates)
                summary.duplicate_tid += dup_tid
                summary.duplicate_fn += dup_fn
                if rows:
                    lengths = [len(member) for member in kept]
                    ends = list(accumulate(lengths, initial=offset))
                    columns.extend([
                        range(summary.written, summary.written + len(rows)), ends[:-1], lengths,
                        [int.from_bytes(member[-8:-4], "little") for member in kept],  # CRC-32 and ...
                        [int.from_bytes(member[-4:], "little") for member in kept],  # ... size, from the trailer
                        *zip(*rows, strict=True),
                    ])
                    offset = ends[-1]
                    summary.written += len(rows)
                out.write(b"".join(kept))
                by_key[vocab_of_file[result.rel]].tracks += len(kept)
                if result.damaged:
                    summary.damaged_files += 1
                    summary.problems.append({"file": result.rel, "kind": "damaged", "kept_lines": len(result.rows),
                                             "messages": [result.damaged, *result.problems]})
                elif result.invalid:
                    summary.files_with_invalid += 1
                    summary.problems.append({"file": result.rel, "kind": "invalid lines", "kept_lines": len(result.rows),
                                             "messages": result.problems})
                if duplicates:
                    log.debug("%s: %d duplicates dropped: %s", result.rel, len(duplicates), ", ".join(duplicates[:20]))
                bar.update(1)
                elapsed = max(time.time() - started, 1e-9)
                bar.set_postfix({"tracks": summary.written, "MB/s": f"{summary.bytes_in / 1e6 / elapsed:.1f}"},
                                refresh=False)
            summary.bytes_out = offset
        write_companion(companion_table(columns.table(), dataset_name, index_path, summary.bytes_out,
                                        meta_files=len(tasks), vocabularies=[g.to_json() for g in vocabularies]),
                        companion_tmp)
    summary.seconds = round(time.time() - started, 3)
    atomic_write_json(summary.report_path, {
        "index_file": str(index_path), "dataset_name": dataset_name, "meta_folder": str(folder),
        "files": summary.files, "lines": summary.lines, "written": summary.written,
        "invalid": summary.invalid, "duplicate_tid": summary.duplicate_tid, "duplicate_fn": summary.duplicate_fn,
        "damaged_files": summary.damaged_files, "files_with_invalid": summary.files_with_invalid,
        "seconds": summary.seconds, "problems": summary.problems,
        "vocabularies": [g.to_json() for g in vocabularies],
    })
    return summary
