"""Crash-safe writes, what a killed writer leaves (torn lines, gzip or not), journals and the
dataset layout."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from utils.core.errors import InvalidItemError
from utils.core.io import (
    GZIP_STREAM_ERRORS,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    cached_rows,
    is_gzip,
    iter_json_lines,
    open_maybe_gzip,
)
from utils.core.layout import DatasetLayout, default_base_dir, inside, validate_yid
from utils.runner.journal import Journal, latest_item_events, read_journal


def test_atomic_write_replaces_whole_and_cleans_on_error(tmp_path):
    target = tmp_path / "a" / "out.txt"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
    atomic_write_json(target, {"b": 1})
    assert json.loads(target.read_text()) == {"b": 1}


def test_leftover_temporaries_are_removed_before_the_next_write(tmp_path):
    target = tmp_path / "out.mp4"
    stale = tmp_path / ".out.mp4.tmp-otherhost-123-abcd.mp4"
    stale.write_text("torn")
    unrelated = tmp_path / ".other.mp4.tmp-otherhost-1-ab.mp4"
    unrelated.write_text("another item's, being written")
    atomic_write_text(target, "whole")
    assert not stale.exists() and unrelated.exists()


def test_journal_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "rank.jsonl"
    with Journal(path) as j:
        j.write("failed", "abc", reason="x", transient=False)
    with open(path, "a") as f:
        f.write('{"event": "done", "item": "ab')  # killed mid-line
    with Journal(path) as j:
        j.write("done", "abc")
    records = list(read_journal(path))
    assert [r["event"] for r in records] == ["failed", "done"]
    assert latest_item_events(records)["abc"]["event"] == "done"


def test_gzip_is_told_by_its_magic_bytes_not_its_name(tmp_path):
    packed, plain, empty = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gzip", tmp_path / "c.gz"
    packed.write_bytes(gzip.compress(b'{"a": 1}\n'))
    plain.write_bytes(b'{"b": 2}\n')
    empty.write_bytes(b"")
    assert is_gzip(packed) and not is_gzip(plain) and not is_gzip(empty)
    for path, text in ((packed, b'{"a": 1}\n'), (plain, b'{"b": 2}\n'), (empty, b"")):
        with open_maybe_gzip(path) as f:
            assert f.read() == text
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(b"x" * 1000)[:20])
    with pytest.raises(GZIP_STREAM_ERRORS), open_maybe_gzip(cut) as f:
        f.read()


def test_gzip_is_sniffed_in_one_place():
    root = Path(__file__).resolve().parents[1]
    sniffers = sorted(
        str(path.relative_to(root))
        for path in (root / "utils").rglob("*.py")
        if "\\x1f\\x8b" in path.read_text(encoding="utf-8")
    )
    assert sniffers == ["utils/core/io.py"]


@pytest.mark.parametrize("binary", [True, False])
def test_json_lines_tell_a_torn_last_line_from_a_bad_line(tmp_path, binary):
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \nnot json\n[2, 3]\n{"b": "\xc3\xa8"}\n{"c": "\xc3')
    with open(path, "rb") if binary else open(path, encoding="utf-8", errors="replace") as f:
        lines = list(iter_json_lines(f))
    assert [line.lineno for line in lines] == [1, 4, 5, 6, 7]  # blank lines skipped, still counted
    assert [line.value for line in lines[:1] + lines[2:4]] == [{"a": 1}, [2, 3], {"b": "\u00e8"}]
    bad, torn = lines[1], lines[4]
    assert isinstance(bad.error, ValueError) and not bad.torn and bad.text == (b"not json" if binary else "not json")
    assert isinstance(torn.error, ValueError) and torn.torn and torn.value is None  # cut inside a character
    assert all(line.error is None and not line.torn for line in lines[:1] + lines[2:4])
    # a complete last line without its newline is a line, not a torn one
    whole = list(iter_json_lines([b'{"a": 1}\n', b'{"b": 2}']))
    assert [(line.value, line.torn) for line in whole] == [({"a": 1}, False), ({"b": 2}, False)]


def test_yid_validation():
    assert validate_yid("dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert validate_yid("-_aZ09-_aZ0")
    for bad in ["dQw4w9WgXc", "dQw4w9WgXcQQ", "../../etc/p", "dQw4w9WgXc/", "dQw4w9 gXcQ", "", None]:
        with pytest.raises(InvalidItemError):
            validate_yid(bad)


def test_layout_paths(tmp_path):
    layout = DatasetLayout(tmp_path)
    yid = "dQw4w9WgXcQ"
    assert layout.video_mp4(yid) == tmp_path / "videos_mp4" / "dQ" / f"{yid}.mp4"
    assert layout.video_segments(yid) == tmp_path / "videos_segm" / "dQ" / f"{yid}.txt"
    assert layout.tracks_meta("TrackVerseLVIS", yid) == (
        tmp_path / "tracks_meta" / "TrackVerseLVIS" / "dQ" / f"{yid}-meta.jsonl.gzip")
    fn = f"dQ/{yid}-cat-0123abcd.mp4"
    assert layout.track_mp4("TrackVerseLVIS", fn) == tmp_path / "tracks_mp4" / "TrackVerseLVIS" / fn
    assert layout.track_mp4(None, fn) == tmp_path / "tracks_mp4" / fn
    assert layout.logs_dir("download_videos") == tmp_path / "logs" / "download_videos"


@pytest.mark.parametrize("fn", ["../../../etc/cron.d/x.mp4", "/etc/x.mp4", "a/../../x.mp4", "x.txt", ""])
def test_track_names_cannot_escape_the_root(tmp_path, fn):
    with pytest.raises(InvalidItemError):
        DatasetLayout(tmp_path).track_mp4("D", fn)


def test_symlink_escape_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidItemError, match="resolves outside"):
        inside(root, "link/x.mp4")


def test_dataset_names_are_validated(tmp_path):
    with pytest.raises(InvalidItemError):
        DatasetLayout(tmp_path).tracks_meta("../x", "dQw4w9WgXcQ")


def test_default_base_dir(monkeypatch):
    monkeypatch.setenv("TRACKVERSE_DB", "/data/tv")
    assert default_base_dir() == Path("/data/tv")
    monkeypatch.delenv("TRACKVERSE_DB")
    assert default_base_dir() == Path("TrackVerseDB")


def test_cached_rows_computes_once_and_recovers_from_a_bad_cache(tmp_path, caplog):
    """The text-embedding caches (OWLv2's prompts, relabel's vocabularies) share this: a sound
    cache is used without computing; a damaged or wrong-sized one is computed again and
    replaced; an unwritable cache folder costs a warning, never the result."""
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    path = tmp_path / "cache" / "x.npy"
    arr, hit = cached_rows(path, 3, compute)
    assert not hit and len(calls) == 1 and path.is_file()
    arr2, hit = cached_rows(path, 3, compute)
    assert hit and len(calls) == 1 and np.array_equal(arr, arr2)
    _, hit = cached_rows(path, 4, compute)  # another row count: not this cache's
    assert not hit and len(calls) == 2
    path.write_bytes(b"not numpy")
    arr3, hit = cached_rows(path, 3, compute)
    assert not hit and np.array_equal(arr3, arr) and np.array_equal(np.load(path), arr)
    assert "ignoring unreadable cache" in caplog.text
    blocked = tmp_path / "file"
    blocked.write_text("")
    arr4, hit = cached_rows(blocked / "x.npy", 3, compute)  # its folder is a file
    assert not hit and np.array_equal(arr4, arr) and "could not write cache" in caplog.text
