"""curate_db.py: the index (merge, validation, duplicates, damaged files, determinism) and the
subsets (names, verified videos, temperatures, constraints, reproducibility), plus the metric
files reader of utils/records/metrics_store.py."""

from __future__ import annotations

import csv
import dataclasses
import errno
import gzip
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curate_db
from tests.helpers import CURATE_CLASSES as CLASSES
from tests.helpers import CURATE_DS as DS
from tests.helpers import CURATE_INDEX as INDEX
from tests.helpers import build_curation_db as build_db
from tests.helpers import curate as run
from tests.helpers import curation_record as make_record
from tests.helpers import index_curation_db as index
from tests.helpers import run_cli, subset_records, yid_of
from tests.helpers import sample_subsets as sample
from utils.core.config import config_from_args
from utils.core.errors import UsageError
from utils.core.io import atomic_write_bytes
from utils.core.layout import DatasetLayout, companion_path, report_path
from utils.curate.actions import validate_sampling
from utils.curate.config import CurateConfig
from utils.curate.constraints import (
    NO_VALUE,
    SamplingConstraints,
    WalkInputs,
    motion_levels,
    picks_by_level,
    spt_iou,
    walk_class,
)
from utils.curate.subsets import read_verified_yids, run_sampling
from utils.records.index_file import IndexMismatchError, IndexReader, load_track_table
from utils.records.metrics_store import (
    MetricsError,
    VectorSource,
    load_metric_columns,
    metric_dir,
    write_metric_file,
)
from utils.records.track_files import read_records, records_to_jsonl_gz_bytes
from utils.records.tracks import TrackRecord, track_filename

# ------------------------------------------------------------------------------ fixtures


def write_meta(base: Path, yid: str, records: list, raw_lines: list[bytes] | None = None) -> Path:
    path = DatasetLayout(base).tracks_meta(DS, yid)
    if raw_lines is None:
        atomic_write_bytes(path, records_to_jsonl_gz_bytes(records))
    else:
        atomic_write_bytes(path, gzip.compress(b"".join(raw_lines), mtime=0))
    return path


def subset_names(base: Path) -> set[str]:
    return {p.name for p in DatasetLayout(base).subsets_dir().glob(f"{DS}-*.jsonl.gzip")}


def size_of(n: int) -> str:
    """The size part of a subset name: the exact count below 1,000, else whole thousands + K."""
    return str(n) if n < 1000 else f"{n // 1000}K"


def find_subset(base: Path, head: str, tail: str = ".jsonl.gzip") -> str:
    """The one subset named ``<head><size><tail>``, after checking that ``<size>`` is the number
    of tracks it holds."""
    names = [n for n in subset_names(base) if n.startswith(head) and n.endswith(tail)
             and re.fullmatch(r"\d+K?", n[len(head):len(n) - len(tail)])]
    assert len(names) == 1, (head, tail, sorted(subset_names(base)))
    assert names[0][len(head):len(names[0]) - len(tail)] == size_of(len(subset_records(base, names[0])))
    return names[0]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A clean, indexed dataset and a verified list holding 4 of its videos."""
    base = tmp_path_factory.mktemp("db")
    records = build_db(base)
    assert index(base) == 0
    verified = base / "verified.txt"
    verified.write_text("".join(f"{yid_of(v)}-cat-0123.mp4,cat\n" for v in (0, 5, 11, 17)) + "short\n")
    return base, records, verified


# ---------------------------------------------------------------------------------- index


def test_index_merges_validates_and_survives_damage(tmp_path, capsys):
    base = tmp_path
    good = {v: [make_record(yid_of(v), v % 6, 0.1 * k, v * 10 + k, t0=k) for k in range(4)] for v in range(6)}
    for v, recs in good.items():
        write_meta(base, yid_of(v), recs)
    # duplicates: a misplaced copy of video 1's file (same tids), and a record re-using an fn
    misplaced = DatasetLayout(base).tracks_meta_dir(DS) / "zz" / f"{yid_of(1)}-meta.jsonl.gzip"
    misplaced.parent.mkdir(parents=True)
    shutil.copy(DatasetLayout(base).tracks_meta(DS, yid_of(1)), misplaced)
    clash = make_record(yid_of(2), 1, 5.0, 999)
    clash.fn = good[2][0].fn
    write_meta(base, yid_of(2), [*good[2], clash])
    # invalid lines among valid ones: negative box width, not JSON, another video's record, and
    # JSON objects of the wrong shape (a number where a list belongs)
    bad = json.loads(good[3][0].to_json())
    bad["track_bbox"][0][2] = -5.0
    span_not_list = {"yid": yid_of(3), "frame_ts": [0.0, 1.0], "track_ts": 5, "track_bbox": [[0, 0, 9, 9]] * 2}
    desc_not_list = {"yid": yid_of(3), "track_ts": [0.0, 1.0], "track_bbox": [[0, 0, 9, 9]] * 2, "top10_desc": 5}
    lines = [good[3][0].to_json().encode() + b"\n", json.dumps(bad).encode() + b"\n", b"{not json\n",
             good[4][0].to_json().encode() + b"\n", json.dumps(span_not_list).encode() + b"\n",
             json.dumps(desc_not_list).encode() + b"\n", good[3][1].to_json().encode() + b"\n"]
    write_meta(base, yid_of(3), [], raw_lines=lines)
    # the released spelling is read and written canonically
    released = make_record(yid_of(6), 2, 1.5, 600)
    d = released.to_dict()
    spelled = {"track_mp4_filename": d["fn"], "yid": d["yid"], "track_id": d["tid"], "frame_ts": d["track_ts"],
               "track_ts": [d["track_ts"][0], d["track_ts"][-1]], "frame_bboxes": d["track_bbox"],
               "video_size": d["video_size"], "top10_label_ids": d["top10_lbl"], "top10_label_names": d["top10_desc"],
               "top10_wlogit_mu": d["top10_wlogit_mu"], "top10_wlogit_std": d["top10_wlogit_std"]}
    write_meta(base, yid_of(6), [], raw_lines=[json.dumps(spelled).encode() + b"\n"])
    # a truncated gzip keeps the lines before the cut; random bytes are skipped
    long_recs = [make_record(yid_of(7), 4, float(k), 700 + k, n=60, t0=k) for k in range(12)]
    path7 = write_meta(base, yid_of(7), long_recs)
    data = path7.read_bytes()
    path7.write_bytes(data[: int(len(data) * 0.6)])
    corrupt = DatasetLayout(base).tracks_meta(DS, yid_of(8))
    corrupt.write_bytes(os.urandom(300))
    # a temporary left by a killed writer is not a metadata file
    (corrupt.parent / f".{yid_of(9)}-meta.jsonl.gzip.tmp-host-1-abc.gzip").write_bytes(b"junk")

    assert index(base) == 1  # written, but some items had problems
    out = capsys.readouterr().out
    kept7 = read_records(DatasetLayout(base).relative(INDEX))
    got = [r.tid for r in kept7]
    truncated_kept = [r for r in kept7 if r.yid == yid_of(7)]
    assert 1 <= len(truncated_kept) < 12
    assert [r.tid for r in truncated_kept] == [r.tid for r in long_recs[: len(truncated_kept)]]
    expected = (
        [r.tid for r in good[0]] + [r.tid for r in good[1]] + [r.tid for r in good[2]]
        + [good[3][0].tid, good[3][1].tid] + [r.tid for r in good[4]] + [r.tid for r in good[5]]
        + [released.tid] + [r.tid for r in truncated_kept]
    )
    assert got == expected  # sorted files, file order, duplicates and invalid lines dropped
    canonical = next(r for r in kept7 if r.yid == yid_of(6))
    assert canonical.fn == released.fn and canonical.top10_desc == released.top10_desc
    index_text = gzip.decompress(DatasetLayout(base).relative(INDEX).read_bytes()).decode()
    assert "track_mp4_filename" not in index_text and index_text.count("\n") == len(got)

    report = json.loads(report_path(DatasetLayout(base).relative(INDEX)).read_text())
    assert report["duplicate_tid"] == 4 and report["duplicate_fn"] == 1 and report["invalid"] == 5
    problems = {p["file"]: p for p in report["problems"]}
    assert problems[f"{yid_of(7)[:2]}/{yid_of(7)}-meta.jsonl.gzip"]["kind"] == "damaged"
    assert problems[f"{yid_of(8)[:2]}/{yid_of(8)}-meta.jsonl.gzip"]["kept_lines"] == 0
    assert problems[f"{yid_of(3)[:2]}/{yid_of(3)}-meta.jsonl.gzip"]["kind"] == "invalid lines"
    assert any("negative width" in m for m in problems[f"{yid_of(3)[:2]}/{yid_of(3)}-meta.jsonl.gzip"]["messages"])
    assert any("of video" in m for m in problems[f"{yid_of(3)[:2]}/{yid_of(3)}-meta.jsonl.gzip"]["messages"])
    assert sum("malformed track record" in m for m in problems[f"{yid_of(3)[:2]}/{yid_of(3)}-meta.jsonl.gzip"]["messages"]) == 2
    for name in (f"{yid_of(7)}-meta", f"{yid_of(8)}-meta", f"{yid_of(3)}-meta"):
        assert name in out

    table = load_track_table(DatasetLayout(base).relative(INDEX))
    assert table.table.column("tid").to_pylist() == got
    labels = table.table.column("label").to_pylist()
    assert labels[0] == CLASSES[0] and labels[got.index(released.tid)] == CLASSES[2]
    assert table.numpy("score")[got.index(good[5][3].tid)] == pytest.approx(0.3)
    assert table.numpy("num_frames")[got.index(long_recs[0].tid)] == 60


def test_index_does_not_depend_on_workers(tmp_path):
    build_db(tmp_path, videos=30, per_video=3, seed=4)
    write_meta(tmp_path, yid_of(99), [make_record(yid_of(99), 0, 1.0, 1)] * 2)  # duplicate inside a file
    target = DatasetLayout(tmp_path).relative(INDEX)
    assert index(tmp_path) == 0
    one = (target.read_bytes(), pq.read_table(companion_path(target)))
    assert index(tmp_path, "--num_workers", "2") == 0  # a real process pool
    two = (target.read_bytes(), pq.read_table(companion_path(target)))
    assert one[0] == two[0] and one[1].equals(two[1])
    assert len(read_records(target)) == 30 * 3 + 1


def _index_files(base: Path) -> dict[str, bytes]:
    """The index, its companion and report, and every file under the metadata folder."""
    target = DatasetLayout(base).relative(INDEX)
    meta = DatasetLayout(base).tracks_meta_dir(DS)
    files = [target, companion_path(target), report_path(target), *meta.rglob("*")]
    return {str(p): p.read_bytes() for p in files if p.is_file()}


def _fail_on_video(monkeypatch, exc: BaseException, yid: str) -> None:
    """Make the index's record parsing raise ``exc`` for the records of ``yid`` only."""
    import utils.curate.index as index_module

    original_fast, original_full = index_module.canonical_line_scalars, TrackRecord.from_dict

    def canonical_line_scalars(text, expected_yid):
        if expected_yid == yid:
            raise exc
        return original_fast(text, expected_yid)

    def from_dict(data, validate=True):
        if data.get("yid") == yid:
            raise exc
        return original_full(data, validate)

    monkeypatch.setattr(index_module, "canonical_line_scalars", canonical_line_scalars)
    monkeypatch.setattr(index_module.TrackRecord, "from_dict", from_dict)


