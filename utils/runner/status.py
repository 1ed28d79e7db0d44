"""Where every stage stands, read from the journals only (status.py): never writes, works
while jobs run.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from utils.core.errors import UsageError
from utils.core.layout import DatasetLayout, datasets_in, require_dataset_root, validate_name
from utils.runner.journal import latest_item_events, read_journal

log = logging.getLogger("trackverse")


RANK_FILE = re.compile(r"^rank-(\d+)-of-(\d+)\.jsonl$")
RATE_WINDOW_S = 15 * 60


@dataclass
class RankStatus:
    rank: int
    world_size: int
    state: str  # finished | stopped | running | stale
    total: int = 0  # items of its latest run
    done: int = 0  # of those, latest journal record: done (processed, or found done)
    failed: int = 0  # latest journal record: failed
    pending: int = 0  # the rest: not ready, not reached yet
    not_ready: int = 0  # latest journal record: inputs missing
    unrecorded: int = 0  # no journal record at all (not reached yet)
    by_item: bool = True  # counted item by item; False: a journal of an older version, counted from summaries
    last_seen: float = 0.0
    host: str | None = None
    systemic_error: str | None = None


@dataclass
class StageStatus:
    """Counts are of the items of each rank's latest run (the latest list), each item counted
    by its latest journal record in any journal of the stage, whichever run or sharding wrote
    it; ``failures_by_category`` splits exactly the ``failed`` ones. Items that only earlier
    runs journaled (a longer list, another list) are counted apart, in ``earlier_*``."""

    stage: str
    world_size: int
    ranks_reported: int
    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    not_ready: int = 0
    unrecorded: int = 0
    failures_by_category: dict[str, int] = field(default_factory=dict)
    failure_examples: dict[str, str] = field(default_factory=dict)
    earlier_done: int = 0
    earlier_failed: int = 0
    earlier_failures_by_category: dict[str, int] = field(default_factory=dict)
    items_per_hour: float = 0.0
    stats_per_s: dict[str, float] = field(default_factory=dict)
    busy_s: float = 0.0  # the time ranks were working that the throughput is measured over
    eta_hours: float | None = None
    ranks_missing: list[int] = field(default_factory=list)
    ranks_stale: list[int] = field(default_factory=list)
    ranks_stopped: list[int] = field(default_factory=list)
    ranks_running: list[int] = field(default_factory=list)
    ranks_from_summaries: list[int] = field(default_factory=list)
    ranks: list[RankStatus] = field(default_factory=list)


@dataclass
class _ItemState:
    state: str  # done | failed | not_ready
    time: float
    record: dict


def item_states(records: Iterable[dict]) -> dict[str, _ItemState]:
    """The latest state of every item any of ``records`` names: ``done`` (processed, or found
    done: a "skipped" line), ``failed`` or ``not_ready``."""
    return {item: _ItemState("done" if rec["event"] == "skipped" else rec["event"], _time(rec), rec)
            for item, rec in latest_item_events(records).items()}


def _time(record: dict) -> float:
    try:
        return float(record.get("time", 0))
    except (TypeError, ValueError):
        return 0.0


def _runs(records: list[dict]) -> list[list[dict]]:
    """The file's records split at each "start" (records before the first start: one run)."""
    runs: list[list[dict]] = []
    for record in records:
        if record.get("event") == "start" or not runs:
            runs.append([])
        runs[-1].append(record)
    return runs


