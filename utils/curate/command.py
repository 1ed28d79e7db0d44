"""``curate_db.py`` as a command: the index or one sampling action, under the shared command contract."""

from __future__ import annotations

from utils.core.command import Command, Outcome
from utils.core.errors import UsageError
from utils.curate.config import CurateConfig
from utils.curate.index import build_index
from utils.curate.subsets import run_sampling


class CurateCommand(Command[CurateConfig]):
    config_class = CurateConfig

    def run(self, config: CurateConfig) -> Outcome:
        """One index or sampling run: its summary lines and exit code."""
        if config.action == "index":
            if not config.dataset_name:
                raise UsageError("--action index needs --dataset_name (which tracks_meta/<dataset_name> to merge)")
            summary = build_index(config.base_dir, config.dataset_name, config.index_path,
                                  num_workers=max(1, config.num_workers), progress=config.progress,
                                  allow_mixed=config.allow_mixed_vocabularies)
            return Outcome(summary.exit_code, tuple(summary.lines_out()))
        result = run_sampling(config)
        return Outcome(result.exit_code, tuple(result.lines))
