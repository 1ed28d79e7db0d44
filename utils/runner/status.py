"""Where every stage stands, read from the journals only (status.py): never writes, works
while jobs run.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from utils.core.layout import DatasetLayout
from utils.runner.journal import latest_item_events, read_journal

log = logging.getLogger("trackverse")


RANK_FILE = re.compile(r"^rank-(\d+)-of-(\d+)\.jsonl$")
RATE_WINDOW_S = 15 * 60


@dataclass
class RankStatus:
    rank: int
    world_size: int
    state: str  # finished | stopped | running | stale
    total: int = 0
    done: int = 0  # processed or found done (skipped) in its latest run
    failed: int = 0
    pending: int = 0
    last_seen: float = 0.0
    host: str | None = None
    systemic_error: str | None = None


@dataclass
class StageStatus:
    stage: str
    world_size: int
    ranks_reported: int
    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    failures_by_category: dict[str, int] = field(default_factory=dict)
    failure_examples: dict[str, str] = field(default_factory=dict)
    items_per_hour: float = 0.0
    stats_per_s: dict[str, float] = field(default_factory=dict)
    eta_hours: float | None = None
    ranks_missing: list[int] = field(default_factory=list)
    ranks_stale: list[int] = field(default_factory=list)
    ranks_stopped: list[int] = field(default_factory=list)
    ranks_running: list[int] = field(default_factory=list)
    ranks: list[RankStatus] = field(default_factory=list)


def _rank_status(records: list[dict], rank: int, world_size: int, now: float, stale_s: float) -> RankStatus:
    """Counts of the rank's latest run: its start, then the latest progress or summary."""
    status = RankStatus(rank, world_size, "running")
    starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
    run = records[starts[-1]:] if starts else records
    if run:
        status.last_seen = max(float(r.get("time", 0)) for r in run)
        status.host = run[0].get("host")
    status.total = int(run[0].get("items", 0)) if starts else 0
    summary = next((r for r in reversed(run) if r.get("event") == "summary"), None)
    if summary is not None:
        status.done = int(summary.get("done", 0)) + int(summary.get("skipped", 0))
        status.failed = int(summary.get("failed", 0)) + int(summary.get("previously_failed", 0))
        status.systemic_error = summary.get("systemic_error")
        status.state = "stopped" if status.systemic_error else "finished"
    else:
        progress_at = max((i for i, r in enumerate(run) if r.get("event") == "progress"), default=None)
        base = run[progress_at] if progress_at is not None else {}
        after = run[progress_at + 1:] if progress_at is not None else run
        status.done = (int(base.get("done", 0)) + int(base.get("skipped", 0))
                       + sum(r.get("event") == "done" for r in after))
        status.failed = (int(base.get("failed", 0)) + int(base.get("previously_failed", 0))
                         + sum(r.get("event") == "failed" for r in after))
        if now - status.last_seen > stale_s:
            status.state = "stale"
    status.pending = max(0, status.total - status.done - status.failed)
    return status


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
        return max((float(rec.get("time", 0)) for recs in records_of[world].values() for rec in recs), default=0)

    world_size = max(by_world, key=last_time)  # the most recently used sharding is the current one
    status = StageStatus(folder.name, world_size, len(by_world[world_size]))
    all_records = [rec for ranks in records_of.values() for recs in ranks.values() for rec in recs]
    for rank in range(world_size):
        records = records_of[world_size].get(rank)
        if records is None:
            status.ranks_missing.append(rank)
            continue
        rank_status = _rank_status(records, rank, world_size, now, stale_s)
        status.ranks.append(rank_status)
        status.total += rank_status.total
        status.done += rank_status.done
        status.failed += rank_status.failed
        status.pending += rank_status.pending
        {"stale": status.ranks_stale, "stopped": status.ranks_stopped,
         "running": status.ranks_running}.get(rank_status.state, []).append(rank)

    failures = [r for r in latest_item_events(all_records).values() if r.get("event") == "failed"]
    categories = Counter(str(r.get("category", "error")) for r in failures)
    status.failures_by_category = dict(categories.most_common())
    for r in failures:
        status.failure_examples.setdefault(str(r.get("category", "error")), f"{r.get('item')}: {r.get('reason')}")

    recent = [r for r in all_records if r.get("event") == "done" and now - float(r.get("time", 0)) <= RATE_WINDOW_S]
    if recent:
        span = max(now - min(float(r["time"]) for r in recent), 60.0)
        status.items_per_hour = len(recent) / span * 3600
        totals: dict[str, float] = {}
        for r in recent:
            for key, value in (r.get("stats") or {}).items():
                totals[key] = totals.get(key, 0.0) + float(value)
        status.stats_per_s = {k: v / span for k, v in totals.items()}
        if status.pending and status.ranks_running:
            status.eta_hours = status.pending / status.items_per_hour
    return status


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
        pct = 100.0 * s.done / s.total if s.total else 0.0
        lines.append(f"== {s.stage} (world size {s.world_size}, {s.ranks_reported} rank(s) reported)")
        lines.append(f"   items {s.total}: done {s.done} ({pct:.1f}%), failed {s.failed}, pending {s.pending}")
        if s.items_per_hour:
            rates = ", ".join(f"{v:.2f} {k}/s" for k, v in sorted(s.stats_per_s.items()))
            lines.append(f"   throughput {s.items_per_hour:.0f} items/h" + (f" ({rates})" if rates else "")
                         + (f", ETA {_hours(s.eta_hours)}" if s.eta_hours is not None else ""))
        for category, count in s.failures_by_category.items():
            lines.append(f"   failed [{category}]: {count}  e.g. {s.failure_examples[category][:120]}")
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
            lines.append(f"   ranks never started: {_compact(s.ranks_missing)}")
    return "\n".join(lines)


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