def _rank_status(records: list[dict], rank: int, world_size: int, states: dict[str, _ItemState],
                 now: float, stale_s: float) -> tuple[RankStatus, set[str]]:
    """The rank's latest run, and the items it counted."""
    status = RankStatus(rank, world_size, "running")
    runs = _runs(records)
    run = runs[-1] if runs else []
    start = run[0] if run and run[0].get("event") == "start" else {}
    if run:
        status.last_seen = max(_time(r) for r in run)
        status.host = run[0].get("host")
    summary = next((r for r in reversed(run) if r.get("event") == "summary"), None)
    if summary is not None:
        status.systemic_error = summary.get("systemic_error")
        status.state = "stopped" if status.systemic_error else "finished"
    elif now - status.last_seen > stale_s:
        status.state = "stale"
    listed = start.get("shard_items")
    if isinstance(listed, list):
        items = list(dict.fromkeys(str(i) for i in listed))
        status.total = len(items)
        for item in items:
            known = states.get(item)
            if known is None:
                status.unrecorded += 1
            elif known.state == "done":
                status.done += 1
            elif known.state == "failed":
                status.failed += 1
            else:
                status.not_ready += 1
        status.pending = status.total - status.done - status.failed
        return status, set(items)
    # A journal of an older version: its start line does not list the items. Done counts come
    # from the latest summary (or progress line), failures from the items this file journaled.
    status.by_item = False
    status.total = int(start.get("items", 0) or 0)
    seen = {r["item"] for r in records if isinstance(r.get("item"), str)}
    failed = {i for i in seen if (known := states.get(i)) is not None and known.state == "failed"}
    if summary is not None:
        status.done = int(summary.get("done", 0)) + int(summary.get("skipped", 0))
        status.not_ready = int(summary.get("not_ready", 0))
    else:
        progress_at = max((i for i, r in enumerate(run) if r.get("event") == "progress"), default=None)
        base = run[progress_at] if progress_at is not None else {}
        after = run[progress_at + 1:] if progress_at is not None else run
        status.done = int(base.get("done", 0)) + int(base.get("skipped", 0)) + sum(r.get("event") == "done"
                                                                                   for r in after)
    status.failed = len(failed)
    status.pending = max(0, status.total - status.done - status.failed)
    return status, seen


def _busy_intervals(records: list[dict], rank_running: bool, now: float) -> list[tuple[float, float]]:
    """(begin, end) of each run of a rank file: its start to its summary; a run without one
    ends at its last record, or now for the running latest run."""
    out = []
    runs = _runs(records)
    for k, run in enumerate(runs):
        times = [_time(r) for r in run if _time(r) > 0]
        if not times:
            continue
        begin = _time(run[0]) if run[0].get("event") == "start" else min(times)
        summary = next((r for r in run if r.get("event") == "summary"), None)
        if summary is not None:
            end = _time(summary)
        elif rank_running and k == len(runs) - 1:
            end = now
        else:
            end = max(times)
        out.append((begin, max(begin, end)))
    return out


