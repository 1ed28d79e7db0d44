"""curate_db.py's sampling actions, one object each: what it reads (index columns, metric files),
which flags it takes and checks, and how it selects its subsets' rows. :mod:`utils.curate.subsets`
runs one and writes what it selected."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from utils.core.assets import AssetError, resolve_asset
from utils.core.errors import UsageError
from utils.core.layout import datasets_in, describe_datasets, require_dataset_root, validate_name
from utils.core.progress import progress_bar
from utils.core.resources import available_memory_bytes
from utils.curate.config import VERIFIED_ASSET, CurateConfig
from utils.curate.constraints import (
    NO_VALUE,
    ClassVectors,
    SamplingConstraints,
    WalkInputs,
    motion_levels,
    picks_by_level,
    walk_class,
)
from utils.curate.report import motion_name, subset_name
from utils.curate.sampling import (
    MIN_RED_SWAPS_PER_TRACK,
    eligible_by_video,
    format_number,
    min_redundancy,
    rank_within_class,
    sample_random,
)
from utils.records.index_file import IndexReader, TrackTable, check_index
from utils.records.metrics_store import (
    EMBEDDINGS,
    MOTION,
    VectorSource,
    load_metric_columns,
    metric_dir,
    metric_files,
)

# companion columns every action reads (tid and fn only to join metric files)
BASE_COLUMNS = ("yid", "label", "label_id", "offset", "length", "crc32", "ulen")
METRIC_JOIN_COLUMNS = ("tid", "fn")


@dataclass
class SubsetPlan:
    """One subset to write: its name, its rows (ascending) and what the summary needs."""

    name: str
    rows: np.ndarray
    rounds: np.ndarray  # per selected row: the relaxation round that accepted it
    available: np.ndarray  # per class code: tracks the subset could draw from
    params: dict
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # extra facts for the summary line



class SamplingRun:
    """What every action of one run shares: the index companion, the classes, the tracks of the
    verified videos left out, the exclusions counted so far and the summary lines."""

    def __init__(self, opts: CurateConfig, table: TrackTable, verified_yids: set[str], lines: list[str]):
        assert opts.dataset_name, "validate_sampling resolves the dataset name"
        self.base_dir = Path(opts.base_dir)
        self.table = table
        self.opts = opts
        self.lines = lines
        self.n = len(table)
        self.classes = table.classes
        self.codes = self.classes.codes
        self.video_codes, video_names = table.videos
        verified = eligible_by_video(np.asarray(video_names, dtype=object), verified_yids)
        self.not_verified = verified[self.video_codes] if self.n else np.ones(0, dtype=bool)
        self.exclusions: dict[str, int] = {"verified_videos": int(self.n - self.not_verified.sum())}
        self.dataset_name: str = opts.dataset_name

    def class_count(self) -> int:
        return len(self.classes)

    def class_notes(self) -> list[str]:
        """How the classes were grouped, for the summary: tracks without a label id, ids that
        carry several names."""
        classes, notes = self.classes, []
        if classes.rows_without_id:
            by_name = sum(cid is None for cid in classes.ids)
            notes.append(f"{classes.rows_without_id} tracks have no label id (top10_lbl): grouped by their name "
                         f"into {by_name} {'class' if by_name == 1 else 'classes'}, apart from the "
                         f"{len(classes) - by_name} label ids")
        if classes.several_names:
            shown = "; ".join(f"{cid}: {', '.join(names)}" for cid, names in list(classes.several_names.items())[:5])
            more = len(classes.several_names) - 5
            notes.append(f"WARNING: {len(classes.several_names)} label ids carry several names ({shown}"
                         f"{f'; {more} more' if more > 0 else ''}): grouped by id; was the index built from "
                         "one vocabulary?")
        return notes

    def class_key(self) -> dict:
        """How classes are defined, for every report."""
        classes = self.classes
        return {"by": "label_id" if classes.by_id else "label_id, else label (records without an id)",
                "tracks_without_label_id": classes.rows_without_id,
                "ids_with_several_names": {str(k): v for k, v in classes.several_names.items()}}

    def available(self, mask: np.ndarray) -> np.ndarray:
        codes = self.codes[mask]
        return np.bincount(codes[codes >= 0], minlength=self.class_count())

    def metric_report(self, line: str) -> None:
        self.lines.append("  " + line)

    def classified(self) -> np.ndarray:
        """Tracks outside the verified videos that have a class (counts those without one)."""
        self.exclusions["no_class"] = int((self.not_verified & (self.codes < 0)).sum())
        return self.not_verified & (self.codes >= 0)

    def progress(self, total: int, desc: str) -> tqdm:
        return progress_bar(total=total, desc=desc, unit="class", enabled=self.opts.progress)

    def class_vectors(self, rows: np.ndarray, tids: pa.Array, fns: pa.Array) -> ClassVectors:
        """Embeddings of ``rows`` within ``--max_embedding_gb`` (default: half the memory free now)."""
        opts = self.opts
        source = VectorSource(self.base_dir, self.dataset_name, EMBEDDINGS, opts.embedding_column, tids, fns)
        budget = opts.max_embedding_gb * 2**30 if opts.max_embedding_gb else (available_memory_bytes() or 2**34) / 2
        vectors = ClassVectors(source, rows, self.codes, budget)
        self.metric_report(vectors.report.line())
        if len(vectors.groups) > 1:
            self.metric_report(
                f"embeddings: {vectors.order.size} tracks x {vectors.dim} floats = {vectors.bytes_needed / 2**30:.1f} GiB "
                f"> {budget / 2**30:.1f} GiB (--max_embedding_gb): read in {len(vectors.groups)} groups of classes")
        return vectors



class SamplingAction:
    """One sampling action: its name (the ``--action`` value), the companion columns and metric
    files it reads, the checks of the flags that concern it, and its selection."""

    name: str = ""

    def check(self, opts: CurateConfig) -> None:
        """UsageError for flags this action does not take or takes otherwise (before any reading)."""
        if opts.N:
            raise UsageError(f"--N applies to sample_random; {self.name} takes --Nc (tracks per class)")
        if self.name != "sample_min_red" and opts.max_swaps is not None:
            raise UsageError("--max_swaps applies to sample_min_red")

    def columns(self, opts: CurateConfig) -> tuple[str, ...]:
        return BASE_COLUMNS

    def metrics(self, opts: CurateConfig) -> tuple[str, ...]:
        """The metric files (``visual_metrics.py --metric``) it needs."""
        return ()

    def select(self, run: SamplingRun) -> list[SubsetPlan]:
        raise NotImplementedError


def _no_constraints(opts: CurateConfig, name: str) -> None:
    if opts.constraints.suffix():
        raise UsageError("constraints (--min_motion, --min_nn_dist, --max_spt_iou) apply to sample_class_balanced")
    if opts.temperature != (0.0,):
        raise UsageError(f"--temperature applies to sample_class_balanced, not {name} "
                         "(sample_min_red starts from the T=0 ranking)")


class RandomSubsets(SamplingAction):
    name = "sample_random"

    def check(self, opts: CurateConfig) -> None:
        if not opts.N:
            raise UsageError("sample_random needs --N, the subset sizes in thousands of tracks (e.g. --N 0.5 for 500 "
                             "tracks; TrackVerse used --N 82 184 259 392)")
        if opts.constraints.suffix():
            raise UsageError("constraints (--min_motion, --min_nn_dist, --max_spt_iou) apply to sample_class_balanced")
        if opts.max_swaps is not None:
            raise UsageError("--max_swaps applies to sample_min_red")

    def select(self, run: SamplingRun) -> list[SubsetPlan]:
        """One subset per ``--N``, named by the tracks it holds. Sizes that all come out as every
        eligible track are written once; two different samples that would share a name are
        refused (UsageError) before anything is written."""
        plans: list[SubsetPlan] = []
        by_name: dict[str, SubsetPlan] = {}
        avail = run.available(run.not_verified)
        for n_k in run.opts.N:
            want = int(round(float(n_k) * 1000))
            rows, short = sample_random(run.n, want, seed=run.opts.seed, eligible_mask=run.not_verified)
            name = subset_name(run.dataset_name, "random", total=rows.size)
            same = by_name.get(name)
            if same is not None:
                if np.array_equal(same.rows, rows):
                    same.notes.append(f"also what --N {format_number(n_k)} gives")
                    continue
                raise UsageError(
                    f"--N {format_number(same.params['N_thousands'])} and {format_number(n_k)} would both be named "
                    f"{name} (from 1,000 tracks up, names count whole thousands): give sizes in different "
                    "thousands")
            plan = SubsetPlan(
                name=name, rows=rows, rounds=np.zeros(rows.size, dtype=np.int8), available=avail,
                params={"N_thousands": float(n_k), "requested": want, "seed": run.opts.seed},
            )
            if short:
                plan.warnings.append(f"only {rows.size} eligible tracks for {want} requested (--N {format_number(n_k)})")
            by_name[name] = plan
            plans.append(plan)
        return plans



class ClassBalancedSubsets(SamplingAction):
    name = "sample_class_balanced"

    def columns(self, opts: CurateConfig) -> tuple[str, ...]:
        cons = opts.constraints
        joins = METRIC_JOIN_COLUMNS if cons.uses_motion or cons.uses_diversity else ()
        return (*BASE_COLUMNS, "score", *joins)

    def metrics(self, opts: CurateConfig) -> tuple[str, ...]:
        cons = opts.constraints
        return (MOTION,) * cons.uses_motion + (EMBEDDINGS,) * cons.uses_diversity

    def select(self, run: SamplingRun) -> list[SubsetPlan]:
        opts, cons = run.opts, run.opts.constraints
        # The ranking sees every track with a class outside the verified videos, constraints or
        # not, so that a constrained subset follows the same order as its unconstrained twin.
        ranked = run.not_verified & (run.codes >= 0)
        run.exclusions["no_class"] = int((run.not_verified & (run.codes < 0)).sum())
        usable = ranked.copy()  # ... and only tracks with the metric values a constraint needs are picked
        score = run.table.numpy("score")
        if cons.uses_motion or cons.uses_diversity:
            tids, fns = run.table.strings("tid"), run.table.strings("fn")
        level = None
        if cons.uses_motion:
            metric = load_metric_columns(run.base_dir, run.dataset_name, MOTION, [opts.motion_column], tids, fns)
            run.metric_report(metric.report.line())
            level = motion_levels(metric.values[opts.motion_column], cons.min_motion)
            run.exclusions["no_motion_value"] = int((usable & (level == NO_VALUE)).sum())
            usable &= level != NO_VALUE
        inputs = WalkInputs(constraints=cons, video_codes=run.video_codes, level=level)
        if cons.uses_diversity:
            need = np.flatnonzero(usable)
            vectors = run.class_vectors(need, tids, fns)
            run.exclusions["no_embedding"] = int(need.size - vectors.present[need].sum())
            usable[need[~vectors.present[need]]] = False
            inputs.vectors = vectors
        sequential = cons.uses_diversity or cons.uses_overlap
        nc_max = max(int(nc) for nc in opts.Nc)
        plans = []
        with contextlib.ExitStack() as stack:
            if cons.uses_overlap:
                reader = stack.enter_context(IndexReader(run.table))

                def geometry(row: int) -> tuple[np.ndarray, np.ndarray]:
                    rec = reader.record(row)
                    return np.asarray(rec.track_ts, np.float64), np.asarray(rec.track_bbox, np.float64)

                inputs.geometry = geometry
            for temperature in opts.temperature:
                eligible = ranked
                if not math.isinf(temperature):
                    eligible = ranked & np.isfinite(score)
                    run.exclusions["no_score"] = int((ranked & ~np.isfinite(score)).sum())
                ranks = rank_within_class(run.codes, None if math.isinf(temperature) else np.nan_to_num(score),
                                          temperature, seed=opts.seed, eligible_mask=eligible)
                ranks[~usable] = -1
                if sequential:
                    pick, rounds = self._walk(run, ranks, nc_max, inputs, temperature)
                elif level is not None:
                    pick, rounds = picks_by_level(run.codes, ranks, level), level
                else:
                    pick, rounds = ranks, np.zeros(run.n, dtype=np.int8)
                avail = run.available(eligible & usable)
                for nc in opts.Nc:
                    rows = np.flatnonzero((pick >= 0) & (pick < int(nc)))
                    name = subset_name(run.dataset_name, "class_balanced", Nc=int(nc), total=rows.size,
                                       temperature=temperature, constraints=cons)
                    plans.append(SubsetPlan(
                        name=name, rows=rows, rounds=np.asarray(rounds[rows], dtype=np.int8), available=avail,
                        params={"Nc": int(nc), "temperature": format_number(temperature), "seed": opts.seed,
                                "constraints": _constraints_dict(cons, opts)},
                    ))
        return plans

    def _walk(self, run: SamplingRun, ranks: np.ndarray, nc_max: int, inputs: WalkInputs, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(ranks >= 0)
        order = rows[np.lexsort((ranks[rows], run.codes[rows]))]
        codes = run.codes[order]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
        pick = np.full(run.n, -1, dtype=np.int64)
        rounds = np.zeros(run.n, dtype=np.int8)
        classes = range(bounds.size - 1)
        for c in progress_bar(classes, desc=f"constraints T={format_number(temperature)}", unit="class",
                              enabled=run.opts.progress):
            if inputs.vectors is not None and bounds[c] < codes.size:
                inputs.vectors.select_class(int(codes[bounds[c]]))
            accepted, acc_rounds = walk_class(order[bounds[c]:bounds[c + 1]], nc_max, inputs)
            pick[accepted] = np.arange(len(accepted))
            rounds[accepted] = acc_rounds
        return pick, rounds




class MaxMotionSubsets(SamplingAction):
    name = "sample_max_motion"

    def check(self, opts: CurateConfig) -> None:
        super().check(opts)
        _no_constraints(opts, self.name)
        try:
            motion_name(opts.motion_column)
        except ValueError as exc:
            raise UsageError(f"--motion_column: {exc}") from exc

    def columns(self, opts: CurateConfig) -> tuple[str, ...]:
        return (*BASE_COLUMNS, *METRIC_JOIN_COLUMNS)

    def metrics(self, opts: CurateConfig) -> tuple[str, ...]:
        return (MOTION,)

    def select(self, run: SamplingRun) -> list[SubsetPlan]:
        opts = run.opts
        candidates = run.classified()
        tids, fns = run.table.strings("tid"), run.table.strings("fn")
        metric = load_metric_columns(run.base_dir, run.dataset_name, MOTION, [opts.motion_column], tids, fns)
        run.metric_report(metric.report.line())
        motion = metric.values[opts.motion_column]
        usable = candidates & np.isfinite(motion)
        run.exclusions["no_motion_value"] = int((candidates & ~usable).sum())
        ranks = rank_within_class(run.codes, np.where(usable, motion, 0.0), 0.0, eligible_mask=usable)
        avail = run.available(usable)
        plans = []
        for nc in opts.Nc:
            rows = np.flatnonzero((ranks >= 0) & (ranks < int(nc)))
            picked = motion[rows]
            stats = {"min": float(picked.min()), "median": float(np.median(picked))} if rows.size else {}
            plans.append(SubsetPlan(
                name=subset_name(run.dataset_name, "max_motion", Nc=int(nc), total=rows.size,
                                 motion_column=opts.motion_column),
                rows=rows, rounds=np.zeros(rows.size, dtype=np.int8), available=avail,
                params={"Nc": int(nc), "motion_column": opts.motion_column, "selected_motion": stats},
                notes=[f"{opts.motion_column} of the selected tracks: lowest {stats['min']:.3g}, "
                       f"median {stats['median']:.3g}"] if stats else [],
            ))
        return plans



class MinRedSubsets(SamplingAction):
    name = "sample_min_red"

    def check(self, opts: CurateConfig) -> None:
        super().check(opts)
        _no_constraints(opts, self.name)

    def columns(self, opts: CurateConfig) -> tuple[str, ...]:
        return (*BASE_COLUMNS, "score", *METRIC_JOIN_COLUMNS)

    def metrics(self, opts: CurateConfig) -> tuple[str, ...]:
        return (EMBEDDINGS,)

    def select(self, run: SamplingRun) -> list[SubsetPlan]:
        opts = run.opts
        ranked = run.classified()
        score = run.table.numpy("score")
        run.exclusions["no_score"] = int((ranked & ~np.isfinite(score)).sum())
        ranked &= np.isfinite(score)
        ranks = rank_within_class(run.codes, np.nan_to_num(score), 0.0, eligible_mask=ranked)
        rows = np.flatnonzero(ranks >= 0)
        order = rows[np.lexsort((ranks[rows], run.codes[rows]))]  # by class, best score first
        vectors = run.class_vectors(order, run.table.strings("tid"), run.table.strings("fn"))
        present = vectors.present[order]
        run.exclusions["no_embedding"] = int(order.size - present.sum())
        avail = run.available(vectors.present)
        codes = run.codes[order]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True]) if order.size else np.zeros(1, np.int64)
        nc_values = [int(v) for v in opts.Nc]
        picked: dict[int, list[np.ndarray]] = {nc: [] for nc in nc_values}
        per_class: dict[int, list[dict]] = {nc: [] for nc in nc_values}
        bar = run.progress(bounds.size - 1, "min-red")
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            candidates = order[lo:hi][present[lo:hi]]
            block = vectors.vectors(candidates) if candidates.size > min(nc_values) else None
            for nc in nc_values:
                if candidates.size <= nc:
                    picked[nc].append(candidates)
                    continue
                result = min_redundancy(block, nc, max_swaps=opts.max_swaps)
                picked[nc].append(candidates[result.selected])
                per_class[nc].append({
                    "label_id": run.classes.ids[int(codes[lo])], "label": run.classes.names[int(codes[lo])],
                    "candidates": int(candidates.size),
                    "start_min_dist": round(result.start_min_dist, 6), "min_dist": round(result.min_dist, 6),
                    "swaps": result.swaps, "converged": result.converged,
                })
            bar.update(1)
        bar.close()
        plans = []
        for nc in nc_values:
            chosen = np.sort(np.concatenate(picked[nc])) if picked[nc] else np.empty(0, dtype=np.int64)
            plans.append(self._plan(run, nc, chosen, avail, per_class[nc]))
        return plans

    def _plan(self, run: SamplingRun, nc: int, rows: np.ndarray, avail: np.ndarray, per_class: list[dict]) -> SubsetPlan:
        cap = run.opts.max_swaps if run.opts.max_swaps is not None else MIN_RED_SWAPS_PER_TRACK * nc
        start = np.array([c["start_min_dist"] for c in per_class])
        final = np.array([c["min_dist"] for c in per_class])
        summary = {
            "classes_swapped": len(per_class), "swaps": int(sum(c["swaps"] for c in per_class)),
            "classes_at_swap_cap": int(sum(not c["converged"] for c in per_class)), "max_swaps": cap,
            "median_start_min_dist": round(float(np.median(start)), 6) if per_class else None,
            "median_min_dist": round(float(np.median(final)), 6) if per_class else None,
        }
        notes = [f"{summary['classes_swapped']} classes had more than {nc} candidates"]
        if per_class:
            notes[0] += (f": {summary['swaps']} swaps, median per-class minimum pairwise distance "
                         f"{summary['median_start_min_dist']:.4g} -> {summary['median_min_dist']:.4g}, "
                         f"{summary['classes_at_swap_cap']} stopped at the swap cap ({cap})")
        return SubsetPlan(
            name=subset_name(run.dataset_name, "min_red", Nc=nc, total=rows.size), rows=rows,
            rounds=np.zeros(rows.size, dtype=np.int8), available=avail, notes=notes,
            params={"Nc": nc, "embedding_column": run.opts.embedding_column, "min_red": summary,
                    "min_red_classes": per_class},
        )



SAMPLING_ACTIONS: dict[str, SamplingAction] = {
    action.name: action for action in (RandomSubsets(), ClassBalancedSubsets(), MaxMotionSubsets(), MinRedSubsets())
}


def validate_sampling(config: CurateConfig) -> CurateConfig:
    """Check that the flags fit the sampling action; returns the config with repeated values
    dropped, the dataset name resolved (the index's, unless given) and ``verified_list``
    resolved to a local file (raises UsageError).

    Cheap checks first, so that the first error is the one to fix: the flags, then the index and
    its companion, then the metric files the action needs, and only then the verified list,
    which may have to be fetched (offline, that error would hide all the others)."""
    action = SAMPLING_ACTIONS.get(config.action)
    if action is None:
        raise UsageError(f"unknown sampling action {config.action!r}")
    try:
        config.constraints  # noqa: B018 (raises for a NaN or a non-positive --iou_tbuff)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    action.check(config)
    if not 0 <= config.max_spt_iou <= 1:
        raise UsageError(f"--max_spt_iou must be in [0, 1], got {config.max_spt_iou}")
    meta, _ = check_index(config.index_path)
    require_dataset_root(config.base_dir)  # an index given by absolute path: subsets still go under the root
    dataset_name = config.dataset_name or meta.get("dataset_name")
    if not dataset_name:
        raise UsageError("the index does not record its dataset name: give --dataset_name")
    validate_name(dataset_name)
    built_from = meta.get("dataset_name")
    if built_from and dataset_name != built_from and dataset_name not in datasets_in(config.base_dir):
        # a misspelt name would name the subsets (and find no metric files) after a dataset that is not there
        raise UsageError(f"--dataset_name {dataset_name}: the index was built from {built_from}, and "
                         f"{dataset_name} is no dataset under {config.base_dir} ({describe_datasets(config.base_dir)})")
    for metric in action.metrics(config):
        folder = metric_dir(config.base_dir, dataset_name, metric)
        if not metric_files(folder):
            raise UsageError(f"no {metric} metric files (*.parquet) in {folder}: run visual_metrics.py "
                             f"--metric {metric} first")
    try:
        verified = resolve_asset(config.verified_list, VERIFIED_ASSET, flag="--verified_list")
    except AssetError as exc:
        raise UsageError(f"verified evaluation list (--verified_list): {exc}") from exc
    return dataclasses.replace(
        config, dataset_name=dataset_name, N=tuple(dict.fromkeys(config.N)), Nc=tuple(dict.fromkeys(config.Nc)),
        temperature=tuple(dict.fromkeys(config.temperature)), verified_list=str(verified),
    )


def _constraints_dict(cons: SamplingConstraints, opts: CurateConfig) -> dict:
    out: dict[str, Any] = {}
    if cons.uses_motion:
        out["min_motion"] = cons.min_motion
        out["motion_column"] = opts.motion_column
    if cons.uses_diversity:
        out["min_nn_dist"] = cons.min_nn_dist
        out["embedding_column"] = opts.embedding_column
    if cons.uses_overlap:
        out["max_spt_iou"] = cons.max_spt_iou
        out["iou_tbuff"] = format_number(cons.iou_tbuff)
    return out
