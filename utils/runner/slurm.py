"""Submission through submitit: one job per rank or one job array, checkpointable jobs that
requeue on timeout or pre-emption, and no rank submitted twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable

from utils.core.command import setup_logging
from utils.core.config import option
from utils.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, EXIT_SYSTEMIC, ItemError, UsageError
from utils.core.io import atomic_write_json
from utils.core.layout import DatasetLayout
from utils.runner.stage import (
    ShardSummary,
    Stage,
    StageConfig,
    check_base_dir,
    journal_dir,
    previous_failures,
    run_shard,
    shard_indices,
)
from utils.runner.status import format_ranges

log = logging.getLogger("trackverse")


# ------------------------------------------------------------------------------- Slurm


SLURM_GROUP = "Slurm (with --slurm)"


@dataclass(frozen=True, kw_only=True)
class SlurmOptions:
    """Where and how ``--slurm`` submits (a stage may change the resource defaults)."""

    slurm: bool = option(False, group=SLURM_GROUP,
                         help="submit through submitit: with --rank one job, else all ranks as one job array")
    partition: str | None = option(None, group=SLURM_GROUP, help="Slurm partition")
    account: str | None = option(None, group=SLURM_GROUP, help="Slurm account")
    qos: str | None = option(None, group=SLURM_GROUP, help="Slurm QOS")
    constraint: str | None = option(None, group=SLURM_GROUP, help="Slurm node constraint")
    cpus_per_task: int = option(4, group=SLURM_GROUP, help="CPU cores per job (each rank is one job)")
    gpus_per_node: int = option(0, group=SLURM_GROUP, help="GPUs per job (0: a CPU-only job)")
    mem_gb: float = option(16, group=SLURM_GROUP, help="memory per job, in GB")
    timeout_min: float = option(24 * 60, group=SLURM_GROUP,
                                help="job time limit, in minutes; on expiry the job checkpoints and is requeued")
    slurm_exclude: str | None = option(None, group=SLURM_GROUP, help="nodes to avoid (Slurm --exclude syntax)")
    array_parallelism: int = option(256, group=SLURM_GROUP, help="at most this many array tasks running at once")
    max_requeues: int = option(10, group=SLURM_GROUP, help="requeues allowed per job on timeout (a pre-empted job is always requeued)")
    slurm_log_dir: Path | None = option(None, group=SLURM_GROUP,
                                        help="submitit logs (default <base_dir>/logs/slurm/<stage>)")
    slurm_wait: bool = option(False, group=SLURM_GROUP, help="wait for the submitted jobs and report how each ended")
    # submitit's backend, for tests only: 'local' runs the jobs as background processes of this
    # machine, 'debug' in this process. Without it, --slurm needs Slurm (sbatch on PATH).
    slurm_cluster: str | None = option(None, group=SLURM_GROUP, choices=["slurm", "local", "debug"], hidden=True)


class ShardJob(Checkpointable):
    """One rank of a stage as a submitit job. On timeout or pre-emption submitit calls
    ``checkpoint`` (inherited: resubmit the same call) and requeues; the rerun skips every
    item whose output exists, so finished work is never redone."""

    def __init__(self, stage: Stage):
        self.stage = stage

    def __call__(self, config: StageConfig, rank: int, world_size: int) -> dict:
        setup_logging(config.log_level)
        summary = run_shard(self.stage, dataclasses.replace(config, rank=rank, world_size=world_size),
                            interruptions=(submitit.core.utils.UncompletedJobError,))
        print(summary.line(), file=sys.stderr, flush=True)
        if summary.systemic_error:
            raise RuntimeError(summary.line())
        return asdict(summary)


def job_name(stage: Stage, config: StageConfig, world_size: int) -> str:
    """Stable per (stage key, dataset root, world size): the queued-rank check relies on it."""
    root = hashlib.sha1(str(Path(config.base_dir).resolve()).encode()).hexdigest()[:6]
    return f"tv-{stage.job_key(config)}-w{world_size}-{root}"


def slurm_log_dir(stage: Stage, config: StageConfig, slurm: SlurmOptions) -> Path:
    if slurm.slurm_log_dir is not None:
        return Path(slurm.slurm_log_dir)
    return DatasetLayout(config.base_dir).logs_dir("slurm") / stage.job_key(config)


def _submissions_dir(stage: Stage, config: StageConfig, slurm: SlurmOptions) -> Path:
    return slurm_log_dir(stage, config, slurm) / "submissions"


def _recorded_jobs(stage: Stage, config: StageConfig, slurm: SlurmOptions, name: str) -> dict[str, dict]:
    """job id -> {rank, cluster} from the submission records of this job name."""
    jobs: dict[str, dict] = {}
    folder = _submissions_dir(stage, config, slurm)
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


def active_ranks(stage: Stage, config: StageConfig, slurm: SlurmOptions, name: str) -> dict[int, str]:
    """rank -> job id for ranks of this job name that are queued or running."""
    recorded = _recorded_jobs(stage, config, slurm, name)
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


def ranks_with_work(stage: Stage, config: StageConfig, ranks: list[int], world_size: int,
                    items: Sequence[str]) -> list[int]:
    """Ranks that still have one of ``items`` (the stage's) without output (cheap checks, no processing)."""
    failed = previous_failures(config, stage)
    pending = []
    for rank in ranks:
        for i in shard_indices(len(items), world_size, rank):
            item = items[i]
            try:
                if stage.output_exists(config, item):
                    continue
            except (ItemError, OSError, ValueError):
                pass  # a malformed or unreadable item still needs its failure journaled by the job
            prev = failed.get(item)
            if prev is not None and not config.retry_failed and not prev.get("transient"):
                continue
            pending.append(rank)
            break
    return pending


def make_executor(stage: Stage, config: StageConfig, slurm: SlurmOptions, name: str) -> tuple[submitit.Executor, str]:
    """The submitit executor and the backend's name (``slurm``, ``local`` or ``debug``)."""
    folder = slurm_log_dir(stage, config, slurm)
    folder.mkdir(parents=True, exist_ok=True)
    # Slurm counts whole minutes; submitit signals the job this long before its limit.
    signal_delay = 120 if slurm.timeout_min >= 10 else max(1, int(slurm.timeout_min * 60 / 4))
    if slurm.slurm_cluster == "local":
        # The local backend (tests, one workstation) takes fractional minutes and its own delay.
        executor = submitit.LocalExecutor(folder=folder / "%j", max_num_timeout=slurm.max_requeues)
        executor.update_parameters(
            timeout_min=slurm.timeout_min, signal_delay_s=signal_delay, gpus_per_node=slurm.gpus_per_node,
        )
        return executor, "local"
    # Never submitit's automatic choice: without Slurm it would run the jobs here, in the
    # background, where a plain run started next races with them (require_backend refuses).
    auto = submitit.AutoExecutor(
        folder=folder / "%j", cluster=slurm.slurm_cluster or "slurm", slurm_max_num_timeout=slurm.max_requeues,
    )
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": max(1, math.ceil(slurm.timeout_min)),
        "cpus_per_task": slurm.cpus_per_task,
        "mem_gb": slurm.mem_gb,
        "slurm_array_parallelism": slurm.array_parallelism,
        "slurm_signal_delay_s": signal_delay,
    }
    if slurm.gpus_per_node:
        params["gpus_per_node"] = slurm.gpus_per_node
    optional = {
        "slurm_partition": slurm.partition, "slurm_account": slurm.account, "slurm_qos": slurm.qos,
        "slurm_constraint": slurm.constraint, "slurm_exclude": slurm.slurm_exclude,
    }
    params.update({k: v for k, v in optional.items() if v})
    auto.update_parameters(**params)
    return auto, auto.cluster


