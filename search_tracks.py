"""Find the tracks of an index that best match a text, from the track embeddings parse_tracks.py stored.

  python search_tracks.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE "a red umbrella" [--top 200] [--min_score S]
  python search_tracks.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --queries_file queries.txt

Each query's best tracks become tracks_subsets/<dataset>-search-<query>[-<hash>]-top<top>[-min<S>].jsonl.gzip
(named after the request, never after the hits found), best first (read by
qa.py, export_tracks.py and the training loader as any subset), with <stem>.report.json beside it listing every
hit's score; the top hits are printed. What it promises: utils/relabel/search.py. Exit status: 0 done, 2 bad
flags or inputs, 3 a systemic fault (the detector's text encoder cannot be built).
"""

import sys
from collections.abc import Sequence

from utils.core.command import run_script
from utils.relabel.commands import SearchCommand

COMMAND = SearchCommand(__doc__)
build_parser = COMMAND.build_parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
