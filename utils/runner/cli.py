"""The entry point of every stage script: the shared flags, then a local run or a Slurm submission.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.core.errors import EXIT_USAGE, UsageError
from utils.core.layout import default_base_dir
from utils.runner.slurm import submit
from utils.runner.stage import Stage, resolve_rank, run_shard, setup_logging

log = logging.getLogger("trackverse")


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