def test_index_stops_on_a_systemic_fault_instead_of_dropping_lines(tmp_path, monkeypatch, capsys):
    """MemoryError while reading one line is not a bad line: the run stops with exit 3 and one
    line, and the previous index, its companion and report and the metadata are left as they were."""
    build_db(tmp_path, videos=6, per_video=2)
    assert index(tmp_path) == 0
    before = _index_files(tmp_path)
    capsys.readouterr()
    _fail_on_video(monkeypatch, MemoryError("cannot allocate"), yid_of(3))
    assert index(tmp_path) == 3
    assert capsys.readouterr().err.splitlines()[-1] == "STOPPED: MemoryError: cannot allocate"
    assert _index_files(tmp_path) == before
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("error", [TypeError("a bug"), AttributeError("a bug"), KeyError("a bug")])
def test_index_does_not_count_a_bug_as_an_invalid_line(tmp_path, monkeypatch, error):
    """A programming error while validating a record propagates (a traceback, not exit 1 with
    the line reported as invalid) and nothing is written or deleted."""
    build_db(tmp_path, videos=6, per_video=2)
    assert index(tmp_path) == 0
    before = _index_files(tmp_path)
    _fail_on_video(monkeypatch, error, yid_of(3))
    with pytest.raises(type(error), match="a bug"):
        index(tmp_path)
    assert _index_files(tmp_path) == before


@pytest.mark.parametrize(("code", "exit_code"), [(errno.EACCES, 1), (errno.EIO, 1), (errno.EMFILE, 3)])
def test_index_unreadable_file_is_reported_unless_systemic(tmp_path, monkeypatch, capsys, code, exit_code):
    """An OSError on one metadata file names the file and the run goes on; one that no file
    would survive (too many open files) stops it."""
    import utils.curate.index as index_module

    build_db(tmp_path, videos=4, per_video=2)
    bad = str(DatasetLayout(tmp_path).tracks_meta(DS, yid_of(2)))
    def failing(opener):
        def fake_open(path, *args, **kwargs):
            if str(path) == bad:
                raise OSError(code, os.strerror(code))
            return opener(path, *args, **kwargs)
        return fake_open

    monkeypatch.setattr(index_module.gzip, "open", failing(index_module.gzip.open))
    monkeypatch.setattr(index_module, "open", failing(open), raising=False)  # the module's plain reads
    assert index(tmp_path) == exit_code
    monkeypatch.undo()
    if exit_code == 1:
        report = json.loads(report_path(DatasetLayout(tmp_path).relative(INDEX)).read_text())
        assert [(p["file"], p["kind"]) for p in report["problems"]] == [
            (f"{yid_of(2)[:2]}/{yid_of(2)}-meta.jsonl.gzip", "damaged")]
        assert "unreadable" in report["problems"][0]["messages"][0]
        assert {r.yid for r in read_records(DatasetLayout(tmp_path).relative(INDEX))} == {
            yid_of(v) for v in (0, 1, 3)}
    else:
        assert capsys.readouterr().err.splitlines()[-1] == "STOPPED: OSError: [Errno 24] Too many open files"
        assert not DatasetLayout(tmp_path).relative(INDEX).exists()


def test_index_without_metadata_is_a_usage_error(tmp_path, capsys):
    assert index(tmp_path) == 2
    assert "parse_tracks.py" in capsys.readouterr().err
    assert run("--action", "index", "--base_dir", tmp_path, "--index_file", INDEX) == 2


def test_companion_must_match_its_index(db, tmp_path):
    base, _, verified = db
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    target = DatasetLayout(copy).relative(INDEX)
    table = load_track_table(target)
    with IndexReader(table) as reader:
        assert reader.record(3).tid == table.table.column("tid")[3].as_py()
    data = bytearray(target.read_bytes())
    data[int(table.numpy("offset")[5]) + table.numpy("length")[5] - 6] ^= 0xFF  # same size, other content
    target.write_bytes(bytes(data))
    with pytest.raises(IndexMismatchError, match="re-run --action index"), IndexReader(load_track_table(target)) as r:
        r.copy_rows(np.arange(len(table)), open(os.devnull, "wb"))
    target.write_bytes(bytes(data) + b"x")
    with pytest.raises(UsageError, match="changed after"):
        load_track_table(target)
    assert sample(copy, "sample_random", verified, "--N", "0.01") == 2


# ------------------------------------------------------------------------------- sampling


def _table_rows(base: Path, name: str) -> list[dict]:
    stem = name.removesuffix(".jsonl.gzip")
    with open(DatasetLayout(base).subsets_dir() / f"{stem}.classes.csv") as f:
        return list(csv.DictReader(f))


def test_class_balanced_t0_takes_the_top_per_class_and_never_a_verified_video(db):
    base, records, verified = db
    excluded = read_verified_yids(verified)
    assert excluded == {yid_of(v) for v in (0, 5, 11, 17)}
    assert sample(base, "sample_class_balanced", verified, "--Nc", "5", "12", "--temperature", "0") == 0
    eligible = [r for r in records if r.yid not in excluded]
    for nc in (5, 12):
        expected = []
        for c in CLASSES:
            members = sorted((r for r in eligible if r.label == c), key=lambda r: -r.top10_wlogit_mu[0])
            expected += [r.tid for r in members[:nc]]
        total = len(expected)
        name = f"{DS}-CB{nc}-{size_of(total)}-T0.jsonl.gzip"
        got = subset_records(base, name)
        assert sorted(r.tid for r in got) == sorted(expected)
        assert not {r.yid for r in got} & excluded
        rows = _table_rows(base, name)
        assert {r["label"]: int(r["count"]) for r in rows} == {
            c: min(nc, sum(r.label == c for r in eligible)) for c in CLASSES}
        assert [int(r["count"]) for r in rows] == sorted((int(r["count"]) for r in rows), reverse=True)
        report = json.loads(report_path(DatasetLayout(base).subset_file(name)).read_text())
        assert report["tracks"] == total and report["exclusions"]["verified_videos"] > 0
    # the index order is kept inside a subset
    order = {r.tid: i for i, r in enumerate(records)}
    got = [order[r.tid] for r in subset_records(base, find_subset(base, f"{DS}-CB12-", "-T0.jsonl.gzip"))]
    assert got == sorted(got)


