"""Find the tracks of an index that best match a text, from the track embeddings parse_tracks.py stored.

  python search_tracks.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE "a red umbrella" [--top 200] [--min_score S]
  python search_tracks.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --queries_file queries.txt

Each query's best tracks become tracks_subsets/<dataset>-search-<query>[-<hash>]-top<top>[-min<S>].jsonl.gzip
(named after the request, never after the hits found), best first (read by
qa.py, export_tracks.py and the training loader as any subset), with <stem>.report.json beside it listing every
hit's score; the top hits are printed. What it promises: utils/relabel/search.py. Exit status: 0 done, 2 bad
flags or inputs, 3 a systemic fault (the detector's text encoder cannot be built).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from utils.core.config import RawDescriptionDefaultsHelpFormatter, add_config_arguments, config_from_args
from utils.core.errors import EXIT_OK, EXIT_SYSTEMIC, EXIT_USAGE, InvalidItemError, UsageError, is_systemic
from utils.relabel.search import SearchConfig, print_results, run_search
from utils.runner.stage import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=RawDescriptionDefaultsHelpFormatter)
    parser.add_argument("query", nargs="*", help="texts to search for, e.g. 'a red umbrella'")
    add_config_arguments(parser, SearchConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(SearchConfig, args, queries=tuple(args.query))
    setup_logging(config.log_level)
    try:
        results = run_search(config)
    except (UsageError, InvalidItemError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if not is_systemic(exc):
            raise
        print(f"STOPPED: {exc}", file=sys.stderr)
        return EXIT_SYSTEMIC
    print_results(results, config.show)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
