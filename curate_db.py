"""Stage 5: index every track's metadata, then sample random, class-balanced, max-motion and
minimum-redundancy subsets.

  INDEX_FILE=tracks_subsets/TrackVerseLVIS/TrackVerseLVIS-Full-4M.jsonl.gzip   # relative to --base_dir
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --dataset_name TrackVerseLVIS \\
      --action index --num_workers 16
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --action sample_random --N 82 184 259 392
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --action sample_class_balanced \\
      --Nc 100 300 500 1000 [--temperature 0 0.1 inf] [--min_motion 1.] [--min_nn_dist D] [--max_spt_iou V --iou_tbuff S]
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --action sample_max_motion \
      --Nc 100 300 500 1000 [--motion_column q90]          # per class, the Nc tracks that move most
  python curate_db.py --base_dir $TRACKVERSE_DB --index_file $INDEX_FILE --action sample_min_red \
      --Nc 100 300 500 1000 [--max_swaps S]                # per class, Nc tracks far apart in embedding space

What each action writes and promises: utils/curate/. Exit status: 0 all good, 1 the index
skipped damaged files or invalid records (the index is still written), 2 bad flags or inputs,
3 a systemic fault (disk full).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.core.assets import AssetError, resolve_asset
from utils.core.errors import EXIT_SYSTEMIC, EXIT_USAGE, UsageError, is_systemic
from utils.core.layout import DatasetLayout, InvalidItemError, validate_name
from utils.curate.constraints import SamplingConstraints
from utils.curate.index import build_index
from utils.curate.report import motion_name
from utils.curate.subsets import VERIFIED_ASSET, SamplingOptions, read_verified_yids, run_sampling
from utils.runner.cli import add_base_dir_argument, add_log_level_argument
from utils.runner.stage import setup_logging

ACTIONS = ("index", "sample_random", "sample_class_balanced", "sample_max_motion", "sample_min_red")


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a temperature (0, a positive number, or inf)") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"temperature must be 0, positive or inf, got {text!r}")
    return value


def _positive(kind: type) -> Callable[[str], float | int]:
    """argparse type: a positive finite ``kind``."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0 or (isinstance(value, float) and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--action", required=True, choices=ACTIONS)
    add_base_dir_argument(parser)
    parser.add_argument("--index_file", default=None,
                        help="the index, relative to --base_dir (default "
                             "tracks_subsets/<dataset_name>/<dataset_name>-Full.jsonl.gzip)")
    parser.add_argument("--dataset_name", default=None,
                        help="required by index; sampling defaults to the name the index recorded")
    parser.add_argument("--num_workers", type=int, default=default_workers(),
                        help="index: processes reading and compressing metadata files (default: available CPUs)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--N", type=_positive(float), nargs="+", default=[82, 184, 259, 392],
                          help="sample_random: subset sizes in thousands of tracks")
    sampling.add_argument("--Nc", type=_positive(int), nargs="+", default=[100, 300, 500, 1000],
                          help="sample_class_balanced, sample_max_motion, sample_min_red: at most this many "
                               "tracks per class")
    sampling.add_argument("--temperature", type=_temperature, nargs="+", default=[0.0],
                          help="sample_class_balanced: 0 = highest scores, inf = uniform within class, "
                               "T > 0 = softmax(score / T) without replacement; several values allowed")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--verified_list", default=None,
                          help=f"tracks of the verified evaluation videos, never sampled (first 11 characters of "
                               f"each line: a YouTube id); default: the pinned {VERIFIED_ASSET}")
    sampling.add_argument("--no_plots", action="store_true", help="skip the class-distribution PNGs")
    cons = parser.add_argument_group("constraints (sample_class_balanced; each adds its suffix to the name)")
    cons.add_argument("--min_motion", type=float, default=0.0,
                      help="per-track motion (visual_metrics.py --metric motion, column --motion_column) >= this")
    cons.add_argument("--motion_column", default="q90",
                      help="motion statistic used by --min_motion and sample_max_motion (letters and digits)")
    cons.add_argument("--min_nn_dist", type=float, default=0.0,
                      help="embedding distance to every track already selected in the class >= this "
                           "(visual_metrics.py --metric embeddings)")
    cons.add_argument("--embedding_column", default="embedding",
                      help="embedding column used by --min_nn_dist and sample_min_red")
    cons.add_argument("--max_spt_iou", type=float, default=1.0,
                      help="spatio-temporal IoU with every track already selected in the class from the same "
                           "video <= this")
    cons.add_argument("--iou_tbuff", type=float, default=math.inf,
                      help="seconds between paired frames before the IoU decays (inf: no decay)")
    sampling.add_argument("--max_swaps", type=_positive(int), default=None,
                          help="sample_min_red: at most this many swaps per class (default: 2 x Nc)")
    sampling.add_argument("--max_embedding_gb", type=_positive(float), default=None,
                          help="sample_min_red and --min_nn_dist: embeddings held in memory at once; beyond it "
                               "they are read again per group of classes (default: half the memory free at the start)")
    add_log_level_argument(parser)
    return parser


