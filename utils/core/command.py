"""The command contract every script follows: flags -> a frozen config -> ``run(config)`` -> an
:class:`Outcome` carrying the exit code; and the one place where errors and interrupts become exit
codes and one-line messages.

A script is a :class:`Command` (its config class, its description and ``run``) handed to
:func:`run_script`. Sharded stages extend this in :mod:`utils.runner.cli` (sharding, ``--slurm``);
curation, search, QA and status use it as it is, so they load no runner.

Exit codes (README): 0 done; 1 some items failed (the rest is written); 2 bad flags or inputs,
nothing done; 3 a systemic fault (model missing, disk full); 130 / 143 interrupted by SIGINT /
SIGTERM (what finished is kept, nothing half-written is; re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Generic, TypeVar

from utils.core.config import RawDescriptionDefaultsHelpFormatter, add_config_arguments, config_from_args
from utils.core.errors import (
    EXIT_OK,
    EXIT_SYSTEMIC,
    EXIT_USAGE,
    Interrupted,
    InvalidItemError,
    UsageError,
    is_systemic,
)

C = TypeVar("C")


@dataclass(frozen=True)
class Outcome:
    """What a command did: its exit code, the lines it reports on stdout (results, where they
    went) and on stderr (a shard's summary, warnings)."""

    exit_code: int = EXIT_OK
    lines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def describe(exc: BaseException) -> str:
    """An error as one line: our own errors by their message; others (OSError, MemoryError)
    also by their type, which their text alone does not say."""
    text = str(exc).strip()
    if isinstance(exc, UsageError | InvalidItemError) or type(exc).__module__.startswith("utils."):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def outcome_of_error(exc: BaseException) -> Outcome | None:
    """The mapping of errors to exit codes and messages, written once. ``None``: an error no
    one classified (a bug), which keeps its traceback."""
    if isinstance(exc, Interrupted):
        done = f": {exc.progress}" if exc.progress else ""
        return Outcome(exc.exit_code, notes=(
            f"interrupted by {exc.signal_name}{done}; finished outputs are kept and nothing half-written is: "
            "re-run the same command to resume",))
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C before the handlers were installed
        return outcome_of_error(Interrupted(signal.SIGINT))
    if isinstance(exc, UsageError | InvalidItemError):
        return Outcome(EXIT_USAGE, notes=(f"error: {describe(exc)}",))
    if isinstance(exc, Exception) and is_systemic(exc):
        return Outcome(EXIT_SYSTEMIC, notes=(f"STOPPED: {describe(exc)}",))
    return None


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the block runs (main thread only,
    where Python delivers signals); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (every script)."""
    logging.basicConfig(
        level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr, force=True,
    )


def emit(outcome: Outcome) -> None:
    for line in outcome.lines:
        print(line, flush=True)
    for line in outcome.notes:
        print(line, file=sys.stderr, flush=True)


def run_command(run: Callable[[], Outcome], log_level: str = "INFO") -> int:
    """Run one command under the shared contract: logging set up, interrupts raising, every
    classified error one line with its exit code. Returns the exit code."""
    setup_logging(log_level)
    try:
        with interrupts_raise():
            outcome = run()
    except BaseException as exc:  # classified below; anything else keeps its traceback
        mapped = outcome_of_error(exc)
        if mapped is None:
            raise
        outcome = mapped
    emit(outcome)
    return outcome.exit_code


class Command(Generic[C]):
    """A script: a frozen config class whose fields are its flags (positional arguments
    included), a description (``--help``) and ``run``."""

    config_class: type[C]

    def __init__(self, description: str = ""):
        self.description = description  # the script's docstring, laid out by hand

    def build_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=self.description,
                                         formatter_class=RawDescriptionDefaultsHelpFormatter)
        add_config_arguments(parser, self.config_class)
        return parser

    def parse(self, argv: Sequence[str] | None = None) -> C:
        """The config from the command line (argparse itself exits 2 on unknown flags)."""
        return config_from_args(self.config_class, self.build_parser().parse_args(argv))

    def run(self, config: C) -> Outcome:
        raise NotImplementedError


def run_script(command: Command[Any], argv: Sequence[str] | None = None) -> int:
    """Entry point of a script: parse, then run."""
    config = command.parse(argv)
    return run_command(lambda: command.run(config), getattr(config, "log_level", "INFO"))
