"""``status.py`` as a command: where every stage stands, read from the journals (read-only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from utils.core.command import Command, Outcome
from utils.core.config import base_dir_option, option
from utils.runner.status import as_dict, check_status_inputs, dataset_status, render


@dataclass(frozen=True)
class StatusConfig:
    base_dir: Path = base_dir_option()
    dataset_name: str | None = option(None, help="only this dataset's per-dataset stages (default: every dataset's)")
    stale_minutes: float = option(30.0, help="a running rank whose journal is silent for longer than this many "
                                             "minutes is reported")
    json: bool = option(False, help="machine-readable output")


class StatusCommand(Command[StatusConfig]):
    config_class = StatusConfig

    def run(self, config: StatusConfig) -> Outcome:
        base_dir = Path(config.base_dir)
        check_status_inputs(base_dir, config.dataset_name)
        statuses = dataset_status(base_dir, config.dataset_name, stale_s=config.stale_minutes * 60)
        return Outcome(lines=(json.dumps(as_dict(statuses), indent=1) if config.json else render(statuses),))
