"""The stage contract and the run loop every stage shares.

A stage is a :class:`Stage` subclass: it lists its items, says whether an item's final output
exists, and processes one item. :func:`run_shard` does the rest: which items belong to this
rank, skipping finished work, the journal, failures that must not stop a shard, faults that
must, and the summary.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from tqdm import tqdm

from utils.core.config import base_dir_option, log_level_option, option
from utils.core.errors import (
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    EXIT_SYSTEMIC,
    DataError,
    Interrupted,
    InvalidItemError,
    ItemError,
    NotReady,
    SystemicError,
    UsageError,
    is_systemic,
)
from utils.core.layout import DatasetLayout, validate_name
from utils.core.progress import progress_bar
from utils.runner.journal import Journal, latest_item_events, read_journals

log = logging.getLogger("trackverse")

ConfigT = TypeVar("ConfigT", bound="StageConfig")
PROGRESS_INTERVAL_S = 60.0  # between the "progress" journal lines status.py reads
SKIPPED_BATCH = 1000  # items found done journaled in one "skipped" line
MAX_LISTED_ITEMS = 200_000  # a rank's "start" line lists its items up to this many (status.py counts by item)


# ---------------------------------------------------------------------------- sharding


def shard_indices(num_items: int, world_size: int, rank: int) -> range:
    """Item ``i`` belongs to rank ``r`` iff ``i % world_size == r``."""
    if world_size < 1:
        raise UsageError(f"--world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise UsageError(f"--rank {rank} is outside [0, --world_size {world_size})")
    return range(rank, num_items, world_size)


def share_of(items: Sequence[str], rank: int | None, world_size: int | None) -> list[str]:
    """The items a run works on: the rank's share, or every item when no rank is given (a
    ``--slurm`` submission of every rank)."""
    if rank is None:
        return list(items)
    return [items[i] for i in shard_indices(len(items), world_size or 1, rank)]


def resolve_rank(rank: int | None, world_size: int | None, environ: dict | None = None) -> tuple[int, int]:
    """Rank and world size from the flags, else from an ``sbatch --array`` job's variables.

    Inside an array job without ``--rank``, the rank is ``SLURM_ARRAY_TASK_ID`` (offset by
    ``SLURM_ARRAY_TASK_MIN``) and the world size ``--world_size`` if given, else
    ``SLURM_ARRAY_TASK_COUNT``.
    """
    env = os.environ if environ is None else environ
    if rank is None and "SLURM_ARRAY_TASK_ID" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        rank = task - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        if world_size is None:
            world_size = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    if world_size is None:
        world_size = 1
    if rank is None:
        if world_size != 1:
            raise UsageError(
                f"--world_size {world_size} without --rank: give --rank, run inside an sbatch array, "
                "or add --slurm to submit every rank"
            )
        rank = 0
    shard_indices(0, world_size, rank)  # validates
    return rank, world_size


def check_dataset_name(name: str) -> None:
    """UsageError for a ``--dataset_name`` that cannot be a folder name under the root."""
    try:
        validate_name(name)
    except InvalidItemError as exc:
        raise UsageError(f"--dataset_name: {exc}") from None


def read_item_list(path: str | os.PathLike) -> list[str]:
    """Items of a list file: one per line; blank lines and ``#`` comments are not items. An
    item listed more than once is processed once (its first line decides its rank), with one
    warning naming each repeated item and how often it is listed."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"item list {path} is a folder, not a file")
    if not path.is_file():
        raise UsageError(f"item list {path} does not exist")
    counts: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    counts[line] = counts.get(line, 0) + 1
    except OSError as exc:
        raise UsageError(f"cannot read item list {path}: {exc.strerror or exc}") from None
    if not counts:
        raise UsageError(f"item list {path} has no items (it is empty or only comments)")
    repeated = [(item, n) for item, n in counts.items() if n > 1]
    if repeated:
        shown = ", ".join(f"{item!r} ({n} times)" for item, n in repeated[:10])
        more = f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
        log.warning("item list %s lists %d item(s) more than once, each is processed once: %s%s",
                    path, len(repeated), shown, more)
    return list(counts)


