"""Stages 1-3: download videos (yt-dlp), cut them into scenes, optionally filter the scenes.

    python download_videos.py --base_dir $TRACKVERSE_DB --yid_index_fn assets/trackverse-yids-all.txt \\
        --skip_cartoon_filter --skip_aesthetics_filter --world_size 128 --rank 7 [--cookiefile F]

Writes videos_mp4/<yid[:2]>/<yid>.mp4 and videos_segm/<yid[:2]>/<yid>.txt (one ``start,end``
per kept segment; the file exists once the video is segmented, even when empty). The library
is ``utils/ingest/download.py`` (download, the stage), ``utils/ingest/scenes.py`` and ``utils/ingest/filters.py``;
run with ``--help`` for every flag.
"""

import sys

from utils.ingest.stage import DOWNLOAD_VIDEOS_STAGE
from utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(DOWNLOAD_VIDEOS_STAGE))