def test_temperatures_seeds_and_byte_identical_reruns(db, tmp_path):
    base, records, verified = db
    by_tid = {r.tid: r for r in records}
    args = ("--Nc", "4", "--temperature", "0", "0.5", "inf", "--seed", "3")
    assert sample(base, "sample_class_balanced", verified, *args) == 0
    names = sorted(n for n in subset_names(base) if "-CB4-" in n)
    assert [n.split("-T")[-1] for n in names] == ["0.5.jsonl.gzip", "0.jsonl.gzip", "inf.jsonl.gzip"]
    first = {n: DatasetLayout(base).subset_file(n).read_bytes() for n in names}
    assert sample(base, "sample_class_balanced", verified, *args) == 0
    assert {n: DatasetLayout(base).subset_file(n).read_bytes() for n in names} == first
    mean = {n.split("-T")[-1].split(".jsonl")[0]: np.mean([by_tid[r.tid].top10_wlogit_mu[0]
                                                           for r in subset_records(base, n)]) for n in names}
    assert mean["0"] > mean["0.5"] > mean["inf"]
    inf_name = next(n for n in names if n.endswith("Tinf.jsonl.gzip"))
    assert sample(base, "sample_class_balanced", verified, "--Nc", "4", "--temperature", "inf", "--seed", "4") == 0
    assert DatasetLayout(base).subset_file(inf_name).read_bytes() != first[inf_name]


def test_random_subsets_names_sizes_and_nesting(db):
    base, records, verified = db
    excluded = read_verified_yids(verified)
    assert sample(base, "sample_random", verified, "--N", "0.05", "0.1", "--seed", "7") == 0
    small = subset_records(base, f"{DS}-50-RND.jsonl.gzip")
    large = subset_records(base, f"{DS}-100-RND.jsonl.gzip")
    assert len(small) == 50 and len(large) == 100
    assert {r.tid for r in small} <= {r.tid for r in large}
    assert not {r.yid for r in large} & excluded
    for r in large:  # full original records
        assert r.track_bbox and r.top10_wlogit_std and r.scores


def test_sampling_through_the_command_line(db, tmp_path):
    base, records, verified = db
    copy = tmp_path / "cli"
    shutil.copytree(base, copy)
    proc = run_cli("curate_db.py", "--action", "sample_class_balanced", "--base_dir", copy, "--index_file", INDEX,
                   "--verified_list", verified, "--Nc", "3", "--temperature", "inf", "--seed", "1", check=True)
    nc3 = [n for n in subset_names(copy) if "-CB3-" in n]
    assert nc3 == [find_subset(copy, f"{DS}-CB3-", "-Tinf.jsonl.gzip")] and nc3[0] in proc.stdout
    stem = DatasetLayout(copy).subsets_dir() / nc3[0].removesuffix(".jsonl.gzip")
    assert stem.with_suffix(".classes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stem.with_suffix(".classes.csv").read_text().startswith("label_id,label,count,available,relax_round\n")
    bad = run_cli("curate_db.py", "--action", "sample_random", "--base_dir", copy, "--index_file", INDEX,
                  "--verified_list", verified, "--N", "1", "--min_motion", "1")
    assert bad.returncode == 2 and "sample_class_balanced" in bad.stderr
    bad = run_cli("curate_db.py", "--action", "sample_class_balanced", "--base_dir", copy, "--index_file",
                  "tracks_subsets/none.jsonl.gzip", "--verified_list", verified)
    assert bad.returncode == 2 and "--action index" in bad.stderr


def test_one_frozen_config_makes_the_flags_and_drives_the_library(db, tmp_path):
    """Every flag is a field of CurateConfig (and back); validation returns a new config and
    leaves the given one as it was; run_sampling runs from a config built without argparse."""
    base, _, verified = db
    parser = curate_db.build_parser()
    flags = {action.dest for action in parser._actions if action.dest != "help"}
    assert flags == {f.name for f in dataclasses.fields(CurateConfig)} - {"progress"}
    parsed = config_from_args(CurateConfig, parser.parse_args(
        ["--action", "sample_random", "--base_dir", str(base), "--index_file", INDEX, "--N", "0.02", "0.01", "0.02",
         "--verified_list", str(verified), "--no_plots"]))
    given = CurateConfig(action="sample_random", base_dir=base, index_file=INDEX, N=(0.02, 0.01, 0.02),
                         verified_list=str(verified), no_plots=True)
    assert parsed == given
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.seed = 1  # type: ignore[misc]
    checked = validate_sampling(given)
    assert checked.N == (0.02, 0.01) and given.N == (0.02, 0.01, 0.02)
    with pytest.raises(UsageError, match="--max_swaps"):
        validate_sampling(dataclasses.replace(given, max_swaps=3))

    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    summary = run_sampling(dataclasses.replace(given, base_dir=copy, progress=False))
    assert [s["subset"] for s in summary.subsets] == [f"{DS}-20-RND.jsonl.gzip", f"{DS}-10-RND.jsonl.gzip"]
    assert [s["tracks"] for s in summary.subsets] == [20, 10]
    assert len(subset_records(copy, f"{DS}-20-RND.jsonl.gzip")) == 20


def test_pinned_verified_list_is_the_default(tmp_path, stand_in_assets):
    pinned = stand_in_assets / "trackverse-verified-6perclass.txt"  # what the pin names here
    listed = sorted({line[:11] for line in pinned.read_text().splitlines() if line.strip()})[:25]
    records = []
    for i, yid in enumerate(listed + [yid_of(v) for v in range(25)]):
        recs = [make_record(yid, k % len(CLASSES), 10.0 if i < 25 else 0.0, i * 4 + k) for k in range(4)]
        write_meta(tmp_path, yid, recs)
        records += recs
    assert index(tmp_path) == 0
    assert run("--action", "sample_class_balanced", "--base_dir", tmp_path, "--index_file", INDEX,
               "--Nc", "1000", "--no_plots") == 0
    got = subset_records(tmp_path, f"{DS}-CB1000-100-T0.jsonl.gzip")
    assert len(got) == 100 and not {r.yid for r in got} & set(listed)


# ---------------------------------------------------------------------------- constraints


def _motion_db(tmp_path: Path) -> tuple[Path, list[TrackRecord], Path]:
    records = build_db(tmp_path, videos=30, per_video=4, seed=2)
    assert index(tmp_path) == 0
    verified = tmp_path / "verified.txt"
    verified.write_text(f"{yid_of(3)}\n")
    return tmp_path, records, verified


def test_min_motion_relaxes_and_never_uses_missing_values(tmp_path, capsys):
    base, records, verified = _motion_db(tmp_path)
    rng = np.random.default_rng(0)
    motion = {r.tid: float(v) for r, v in zip(records, rng.uniform(0, 2, len(records)), strict=True)}
    missing = {r.tid for r in records[::9]}
    nan = {records[1].tid}
    rows = [r for r in records if r.tid not in missing]
    half = len(rows) // 2
    folder = metric_dir(base, DS, "motion")
    folder.mkdir(parents=True)
    # the documented format, written without our helper: tid, fn, q50/q75/q90 (float32)
    for part, chunk in enumerate((rows[:half], rows[half:])):
        q90 = [math.nan if r.tid in nan else motion[r.tid] for r in chunk]
        pq.write_table(pa.table({"tid": [r.tid for r in chunk], "fn": [r.fn for r in chunk],
                                 "q50": pa.array(np.zeros(len(chunk)), pa.float32()),
                                 "q75": pa.array(np.zeros(len(chunk)), pa.float32()),
                                 "q90": pa.array(q90, pa.float32())}), folder / f"rank-{part:05d}-of-00002.parquet")
    assert sample(base, "sample_class_balanced", verified, "--Nc", "3", "8", "--min_motion", "1.") == 0
    out = capsys.readouterr().out
    assert "have none" in out and "no motion value" in out
    excluded = read_verified_yids(verified)
    for nc in (3, 8):
        name = next(n for n in subset_names(base) if f"-CB{nc}-" in n and n.endswith("-MM1.jsonl.gzip"))
        got = subset_records(base, name)
        assert not {r.tid for r in got} & (missing | nan)
        assert not {r.yid for r in got} & excluded
        table = {r["label"]: r for r in _table_rows(base, name)}
        for label, row in table.items():
            values = [motion[r.tid] for r in got if r.label == label]
            assert len(values) == min(nc, int(row["available"]))
            if row["relax_round"] == "0":
                assert min(values) >= 1.0 - 1e-6
            else:  # relaxed only because the class could not fill its quota at full strength
                strong = [r for r in records if r.label == label and r.yid not in excluded
                          and r.tid not in missing | nan and motion[r.tid] >= 1.0 - 1e-6]
                assert len(strong) < nc
        report = json.loads(report_path(DatasetLayout(base).subset_file(name)).read_text())
        assert report["constraints"] == {"min_motion": 1.0, "motion_column": "q90"}
        assert sum(report["relaxed_classes"].values()) == sum(r["relax_round"] != "0" for r in table.values())


def test_vectorised_levels_match_the_walk():
    rng = np.random.default_rng(5)
    n = 400
    codes = rng.integers(0, 7, n)
    ranks = np.full(n, -1)
    eligible = rng.random(n) > 0.1
    for c in range(7):
        rows = np.flatnonzero((codes == c) & eligible)
        ranks[rows] = rng.permutation(rows.size)
    motion = rng.uniform(0, 2, n)
    motion[rng.random(n) < 0.1] = np.nan
    level = motion_levels(motion, 1.5)
    assert level[np.isnan(motion)].tolist() == [NO_VALUE] * int(np.isnan(motion).sum())
    pick = picks_by_level(codes, ranks, level)
    inputs = WalkInputs(constraints=SamplingConstraints(min_motion=1.5), video_codes=np.zeros(n, np.int64),
                        level=level)
    for c in range(7):
        rows = np.flatnonzero((codes == c) & (ranks >= 0) & (level < NO_VALUE))
        order = rows[np.argsort(ranks[rows])]
        accepted, rounds = walk_class(order, 25, inputs)
        vectorised = rows[np.argsort(pick[rows])][:25]
        assert accepted == vectorised.tolist()
        assert rounds == level[accepted].tolist()


def test_min_nn_dist_with_embeddings(tmp_path, capsys):
    base, records, verified = _motion_db(tmp_path)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16))
    emb = {}
    for r in records:  # every track sits near one of 3 far-apart points: at most 3 per class are far apart
        emb[r.tid] = centres[rng.integers(0, 3)] * 10 + rng.normal(scale=0.01, size=16)
    no_emb = {records[2].tid}
    with_emb = [r for r in records if r.tid not in no_emb]
    write_metric_file(metric_dir(base, DS, "embeddings") / "rank-00000-of-00001.parquet",
                      [r.tid for r in with_emb], [r.fn for r in with_emb],
                      {"embedding": np.stack([emb[r.tid] for r in with_emb])})
    assert sample(base, "sample_class_balanced", verified, "--Nc", "2", "6", "--min_nn_dist", "1") == 0
    name6 = next(n for n in subset_names(base) if "-CB6-" in n and n.endswith("-NN1.jsonl.gzip"))
    got = subset_records(base, name6)
    assert not {r.tid for r in got} & no_emb
    table = {r["label"]: r for r in _table_rows(base, name6)}
    for label, row in table.items():
        vecs = np.stack([emb[r.tid] for r in got if r.label == label])
        assert len(vecs) == min(6, int(row["available"]))
        if len(vecs) > 3:  # only 3 far-apart points exist: the rest came with the constraint off
            assert row["relax_round"] == "4"
    name2 = next(n for n in subset_names(base) if "-CB2-" in n and n.endswith("-NN1.jsonl.gzip"))
    for label, row in {r["label"]: r for r in _table_rows(base, name2)}.items():
        vecs = np.stack([emb[r.tid] for r in subset_records(base, name2) if r.label == label])
        if row["relax_round"] == "0" and len(vecs) == 2:
            assert np.linalg.norm(vecs[0] - vecs[1]) >= 1.0
    assert {r.tid for r in subset_records(base, name2)} <= {r.tid for r in got}
    # embeddings over the memory budget are read a group of classes at a time: the same subsets
    layout = DatasetLayout(base)
    first = {n: layout.subset_file(n).read_bytes() for n in (name2, name6)}
    capsys.readouterr()
    assert sample(base, "sample_class_balanced", verified, "--Nc", "2", "6", "--min_nn_dist", "1",
                  "--max_embedding_gb", "1e-6") == 0
    groups = int(re.search(r"read in (\d+) groups of classes", capsys.readouterr().out).group(1))
    assert groups == len(table)  # 4 x 16 floats per track: every class is over 1 kB
    assert {n: layout.subset_file(n).read_bytes() for n in (name2, name6)} == first


