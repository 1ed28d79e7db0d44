"""The settings of ``curate_db.py`` as one frozen config: its fields generate the flags
(:mod:`utils.core.config`), and the index and sampling code take it, never the parsed flags.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from utils.core.config import base_dir_option, log_level_option, option
from utils.core.errors import UsageError
from utils.core.layout import (
    DatasetLayout,
    validate_name,
)
from utils.core.resources import available_cpus
from utils.curate.constraints import SamplingConstraints
from utils.records.released import KEY_STYLE_HELP, KEY_STYLES

ACTIONS = ("index", "sample_random", "sample_class_balanced", "sample_max_motion", "sample_min_red")
VERIFIED_ASSET = "trackverse-verified-6perclass.txt"

_SAMPLING = "sampling"
_CONSTRAINTS = "constraints (sample_class_balanced; each adds its suffix to the name)"


def parse_temperature(text: str) -> float:
    """Flag type: 0, a positive number or inf."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a temperature (0, a positive number, or inf)") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"temperature must be 0, positive or inf, got {text!r}")
    return value


def parse_positive(kind: type) -> Callable[[str], float | int]:
    """Flag type: a positive finite ``kind``."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0 or (isinstance(value, float) and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


@dataclass(frozen=True)
class CurateConfig:
    """Every setting of an index or sampling run (one field per flag, same name)."""

    action: str = option(choices=ACTIONS, help="index (merge every video's metadata into --index_file) or a "
                                               "sample_* action (a subset of the index)")
    base_dir: Path = base_dir_option()
    index_file: str | None = option(None, help="the index, relative to --base_dir (default "
                                               "tracks_subsets/<dataset_name>/<dataset_name>-Full.jsonl.gzip)")
    dataset_name: str | None = option(None, help="required by index; sampling defaults to the name the index recorded")
    num_workers: int = option(default_factory=available_cpus,
                              help="index: processes reading and compressing metadata files (default: available CPUs)")
    allow_mixed_vocabularies: bool = option(
        False, help="index: merge metadata made with different vocabularies, detectors or weights (refused "
                    "without it: their class indices and scores do not compare)")
    # --N has no default: a random subset's size only means something next to its index (TrackVerse's
    # 82 184 259 392 are the sizes of its own CB100-CB1000 subsets), and four subsets of sizes nobody
    # asked for are a surprise, not a convenience.
    N: tuple[float, ...] = option((), group=_SAMPLING, parse=parse_positive(float),
                                  help="sample_random, required (no default): subset sizes in thousands of tracks "
                                       "(0.5 = 500 tracks); TrackVerse used 82 184 259 392, the sizes of its "
                                       "CB100-CB1000 subsets. A subset is named by the tracks it holds")
    Nc: tuple[int, ...] = option((100, 300, 500, 1000), group=_SAMPLING, parse=parse_positive(int),
                                 help="sample_class_balanced, sample_max_motion, sample_min_red: at most this many "
                                      "tracks per class (a class is a label id); one subset per value (default: "
                                      "100 300 500 1000)")
    temperature: tuple[float, ...] = option((0.0,), group=_SAMPLING, parse=parse_temperature,
                                            help="sample_class_balanced: 0 = highest scores, inf = uniform within "
                                                 "class, T > 0 = softmax(score / T) without replacement; several "
                                                 "values allowed (default: 0)")
    seed: int = option(0, group=_SAMPLING, help="random generator seed of sample_random and of "
                                                "sample_class_balanced with T > 0 (default: 0)")
    verified_list: str | None = option(None, group=_SAMPLING,
                                       help=f"tracks of the verified evaluation videos, never sampled (first 11 "
                                            f"characters of each line: a YouTube id); default: the pinned "
                                            f"{VERIFIED_ASSET}")
    no_plots: bool = option(False, group=_SAMPLING, help="skip the class-distribution PNGs")
    key_style: str = option("compact", group=_SAMPLING, choices=KEY_STYLES, help=KEY_STYLE_HELP)
    min_motion: float = option(0.0, group=_CONSTRAINTS,
                               help="per-track motion >= this, in pixels of optical flow between frames 1/16 s "
                                    "apart at a short side of 360 px (visual_metrics.py --metric motion, column "
                                    "--motion_column; default: 0, off)")
    motion_column: str = option("q90", group=_CONSTRAINTS,
                                help="motion statistic used by --min_motion and sample_max_motion (letters and "
                                     "digits; default: q90)")
    min_nn_dist: float = option(0.0, group=_CONSTRAINTS,
                                help="Euclidean distance between unit-length embeddings (0 to 2, sqrt(2 - 2 cosine)) to "
                                     "every track already selected in the class >= this (visual_metrics.py --metric "
                                     "embeddings; default: 0, off)")
    embedding_column: str = option("embedding", group=_CONSTRAINTS,
                                   help="embedding column used by --min_nn_dist and sample_min_red (default: "
                                        "embedding)")
    max_spt_iou: float = option(1.0, group=_CONSTRAINTS,
                                help="spatio-temporal IoU with every track already selected in the class from "
                                     "the same video <= this (default: 1, off)")
    iou_tbuff: float = option(math.inf, group=_CONSTRAINTS,
                              help="seconds between paired frames before the IoU decays (default: inf, no decay)")
    max_swaps: int | None = option(None, group=_SAMPLING, parse=parse_positive(int),
                                   help="sample_min_red: at most this many swaps per class (default: 2 x Nc)")
    max_embedding_gb: float | None = option(None, group=_SAMPLING, parse=parse_positive(float),
                                            help="sample_min_red and --min_nn_dist: embeddings held in memory at "
                                                 "once; beyond it they are read again per group of classes "
                                                 "(default: half the memory free at the start)")
    log_level: str = log_level_option()
    progress: bool = True  # progress bars on stderr (not a flag)

    @property
    def constraints(self) -> SamplingConstraints:
        """The constraint flags; raises ValueError for a NaN or a non-positive ``iou_tbuff``."""
        return SamplingConstraints(min_motion=self.min_motion, min_nn_dist=self.min_nn_dist,
                                   max_spt_iou=self.max_spt_iou, iou_tbuff=self.iou_tbuff)

    @property
    def index_path(self) -> Path:
        """``--index_file`` under ``--base_dir``, else the dataset's default index name."""
        layout = DatasetLayout(self.base_dir)
        if self.index_file:
            return layout.relative(self.index_file)
        if not self.dataset_name:
            raise UsageError("give --index_file (or --dataset_name for the default index name)")
        name = validate_name(self.dataset_name)
        return layout.relative(f"tracks_subsets/{name}/{name}-Full.jsonl.gzip")