def check_base_dir(base_dir: str | os.PathLike) -> None:
    """UsageError unless ``--base_dir`` is a writable folder, or a folder that can be created
    in an existing writable parent. A missing parent is refused, not created: it is more likely
    a typo than a wish for a new tree of folders."""
    path = Path(base_dir)
    if path.is_symlink() and not path.exists():
        raise UsageError(f"--base_dir {path} is a broken symbolic link (to {os.readlink(path)})")
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--base_dir {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"--base_dir {path} is read-only (not writable by this user, or a read-only file system)")
        return
    parent = path.absolute().parent
    if not parent.exists():
        raise UsageError(f"--base_dir {path}: its parent folder {parent} does not exist (not creating it: "
                         "check the path, or create the parent first)")
    if not parent.is_dir():
        raise UsageError(f"--base_dir {path}: its parent {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--base_dir {path} does not exist and cannot be created: its parent {parent} is read-only")


# ------------------------------------------------------------------------------ stages


COMMON_GROUP = "dataset and sharding (every stage)"


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """What every stage's config has: the dataset root and how a shard runs. A stage's
    config subclasses it; its fields are the stage's flags (:mod:`utils.core.config`)."""

    base_dir: Path = base_dir_option(COMMON_GROUP)
    world_size: int | None = option(None, group=COMMON_GROUP,
                                    help="number of ranks (default 1, or SLURM_ARRAY_TASK_COUNT in an sbatch array)")
    rank: int | None = option(None, group=COMMON_GROUP,
                              help="this rank (default 0, or SLURM_ARRAY_TASK_ID in an sbatch array)")
    retry_failed: bool = option(False, group=COMMON_GROUP,
                                help="re-run items that failed permanently before (transient failures are always retried)")
    max_consecutive_errors: int = option(25, group=COMMON_GROUP,
                                         help="stop the rank after this many unexpected item errors in a row")
    log_level: str = log_level_option(COMMON_GROUP)


class Stage(Generic[ConfigT]):
    """A stage is a function over items. Subclasses set ``name`` and ``config_class`` and
    implement ``list_items``, ``output_exists`` and ``process``; ``setup`` loads what every
    item shares (a model) once per rank. The items are listed once per run, by the command
    front, and handed to ``check_items`` and ``setup``. Stages hold no state: submitit pickles them into
    every job, and what a rank caches belongs in ``setup``'s resources."""

    name: str = "stage"
    description: str = ""
    default_slurm: dict[str, Any] = {}
    config_class: type[ConfigT]

    def validate(self, config: ConfigT) -> ConfigT:
        """Raise UsageError for bad settings before any work or submission; return the
        config to run with (e.g. with an asset resolved to its local path)."""
        return config

    def job_key(self, config: ConfigT) -> str:
        """Journal folder and Slurm job name stem; include e.g. the dataset name."""
        return self.name

    def list_items(self, config: ConfigT) -> list[str]:
        raise NotImplementedError

    def check_items(self, config: ConfigT, items: Sequence[str]) -> None:
        """Raise UsageError for settings that do not fit this run's items (the rank's share,
        or every item for a submission of every rank), before any work or submission: e.g.
        outputs made with another model."""

    def output_exists(self, config: ConfigT, item: str) -> bool:
        raise NotImplementedError

    def setup(self, config: ConfigT, items: Sequence[str]) -> Any:
        """What every item of the rank shares (``items``: the rank's share, in order)."""
        return None

    def process(self, config: ConfigT, item: str, resources: Any) -> dict[str, float] | None:
        """Make the item's final output (atomically). Return optional numeric stats
        (e.g. ``{"video_s": 12.5}``) that progress and summaries show as rates; entries
        whose value is not a number (text, lists) are journaled with the ``done`` record
        as ``notes`` (e.g. what was repaired) and not summed."""
        raise NotImplementedError

    def teardown(self, resources: Any) -> None:
        """Release what ``setup`` made."""


@dataclass
class ShardSummary:
    stage: str
    rank: int
    world_size: int
    total: int = 0
    done: int = 0
    skipped: int = 0
    previously_failed: int = 0
    failed: int = 0
    not_ready: int = 0
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    failures_by_category: dict[str, int] = field(default_factory=dict)
    systemic_error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.systemic_error:
            return EXIT_SYSTEMIC
        return EXIT_ITEMS_FAILED if self.failed else EXIT_OK

    def line(self) -> str:
        rates = "".join(
            f", {value:.1f} {name} ({value / max(self.seconds, 1e-9):.2f} {name}/s)"
            for name, value in sorted(self.stats.items())
        )
        text = (
            f"[{self.stage} rank {self.rank}/{self.world_size}] {self.total} items: {self.done} done, "
            f"{self.skipped} skipped (already done), {self.failed} failed"
        )
        if self.not_ready:
            text += f", {self.not_ready} not ready (inputs missing: re-run later)"
        if self.previously_failed:
            text += f", {self.previously_failed} failed before and not retried (--retry_failed)"
        if self.failures_by_category:
            text += " [" + ", ".join(f"{k}: {v}" for k, v in sorted(self.failures_by_category.items())) + "]"
        text += f" in {self.seconds:.1f} s{rates}"
        if self.systemic_error:
            text += f"\nSTOPPED: {self.systemic_error}"
        return text


