"""Crash-safe writes, journals and the dataset layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.core.io import atomic_path, atomic_write_json, atomic_write_text, remove_stale_temps
from utils.core.layout import DatasetLayout, InvalidItemError, default_base_dir, inside, validate_yid
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
    assert remove_stale_temps(tmp_path, older_than_s=-1) == 1 and not unrelated.exists()


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
