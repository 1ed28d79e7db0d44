"""status.py: counts, failures by reason, ETA and silent ranks from per-rank journals."""

from __future__ import annotations

import json

from tests.helpers import run_cli
from utils.runner.journal import Journal, read_journals
from utils.runner.status import dataset_status, render

NOW = 1_800_000_000.0


def write(path, *records):
    with Journal(path) as j:
        for event, item, fields in records:
            j.write(event, item, **fields)


def make_logs(base, listed: bool = True):
    """Journals as runs write them: each start lists the rank's items, items found done are
    journaled in "skipped" lines. ``listed=False``: journals of an older version (neither)."""
    logs = base / "logs" / "download_videos"
    t0 = NOW - 600

    def start(when, items):
        return ("start", None, {"time": when, "items": len(items), **({"shard_items": items} if listed else {})})

    def skipped(when, items):
        return [("skipped", None, {"time": when, "items": items})] if listed else []

    write(logs / "rank-00000-of-00003.jsonl",
          start(t0, ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc", "sssssssss00"]),
          ("done", "aaaaaaaaaaa", {"time": t0 + 10, "stats": {"video_s": 100}}),
          ("done", "bbbbbbbbbbb", {"time": t0 + 20, "stats": {"video_s": 50}}),
          ("failed", "ccccccccccc", {"time": t0 + 30, "reason": "Private video", "category": "private"}),
          *skipped(t0 + 31, ["sssssssss00"]),
          ("summary", None, {"time": t0 + 31, "done": 2, "skipped": 1, "failed": 1, "previously_failed": 0}))
    write(logs / "rank-00001-of-00003.jsonl",
          start(t0, ["hhhhhhhhhhh", "sssssssss01", "ddddddddddd", "eeeeeeeeeee"]),
          ("done", "hhhhhhhhhhh", {"time": t0 + 50}),
          *skipped(t0 + 60, ["sssssssss01"]),
          ("progress", None, {"time": t0 + 60, "done": 1, "skipped": 1, "failed": 0, "previously_failed": 0}),
          ("done", "ddddddddddd", {"time": NOW - 60, "stats": {"video_s": 30}}),
          ("failed", "eeeeeeeeeee", {"time": NOW - 30, "reason": "HTTP 429", "category": "rate_limited",
                                     "transient": True}))
    write(logs / "rank-00002-of-00003.jsonl",
          start(NOW - 7200, ["fffffffffff", "iiiiiiiii01", "iiiiiiiii02"]),
          ("done", "fffffffffff", {"time": NOW - 7000}))
    # an older sharding and list: its failure is not one of the latest list's
    write(logs / "rank-00000-of-00001.jsonl",
          start(NOW - 90000, ["ggggggggggg"]),
          ("failed", "ggggggggggg", {"time": NOW - 89000, "reason": "Video unavailable", "category": "private"}))
    stopped = base / "logs" / "parse_tracks-TrackVerseLVIS"
    write(stopped / "rank-00000-of-00001.jsonl",
          start(t0, [f"ppppppppp0{i}" for i in range(5)]),
          ("summary", None, {"time": t0 + 5, "done": 0, "skipped": 0, "failed": 0, "previously_failed": 0,
                             "systemic_error": "model google/owlv2 not found offline"}))


def test_counts_reasons_and_ranks(tmp_path):
    make_logs(tmp_path)
    stages = {s.stage: s for s in dataset_status(tmp_path, now=NOW, stale_s=1800)}
    dl = stages["download_videos"]
    assert dl.world_size == 3
    assert (dl.total, dl.done, dl.failed, dl.pending) == (11, 3 + 3 + 1, 1 + 1, 11 - 7 - 2)
    assert dl.unrecorded == 2  # rank 2's items not reached yet
    # the failures are the counted ones, split by reason; the older list's apart
    assert dl.failures_by_category == {"private": 1, "rate_limited": 1}
    assert (dl.earlier_done, dl.earlier_failed, dl.earlier_failures_by_category) == (0, 1, {"private": 1})
    assert dl.ranks_running == [1] and dl.ranks_stale == [2] and dl.ranks_stopped == []
    assert dl.ranks_from_summaries == []
    assert dl.items_per_hour > 0 and dl.eta_hours is not None
    assert dl.stats_per_s["video_s"] > 0
    parse = stages["parse_tracks-TrackVerseLVIS"]
    assert parse.ranks_stopped == [0] and parse.pending == 5
    text = render(list(stages.values()), now=NOW)
    assert "failed [private]: 1" in text and "ranks silent for long" in text and "STOPPED" in text
    assert "pending 2 (2 not reached yet)" in text
    assert "not in the latest run's list, journaled by earlier runs: 0 done, 1 failed [private: 1]" in text
    only_other = dataset_status(tmp_path, "OtherDataset", now=NOW)
    assert [s.stage for s in only_other] == ["download_videos"]


def test_journals_of_an_older_version_are_counted_from_summaries(tmp_path):
    make_logs(tmp_path, listed=False)
    dl = {s.stage: s for s in dataset_status(tmp_path, now=NOW, stale_s=1800)}["download_videos"]
    assert (dl.total, dl.done, dl.failed, dl.pending) == (11, 7, 2, 2)
    assert sum(dl.failures_by_category.values()) == dl.failed
    assert dl.ranks_from_summaries == [0, 1, 2]
    assert "journals of an older version" in render([dl], now=NOW)


def test_failures_are_counted_as_the_reasons_list_them(tmp_path):
    """Bad ids fail, the user drops them from the list and re-runs: the stage has no failed
    item left, and no reason line says otherwise (it said "failed 0" beside "failed
    [invalid_id]: 4"); the earlier failures are shown apart."""
    good = ["a1", "b2"]
    (tmp_path / "all.txt").write_text("\n".join(good + ["Bad Name", "Bad/Two", "Bad Three", "Bad.4"]) + "\n")
    (tmp_path / "good.txt").write_text("\n".join(good) + "\n")
    db = tmp_path / "db"
    run_cli("-m", "tests.toy_stage", "--base_dir", db, "--item_list", tmp_path / "all.txt")
    run_cli("-m", "tests.toy_stage", "--base_dir", db, "--item_list", tmp_path / "good.txt", check=True)
    (stage,) = dataset_status(db)
    assert (stage.total, stage.done, stage.failed, stage.pending) == (2, 2, 0, 0)
    assert stage.failures_by_category == {}
    assert (stage.earlier_failed, stage.earlier_failures_by_category) == (4, {"invalid_id": 4})
    text = render([stage])
    assert "failed [invalid_id]" not in text
    assert "journaled by earlier runs: 0 done, 4 failed [invalid_id: 4]" in text

    # and with the bad ids still listed, "failed" and the reasons agree
    run_cli("-m", "tests.toy_stage", "--base_dir", db, "--item_list", tmp_path / "all.txt")
    (stage,) = dataset_status(db)
    assert stage.failed == 4 and stage.failures_by_category == {"invalid_id": 4} and stage.earlier_failed == 0
    assert "failed 4," in render([stage]) and "failed [invalid_id]: 4" in render([stage])


def test_items_done_by_earlier_runs_count_as_done(tmp_path):
    """Every output exists; a re-run with a shorter list stopped before its first item (the
    model could not load). The status said "done 0 (0.0%)"; each item's latest journal record
    says done."""
    (tmp_path / "all.txt").write_text("a1\nb2\nc3\nd4\n")
    (tmp_path / "some.txt").write_text("b2\nc3\n")
    db = tmp_path / "db"
    run_cli("-m", "tests.toy_stage", "--base_dir", db, "--item_list", tmp_path / "all.txt", check=True)
    stopped = run_cli("-m", "tests.toy_stage", "--base_dir", db, "--item_list", tmp_path / "some.txt",
                      "--setup_fails")
    assert stopped.returncode == 3
    (stage,) = dataset_status(db)
    assert (stage.total, stage.done, stage.failed, stage.pending) == (2, 2, 0, 0)
    assert stage.ranks_stopped == [0] and stage.earlier_done == 2
    assert "items 2: done 2 (100.0%), failed 0, pending 0" in render([stage])

    # a re-run under another sharding, killed before its summary: items are still done
    logs = db / "logs" / "toy"
    write(logs / "rank-00001-of-00002.jsonl",
          ("start", None, {"time": NOW, "items": 2, "shard_items": ["b2", "d4"]}))
    (stage,) = dataset_status(db, now=NOW + 10)
    assert (stage.world_size, stage.total, stage.done, stage.pending) == (2, 2, 2, 0)
    assert stage.ranks_missing == [0]
    assert "ranks never started: 0 (their items are not counted above)" in render([stage], now=NOW + 10)


def test_a_run_that_lists_no_items_is_not_shown_as_zero_percent(tmp_path):
    write(tmp_path / "logs" / "toy" / "rank-00000-of-00001.jsonl",
          ("start", None, {"time": NOW - 5, "items": 0, "shard_items": []}),
          ("summary", None, {"time": NOW - 4, "done": 0, "skipped": 0, "failed": 0}))
    text = render(dataset_status(tmp_path, now=NOW), now=NOW)
    assert "0.0%" not in text and "items: none known" in text


def run_of(path, begin, n, item_seconds=1.0, prefix="x"):
    """A finished run of ``n`` items of ``item_seconds`` each, from ``begin``."""
    items = [f"{prefix}{k:03d}" for k in range(n)]
    write(path, ("start", None, {"time": begin, "items": n, "shard_items": items}),
          *[("done", item, {"time": begin + (k + 1) * item_seconds, "seconds": item_seconds,
                            "stats": {"video_s": 10.0}}) for k, item in enumerate(items)],
          ("summary", None, {"time": begin + n * item_seconds, "done": n, "skipped": 0, "failed": 0}))


def test_throughput_is_over_the_time_ranks_worked_not_the_idle_gaps(tmp_path):
    """Two runs of 10 items, 1 s each, 10 minutes apart: 3600 items/h, not 20 items over the
    whole span (about 115/h)."""
    path = tmp_path / "logs" / "toy" / "rank-00000-of-00001.jsonl"
    run_of(path, NOW - 630, 10, prefix="a")
    run_of(path, NOW - 20, 10, prefix="b")
    (stage,) = dataset_status(tmp_path, now=NOW + 5)
    assert abs(stage.items_per_hour - 3600) < 1
    assert stage.busy_s == 20.0
    assert abs(stage.stats_per_s["video_s"] - 10.0) < 0.01
    assert "throughput 3600 items/h (10.00 video_s/s) over 20.0 s of work" in render([stage], now=NOW + 5)

    # two ranks working side by side: their throughputs add up
    path1 = tmp_path / "logs" / "toy2" / "rank-00001-of-00002.jsonl"
    run_of(tmp_path / "logs" / "toy2" / "rank-00000-of-00002.jsonl", NOW - 20, 10, 2.0, prefix="c")
    run_of(path1, NOW - 20, 10, 2.0, prefix="d")
    stage2 = {s.stage: s for s in dataset_status(tmp_path, now=NOW + 5)}["toy2"]
    assert abs(stage2.items_per_hour - 3600) < 1


def test_throughput_and_eta_of_running_ranks_use_the_recent_work(tmp_path):
    path = tmp_path / "logs" / "toy" / "rank-00000-of-00001.jsonl"
    items = [f"x{k:03d}" for k in range(40)]
    run_of(path, NOW - 5000, 10, prefix="old")  # long ago: outside the window
    write(path, ("start", None, {"time": NOW - 100, "items": 40, "shard_items": items}),
          *[("done", item, {"time": NOW - 100 + 10 * (k + 1)}) for k, item in enumerate(items[:10])])
    (stage,) = dataset_status(tmp_path, now=NOW)
    assert stage.ranks_running == [0] and stage.pending == 30
    assert abs(stage.items_per_hour - 360) < 1  # 10 items in the 100 s it has been running
    assert abs(stage.eta_hours - 30 / 360) < 1e-6
    assert stage.unrecorded == 30


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


def test_items_found_done_are_journaled_once(tmp_path):
    """Outputs made before the journals (the logs folder deleted, a copied dataset) are counted
    once a run finds them done: a "skipped" line lists them; a further re-run adds none."""
    import shutil

    (tmp_path / "items.txt").write_text("a1\nb2\nc3\n")
    db = tmp_path / "db"
    for _ in range(2):
        run_cli("-m", "tests.toy_stage", "--base_dir", db, "--item_list", tmp_path / "items.txt", check=True)
    shutil.rmtree(db / "logs")
    for _ in range(2):
        run_cli("-m", "tests.toy_stage", "--base_dir", db, "--item_list", tmp_path / "items.txt", check=True)
    records = list(read_journals(db / "logs" / "toy"))
    assert [r["items"] for r in records if r["event"] == "skipped"] == [["a1", "b2", "c3"]]
    (stage,) = dataset_status(db)
    assert (stage.total, stage.done, stage.unrecorded) == (3, 3, 0)