def test_max_spt_iou_within_a_video(tmp_path):
    yid = yid_of(1)
    same = [make_record(yid, 0, 1.0 - 0.1 * k, k, box=(10, 10, 50, 50), t0=0.01 * k) for k in range(3)]
    apart = make_record(yid, 0, 0.5, 10, box=(300, 200, 50, 50))
    other_video = make_record(yid_of(2), 0, 0.4, 11, box=(10, 10, 50, 50))
    write_meta(tmp_path, yid, [*same, apart])
    write_meta(tmp_path, yid_of(2), [other_video])
    assert index(tmp_path) == 0
    verified = tmp_path / "v.txt"
    verified.write_text("")
    assert sample(tmp_path, "sample_class_balanced", verified, "--Nc", "3", "5", "--max_spt_iou", "0.5") == 0
    got3 = {r.tid for r in subset_records(tmp_path, f"{DS}-CB3-3-T0-IoU0.5.jsonl.gzip")}
    assert got3 == {same[0].tid, apart.tid, other_video.tid}  # the overlapping copies wait
    rows5 = _table_rows(tmp_path, f"{DS}-CB5-5-T0-IoU0.5.jsonl.gzip")
    assert rows5 == [{"label_id": "0", "label": "cat", "count": "5", "available": "5", "relax_round": "4"}]


def test_spt_iou():
    ts = np.arange(10) / 16
    box = np.tile([10.0, 10.0, 20.0, 20.0], (10, 1))
    assert spt_iou(ts, box, ts, box) == pytest.approx(1.0)
    assert spt_iou(ts, box, ts, box + [100, 0, 0, 0]) == 0.0
    half = box + [10, 0, 0, 0]  # overlap 10x20 of union 30x20
    assert spt_iou(ts, box, ts[::2], half[::2]) == pytest.approx(1 / 3)
    later = ts + 100  # disjoint in time: the closest frames are compared, decayed with a finite buffer
    assert spt_iou(ts, box, later, box) == pytest.approx(1.0)
    gap = later[0] - ts[-1]
    assert spt_iou(ts, box, later, box, tbuff=1.0) == pytest.approx(1 / math.sqrt(gap))
    assert spt_iou(ts, box, later, box, tbuff=2 * gap) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ metrics store


def test_metric_reader_keys_duplicates_and_formats(tmp_path):
    tids = pa.array([f"t{i}" for i in range(6)])
    fns = pa.array([f"ab/f{i}.mp4" for i in range(6)])
    folder = metric_dir(tmp_path, DS, "motion")
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"tid": ["t0", "t1", "t2", "zz"], "fn": ["ab/f0.mp4", "ab/f1.mp4", "WRONG.mp4", "x.mp4"],
                             "q90": [1.0, 2.0, 3.0, 4.0]}), folder / "rank-00000-of-00002.parquet")
    pq.write_table(pa.table({"tid": ["t1", "t3", "t4"], "fn": ["ab/f1.mp4", "ab/f3.mp4", "ab/f4.mp4"],
                             "q90": pa.array([5.0, None, float("nan")], pa.float64())}),
                   folder / "rank-00001-of-00002.parquet")
    (folder / ".rank-00002-of-00002.parquet.tmp-x.parquet").write_bytes(b"partial")
    got = load_metric_columns(tmp_path, DS, "motion", ["q90"], tids, fns)
    np.testing.assert_array_equal(got.values["q90"], [1.0, 5.0, np.nan, np.nan, np.nan, np.nan])
    assert got.present.tolist() == [True, True, False, False, False, False]
    rep = got.report
    assert (rep.files, rep.rows, rep.unknown_tid, rep.fn_mismatch, rep.duplicates, rep.conflicting) == (2, 7, 1, 1, 1, 1)
    assert rep.missing == 4 and "4 have none" in rep.line()
    with pytest.raises(MetricsError, match="missing column"):
        load_metric_columns(tmp_path, DS, "motion", ["q75"], tids, fns)
    with pytest.raises(MetricsError, match="visual_metrics.py --metric embeddings"):
        load_metric_columns(tmp_path, DS, "embeddings", ["x"], tids, fns)