def _union_length(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    total, reach = 0.0, lo
    for begin, end in sorted((max(b, lo), min(e, hi)) for b, e in intervals):
        if end <= reach:
            continue
        total += end - max(begin, reach)
        reach = end
    return total


def stage_status(folder: Path, now: float | None = None, stale_s: float = 1800.0) -> StageStatus | None:
    """Status of one stage's journal folder; None when it holds no rank journal."""
    now = time.time() if now is None else now
    by_world: dict[int, dict[int, Path]] = {}
    for path in folder.glob("rank-*.jsonl"):
        match = RANK_FILE.match(path.name)
        if match:
            by_world.setdefault(int(match.group(2)), {})[int(match.group(1))] = path
    if not by_world:
        return None
    records_of = {w: {r: list(read_journal(p)) for r, p in ranks.items()} for w, ranks in by_world.items()}

    def last_time(world: int) -> float:
        return max((_time(rec) for recs in records_of[world].values() for rec in recs), default=0)

    world_size = max(by_world, key=last_time)  # the most recently used sharding is the current one
    status = StageStatus(folder.name, world_size, len(by_world[world_size]))
    states = item_states(rec for ranks in records_of.values() for recs in ranks.values() for rec in recs)
    counted: set[str] = set()
    intervals: list[tuple[float, float]] = []
    for rank in range(world_size):
        records = records_of[world_size].get(rank)
        if records is None:
            status.ranks_missing.append(rank)
            continue
        rank_status, items = _rank_status(records, rank, world_size, states, now, stale_s)
        counted |= items
        status.ranks.append(rank_status)
        for name in ("total", "done", "failed", "pending", "not_ready", "unrecorded"):
            setattr(status, name, getattr(status, name) + getattr(rank_status, name))
        {"stale": status.ranks_stale, "stopped": status.ranks_stopped,
         "running": status.ranks_running}.get(rank_status.state, []).append(rank)
        if not rank_status.by_item:
            status.ranks_from_summaries.append(rank)
        intervals += _busy_intervals(records, rank_status.state == "running", now)

    failures = [states[i].record for i in sorted(counted) if states.get(i) and states[i].state == "failed"]
    status.failures_by_category = dict(Counter(_category(r) for r in failures).most_common())
    for r in failures:
        status.failure_examples.setdefault(_category(r), f"{r.get('item')}: {r.get('reason')}")
    if not status.ranks_missing:  # else the missing ranks' items would be taken for earlier runs' items
        earlier = [s for item, s in states.items() if item not in counted]
        status.earlier_done = sum(s.state == "done" for s in earlier)
        earlier_failed = [s.record for s in earlier if s.state == "failed"]
        status.earlier_failed = len(earlier_failed)
        status.earlier_failures_by_category = dict(Counter(_category(r) for r in earlier_failed).most_common())

    # Throughput over the time ranks were working, not the idle gaps between runs: while a rank
    # runs, over the last RATE_WINDOW_S; otherwise over every run of the current sharding.
    lo = now - RATE_WINDOW_S if status.ranks_running else float("-inf")
    done = [r for recs in records_of[world_size].values() for r in recs
            if r.get("event") == "done" and lo <= _time(r) <= now]
    busy = _union_length(intervals, lo, now)
    if done:
        status.busy_s = round(busy, 3)
        busy = max(busy, 1e-3)
        status.items_per_hour = len(done) / busy * 3600
        totals: dict[str, float] = {}
        for r in done:
            for key, value in (r.get("stats") or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0.0) + float(value)
        status.stats_per_s = {k: v / busy for k, v in totals.items()}
        if status.pending and status.ranks_running:
            status.eta_hours = status.pending / status.items_per_hour
    return status


def _category(record: dict) -> str:
    return str(record.get("category", "error"))


#: stages whose journal folder is exactly ``<stage>-<dataset_name>``
_DATASET_STAGES = ("parse_tracks", "extract_tracks", "relabel_tracks")


def known_datasets(base_dir: Path) -> list[str]:
    """Datasets with folders under the root, and those that only a stage's journal names yet."""
    names = set(datasets_in(base_dir))
    logs = DatasetLayout(base_dir).logs_root()
    if logs.is_dir():
        for folder in logs.iterdir():
            stage, _, rest = folder.name.partition("-")
            if folder.is_dir() and stage in _DATASET_STAGES and rest:
                names.add(rest)
    return sorted(names)


def check_status_inputs(base_dir: Path, dataset_name: str | None) -> None:
    """UsageError unless ``base_dir`` is a dataset root and ``dataset_name`` (when given) one of
    its datasets: a misspelt name would otherwise silently show no per-dataset stage at all."""
    require_dataset_root(base_dir)
    if dataset_name is None:
        return
    try:
        validate_name(dataset_name)
    except ValueError as exc:
        raise UsageError(f"--dataset_name: {exc}") from None
    logs = DatasetLayout(base_dir).logs_root()
    if dataset_name in datasets_in(base_dir) or (logs.is_dir() and any(
            p.is_dir() and p.name.endswith(f"-{dataset_name}") for p in logs.iterdir())):
        return
    known = known_datasets(base_dir)
    raise UsageError(f"--dataset_name {dataset_name}: no such dataset under {base_dir} (known: "
                     f"{', '.join(known) if known else 'none yet'})")


def dataset_status(base_dir: Path, dataset_name: str | None = None, stale_s: float = 1800.0,
                   now: float | None = None) -> list[StageStatus]:
    logs = DatasetLayout(base_dir).logs_root()
    out: list[StageStatus] = []
    if not logs.is_dir():
        return out
    for folder in sorted(p for p in logs.iterdir() if p.is_dir() and p.name != "slurm"):
        if dataset_name and "-" in folder.name and not folder.name.endswith(f"-{dataset_name}"):
            continue  # another dataset's per-dataset stage
        status = stage_status(folder, now=now, stale_s=stale_s)
        if status is not None:
            out.append(status)
    return out


def as_dict(statuses: list[StageStatus]) -> dict:
    return {"stages": [asdict(s) for s in statuses], "time": time.time()}


def _hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def render(statuses: list[StageStatus], now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not statuses:
        return "no stage has written a journal yet"
    lines = []
    for s in statuses:
        lines.append(f"== {s.stage} (world size {s.world_size}, {s.ranks_reported} rank(s) reported)")
        if s.total:
            pending = []
            if s.not_ready:
                pending.append(f"{s.not_ready} not ready: inputs missing")
            if s.unrecorded:
                pending.append(f"{s.unrecorded} not reached yet")
            lines.append(f"   items {s.total}: done {s.done} ({100.0 * s.done / s.total:.1f}%), failed {s.failed}, "
                         f"pending {s.pending}" + (f" ({'; '.join(pending)})" if pending else ""))
        else:
            lines.append("   items: none known (the latest run listed no items, or its journal does not say)")
        if s.ranks_from_summaries:
            lines.append(f"   ranks {_compact(s.ranks_from_summaries)}: journals of an older version, without item "
                         "lists: counted from their run summaries (re-run them to count item by item)")
        if s.items_per_hour:
            rates = ", ".join(f"{v:.2f} {k}/s" for k, v in sorted(s.stats_per_s.items()))
            lines.append(f"   throughput {s.items_per_hour:.0f} items/h" + (f" ({rates})" if rates else "")
                         + f" over {_duration(s.busy_s)} of work"
                         + (f", ETA {_hours(s.eta_hours)}" if s.eta_hours is not None else ""))
        for category, count in s.failures_by_category.items():
            lines.append(f"   failed [{category}]: {count}  e.g. {s.failure_examples[category][:120]}")
        if s.earlier_done or s.earlier_failed:
            reasons = ", ".join(f"{k}: {v}" for k, v in s.earlier_failures_by_category.items())
            lines.append(f"   not in the latest run's list, journaled by earlier runs: {s.earlier_done} done, "
                         f"{s.earlier_failed} failed" + (f" [{reasons}]" if reasons else ""))
        if s.ranks_running:
            lines.append(f"   running ranks: {_compact(s.ranks_running)}")
        if s.ranks_stale:
            quiet = {r.rank: now - r.last_seen for r in s.ranks if r.state == "stale"}
            lines.append("   ranks silent for long (dead job?): " + ", ".join(
                f"{rank} ({_hours(sec / 3600)})" for rank, sec in sorted(quiet.items())))
        if s.ranks_stopped:
            errors = {r.rank: r.systemic_error for r in s.ranks if r.state == "stopped"}
            for rank, error in sorted(errors.items()):
                lines.append(f"   rank {rank} STOPPED: {str(error)[:160]}")
        if s.ranks_missing:
            lines.append(f"   ranks never started: {_compact(s.ranks_missing)} (their items are not counted above)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return _hours(seconds / 3600)


def _compact(values: list[int]) -> str:
    return format_ranges(sorted(values))

def format_ranges(values: list[int]) -> str:
    """[0,1,2,5] -> '0-2,5'."""
    out: list[str] = []
    start = prev = None
    for v in values:
        if start is None or prev is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(out)
