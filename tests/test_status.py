"""status.py: counts, failures by reason, ETA and silent ranks from per-rank journals."""

from __future__ import annotations

import json

from tests.conftest import run_cli
from utils.runner.journal import Journal
from utils.runner.status import dataset_status, render

NOW = 1_800_000_000.0


def write(path, *records):
    with Journal(path) as j:
        for event, item, fields in records:
            j.write(event, item, **fields)


def make_logs(base):
    logs = base / "logs" / "download_videos"
    t0 = NOW - 600
    write(logs / "rank-00000-of-00003.jsonl",
          ("start", None, {"time": t0, "items": 4}),
          ("done", "aaaaaaaaaaa", {"time": t0 + 10, "stats": {"video_s": 100}}),
          ("done", "bbbbbbbbbbb", {"time": t0 + 20, "stats": {"video_s": 50}}),
          ("failed", "ccccccccccc", {"time": t0 + 30, "reason": "Private video", "category": "private"}),
          ("summary", None, {"time": t0 + 31, "done": 2, "skipped": 1, "failed": 1, "previously_failed": 0}))
    write(logs / "rank-00001-of-00003.jsonl",
          ("start", None, {"time": t0, "items": 4}),
          ("progress", None, {"time": t0 + 60, "done": 1, "skipped": 1, "failed": 0, "previously_failed": 0}),
          ("done", "ddddddddddd", {"time": NOW - 60, "stats": {"video_s": 30}}),
          ("failed", "eeeeeeeeeee", {"time": NOW - 30, "reason": "HTTP 429", "category": "rate_limited",
                                     "transient": True}))
    write(logs / "rank-00002-of-00003.jsonl",
          ("start", None, {"time": NOW - 7200, "items": 3}),
          ("done", "fffffffffff", {"time": NOW - 7000}))
    # an older sharding: its failure still counts in the reasons
    write(logs / "rank-00000-of-00001.jsonl",
          ("start", None, {"time": NOW - 90000, "items": 11}),
          ("failed", "ggggggggggg", {"time": NOW - 89000, "reason": "Video unavailable", "category": "private"}))
    stopped = base / "logs" / "parse_tracks-TrackVerseLVIS"
    write(stopped / "rank-00000-of-00001.jsonl",
          ("start", None, {"time": t0, "items": 5}),
          ("summary", None, {"time": t0 + 5, "done": 0, "skipped": 0, "failed": 0, "previously_failed": 0,
                             "systemic_error": "model google/owlv2 not found offline"}))


def test_counts_reasons_and_ranks(tmp_path):
    make_logs(tmp_path)
    stages = {s.stage: s for s in dataset_status(tmp_path, now=NOW, stale_s=1800)}
    dl = stages["download_videos"]
    assert dl.world_size == 3
    assert (dl.total, dl.done, dl.failed, dl.pending) == (11, 3 + 3 + 1, 1 + 1, 11 - 7 - 2)
    assert dl.failures_by_category == {"private": 2, "rate_limited": 1}
    assert dl.ranks_running == [1] and dl.ranks_stale == [2] and dl.ranks_stopped == []
    assert dl.items_per_hour > 0 and dl.eta_hours is not None
    assert dl.stats_per_s["video_s"] > 0
    parse = stages["parse_tracks-TrackVerseLVIS"]
    assert parse.ranks_stopped == [0] and parse.pending == 5
    text = render(list(stages.values()), now=NOW)
    assert "failed [private]: 2" in text and "ranks silent for long" in text and "STOPPED" in text
    only_other = dataset_status(tmp_path, "OtherDataset", now=NOW)
    assert [s.stage for s in only_other] == ["download_videos"]


def test_cli_json_and_read_only(tmp_path):
    make_logs(tmp_path)
    before = sorted((p, p.stat().st_mtime) for p in tmp_path.rglob("*"))
    proc = run_cli("status.py", "--base_dir", tmp_path, "--json", check=True)
    data = json.loads(proc.stdout)
    assert {s["stage"] for s in data["stages"]} == {"download_videos", "parse_tracks-TrackVerseLVIS"}
    text = run_cli("status.py", "--base_dir", tmp_path, check=True).stdout
    assert "== download_videos" in text
    assert sorted((p, p.stat().st_mtime) for p in tmp_path.rglob("*")) == before  # nothing written


def test_status_of_a_real_toy_run(tmp_path):
    (tmp_path / "items.txt").write_text("a1\nfail-x\nb2\n")
    run_cli("-m", "tests.toy_stage", "--base_dir", tmp_path / "db", "--item_list", tmp_path / "items.txt")
    (stage,) = dataset_status(tmp_path / "db")
    assert (stage.total, stage.done, stage.failed, stage.pending) == (3, 2, 1, 0)
    assert stage.failures_by_category == {"private": 1}