def test_metric_reader_vectors(tmp_path):
    tids = pa.array([f"t{i}" for i in range(5)])
    fns = pa.array([f"ab/f{i}.mp4" for i in range(5)])
    folder = metric_dir(tmp_path, DS, "embeddings")
    write_metric_file(folder / "a.parquet", ["t0", "t2"], ["ab/f0.mp4", "ab/f2.mp4"],
                      {"embedding": np.array([[1, 0, 0], [0, 1, 0]], np.float32)})
    pq.write_table(pa.table({"tid": ["t3", "t4"], "fn": ["ab/f3.mp4", "ab/f4.mp4"],
                             "embedding": pa.array([[0.0, 0.0, 1.0], [np.nan, 0.0, 0.0]], pa.list_(pa.float32()))}),
                   folder / "b.parquet")
    got = VectorSource(tmp_path, DS, "embeddings", "embedding", tids, fns).load([2, 3, 4, 1])
    assert got.present.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(got.vectors[:2], [[0, 1, 0], [0, 0, 1]])
    assert got.report.with_value == 2
    pq.write_table(pa.table({"tid": ["t1"], "fn": ["ab/f1.mp4"],
                             "embedding": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))}), folder / "c.parquet")
    with pytest.raises(MetricsError, match="c.parquet.*lengths"):
        VectorSource(tmp_path, DS, "embeddings", "embedding", tids, fns).load()


def test_constrained_subsets_follow_the_unconstrained_ranking(tmp_path):
    base, records, verified = _motion_db(tmp_path)
    write_metric_file(metric_dir(base, DS, "motion") / "all.parquet", [r.tid for r in records],
                      [r.fn for r in records], {"q90": np.full(len(records), 5.0)})
    args = ("--Nc", "3", "--temperature", "inf", "--seed", "9")
    assert sample(base, "sample_class_balanced", verified, *args) == 0
    assert sample(base, "sample_class_balanced", verified, *args, "--min_motion", "1") == 0
    plain = next(n for n in subset_names(base) if n.endswith("Tinf.jsonl.gzip"))
    motion = next(n for n in subset_names(base) if n.endswith("Tinf-MM1.jsonl.gzip"))
    assert [r.tid for r in subset_records(base, plain)] == [r.tid for r in subset_records(base, motion)]


def test_bad_flags_and_offline_assets_are_usage_errors(db, tmp_path, monkeypatch, capsys):
    base, _, verified = db
    with pytest.raises(SystemExit) as exc:
        sample(base, "sample_class_balanced", verified, "--temperature", "-1")
    assert exc.value.code == 2
    assert sample(base, "sample_class_balanced", verified, "--max_spt_iou", "1.5") == 2
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TRACKVERSE_ASSETS_URL", "http://127.0.0.1:9/")
    assert run("--action", "sample_random", "--base_dir", base, "--index_file", INDEX, "--N", "0.01") == 2
    assert "Offline" in capsys.readouterr().err


@pytest.mark.parametrize(("max_gap", "span", "batch"), [(0, 1 << 30, 7), (1 << 20, 1 << 30, 16384), (300, 2000, 5)])
def test_copy_rows_is_the_selected_members_in_order(db, max_gap, span, batch):
    base, _, _ = db
    table = load_track_table(DatasetLayout(base).relative(INDEX))
    rows = np.flatnonzero(np.random.default_rng(max_gap).random(len(table)) < 0.4)
    rows = np.concatenate([rows, [len(table) - 1]]) if rows[-1] != len(table) - 1 else rows
    with IndexReader(table) as reader:
        expected = b"".join(reader.member(int(r)) for r in rows)
        buf = io.BytesIO()
        assert reader.copy_rows(rows, buf, batch=batch, max_gap=max_gap, span=span) == len(expected)
        with pytest.raises(ValueError, match="increasing"):
            reader.copy_rows(rows[::-1], io.BytesIO())
    assert buf.getvalue() == expected
    assert [r.tid for r in read_records(_tmp_file(base, expected))] == [
        table.table.column("tid")[int(r)].as_py() for r in rows]


def _tmp_file(base: Path, data: bytes) -> Path:
    path = base / "copied.jsonl.gzip"
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------- max motion, min redundancy


def _eligible_by_class(records: list[TrackRecord], verified: Path, keep=lambda r: True) -> dict[str, list]:
    excluded = read_verified_yids(verified)
    out: dict[str, list] = {}
    for r in records:
        if r.yid not in excluded and keep(r):
            out.setdefault(r.label, []).append(r)
    return out


def _min_pairwise(vectors: list[np.ndarray]) -> float:
    x = np.stack(vectors).astype(np.float64)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(x), 1)].min())


def test_max_motion_takes_the_top_moving_tracks_per_class(tmp_path, capsys):
    base, records, verified = _motion_db(tmp_path)
    excluded = read_verified_yids(verified)
    rng = np.random.default_rng(3)
    q90 = {r.tid: float(v) for r, v in zip(records, rng.uniform(0, 5, len(records)), strict=True)}
    q50 = {tid: 10 - v for tid, v in q90.items()}  # the opposite order
    for r in records:
        if r.yid in excluded:
            q90[r.tid] = 100.0  # the most moving tracks are all in an evaluation video
    missing = {r.tid for r in records[::7]}
    nan = {records[1].tid, records[2].tid}
    for tid in missing:
        q90[tid] = 50.0  # what a missing row must never be read as
    rows = [r for r in records if r.tid not in missing]
    write_metric_file(metric_dir(base, DS, "motion") / "rank-00000-of-00001.parquet", [r.tid for r in rows],
                      [r.fn for r in rows], {"q90": [math.nan if r.tid in nan else q90[r.tid] for r in rows],
                                             "q50": [q50[r.tid] for r in rows]})
    assert sample(base, "sample_max_motion", verified, "--Nc", "2", "5") == 0
    out = capsys.readouterr().out
    has_value = _eligible_by_class(records, verified, lambda r: r.tid not in missing | nan)
    no_value = sum(len(v) for v in _eligible_by_class(records, verified).values()) - sum(map(len, has_value.values()))
    assert f"{no_value} no motion value" in out and "have none" in out and "MaxQ90Motion" in out
    picked = {}
    for nc in (2, 5):
        expected = {r.tid for members in has_value.values()
                    for r in sorted(members, key=lambda r: -q90[r.tid])[:nc]}
        name = f"{DS}-MaxQ90Motion-CB{nc}-{size_of(len(expected))}.jsonl.gzip"
        picked[nc] = {r.tid for r in subset_records(base, name)}
        assert picked[nc] == expected
        assert not picked[nc] & (missing | nan)
        assert {r["label"]: int(r["count"]) for r in _table_rows(base, name)} == {
            c: min(nc, len(m)) for c, m in has_value.items()}
        report = json.loads(report_path(DatasetLayout(base).subset_file(name)).read_text())
        assert report["action"] == "sample_max_motion" and report["motion_column"] == "q90"
        assert report["exclusions"]["no_motion_value"] == no_value and report["exclusions"]["verified_videos"] > 0
    assert picked[2] <= picked[5]
    assert not {r.yid for r in subset_records(base, find_subset(base, f"{DS}-MaxQ90Motion-CB5-"))} & excluded
    # another statistic, another name
    assert sample(base, "sample_max_motion", verified, "--Nc", "2", "--motion_column", "q50") == 0
    got = {r.tid for r in subset_records(base, find_subset(base, f"{DS}-MaxQ50Motion-CB2-"))}
    assert got == {r.tid for members in _eligible_by_class(records, verified, lambda r: r.tid not in missing).values()
                   for r in sorted(members, key=lambda r: -q50[r.tid])[:2]}


