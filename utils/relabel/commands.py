"""``search_tracks.py`` as a command (the texts to search for are its positional arguments)."""

from __future__ import annotations

from utils.core.command import Command, Outcome
from utils.relabel.search import SearchConfig, result_lines, run_search


class SearchCommand(Command[SearchConfig]):
    config_class = SearchConfig

    def run(self, config: SearchConfig) -> Outcome:
        return Outcome(lines=tuple(result_lines(run_search(config), config.show)))
