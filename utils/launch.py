"""The one launcher every stage script uses: shared flags, sharding, local and Slurm runs.

A stage is a :class:`Stage` subclass: it lists its items, says whether an item's final
output exists, and processes one item. Everything else lives here: which items belong to
this rank, skipping finished work, the per-rank journal, failures that must not stop a
shard, faults that must, the summary and exit status, and submission through submitit.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.io import Journal, atomic_write_json, latest_item_events, read_journals
from utils.layout import DatasetLayout, default_base_dir

log = logging.getLogger("trackverse")

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_USAGE = 2
EXIT_SYSTEMIC = 3
PROGRESS_INTERVAL_S = 60.0


# ------------------------------------------------------------------------------ errors


class ItemError(Exception):
    """One item failed; the shard goes on. ``transient`` failures are retried by a plain
    re-run, permanent ones only with ``--retry_failed``. ``category`` groups failures in
    summaries and the status report (e.g. ``private``, ``rate_limited``, ``corrupt``)."""

    def __init__(self, reason: str, *, transient: bool = False, category: str = "error"):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.category = category


class NotReady(Exception):
    """The item's inputs do not exist yet (an earlier stage has not reached it). Not a
    failure: counted apart as ``not ready``, journaled, and picked up by a later re-run."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SystemicError(Exception):
    """A fault that would fail every item (model missing, disk full, GPU gone): stop."""


class UsageError(Exception):
    """Bad flags or inputs detected before any work starts."""


_SYSTEMIC_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE}