def test_min_red_spreads_each_class_and_is_deterministic(tmp_path):
    base, records, verified = _motion_db(tmp_path)
    excluded = read_verified_yids(verified)
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(4, 8)) * 5  # 4 far-apart points
    top = {c: sorted(m, key=lambda r: -r.top10_wlogit_mu[0]) for c, m in _eligible_by_class(records, verified).items()}
    emb = {}
    for ranked in top.values():  # the 4 best-scored tracks of a class are near-duplicates, then 1 per point
        for i, r in enumerate(ranked):
            emb[r.tid] = centres[0 if i < 4 else i % 4] + rng.normal(scale=0.01, size=8)
    for r in records:
        if r.yid in excluded:
            emb[r.tid] = rng.normal(size=8) * 100  # far from everything: attractive, but never eligible
    no_emb = {ranked[0].tid for ranked in top.values()}  # each class's best track has no embedding ...
    nan_emb = {top["zebra"][1].tid}  # ... and one has a NaN in it
    rows = [r for r in records if r.tid not in no_emb]
    vecs = np.stack([emb[r.tid] for r in rows])
    vecs[[i for i, r in enumerate(rows) if r.tid in nan_emb], 3] = np.nan
    write_metric_file(metric_dir(base, DS, "embeddings") / "rank-00000-of-00001.parquet",
                      [r.tid for r in rows], [r.fn for r in rows], {"embedding": vecs})

    nc = 3
    assert sample(base, "sample_min_red", verified, "--Nc", str(nc)) == 0
    name = find_subset(base, f"{DS}-MinRed-CB{nc}-")
    target = DatasetLayout(base).subset_file(name)
    got = subset_records(base, name)
    assert not {r.tid for r in got} & (no_emb | nan_emb)
    assert not {r.yid for r in got} & excluded
    report = json.loads(report_path(target).read_text())
    assert report["exclusions"]["no_embedding"] == len(no_emb) + len(nan_emb)
    per_class = {c["label"]: c for c in report["min_red_classes"]}
    for label, members in top.items():
        candidates = [r for r in members if r.tid not in no_emb | nan_emb]
        chosen = [emb[r.tid] for r in got if r.label == label]
        assert len(chosen) == min(nc, len(candidates))
        if len(members) >= 8:  # candidates at >= 3 of the points (ranks 1-4 at the first, 5, 6, 7)
            start = _min_pairwise([emb[r.tid] for r in candidates[:nc]])  # top-Nc by score: near-duplicates
            assert start < 0.1 < 3 < _min_pairwise(chosen)  # spread over the far-apart points
            assert per_class[label]["start_min_dist"] == pytest.approx(start, abs=1e-3)
            assert per_class[label]["min_dist"] == pytest.approx(_min_pairwise(chosen), abs=1e-3)
            assert per_class[label]["swaps"] >= 1 and per_class[label]["converged"]
    assert report["min_red"]["classes_swapped"] == len(per_class) >= 4
    # the same run through the command line (with the plot) writes the same bytes, also when the
    # embeddings are over the memory budget and read a group of classes at a time
    first = target.read_bytes()
    report_first = report_path(target).read_text()
    assert sample(base, "sample_min_red", verified, "--Nc", str(nc), "--max_embedding_gb", "1e-6") == 0
    assert target.read_bytes() == first and report_path(target).read_text() == report_first
    proc = run_cli("curate_db.py", "--action", "sample_min_red", "--base_dir", base, "--index_file", INDEX,
                   "--verified_list", verified, "--Nc", str(nc), check=True)
    assert target.read_bytes() == first
    assert name in proc.stdout and "minimum pairwise distance" in proc.stdout and "no embedding" in proc.stdout
    stem = DatasetLayout(base).subsets_dir() / name.removesuffix(".jsonl.gzip")
    assert stem.with_suffix(".classes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stem.with_suffix(".classes.csv").read_text().startswith("label_id,label,count,available,relax_round\n")


def test_metric_actions_reject_flags_that_do_not_apply(db, capsys):
    base, _, verified = db
    for action, extra, message in (
        ("sample_max_motion", ("--temperature", "inf"), "--temperature"),
        ("sample_min_red", ("--min_nn_dist", "1"), "sample_class_balanced"),
        ("sample_class_balanced", ("--max_swaps", "5"), "sample_min_red"),
        ("sample_max_motion", ("--motion_column", "q-90"), "letters and digits"),
        ("sample_max_motion", (), "visual_metrics.py --metric motion"),
        ("sample_min_red", (), "visual_metrics.py --metric embeddings"),
    ):
        assert sample(base, action, verified, *extra) == 2, (action, extra)
        assert message in capsys.readouterr().err


def test_class_groups_hold_whole_classes_within_the_budget():
    from utils.curate.constraints import class_groups

    assert class_groups([3, 1, 4, 1, 5], 10, 50) == [(0, 2), (2, 4), (4, 5)]
    assert class_groups([3, 1, 4, 1, 5], 10, 1e9) == [(0, 5)]
    assert class_groups([10, 2], 8, 5) == [(0, 1), (1, 2)]  # over the budget alone: never split
    assert class_groups([], 8, 5) == []
    assert class_groups([4, 4], 0, 0) == [(0, 2)]  # no vectors at all: one group


@pytest.mark.parametrize("batch_rows", [3, 4096])
def test_vectors_are_read_in_batches_the_same_way(tmp_path, monkeypatch, batch_rows):
    """Vector files are streamed a batch of rows at a time: every batch size, any subset of rows,
    and the presence-only pass give the same answer (the last row of a repeated track wins)."""
    import utils.records.metrics_store as store

    monkeypatch.setattr(store, "VECTOR_BATCH_ROWS", batch_rows)
    n = 23
    rng = np.random.default_rng(5)
    tids = pa.array([f"t{i}" for i in range(n)])
    fns = pa.array([f"ab/f{i}.mp4" for i in range(n)])
    vecs = rng.normal(size=(n, 4)).astype(np.float32)
    vecs[7, 2] = np.nan  # computed but undefined: missing
    folder = metric_dir(tmp_path, DS, "embeddings")
    first, second = list(range(0, 14)), [*range(10, 20), 3]  # 10-13 and 3 repeated: the later file wins
    stale = vecs.copy() + 100
    write_metric_file(folder / "a.parquet", [f"t{i}" for i in first], [f"ab/f{i}.mp4" for i in first],
                      {"embedding": stale[first]})
    write_metric_file(folder / "b.parquet", [f"t{i}" for i in second], [f"ab/f{i}.mp4" for i in second],
                      {"embedding": vecs[second]})
    source = store.VectorSource(tmp_path, DS, "embeddings", "embedding", tids, fns)
    assert source.dim == 4
    rows = np.array([22, 3, 12, 0, 7, 19, 5])
    got = source.load(rows)
    expected = {22: None, 3: vecs[3], 12: vecs[12], 0: stale[0], 7: stale[7], 19: vecs[19], 5: stale[5]}
    expected[7] = None  # its only row is NaN
    assert got.present.tolist() == [expected[r] is not None for r in rows.tolist()]
    for i, r in enumerate(rows.tolist()):
        if expected[r] is not None:
            np.testing.assert_array_equal(got.vectors[i], expected[r])
    assert source.load(rows, keep_vectors=False).present.tolist() == got.present.tolist()
    assert got.report.with_value == 5 and got.report.duplicates == 5


def test_min_nn_dist_when_no_track_has_an_embedding(tmp_path, capsys):
    base, records, verified = _motion_db(tmp_path)
    write_metric_file(metric_dir(base, DS, "embeddings") / "rank-00000-of-00001.parquet",
                      [r.tid for r in records], [r.fn for r in records],
                      {"embedding": np.full((len(records), 4), np.nan, np.float32)})
    assert sample(base, "sample_class_balanced", verified, "--Nc", "2", "--min_nn_dist", "1") == 0
    out = capsys.readouterr().out
    assert "0 of" in out and "no embedding" in out
    name = next(n for n in subset_names(base) if n.endswith("-NN1.jsonl.gzip"))
    assert subset_records(base, name) == []
    assert sample(base, "sample_min_red", verified, "--Nc", "2") == 0
    assert subset_records(base, f"{DS}-MinRed-CB2-0.jsonl.gzip") == []


# ------------------------------------------------------------- issue 14: classes, names, order


def labelled_record(yid: str, label_id: int | None, name: str, score: float, k: int) -> TrackRecord:
    """A record of class ``label_id`` named ``name`` (as a prompts line: trailing spaces kept)."""
    rec = make_record(yid, 0, score, k, t0=k * 2.0)
    return dataclasses.replace(rec, fn=track_filename(yid, name, rec.tid), top10_lbl=None if label_id is None
                               else [label_id, 1, 2], top10_desc=[name, CLASSES[1], CLASSES[2]])


def test_classes_with_the_same_name_are_balanced_and_counted_apart(tmp_path, capsys):
    """LVIS has byte-identical names on two lines (135 and 136 are both "bow "; 446 "fish" and 447
    "fish "): each id gets its own quota, table row, report entry and plot tick; records without
    an id are grouped by their name, apart from the ids, and the summary says so."""
    classes = [(135, "bow "), (136, "bow "), (446, "fish"), (447, "fish ")]
    rng = np.random.default_rng(1)
    records = []
    for v in range(8):
        recs = [labelled_record(yid_of(v), *classes[(v + k) % 4], float(np.round(rng.normal(), 4)), v * 5 + k)
                for k in range(4)]
        if v < 2:  # old metadata: a name, no id
            recs.append(labelled_record(yid_of(v), None, "bow", 0.0, v * 5 + 4))
        write_meta(tmp_path, yid_of(v), recs)
        records += recs
    assert index(tmp_path) == 0
    verified = tmp_path / "verified.txt"
    verified.write_text("")
    capsys.readouterr()
    assert sample(tmp_path, "sample_class_balanced", verified, "--Nc", "3") == 0
    out = capsys.readouterr().out
    (name,) = [n for n in subset_names(tmp_path) if n.startswith(f"{DS}-CB3-")]
    got = subset_records(tmp_path, name)
    per_id: dict = {}
    for r in got:
        per_id.setdefault(r.top10_lbl[0] if r.top10_lbl else None, []).append(r.tid)
    assert {k: len(v) for k, v in per_id.items()} == {135: 3, 136: 3, 446: 3, 447: 3, None: 2}
    for cid, _ in classes:  # the top 3 of each id by score
        members = sorted((r for r in records if r.top10_lbl and r.top10_lbl[0] == cid),
                         key=lambda r: -r.top10_wlogit_mu[0])
        assert sorted(per_id[cid]) == sorted(r.tid for r in members[:3])
    rows = _table_rows(tmp_path, name)
    assert [(r["label_id"], r["label"], r["count"], r["available"]) for r in rows] == [
        ("135", "bow", "3", "8"), ("136", "bow", "3", "8"), ("446", "fish", "3", "8"), ("447", "fish", "3", "8"),
        ("", "bow", "2", "2")]
    assert name == f"{DS}-CB3-14-T0.jsonl.gzip"  # 3 for each of the 4 ids, 2 for the id-less "bow"
    report = json.loads(report_path(DatasetLayout(tmp_path).subset_file(name)).read_text())
    assert report["classes"] == 5 and report["class_key"]["tracks_without_label_id"] == 2
    assert "5 classes (by label id, else by name)" in out
    assert "2 tracks have no label id (top10_lbl): grouped by their name into 1 class, apart from the 4" in out
    # the same through the other per-class actions
    write_metric_file(metric_dir(tmp_path, DS, "motion") / "all.parquet", [r.tid for r in records],
                      [r.fn for r in records], {"q90": np.arange(len(records), dtype=np.float32)})
    assert sample(tmp_path, "sample_max_motion", verified, "--Nc", "1") == 0
    motion = _table_rows(tmp_path, f"{DS}-MaxQ90Motion-CB1-5.jsonl.gzip")
    assert sorted((r["label_id"], r["count"]) for r in motion) == [("", "1"), ("135", "1"), ("136", "1"),
                                                                   ("446", "1"), ("447", "1")]


def lvis_shaped_lines() -> list[str]:
    """1,203 prompt lines with LVIS's homonyms where LVIS has them (bow on lines 135 and 136):
    the shape of the real list (tests/test_tracks.py checks the list itself)."""
    lines = [f"class {i:04d} (also known as thing {i})" for i in range(1203)]
    lines[135], lines[136] = "bow (also known as weapon)", "bow (also known as decorative ribbons)"
    return lines


def test_an_index_of_a_vocabulary_of_lvis_size_has_1203_classes(tmp_path):
    lines = lvis_shaped_lines()
    for v in range(0, len(lines), 100):
        write_meta(tmp_path, yid_of(v), [labelled_record(yid_of(v), i, line, 1.0, i)
                                         for i, line in enumerate(lines[v:v + 100], start=v)])
    assert index(tmp_path) == 0
    verified = tmp_path / "verified.txt"
    verified.write_text("")
    assert sample(tmp_path, "sample_class_balanced", verified, "--Nc", "1") == 0
    name = f"{DS}-CB1-1K-T0.jsonl.gzip"  # 1,203 tracks: the released naming
    rows = _table_rows(tmp_path, name)
    assert sorted(int(r["label_id"]) for r in rows) == list(range(1203))
    assert json.loads(report_path(DatasetLayout(tmp_path).subset_file(name)).read_text())["classes"] == 1203
    assert [r["label_id"] for r in rows if r["label"] == "bow"] == ["135", "136"]


def test_offline_a_missing_index_is_reported_before_the_verified_list(db, tmp_path, monkeypatch, capsys):
    """Offline (nothing cached, the assets URL an empty folder), the first error names what is
    missing locally: the index, its companion, the metric files; the verified list comes last."""
    empty = tmp_path / "assets"
    empty.mkdir()
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRACKVERSE_ASSETS_URL", empty.as_uri() + "/")
    nowhere = tmp_path / "nothing"
    missing = DatasetLayout(nowhere).relative(INDEX)
    for action, extra in (("sample_random", ("--N", "1")), ("sample_class_balanced", ()),
                          ("sample_max_motion", ()), ("sample_min_red", ())):
        assert run("--action", action, "--base_dir", nowhere, "--index_file", INDEX, *extra) == 2
        err = capsys.readouterr().err
        assert f"index file {missing} does not exist" in err and "verified" not in err, (action, err)
        assert err.count("\n") == 1
    base, _, _ = db
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    assert run("--action", "sample_max_motion", "--base_dir", copy, "--index_file", INDEX) == 2
    assert "visual_metrics.py --metric motion" in capsys.readouterr().err
    companion_path(DatasetLayout(copy).relative(INDEX)).unlink()
    assert run("--action", "sample_class_balanced", "--base_dir", copy, "--index_file", INDEX) == 2
    assert "companion) does not exist" in capsys.readouterr().err
    # with everything local in place, the verified list is what is missing, and it says so
    base, _, verified = db
    assert run("--action", "sample_class_balanced", "--base_dir", base, "--index_file", INDEX) == 2
    assert "verified evaluation list" in capsys.readouterr().err


def test_random_subsets_need_n_and_are_named_by_the_tracks_they_hold(db, tmp_path, capsys):
    base, records, verified = db
    eligible = sum(r.yid not in read_verified_yids(verified) for r in records)
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    shutil.rmtree(DatasetLayout(copy).subsets_dir())
    shutil.copytree(DatasetLayout(base).relative(INDEX).parent, DatasetLayout(copy).relative(INDEX).parent)
    # no hidden default sizes
    assert sample(copy, "sample_random", verified) == 2
    assert "sample_random needs --N" in capsys.readouterr().err
    assert sample(copy, "sample_class_balanced", verified, "--N", "1") == 2
    assert "--N applies to sample_random" in capsys.readouterr().err
    # asked for 1,000 and 2,000, holds every eligible track: one subset, named by its size
    assert sample(copy, "sample_random", verified, "--N", "1", "2") == 0
    out = capsys.readouterr().out
    assert subset_names(copy) == {f"{DS}-{eligible}-RND.jsonl.gzip"}
    assert f"only {eligible} eligible tracks for 1000 requested" in out and "also what --N 2 gives" in out
    assert len(subset_records(copy, f"{DS}-{eligible}-RND.jsonl.gzip")) == eligible


def test_random_names_count_thousands_and_never_collide(tmp_path, capsys):
    build_db(tmp_path, videos=70, per_video=16)  # 1,120 tracks
    assert index(tmp_path) == 0
    verified = tmp_path / "verified.txt"
    verified.write_text("")
    assert sample(tmp_path, "sample_random", verified, "--N", "1", "0.5") == 0
    assert subset_names(tmp_path) == {f"{DS}-1K-RND.jsonl.gzip", f"{DS}-500-RND.jsonl.gzip"}
    assert len(subset_records(tmp_path, f"{DS}-1K-RND.jsonl.gzip")) == 1000
    capsys.readouterr()
    assert sample(tmp_path, "sample_random", verified, "--N", "1.1", "1") == 2
    err = capsys.readouterr().err
    assert "--N 1.1 and 1 would both be named" in err and f"{DS}-1K-RND" in err


def test_help_states_the_defaults_and_that_n_is_required(capsys):
    with pytest.raises(SystemExit):
        curate_db.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--N N [N ...] sample_random, required (no default): subset sizes in thousands of tracks" in text
    assert "(default: 100 300 500 1000)" in text and "(default: 0)" in text and "default: q90" in text


def _line_variants(yid: str) -> list[bytes]:
    """Lines of one metadata file: canonical records and, around them, every kind of line the
    index's fast path must leave to the full way (or reject in the same words)."""
    base = make_record(yid, 1, 0.5, 3).to_dict()
    variants: list[object] = [base]

    def changed(**kw: object) -> dict:
        return {**base, **kw}

    ts, box = base["track_ts"], base["track_bbox"]
    variants += [
        changed(track_ts=[int(t) if t == int(t) else t for t in ts]),  # ints where floats are written
        changed(video_size=[360.0, 640.0]), changed(video_size=None), changed(video_size=[True, 640]),
        changed(top10_lbl=[1.0, 2, 3]), changed(top10_lbl=[1, 2]), changed(top10_lbl=[-1, 2, 3]),
        changed(top10_lbl=[2**40, 2, 3]),
        changed(top10_desc=[1, "b", "c"]), changed(top10_logit_std=[0.1, -0.1, 0.1]),
        changed(top10_lbl=[], top10_desc=[], top10_logit_mu=[], top10_logit_std=[], top10_wlogit_mu=[],
                top10_wlogit_std=[]),
        changed(track_ts=list(reversed(ts))), changed(track_ts=[]), changed(track_ts=[1e300] * len(ts)),
        changed(track_ts=[*ts[:-1], 1e19]), changed(track_ts=[*ts[:-1], 1e16]),  # Python writes 1e+16
        changed(top10_logit_std=[1e-05, 0.1, 0.1]), changed(top10_logit_mu=[-0.0, 0.5, 0.25]),
        changed(track_ts=[*ts[:-1], 2**53 + 1]), changed(track_ts=[*ts[:-1], 2**53]),  # not exact as floats
        changed(track_bbox=[[int(v) for v in b] for b in box]), changed(top10_logit_mu=[1, 0, -1]),
        changed(scores=None), changed(segment=None), changed(detector=None), changed(top10_desc=None),
        changed(relabelled={"from_dataset": "A", "from_vocab_hash": None, "score": "cos", "n": [1, 2.5]}),
        changed(relabelled=[1, 2]), changed(relabelled=None), changed(relabelled={"big": 2**70}),
        {**base, "relabelled": {"a": 1}, "other_extra": 2},
        changed(track_bbox=[[*b[:2], -1.0, b[3]] for b in box]),
        changed(track_bbox=box[:-1]), changed(track_bbox=[b[:3] for b in box]), changed(track_bbox=[1.0] * len(box)),
        changed(scores=[0.5] * (len(ts) + 1)), changed(segment=[2.0, 1.0]), changed(segment=[0.0, 9.0]),
        changed(detector=7), changed(tid=""), changed(tid=5), changed(fn="/abs.mp4"), changed(fn="a/../b.mp4"),
        changed(fn="x.avi"), changed(yid=yid_of(98)), changed(yid=yid + "\n"), changed(extra_key={"a": [1, 2]}),
        changed(top10_cls=[[1.0], [0.5]]),
        {k: v for k, v in base.items() if k != "tid"}, {k: v for k, v in base.items() if k != "fn"},
        {k: v for k, v in base.items() if k != "track_bbox"},
        {**{k: v for k, v in base.items() if k != "track_ts"}, "frame_ts": ts},
        {**{k: v for k, v in base.items() if k != "fn"}, "track_mp4_filename": base["fn"]},
        {**base, "track_ts": None},
        [1, 2], "text", 5,
    ]
    lines = [json.dumps(v, separators=(",", ":")).encode() for v in variants]
    canonical = lines[0]
    lines += [
        json.dumps(base, indent=1).replace("\n", " ").encode(),  # valid, not compact
        canonical[:-1] + b',"scores":[0.5]}',  # a duplicate key: the last one counts
        canonical.replace(b'"track_ts":[', b'"track_ts":[12345678901234567890123,', 1),  # huge integer
        canonical.replace(b'"top10_logit_std":[0.1', b'"top10_logit_std":[NaN', 1),  # json.loads reads NaN
        canonical.replace(b'"track_ts":[', b'"track_ts":[1e999,', 1),
        b'{"yid": "\\ud800"}', "\ufeff".encode() + canonical, b"{not json", b"   ", b"",
        canonical.replace(b'"test"', '"t\u00e9st \u2603"'.encode()),
        canonical.replace(b'"test"', b'"t\\u00e9st"'),  # an escape: same value, other text
        canonical, b"\t" + canonical + b"  ",
        canonical[:-1] + b',"relabelled":{"score":NaN}}', canonical[:-1] + b',"relabelled":{"s":"\\q"}}',
    ]
    return [line + b"\n" for line in lines] + [canonical[:40]]  # a torn last line


def test_index_fast_path_decides_every_line_as_the_full_way(tmp_path):
    """Every line (canonical records, records the fast path leaves to TrackRecord, bad lines,
    a torn last line) gives the same member, companion row, counts and messages as reading the
    file line by line through json.loads and TrackRecord, as the index did before."""
    from utils.curate import index as index_module

    yid = yid_of(5)
    path = write_meta(tmp_path, yid, [], raw_lines=_line_variants(yid))
    task = (str(path), path.name)
    fast = index_module.index_meta_file(task)
    full = index_module._index_meta_file_streaming(str(path), path.name, yid)
    assert fast.members == full.members
    assert repr(fast.rows) == repr(full.rows)
    for name in ("lines", "bytes_in", "bytes_raw", "invalid", "problems", "damaged"):
        assert getattr(fast, name) == getattr(full, name), name
    assert fast.invalid > 20 and len(fast.members) > 10  # both kinds were there


def test_index_fast_path_agrees_with_the_full_way_on_mutated_lines(tmp_path):
    """Random small edits of canonical records (a character replaced, dropped or doubled, a
    sign, a null, an exponent, a large integer): whatever each edit makes of the line, the fast
    path and the full way keep the same lines with the same companion rows, and reject the same
    ones with the same messages."""
    import random

    from utils.curate import index as index_module

    rng = random.Random(15)
    yid = yid_of(7)
    lines = [make_record(yid, k % 3, 0.25 * k, k, t0=1.5 * k, n=8).to_json().encode() for k in range(6)]
    lines.append(dataclasses.replace(make_record(yid, 1, 0.5, 9), extra={"relabelled": {"score": "cos"}})
                 .to_json().encode())
    inserts = [b"-", b"null", b"e5", b"0", b"9007199254740993", b'"', b",", b"[", b"]", b"1.5", b" ", b"true"]
    mutated = []
    for _ in range(400):
        line = bytearray(rng.choice(lines))
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(len(line))
            kind = rng.randrange(3)
            if kind == 0:
                line[at:at + 1] = b""
            elif kind == 1:
                line[at:at] = rng.choice(inserts)
            else:
                line[at:at + 1] = bytes([rng.choice(b'0123456789-.e,:[]{}\\"')])
        mutated.append(bytes(line) + b"\n")
    path = write_meta(tmp_path, yid, [], raw_lines=mutated)
    fast = index_module.index_meta_file((str(path), path.name))
    full = index_module._index_meta_file_streaming(str(path), path.name, yid)
    assert fast.members == full.members
    assert repr(fast.rows) == repr(full.rows)
    for name in ("lines", "invalid", "problems", "damaged"):
        assert getattr(fast, name) == getattr(full, name), name
    assert 40 < len(fast.members) < 360 and fast.invalid > 40  # both outcomes were exercised


def test_index_fast_path_takes_what_our_stages_write():
    """parse_tracks' records and relabel_tracks' (an extra ``relabelled`` object) are read by the
    fast path, whatever the whitespace or key order; spellings it does not know are not."""
    from utils.curate.index import _record_scalars
    from utils.curate.index_lines import canonical_line_scalars

    yid = yid_of(5)
    rec = make_record(yid, 1, 0.5, 3)
    relabelled = dataclasses.replace(rec, extra={"relabelled": {"from_dataset": "A", "score": "cosine"}})
    for line in (rec.to_json(), relabelled.to_json(), json.dumps(dict(reversed(rec.to_dict().items())), indent=1)):
        assert canonical_line_scalars(line.encode(), yid) == _record_scalars(rec)
    spelled = {**{k: v for k, v in rec.to_dict().items() if k != "fn"}, "track_mp4_filename": rec.fn}
    assert canonical_line_scalars(json.dumps(spelled).encode(), yid) is None
    assert canonical_line_scalars(rec.to_json().encode(), yid_of(6)) is None  # another video's record


def test_index_of_a_damaged_file_keeps_the_lines_a_stream_keeps(tmp_path):
    """A file cut or corrupted inside its gzip stream is read again line by line: the lines
    before the damage are kept exactly as before, and the file is named."""
    yid = yid_of(6)
    records = [make_record(yid, k % 3, 0.1 * k, k, t0=2.0 * k, n=200) for k in range(40)]
    path = write_meta(tmp_path, yid, records)
    data = path.read_bytes()
    from utils.curate import index as index_module

    for cut in (len(data) // 3, len(data) - 5):
        path.write_bytes(data[:cut])
        fast = index_module.index_meta_file((str(path), path.name))
        full = index_module._index_meta_file_streaming(str(path), path.name, yid)
        assert fast.damaged and fast.damaged == full.damaged
        assert fast.members == full.members and repr(fast.rows) == repr(full.rows)
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    fast = index_module.index_meta_file((str(path), path.name))
    full = index_module._index_meta_file_streaming(str(path), path.name, yid)
    assert fast.damaged == full.damaged and fast.members == full.members
    # not one intact member: two members, zero padding, trailing garbage (the stdlib decides)
    for variant in (data + data, data + bytes(16), data + b"garbage"):
        path.write_bytes(variant)
        fast = index_module.index_meta_file((str(path), path.name))
        full = index_module._index_meta_file_streaming(str(path), path.name, yid)
        assert (fast.damaged is None) == (full.damaged is None) and fast.members == full.members
    assert full.damaged and len(full.members) == 40  # garbage after the data: named, every line kept


def test_index_output_does_not_depend_on_the_pool_window(tmp_path):
    """Many files over a pool with few chunks in flight: same index and companion as one process."""
    build_db(tmp_path, videos=70, per_video=2, seed=9)
    target = DatasetLayout(tmp_path).relative(INDEX)
    assert index(tmp_path) == 0
    one = (target.read_bytes(), pq.read_table(companion_path(target)))
    assert index(tmp_path, "--num_workers", "3") == 0
    three = (target.read_bytes(), pq.read_table(companion_path(target)))
    assert one[0] == three[0] and one[1].equals(three[1])