def require_backend(slurm: SlurmOptions) -> None:
    """UsageError when ``--slurm`` cannot reach Slurm: ``sbatch`` or ``srun`` not on PATH.
    Without sbatch submitit would run the jobs on this machine, in the background, and the
    command would exit 0 as if they had been queued; without srun (which runs each job's
    command) it refuses with a traceback. The local and debug backends are for tests only,
    behind the hidden ``--slurm_cluster`` flag."""
    if slurm.slurm_cluster in ("local", "debug"):
        return
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise UsageError(
            f"--slurm: Slurm's {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH (no Slurm "
            "client on this machine, or its module is not loaded); nothing was submitted. Run on a Slurm login "
            "node, or drop --slurm to process the items here (--world_size N --rank R for one shard)"
        )


def submit(stage: Stage, config: StageConfig, slurm: SlurmOptions, items: Sequence[str]) -> int:
    """Submit one job (``--rank``) or one array of the ranks that still have one of ``items``
    (the stage's, as listed for this submission) to do."""
    require_backend(slurm)
    check_base_dir(config.base_dir)
    world_size = config.world_size or 1
    if config.rank is not None:
        shard_indices(0, world_size, config.rank)
        ranks = [config.rank]
    else:
        ranks = list(range(world_size))
    name = job_name(stage, config, world_size)
    queued = active_ranks(stage, config, slurm, name)
    for rank in ranks:
        if rank in queued:
            print(f"rank {rank}: already queued or running as job {queued[rank]} ({name}); not submitted again")
    ranks = [r for r in ranks if r not in queued]
    todo = ranks_with_work(stage, config, ranks, world_size, items)
    finished = sorted(set(ranks) - set(todo))
    if finished:
        print(f"{len(finished)} rank(s) have nothing left to do: {format_ranges(finished)}")
    if not todo:
        print(f"nothing to submit for {name}")
        return EXIT_OK

    executor, cluster = make_executor(stage, config, slurm, name)
    job_fn = ShardJob(stage)
    said_aside = io.StringIO()  # submitit prints sbatch's complaints; they go into our one line
    try:
        with contextlib.redirect_stderr(said_aside):
            if len(todo) == 1 and config.rank is not None:
                jobs = [executor.submit(job_fn, config, todo[0], world_size)]
            else:
                jobs = executor.map_array(job_fn, [config] * len(todo), todo, [world_size] * len(todo))
    except submitit.core.utils.FailedJobError as exc:  # sbatch said no: a bad partition, no controller
        said = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise UsageError(f"--slurm: sbatch refused the submission, nothing was submitted: {said}") from None
    except BaseException:
        print(said_aside.getvalue(), end="", file=sys.stderr)
        raise
    print(said_aside.getvalue(), end="", file=sys.stderr)
    record = {
        "name": name, "cluster": cluster, "time": time.time(), "world_size": world_size,
        "jobs": [{"job_id": str(job.job_id), "rank": rank} for job, rank in zip(jobs, todo, strict=True)],
    }
    first = str(jobs[0].job_id).replace("/", "_")
    atomic_write_json(_submissions_dir(stage, config, slurm) / f"{int(time.time() * 1000)}-{first}.json", record)
    print(f"submitted {len(jobs)} job(s) named {name} on {cluster}: "
          + ", ".join(f"rank {r} -> {j.job_id}" for j, r in zip(jobs[:8], todo, strict=False))
          + (" ..." if len(jobs) > 8 else ""))
    print(f"logs: {slurm_log_dir(stage, config, slurm)}/<job id>/ ; journals: {journal_dir(config, stage)}/")
    if not slurm.slurm_wait:
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