def _index_path(args: argparse.Namespace, layout: DatasetLayout) -> Path:
    if args.index_file:
        return layout.relative(args.index_file)
    if not args.dataset_name:
        raise UsageError("give --index_file (or --dataset_name for the default index name)")
    name = validate_name(args.dataset_name)
    return layout.relative(f"tracks_subsets/{name}/{name}-Full.jsonl.gzip")


def _options(args: argparse.Namespace) -> SamplingOptions:
    try:
        constraints = SamplingConstraints(
            min_motion=args.min_motion, min_nn_dist=args.min_nn_dist,
            max_spt_iou=args.max_spt_iou, iou_tbuff=args.iou_tbuff,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.action != "sample_class_balanced" and constraints.suffix():
        raise UsageError("constraints (--min_motion, --min_nn_dist, --max_spt_iou) apply to sample_class_balanced")
    if args.action in ("sample_max_motion", "sample_min_red") and args.temperature != [0.0]:
        raise UsageError(f"--temperature applies to sample_class_balanced, not {args.action} "
                         "(sample_min_red starts from the T=0 ranking)")
    if args.action != "sample_min_red" and args.max_swaps is not None:
        raise UsageError("--max_swaps applies to sample_min_red")
    if args.action == "sample_max_motion":
        try:
            motion_name(args.motion_column)
        except ValueError as exc:
            raise UsageError(f"--motion_column: {exc}") from exc
    if not 0 <= args.max_spt_iou <= 1:
        raise UsageError(f"--max_spt_iou must be in [0, 1], got {args.max_spt_iou}")
    try:
        verified = resolve_asset(args.verified_list, VERIFIED_ASSET)
    except AssetError as exc:
        raise UsageError(f"verified evaluation list: {exc}") from exc
    temperatures = list(dict.fromkeys(args.temperature))
    return SamplingOptions(
        action=args.action, N=list(dict.fromkeys(args.N)), Nc=list(dict.fromkeys(args.Nc)),
        temperatures=temperatures, seed=args.seed, constraints=constraints,
        motion_column=args.motion_column, embedding_column=args.embedding_column, max_swaps=args.max_swaps,
        max_embedding_gb=args.max_embedding_gb,
        dataset_name=args.dataset_name, verified_yids=read_verified_yids(verified),
        verified_source=str(verified), plots=not args.no_plots,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        layout = DatasetLayout(args.base_dir)
        index_path = _index_path(args, layout)
        if args.action == "index":
            if not args.dataset_name:
                raise UsageError("--action index needs --dataset_name (which tracks_meta/<dataset_name> to merge)")
            summary = build_index(args.base_dir, args.dataset_name, index_path,
                                  num_workers=max(1, args.num_workers))
            print("\n".join(summary.lines_out()), flush=True)
            return summary.exit_code
        result = run_sampling(args.base_dir, index_path, _options(args))
        print("\n".join(result.lines), flush=True)
        return result.exit_code
    except (UsageError, InvalidItemError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if is_systemic(exc):
            print(f"STOPPED: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_SYSTEMIC
        raise


if __name__ == "__main__":
    sys.exit(main())
