"""Build a small TrackVerse-style dataset end to end on this machine, with every real stage.

It makes three short example videos (scikit-image's photographs of a cat, a coffee cup, a
rocket and an astronaut moving over textured backgrounds), serves them on 127.0.0.1 and then
runs, exactly as a user would: download_videos.py (yt-dlp through --url_template) ->
gdpr_blur_faces.sh -> parse_tracks.py -> extract_tracks.py -> curate_db.py (index, a
class-balanced subset) -> status.py -> qa.py -> relabel_tracks.py (a second vocabulary) ->
search_tracks.py (a text query), and prints where everything went and the search's top hit.

  python example.py                                   # offline: the template detector, no weights
  python example.py --detector owlv2                  # OWLv2 (weights fetched on first use, ~0.6 GB)

When the detector's weights are neither local, cached nor reachable, it says so at once (exit 3)
with the offline options, before building anything.
"""

import sys
from collections.abc import Sequence

from utils.core.command import run_script
from utils.testing.example_run import ExampleCommand

COMMAND = ExampleCommand(__doc__)
build_parser = COMMAND.build_parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
