"""The entry point of every stage script: the shared flags, then a local run or a Slurm submission.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from utils.core.config import DefaultsHelpFormatter, add_config_arguments, config_from_args
from utils.core.errors import EXIT_SYSTEMIC, EXIT_USAGE, UsageError, is_systemic
from utils.runner.slurm import SlurmOptions, require_backend, submit
from utils.runner.stage import (
    COMMON_GROUP,
    ConfigT,
    Stage,
    check_base_dir,
    resolve_rank,
    run_shard,
    setup_logging,
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
    """Entry point of every stage script. Returns the exit status."""
    config, slurm = parse_config(stage, argv)
    setup_logging(config.log_level)
    try:
        # cheap checks first: nothing is fetched or loaded for a run that cannot start
        if slurm.slurm:
            require_backend(slurm)
        check_base_dir(config.base_dir)
        config = stage.validate(config)
        if slurm.slurm:
            return submit(stage, config, slurm)
        rank, world_size = resolve_rank(config.rank, config.world_size)
        config = dataclasses.replace(config, rank=rank, world_size=world_size)
        summary = run_shard(stage, config)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a systemic fault before the first item (a full disk): one line, not a traceback
        if not is_systemic(exc):
            raise
        print(f"error: {exc if str(exc) else type(exc).__name__}", file=sys.stderr)
        return EXIT_SYSTEMIC
    print(summary.line(), file=sys.stderr)
    return summary.exit_code