def journal_dir(config: StageConfig, stage: Stage) -> Path:
    return DatasetLayout(config.base_dir).logs_dir(stage.job_key(config))


def journal_path(config: StageConfig, stage: Stage, rank: int, world_size: int) -> Path:
    return journal_dir(config, stage) / f"rank-{rank:05d}-of-{world_size:05d}.jsonl"


def previous_failures(config: StageConfig, stage: Stage) -> dict[str, dict]:
    """Latest record per item across every journal of the stage, failures only."""
    return _failures(latest_item_events(read_journals(journal_dir(config, stage))))


def _failures(latest: dict[str, dict]) -> dict[str, dict]:
    return {item: rec for item, rec in latest.items() if rec.get("event") == "failed"}


def run_shard(stage: Stage, config: StageConfig, items: Sequence[str] | None = None,
              interruptions: tuple[type[Exception], ...] = ()) -> ShardSummary:
    """Process this rank's share of ``items`` (every item of the stage, listed by the caller;
    listed here when not given) (``config.rank`` of ``config.world_size``, resolved): skip
    finished ones, journal failures, stop on systemic faults. ``interruptions``: errors a job's
    signal handler raises wherever the code happens to be (submitit's "not requeued"): they end
    the shard and are journaled as such, never as the failure of the item they interrupted; so
    does :class:`Interrupted` (SIGINT / SIGTERM at the command line), which leaves with the
    shard's summary so far as its ``progress``."""
    rank, world_size = config.rank or 0, config.world_size or 1
    check_base_dir(config.base_dir)
    started = time.time()
    summary = ShardSummary(stage=stage.job_key(config), rank=rank, world_size=world_size)
    if items is None:
        items = stage.list_items(config)
    mine = share_of(items, rank, world_size)
    summary.total = len(mine)
    latest = latest_item_events(read_journals(journal_dir(config, stage)))
    failed_before = _failures(latest)
    # items found done are journaled unless the journals already say so (a re-run adds no lines)
    recorded_done = {item for item, rec in latest.items() if rec.get("event") in ("done", "skipped")}
    del latest
    max_consecutive = config.max_consecutive_errors

    with _open_journal(journal_path(config, stage, rank, world_size)) as journal:
        # The rank's items, so that status.py counts each by its latest journal record
        # (items found done that no journal records as done go in "skipped" lines, a batch at a time).
        listed: dict[str, Any] = {"shard_items": mine} if len(mine) <= MAX_LISTED_ITEMS else {}
        journal.write("start", rank=rank, world_size=world_size, items=len(mine), argv=sys.argv, **listed)
        skipped_batch: list[str] = []

        def flush_skipped() -> None:
            if skipped_batch:
                journal.write("skipped", items=list(skipped_batch))
                skipped_batch.clear()

        resources = None
        consecutive_unexpected = 0
        interrupted: Interrupted | None = None
        ends: tuple[type[BaseException], ...] = (Interrupted, *interruptions)
        try:
            resources = stage.setup(config, mine)
            bar = progress_bar(mine, desc=f"{stage.job_key(config)} {rank}/{world_size}", unit="item")
            last_progress = time.time()
            for item in bar:
                if time.time() - last_progress >= PROGRESS_INTERVAL_S:
                    # lets status.py count skipped items and see the rank alive
                    flush_skipped()
                    journal.write("progress", total=summary.total, done=summary.done, skipped=summary.skipped,
                                  failed=summary.failed, previously_failed=summary.previously_failed)
                    last_progress = time.time()
                item_started = time.time()
                try:
                    if stage.output_exists(config, item):
                        summary.skipped += 1
                        if item not in recorded_done:
                            skipped_batch.append(item)
                            if len(skipped_batch) >= SKIPPED_BATCH:
                                flush_skipped()
                        continue
                    previous = failed_before.get(item)
                    if previous is not None and not config.retry_failed and not previous.get("transient"):
                        summary.previously_failed += 1
                        continue
                    item_started = time.time()
                    stats = stage.process(config, item, resources) or {}
                except NotReady as exc:
                    summary.not_ready += 1
                    journal.write("not_ready", item, reason=exc.reason)
                    continue
                except Exception as exc:  # output_exists and process alike: one item's failure
                    if is_systemic(exc) or isinstance(exc, interruptions):
                        raise
                    _record_failure(journal, summary, item, exc, time.time() - item_started)
                    if not isinstance(exc, ItemError):
                        consecutive_unexpected += 1
                        if consecutive_unexpected >= max_consecutive:
                            raise SystemicError(
                                f"{consecutive_unexpected} items in a row failed with unexpected errors "
                                f"(last: {item}: {type(exc).__name__}: {exc}); this looks systemic"
                            ) from exc
                    continue
                consecutive_unexpected = 0
                seconds = time.time() - item_started
                summary.done += 1
                notes = {k: v for k, v in stats.items() if isinstance(v, bool) or not isinstance(v, int | float)}
                stats = {k: v for k, v in stats.items() if k not in notes}
                for key, value in stats.items():
                    summary.stats[key] = summary.stats.get(key, 0.0) + float(value)
                journal.write("done", item, seconds=round(seconds, 3), stats=stats, **({"notes": notes} if notes else {}))
                elapsed = max(time.time() - started, 1e-9)
                postfix: dict[str, object] = {"done": summary.done, "skip": summary.skipped, "fail": summary.failed}
                postfix.update({f"{k}/s": f"{v / elapsed:.2f}" for k, v in summary.stats.items()})
                bar.set_postfix(postfix, refresh=False)
            bar.close()
        except ends as exc:  # the job's end, decided outside: no item's fault
            if isinstance(exc, Interrupted):
                interrupted = exc
            journal.write("interrupted", error=f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:
            if not is_systemic(exc) and not isinstance(exc, UsageError):
                # setup() failing (model missing) is systemic by nature.
                exc = SystemicError(f"{type(exc).__name__}: {exc}")
            # an OSError or MemoryError says little without its type (MemoryError() has no text at all)
            message = str(exc) if isinstance(exc, SystemicError | UsageError) else f"{type(exc).__name__}: {exc}"
            summary.systemic_error = message.rstrip(": ") or type(exc).__name__
            journal.write("systemic", error=summary.systemic_error, traceback=traceback.format_exc(limit=8))
        finally:
            if resources is not None:
                try:
                    stage.teardown(resources)
                except Exception as exc:  # the results stand; say what was not released
                    log.warning("%s: teardown failed: %s: %s", stage.job_key(config), type(exc).__name__, exc)
                    journal.write("teardown_failed", error=f"{type(exc).__name__}: {exc}",
                                  traceback=traceback.format_exc(limit=8))
            summary.seconds = round(time.time() - started, 3)
            flush_skipped()
            journal.write("summary", **asdict(summary))
            if interrupted is not None:
                interrupted.progress = summary.line()
    return summary


def _open_journal(path: Path) -> Journal:
    """The rank's journal; a folder that cannot be written is a usage error naming it (a full
    disk stays a systemic fault)."""
    try:
        return Journal(path)
    except OSError as exc:
        if is_systemic(exc) and exc.errno != errno.EROFS:
            raise SystemicError(f"cannot write the journal {path}: {exc.strerror or exc}") from None
        raise UsageError(f"cannot write the journal {path}: {exc.strerror or exc}") from None


def _record_failure(journal: Journal, summary: ShardSummary, item: str, exc: Exception, seconds: float) -> None:
    if isinstance(exc, ItemError):
        reason, transient, category = exc.reason, exc.transient, exc.category
        tb = None
    else:
        reason = f"{type(exc).__name__}: {exc}"
        transient, category = False, exc.category if isinstance(exc, DataError) else type(exc).__name__
        tb = traceback.format_exc(limit=6)
    summary.failed += 1
    summary.failures_by_category[category] = summary.failures_by_category.get(category, 0) + 1
    journal.write(
        "failed", item, reason=reason, transient=transient, category=category,
        seconds=round(seconds, 3), traceback=tb,
    )
    tqdm.write(f"FAILED {item}: {reason}", file=sys.stderr)
