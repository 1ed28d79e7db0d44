"""A tiny stage for testing the launcher: items are names, outputs are text files.

Item names steer behaviour: ``fail*`` fails permanently, ``flaky*`` fails transiently on
its first attempt, ``crash*`` raises an unexpected error, ``nospace*`` a disk-full error;
``lookcrash*`` and ``looknospace*`` do the same when asked whether their output exists;
``hold*`` waits after its first chunk (its temporary written) until :func:`release_path` exists
(a test decides when: no timing involved).
Every attempt leaves a marker file so tests can count how often an item was processed, and an
item processed although its output existed (finished work redone) leaves a ``redone`` one.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.core.config import option
from utils.core.errors import InvalidItemError, ItemError, UsageError
from utils.core.io import atomic_path
from utils.core.layout import inside
from utils.runner.cli import main
from utils.runner.stage import Stage, StageConfig, read_item_list

NAME = re.compile(r"^[a-z0-9_-]{1,40}$")


def output_path(base_dir: Path, item: str) -> Path:
    if not NAME.match(item):
        raise InvalidItemError(f"{item!r} is not a toy item name")
    return inside(Path(base_dir) / "toy", f"{item}.out")


def expected_content(item: str, chunks: int) -> bytes:
    return b"".join(f"{item} chunk {i}\n".encode() * 200 for i in range(chunks)) + b"END\n"


def release_path(base_dir: Path) -> Path:
    """Where a test lets the ``hold*`` items go on."""
    return Path(base_dir) / "toy_release"


def attempts(base_dir: Path, item: str, kind: str = "start") -> int:
    """How often ``item`` was started (``kind="start"``), finished (``"done"``) or processed
    although its output existed (``"redone"``)."""
    folder = Path(base_dir) / "toy_attempts"
    return len(list(folder.glob(f"{item}.{kind}.*"))) if folder.is_dir() else 0


@dataclass(frozen=True, kw_only=True)
class ToyConfig(StageConfig):
    item_list: str = option(help="items, one per line (names steer behaviour: see the module)")
    sleep: float = option(0.0, help="seconds per chunk written")
    chunks: int = option(1, help="chunks each output is written in")
    setup_fails: bool = option(False, help="setup raises (a missing model)")
    teardown_fails: bool = option(False, help="teardown raises")


class ToyStage(Stage[ToyConfig]):
    name = "toy"
    description = "test stage"
    config_class = ToyConfig

    def validate(self, config: ToyConfig) -> ToyConfig:
        if config.chunks < 1:
            raise UsageError("--chunks must be positive")
        return config

    def list_items(self, config: ToyConfig) -> list[str]:
        return read_item_list(config.item_list)

    def output_exists(self, config: ToyConfig, item: str) -> bool:
        if item.startswith("lookcrash"):
            raise KeyError(f"no record of {item}")
        if item.startswith("looknospace"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return output_path(config.base_dir, item).exists()

    def setup(self, config: ToyConfig, items: Sequence[str]) -> ToyConfig:
        if config.setup_fails:
            raise FileNotFoundError("model weights /nowhere/model.pt not found")
        return config

    def teardown(self, resources: ToyConfig) -> None:
        if resources.teardown_fails:
            raise RuntimeError("could not release the GPU (simulated)")

    def process(self, config: ToyConfig, item: str, resources: ToyConfig) -> dict[str, float]:
        marker_dir = Path(config.base_dir) / "toy_attempts"
        marker_dir.mkdir(parents=True, exist_ok=True)
        (marker_dir / f"{item}.start.{os.getpid()}.{uuid.uuid4().hex[:6]}").touch()
        if output_path(config.base_dir, item).exists():
            (marker_dir / f"{item}.redone.{os.getpid()}.{uuid.uuid4().hex[:6]}").touch()
        if item.startswith("fail"):
            raise ItemError(f"{item} is private", category="private")
        if item.startswith("flaky") and attempts(config.base_dir, item) == 1:
            raise ItemError("HTTP 429 Too Many Requests", transient=True, category="rate_limited")
        if item.startswith("crash"):
            raise ValueError(f"unexpected content in {item}")
        if item.startswith("preempt") and attempts(config.base_dir, item) == 1:
            # what submitit's signal handler raises inside the running code when it cannot requeue
            from submitit.core.utils import UncompletedJobError

            raise UncompletedJobError("Job not requeued because: timed-out too many times.")
        if item.startswith("nospace"):
            raise OSError(errno.ENOSPC, "No space left on device")
        with atomic_path(output_path(config.base_dir, item)) as tmp, open(tmp, "wb") as f:
            content = expected_content(item, config.chunks)
            step = max(1, len(content) // config.chunks)
            for i in range(0, len(content), step):
                f.write(content[i:i + step])
                f.flush()
                time.sleep(config.sleep)
                while i == 0 and item.startswith("hold") and not release_path(config.base_dir).exists():
                    time.sleep(0.05)  # held mid-write: its temporary exists
        (marker_dir / f"{item}.done.{os.getpid()}.{uuid.uuid4().hex[:6]}").touch()
        return {"units": 1.0}


STAGE = ToyStage()

if __name__ == "__main__":
    from tests.toy_stage import STAGE as importable_stage  # pickled by reference for submitit

    sys.exit(main(importable_stage))