def is_systemic(exc: BaseException) -> bool:
    """Faults that no other item would survive either."""
    if isinstance(exc, SystemicError | MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno in _SYSTEMIC_ERRNOS:
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and (
        message.startswith("CUDA error") or "CUDA driver" in message or "no CUDA-capable device" in message
    )


# ---------------------------------------------------------------------------- sharding


def shard_indices(num_items: int, world_size: int, rank: int) -> range:
    """Item ``i`` belongs to rank ``r`` iff ``i % world_size == r``."""
    if world_size < 1:
        raise UsageError(f"--world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise UsageError(f"--rank {rank} is outside [0, --world_size {world_size})")
    return range(rank, num_items, world_size)


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


def read_item_list(path: str | os.PathLike) -> list[str]:
    """Items of a list file: one per line; blank lines and ``#`` comments are not items."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"item list {path} does not exist")
    items = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                items.append(line)
    if not items:
        raise UsageError(f"item list {path} has no items (it is empty or only comments)")
    return items


# ------------------------------------------------------------------------------ stages


class Stage:
    """A stage is a function over items. Subclasses set ``name`` and implement
    ``list_items``, ``output_exists`` and ``process``; ``setup`` loads what every item
    shares (a model) once per rank."""

    name: str = "stage"
    description: str = ""
    default_slurm: dict[str, Any] = {}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Stage-specific flags."""

    def validate_args(self, args: argparse.Namespace) -> None:
        """Raise UsageError for bad flags before any work or submission."""

    def job_key(self, args: argparse.Namespace) -> str:
        """Journal folder and Slurm job name stem; include e.g. the dataset name."""
        return self.name

    def list_items(self, args: argparse.Namespace) -> list[str]:
        raise NotImplementedError

    def output_exists(self, args: argparse.Namespace, item: str) -> bool:
        raise NotImplementedError

    def setup(self, args: argparse.Namespace) -> Any:
        return None

    def process(self, args: argparse.Namespace, item: str, resources: Any) -> dict[str, float] | None:
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


def journal_dir(args: argparse.Namespace, stage: Stage) -> Path:
    return DatasetLayout(args.base_dir).logs_dir(stage.job_key(args))


def journal_path(args: argparse.Namespace, stage: Stage, rank: int, world_size: int) -> Path:
    return journal_dir(args, stage) / f"rank-{rank:05d}-of-{world_size:05d}.jsonl"


def previous_failures(args: argparse.Namespace, stage: Stage) -> dict[str, dict]:
    """Latest record per item across every journal of the stage, failures only."""
    latest = latest_item_events(read_journals(journal_dir(args, stage)))
    return {item: rec for item, rec in latest.items() if rec.get("event") == "failed"}


def _is_tty() -> bool:
    return sys.stderr.isatty()


def run_shard(stage: Stage, args: argparse.Namespace, rank: int, world_size: int) -> ShardSummary:
    """Process this rank's items: skip finished ones, journal failures, stop on systemic faults."""
    started = time.time()
    summary = ShardSummary(stage=stage.job_key(args), rank=rank, world_size=world_size)
    items = stage.list_items(args)
    mine = [items[i] for i in shard_indices(len(items), world_size, rank)]
    summary.total = len(mine)
    failed_before = previous_failures(args, stage)
    max_consecutive = getattr(args, "max_consecutive_errors", 25)

    with Journal(journal_path(args, stage, rank, world_size)) as journal:
        journal.write("start", rank=rank, world_size=world_size, items=len(mine), argv=sys.argv)
        resources = None
        consecutive_unexpected = 0
        try:
            resources = stage.setup(args)
            bar = tqdm(
                mine,
                desc=f"{stage.job_key(args)} {rank}/{world_size}",
                unit="item",
                dynamic_ncols=True,
                mininterval=0.5 if _is_tty() else 30,
                file=sys.stderr,
            )
            last_progress = time.time()
            for item in bar:
                if time.time() - last_progress >= PROGRESS_INTERVAL_S:
                    # lets status.py count skipped items and see the rank alive
                    journal.write("progress", total=summary.total, done=summary.done, skipped=summary.skipped,
                                  failed=summary.failed, previously_failed=summary.previously_failed)
                    last_progress = time.time()
                try:
                    if stage.output_exists(args, item):
                        summary.skipped += 1
                        continue
                except Exception as exc:  # a malformed item id, typically
                    _record_failure(journal, summary, item, exc, 0.0)
                    continue
                previous = failed_before.get(item)
                if previous is not None and not args.retry_failed and not previous.get("transient"):
                    summary.previously_failed += 1
                    continue
                item_started = time.time()
                try:
                    stats = stage.process(args, item, resources) or {}
                except NotReady as exc:
                    summary.not_ready += 1
                    journal.write("not_ready", item, reason=exc.reason)
                    continue
                except Exception as exc:
                    if is_systemic(exc):
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
                postfix = {"done": summary.done, "skip": summary.skipped, "fail": summary.failed}
                postfix.update({f"{k}/s": f"{v / elapsed:.2f}" for k, v in summary.stats.items()})
                bar.set_postfix(postfix, refresh=False)
            bar.close()
        except Exception as exc:
            if not is_systemic(exc) and not isinstance(exc, UsageError):
                # setup() failing (model missing) is systemic by nature.
                exc = SystemicError(f"{type(exc).__name__}: {exc}")
            summary.systemic_error = str(exc)
            journal.write("systemic", error=str(exc), traceback=traceback.format_exc(limit=8))
        finally:
            if resources is not None:
                with contextlib.suppress(Exception):
                    stage.teardown(resources)
            summary.seconds = round(time.time() - started, 3)
            journal.write("summary", **asdict(summary))
    return summary


def _record_failure(journal: Journal, summary: ShardSummary, item: str, exc: Exception, seconds: float) -> None:
    if isinstance(exc, ItemError):
        reason, transient, category = exc.reason, exc.transient, exc.category
        tb = None
    else:
        reason = f"{type(exc).__name__}: {exc}"
        transient, category = False, getattr(exc, "category", type(exc).__name__)
        if isinstance(exc, ValueError) and "YouTube id" in str(exc):
            category = "invalid_id"
        tb = traceback.format_exc(limit=6)
    summary.failed += 1
    summary.failures_by_category[category] = summary.failures_by_category.get(category, 0) + 1
    journal.write(
        "failed", item, reason=reason, transient=transient, category=category,
        seconds=round(seconds, 3), traceback=tb,
    )
    tqdm.write(f"FAILED {item}: {reason}", file=sys.stderr)


# ------------------------------------------------------------------------------- flags


def add_base_dir_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--base_dir`` as every script takes it, sharded stage or not (e.g. curate_db.py)."""
    parser.add_argument("--base_dir", type=Path, default=default_base_dir(),
                        help="dataset root ($TRACKVERSE_DB, else ./TrackVerseDB)")


def add_log_level_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--log_level`` as every script takes it."""
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser(stage: Stage) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=stage.description or stage.name,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    stage.add_arguments(parser)
    common = parser.add_argument_group("dataset and sharding (every stage)")
    add_base_dir_argument(common)
    common.add_argument("--world_size", type=int, default=None,
                        help="number of ranks (default 1, or SLURM_ARRAY_TASK_COUNT in an sbatch array)")
    common.add_argument("--rank", type=int, default=None,
                        help="this rank (default 0, or SLURM_ARRAY_TASK_ID in an sbatch array)")
    common.add_argument("--retry_failed", action="store_true",
                        help="re-run items that failed permanently before (transient failures are always retried)")
    common.add_argument("--max_consecutive_errors", type=int, default=25,
                        help="stop the rank after this many unexpected item errors in a row")
    add_log_level_argument(common)

    slurm = parser.add_argument_group("Slurm (with --slurm)")
    defaults = {"cpus_per_task": 4, "gpus_per_node": 0, "mem_gb": 16, "timeout_min": 24 * 60}
    defaults.update(stage.default_slurm)
    slurm.add_argument("--slurm", action="store_true",
                       help="submit through submitit: with --rank one job, else all ranks as one job array")
    slurm.add_argument("--partition", default=None, help="Slurm partition")
    slurm.add_argument("--account", default=None, help="Slurm account")
    slurm.add_argument("--qos", default=None, help="Slurm QOS")
    slurm.add_argument("--constraint", default=None, help="Slurm node constraint")
    slurm.add_argument("--cpus_per_task", type=int, default=defaults["cpus_per_task"])
    slurm.add_argument("--gpus_per_node", type=int, default=defaults["gpus_per_node"])
    slurm.add_argument("--mem_gb", type=float, default=defaults["mem_gb"])
    slurm.add_argument("--timeout_min", type=float, default=defaults["timeout_min"],
                       help="job time limit; on expiry the job checkpoints and is requeued")
    slurm.add_argument("--slurm_exclude", default=None, help="nodes to avoid (Slurm --exclude syntax)")
    slurm.add_argument("--array_parallelism", type=int, default=256, help="max array tasks running at once")
    slurm.add_argument("--max_requeues", type=int, default=10, help="requeues allowed per job on timeout")
    slurm.add_argument("--slurm_log_dir", type=Path, default=None,
                       help="submitit logs (default <base_dir>/logs/slurm/<stage>)")
    slurm.add_argument("--slurm_wait", action="store_true",
                       help="wait for the submitted jobs and report how each ended")
    slurm.add_argument("--slurm_cluster", default=None, choices=["slurm", "local", "debug"],
                       help=argparse.SUPPRESS)  # submitit backend; tests use 'local'
    return parser


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (every script, sharded stage or not)."""
    logging.basicConfig(
        level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr, force=True,
    )


def main(stage: Stage, argv: Sequence[str] | None = None) -> int:
    """Entry point of every stage script. Returns the exit status."""
    parser = build_parser(stage)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        stage.validate_args(args)
        if args.slurm:
            return submit(stage, args)
        rank, world_size = resolve_rank(args.rank, args.world_size)
        args.rank, args.world_size = rank, world_size
        summary = run_shard(stage, args, rank, world_size)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(summary.line(), file=sys.stderr)
    return summary.exit_code


# ------------------------------------------------------------------------------- Slurm


try:  # submitit is a hard requirement, but keep import errors readable
    import submitit
    from submitit.helpers import Checkpointable
except ImportError as _exc:  # pragma: no cover
    raise ImportError("submitit is required: pip install -r requirements.txt") from _exc


class ShardJob(Checkpointable):
    """One rank of a stage as a submitit job. On timeout or pre-emption submitit calls
    ``checkpoint`` (inherited: resubmit the same call) and requeues; the rerun skips every
    item whose output exists, so finished work is never redone."""

    def __init__(self, stage: Stage):
        self.stage = stage

    def __call__(self, args: argparse.Namespace, rank: int, world_size: int) -> dict:
        setup_logging(args.log_level)
        args.rank, args.world_size = rank, world_size
        summary = run_shard(self.stage, args, rank, world_size)
        print(summary.line(), file=sys.stderr, flush=True)
        if summary.systemic_error:
            raise RuntimeError(summary.line())
        return asdict(summary)


def job_name(stage: Stage, args: argparse.Namespace, world_size: int) -> str:
    """Stable per (stage key, dataset root, world size): the queued-rank check relies on it."""
    root = hashlib.sha1(str(Path(args.base_dir).resolve()).encode()).hexdigest()[:6]
    return f"tv-{stage.job_key(args)}-w{world_size}-{root}"


def slurm_log_dir(stage: Stage, args: argparse.Namespace) -> Path:
    if args.slurm_log_dir is not None:
        return Path(args.slurm_log_dir)
    return DatasetLayout(args.base_dir).logs_dir("slurm") / stage.job_key(args)


def _submissions_dir(stage: Stage, args: argparse.Namespace) -> Path:
    return slurm_log_dir(stage, args) / "submissions"


def _recorded_jobs(stage: Stage, args: argparse.Namespace, name: str) -> dict[str, dict]:
    """job id -> {rank, cluster} from the submission records of this job name."""
    jobs: dict[str, dict] = {}
    folder = _submissions_dir(stage, args)
    if not folder.is_dir():
        return jobs
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if record.get("name") != name:
                continue
            for job in record.get("jobs", []):
                jobs[str(job["job_id"])] = {"rank": int(job["rank"]), "cluster": record.get("cluster")}
    return jobs


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _slurm_active_job_ids(name: str) -> set[str] | None:
    """Ids (``123`` or ``123_4``) of this user's pending or running jobs with ``name``;
    None when squeue cannot be asked."""
    if shutil.which("squeue") is None:
        log.warning("squeue is not on PATH: cannot tell which ranks are queued")
        return None
    user = os.environ.get("USER") or _whoami()
    proc = subprocess.run(
        ["squeue", "-h", "-r", "-u", user, "-n", name, "-o", "%i %T"],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        log.warning("squeue failed (%s): cannot tell which ranks are queued", proc.stderr.strip())
        return None
    ids = set()
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] not in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT"):
            ids.add(parts[0])
    return ids


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def active_ranks(stage: Stage, args: argparse.Namespace, name: str) -> dict[int, str]:
    """rank -> job id for ranks of this job name that are queued or running."""
    recorded = _recorded_jobs(stage, args, name)
    active: dict[int, str] = {}
    slurm_ids: set[str] | None = None
    for job_id, info in recorded.items():
        if info["cluster"] == "local":
            if job_id.isdigit() and _pid_alive(int(job_id)):
                active[info["rank"]] = job_id
        elif info["cluster"] == "slurm":
            if slurm_ids is None:
                slurm_ids = _slurm_active_job_ids(name)
                if slurm_ids is None:
                    # Not knowing what is queued must not mean "nothing is": that would
                    # submit every rank a second time.
                    raise UsageError(
                        f"cannot ask squeue which ranks of {name} are queued (see the warning above); "
                        "not submitting, to avoid duplicate jobs. Retry when squeue answers."
                    )
            if job_id in slurm_ids:
                active[info["rank"]] = job_id
    return active


def ranks_with_work(stage: Stage, args: argparse.Namespace, ranks: list[int], world_size: int) -> list[int]:
    """Ranks that still have an item without output (cheap checks, no processing)."""
    items = stage.list_items(args)
    failed = previous_failures(args, stage)
    pending = []
    for rank in ranks:
        for i in shard_indices(len(items), world_size, rank):
            item = items[i]
            try:
                if stage.output_exists(args, item):
                    continue
            except Exception:
                pass  # a malformed item still needs its failure journaled by the job
            prev = failed.get(item)
            if prev is not None and not args.retry_failed and not prev.get("transient"):
                continue
            pending.append(rank)
            break
    return pending


def make_executor(stage: Stage, args: argparse.Namespace, name: str) -> tuple[submitit.Executor, str]:
    """The submitit executor and the backend's name (``slurm``, ``local`` or ``debug``)."""
    folder = slurm_log_dir(stage, args)
    folder.mkdir(parents=True, exist_ok=True)
    # Slurm counts whole minutes; submitit signals the job this long before its limit.
    signal_delay = 120 if args.timeout_min >= 10 else max(1, int(args.timeout_min * 60 / 4))
    if args.slurm_cluster == "local":
        # The local backend (tests, one workstation) takes fractional minutes and its own delay.
        executor = submitit.LocalExecutor(folder=folder / "%j", max_num_timeout=args.max_requeues)
        executor.update_parameters(
            timeout_min=args.timeout_min, signal_delay_s=signal_delay, gpus_per_node=args.gpus_per_node,
        )
        return executor, "local"
    executor = submitit.AutoExecutor(
        folder=folder / "%j", cluster=args.slurm_cluster, slurm_max_num_timeout=args.max_requeues,
    )
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": max(1, math.ceil(args.timeout_min)),
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
        "slurm_array_parallelism": args.array_parallelism,
        "slurm_signal_delay_s": signal_delay,
    }
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    optional = {
        "slurm_partition": args.partition, "slurm_account": args.account, "slurm_qos": args.qos,
        "slurm_constraint": args.constraint, "slurm_exclude": args.slurm_exclude,
    }
    params.update({k: v for k, v in optional.items() if v})
    executor.update_parameters(**params)
    return executor, executor.cluster


def submit(stage: Stage, args: argparse.Namespace) -> int:
    """Submit one job (``--rank``) or one array of the ranks that still have work."""
    world_size = args.world_size or 1
    if args.rank is not None:
        shard_indices(0, world_size, args.rank)
        ranks = [args.rank]
    else:
        ranks = list(range(world_size))
    name = job_name(stage, args, world_size)
    queued = active_ranks(stage, args, name)
    for rank in ranks:
        if rank in queued:
            print(f"rank {rank}: already queued or running as job {queued[rank]} ({name}); not submitted again")
    ranks = [r for r in ranks if r not in queued]
    todo = ranks_with_work(stage, args, ranks, world_size)
    finished = sorted(set(ranks) - set(todo))
    if finished:
        print(f"{len(finished)} rank(s) have nothing left to do: {format_ranges(finished)}")
    if not todo:
        print(f"nothing to submit for {name}")
        return EXIT_OK

    executor, cluster = make_executor(stage, args, name)
    job_fn = ShardJob(stage)
    if len(todo) == 1 and args.rank is not None:
        jobs = [executor.submit(job_fn, args, todo[0], world_size)]
    else:
        jobs = executor.map_array(job_fn, [args] * len(todo), todo, [world_size] * len(todo))
    record = {
        "name": name, "cluster": cluster, "time": time.time(), "world_size": world_size,
        "jobs": [{"job_id": str(job.job_id), "rank": rank} for job, rank in zip(jobs, todo, strict=True)],
    }
    first = str(jobs[0].job_id).replace("/", "_")
    atomic_write_json(_submissions_dir(stage, args) / f"{int(time.time() * 1000)}-{first}.json", record)
    print(f"submitted {len(jobs)} job(s) named {name} on {cluster}: "
          + ", ".join(f"rank {r} -> {j.job_id}" for j, r in zip(jobs[:8], todo, strict=False))
          + (" ..." if len(jobs) > 8 else ""))
    print(f"logs: {slurm_log_dir(stage, args)}/<job id>/ ; journals: {journal_dir(args, stage)}/")
    if not args.slurm_wait:
        return EXIT_OK
    return wait_for_jobs(jobs, todo)


def wait_for_jobs(jobs: list, ranks: list[int]) -> int:
    """Wait and say how each job ended; a cancelled job is reported, never waited on forever."""
    status = EXIT_OK
    for job, rank in zip(jobs, ranks, strict=True):
        try:
            result = job.result()
        except submitit.core.utils.UncompletedJobError as exc:
            state = _job_state(job)
            print(f"rank {rank} (job {job.job_id}) did not complete: {state}. "
                  f"Re-run the same command to finish its work. ({str(exc).splitlines()[0]})")
            status = max(status, EXIT_ITEMS_FAILED)
            continue
        except Exception as exc:  # the job raised: systemic stop inside it
            print(f"rank {rank} (job {job.job_id}) failed: {str(exc).strip().splitlines()[-1]}")
            status = EXIT_SYSTEMIC
            continue
        summary = ShardSummary(**result)
        print(summary.line())
        status = max(status, summary.exit_code)
    return status


def _job_state(job: Any) -> str:
    with contextlib.suppress(Exception):
        return str(job.state)
    return "UNKNOWN"


def format_ranges(values: list[int]) -> str:
    """[0,1,2,5] -> '0-2,5'."""
    out: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(out)

