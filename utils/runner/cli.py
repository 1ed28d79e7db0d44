"""The entry point of every stage script: the shared flags, then a local run or a Slurm submission.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence

from utils.core.command import Outcome, run_command
from utils.core.config import DefaultsHelpFormatter, add_config_arguments, config_from_args
from utils.runner.slurm import SlurmOptions, require_backend, submit
from utils.runner.stage import (
    COMMON_GROUP,
    ConfigT,
    Stage,
    check_base_dir,
    resolve_rank,
    run_shard,
    share_of,
)

log = logging.getLogger("trackverse")


def build_parser(stage: Stage) -> argparse.ArgumentParser:
    """The stage's flags (its config's fields), then the common ones, then Slurm's."""
    parser = argparse.ArgumentParser(
        description=stage.description or stage.name,
        formatter_class=DefaultsHelpFormatter,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    add_config_arguments(parser, stage.config_class, groups, skip_groups=[COMMON_GROUP])
    add_config_arguments(parser, stage.config_class, groups, only_groups=[COMMON_GROUP])
    add_config_arguments(parser, SlurmOptions, groups, defaults=stage.default_slurm)
    return parser


def parse_config(stage: Stage[ConfigT], argv: Sequence[str] | None = None) -> tuple[ConfigT, SlurmOptions]:
    """The stage's config and the Slurm options from the command line (not yet validated)."""
    args = build_parser(stage).parse_args(argv)
    return config_from_args(stage.config_class, args), config_from_args(SlurmOptions, args)


def main(stage: Stage, argv: Sequence[str] | None = None) -> int:
    """Entry point of every stage script: the command contract (:mod:`utils.core.command`)
    extended with sharding and ``--slurm``. Returns the exit status."""
    config, slurm = parse_config(stage, argv)
    return run_command(lambda: run_stage(stage, config, slurm), config.log_level)


def run_stage(stage: Stage[ConfigT], config: ConfigT, slurm: SlurmOptions) -> Outcome:
    """Checks, then a Slurm submission or this rank's shard."""
    # cheap checks first: nothing is fetched or loaded for a run that cannot start
    if slurm.slurm:
        require_backend(slurm)
    check_base_dir(config.base_dir)
    config = stage.validate(config)
    if slurm.slurm:
        items = stage.list_items(config)
        stage.check_items(config, share_of(items, config.rank, config.world_size))
        return Outcome(submit(stage, config, slurm, items))
    rank, world_size = resolve_rank(config.rank, config.world_size)
    config = dataclasses.replace(config, rank=rank, world_size=world_size)
    items = stage.list_items(config)
    stage.check_items(config, share_of(items, rank, world_size))
    summary = run_shard(stage, config, items)
    return Outcome(summary.exit_code, notes=(summary.line(),))
