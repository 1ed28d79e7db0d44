"""curate_db.py's sampling actions: read the index companion (and the metric files an action
needs), select rows with :mod:`utils.curate.sampling` and :mod:`utils.curate.constraints`, and
write each subset by copying its index members, with its class table, plot and report. Videos
of the verified evaluation list are never sampled.

A class is a label id (``top10_lbl[0]``; :class:`utils.records.index_file.Classes`): classes
are balanced, capped, counted and reported per id, so two prompt lines with the same name
(LVIS's two ``bow`` lines) are two classes. Records without an id are grouped by their name,
apart from every id; the summary says how many tracks that concerns, and warns when one id
carries several names (an index built from mixed vocabularies).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from utils.core.errors import UsageError
from utils.core.io import atomic_path, atomic_write_json
from utils.core.layout import (
    SUBSET_EXT,
    YID_PATTERN,
    DatasetLayout,
    class_plot_path,
    class_table_path,
    report_path,
    validate_name,
)
from utils.core.progress import progress_bar
from utils.core.resources import available_memory_bytes, peak_memory_gb
from utils.curate.config import CurateConfig, validate_sampling
from utils.curate.constraints import (
    NO_VALUE,
    RELAX_ROUNDS,
    ClassVectors,
    SamplingConstraints,
    WalkInputs,
    motion_levels,
    picks_by_level,
    walk_class,
)
from utils.curate.report import (
    ROUND_NAMES,
    ClassRow,
    plot_class_distribution,
    subset_line,
    subset_name,
    write_class_table,
)
from utils.curate.sampling import (
    MIN_RED_SWAPS_PER_TRACK,
    eligible_by_video,
    format_number,
    min_redundancy,
    rank_within_class,
    sample_random,
)
from utils.records.index_file import Classes, IndexReader, TrackTable, load_track_table
from utils.records.metrics_store import EMBEDDINGS, MOTION, MetricsError, VectorSource, load_metric_columns
from utils.records.released import restyle_member

log = logging.getLogger("trackverse.curation")


# ------------------------------------------------------------------------ verified videos


def read_verified_yids(path: str | os.PathLike) -> set[str]:
    """YouTube ids of the verified evaluation list: the first 11 characters of each line."""
    yids: set[str] = set()
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if YID_PATTERN.match(text[:11]):
                yids.add(text[:11])
            else:
                skipped += 1
    if skipped:
        log.warning("%s: %d lines do not start with a YouTube id (ignored)", path, skipped)
    return yids

# ------------------------------------------------------------------------------ sampling


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


@dataclass
class SamplingSummary:
    subsets: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # read, select, write, plots (seconds)
    exit_code: int = 0


# companion columns each action reads (tid and fn only to join metric files)
_SAMPLING_COLUMNS = ["yid", "label", "label_id", "offset", "length", "crc32", "ulen"]


class _Sampler:
    """Shared state of one sampling run: the companion, eligibility, exclusions."""

    def __init__(self, opts: CurateConfig, table: TrackTable, verified_yids: set[str], lines: list[str]):
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
        self.dataset_name = opts.dataset_name or table.meta.get("dataset_name")
        if not self.dataset_name:
            raise UsageError("the index does not record its dataset name: give --dataset_name")
        validate_name(self.dataset_name)

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

    # ---------------------------------------------------------------- random
    def random(self) -> list[SubsetPlan]:
        """One subset per ``--N``, named by the tracks it holds. Sizes that all come out as every
        eligible track are written once; two different samples that would share a name are
        refused (UsageError) before anything is written."""
        plans: list[SubsetPlan] = []
        by_name: dict[str, SubsetPlan] = {}
        avail = self.available(self.not_verified)
        for n_k in self.opts.N:
            want = int(round(float(n_k) * 1000))
            rows, short = sample_random(self.n, want, seed=self.opts.seed, eligible_mask=self.not_verified)
            name = subset_name(self.dataset_name, "random", total=rows.size)
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
                params={"N_thousands": float(n_k), "requested": want, "seed": self.opts.seed},
            )
            if short:
                plan.warnings.append(f"only {rows.size} eligible tracks for {want} requested (--N {format_number(n_k)})")
            by_name[name] = plan
            plans.append(plan)
        return plans

    # ---------------------------------------------------------------- class-balanced
    def _metric_report(self, line: str) -> None:
        self.lines.append("  " + line)

    def class_balanced(self) -> list[SubsetPlan]:
        opts, cons = self.opts, self.opts.constraints
        # The ranking sees every track with a class outside the verified videos, constraints or
        # not, so that a constrained subset follows the same order as its unconstrained twin.
        ranked = self.not_verified & (self.codes >= 0)
        self.exclusions["no_class"] = int((self.not_verified & (self.codes < 0)).sum())
        usable = ranked.copy()  # ... and only tracks with the metric values a constraint needs are picked
        score = self.table.numpy("score")
        if cons.uses_motion or cons.uses_diversity:
            tids, fns = self.table.strings("tid"), self.table.strings("fn")
        level = None
        if cons.uses_motion:
            metric = load_metric_columns(self.base_dir, self.dataset_name, MOTION, [opts.motion_column], tids, fns)
            self._metric_report(metric.report.line())
            level = motion_levels(metric.values[opts.motion_column], cons.min_motion)
            self.exclusions["no_motion_value"] = int((usable & (level == NO_VALUE)).sum())
            usable &= level != NO_VALUE
        inputs = WalkInputs(constraints=cons, video_codes=self.video_codes, level=level)
        if cons.uses_diversity:
            need = np.flatnonzero(usable)
            vectors = self._class_vectors(need, tids, fns)
            self.exclusions["no_embedding"] = int(need.size - vectors.present[need].sum())
            usable[need[~vectors.present[need]]] = False
            inputs.vectors = vectors
        sequential = cons.uses_diversity or cons.uses_overlap
        nc_max = max(int(nc) for nc in opts.Nc)
        plans = []
        with contextlib.ExitStack() as stack:
            if cons.uses_overlap:
                reader = stack.enter_context(IndexReader(self.table))

                def geometry(row: int) -> tuple[np.ndarray, np.ndarray]:
                    rec = reader.record(row)
                    return np.asarray(rec.track_ts, np.float64), np.asarray(rec.track_bbox, np.float64)

                inputs.geometry = geometry
            for temperature in opts.temperature:
                eligible = ranked
                if not math.isinf(temperature):
                    eligible = ranked & np.isfinite(score)
                    self.exclusions["no_score"] = int((ranked & ~np.isfinite(score)).sum())
                ranks = rank_within_class(self.codes, None if math.isinf(temperature) else np.nan_to_num(score),
                                          temperature, seed=opts.seed, eligible_mask=eligible)
                ranks[~usable] = -1
                if sequential:
                    pick, rounds = self._walk(ranks, nc_max, inputs, temperature)
                elif level is not None:
                    pick, rounds = picks_by_level(self.codes, ranks, level), level
                else:
                    pick, rounds = ranks, np.zeros(self.n, dtype=np.int8)
                avail = self.available(eligible & usable)
                for nc in opts.Nc:
                    rows = np.flatnonzero((pick >= 0) & (pick < int(nc)))
                    name = subset_name(self.dataset_name, "class_balanced", Nc=int(nc), total=rows.size,
                                       temperature=temperature, constraints=cons)
                    plans.append(SubsetPlan(
                        name=name, rows=rows, rounds=np.asarray(rounds[rows], dtype=np.int8), available=avail,
                        params={"Nc": int(nc), "temperature": format_number(temperature), "seed": opts.seed,
                                "constraints": _constraints_dict(cons, opts)},
                    ))
        return plans

    # ---------------------------------------------------------------- by a metric, per class
    def _classified(self) -> np.ndarray:
        """Tracks outside the verified videos that have a class (counts those without one)."""
        self.exclusions["no_class"] = int((self.not_verified & (self.codes < 0)).sum())
        return self.not_verified & (self.codes >= 0)

    def _progress(self, total: int, desc: str) -> tqdm:
        return progress_bar(total=total, desc=desc, unit="class", enabled=self.opts.progress)

    def max_motion(self) -> list[SubsetPlan]:
        opts = self.opts
        candidates = self._classified()
        tids, fns = self.table.strings("tid"), self.table.strings("fn")
        metric = load_metric_columns(self.base_dir, self.dataset_name, MOTION, [opts.motion_column], tids, fns)
        self._metric_report(metric.report.line())
        motion = metric.values[opts.motion_column]
        usable = candidates & np.isfinite(motion)
        self.exclusions["no_motion_value"] = int((candidates & ~usable).sum())
        ranks = rank_within_class(self.codes, np.where(usable, motion, 0.0), 0.0, eligible_mask=usable)
        avail = self.available(usable)
        plans = []
        for nc in opts.Nc:
            rows = np.flatnonzero((ranks >= 0) & (ranks < int(nc)))
            picked = motion[rows]
            stats = {"min": float(picked.min()), "median": float(np.median(picked))} if rows.size else {}
            plans.append(SubsetPlan(
                name=subset_name(self.dataset_name, "max_motion", Nc=int(nc), total=rows.size,
                                 motion_column=opts.motion_column),
                rows=rows, rounds=np.zeros(rows.size, dtype=np.int8), available=avail,
                params={"Nc": int(nc), "motion_column": opts.motion_column, "selected_motion": stats},
                notes=[f"{opts.motion_column} of the selected tracks: lowest {stats['min']:.3g}, "
                       f"median {stats['median']:.3g}"] if stats else [],
            ))
        return plans

    def _class_vectors(self, rows: np.ndarray, tids: pa.Array, fns: pa.Array) -> ClassVectors:
        """Embeddings of ``rows`` within ``--max_embedding_gb`` (default: half the memory free now)."""
        opts = self.opts
        source = VectorSource(self.base_dir, self.dataset_name, EMBEDDINGS, opts.embedding_column, tids, fns)
        budget = opts.max_embedding_gb * 2**30 if opts.max_embedding_gb else (available_memory_bytes() or 2**34) / 2
        vectors = ClassVectors(source, rows, self.codes, budget)
        self._metric_report(vectors.report.line())
        if len(vectors.groups) > 1:
            self._metric_report(
                f"embeddings: {vectors.order.size} tracks x {vectors.dim} floats = {vectors.bytes_needed / 2**30:.1f} GiB "
                f"> {budget / 2**30:.1f} GiB (--max_embedding_gb): read in {len(vectors.groups)} groups of classes")
        return vectors

    def min_red(self) -> list[SubsetPlan]:
        opts = self.opts
        ranked = self._classified()
        score = self.table.numpy("score")
        self.exclusions["no_score"] = int((ranked & ~np.isfinite(score)).sum())
        ranked &= np.isfinite(score)
        ranks = rank_within_class(self.codes, np.nan_to_num(score), 0.0, eligible_mask=ranked)
        rows = np.flatnonzero(ranks >= 0)
        order = rows[np.lexsort((ranks[rows], self.codes[rows]))]  # by class, best score first
        vectors = self._class_vectors(order, self.table.strings("tid"), self.table.strings("fn"))
        present = vectors.present[order]
        self.exclusions["no_embedding"] = int(order.size - present.sum())
        avail = self.available(vectors.present)
        codes = self.codes[order]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True]) if order.size else np.zeros(1, np.int64)
        nc_values = [int(v) for v in opts.Nc]
        picked: dict[int, list[np.ndarray]] = {nc: [] for nc in nc_values}
        per_class: dict[int, list[dict]] = {nc: [] for nc in nc_values}
        bar = self._progress(bounds.size - 1, "min-red")
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
                    "label_id": self.classes.ids[int(codes[lo])], "label": self.classes.names[int(codes[lo])],
                    "candidates": int(candidates.size),
                    "start_min_dist": round(result.start_min_dist, 6), "min_dist": round(result.min_dist, 6),
                    "swaps": result.swaps, "converged": result.converged,
                })
            bar.update(1)
        bar.close()
        plans = []
        for nc in nc_values:
            chosen = np.sort(np.concatenate(picked[nc])) if picked[nc] else np.empty(0, dtype=np.int64)
            plans.append(self._min_red_plan(nc, chosen, avail, per_class[nc]))
        return plans

    def _min_red_plan(self, nc: int, rows: np.ndarray, avail: np.ndarray, per_class: list[dict]) -> SubsetPlan:
        cap = self.opts.max_swaps if self.opts.max_swaps is not None else MIN_RED_SWAPS_PER_TRACK * nc
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
            name=subset_name(self.dataset_name, "min_red", Nc=nc, total=rows.size), rows=rows,
            rounds=np.zeros(rows.size, dtype=np.int8), available=avail, notes=notes,
            params={"Nc": nc, "embedding_column": self.opts.embedding_column, "min_red": summary,
                    "min_red_classes": per_class},
        )

    def _walk(self, ranks: np.ndarray, nc_max: int, inputs: WalkInputs, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(ranks >= 0)
        order = rows[np.lexsort((ranks[rows], self.codes[rows]))]
        codes = self.codes[order]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
        pick = np.full(self.n, -1, dtype=np.int64)
        rounds = np.zeros(self.n, dtype=np.int8)
        classes = range(bounds.size - 1)
        for c in progress_bar(classes, desc=f"constraints T={format_number(temperature)}", unit="class",
                              enabled=self.opts.progress):
            if inputs.vectors is not None and bounds[c] < codes.size:
                inputs.vectors.select_class(int(codes[bounds[c]]))
            accepted, acc_rounds = walk_class(order[bounds[c]:bounds[c + 1]], nc_max, inputs)
            pick[accepted] = np.arange(len(accepted))
            rounds[accepted] = acc_rounds
        return pick, rounds


def write_subset(reader: IndexReader, sampler: _Sampler, plan: SubsetPlan, source: dict,
                 timings: dict[str, float] | None = None) -> dict:
    """The subset file, its class table, plot and report; returns the report (``timings``
    accumulates the seconds spent writing and plotting)."""
    timings = {} if timings is None else timings
    started = time.perf_counter()
    layout = DatasetLayout(sampler.base_dir)
    target = layout.subset_file(plan.name)
    if target.resolve() == sampler.table.index_path.resolve():
        raise UsageError(f"subset {target} would overwrite the index")
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        if sampler.opts.key_style == "compact":  # the index's own members, copied as they are
            size = reader.copy_rows(plan.rows, out)
        else:
            size = sum(out.write(restyle_member(reader.member(row), sampler.opts.key_style))
                       for row in plan.rows.tolist())
    rows = _class_rows(plan, sampler.codes, sampler.classes)
    write_class_table(class_table_path(target), rows)
    per_round = np.bincount([row.relax_round for row in rows], minlength=RELAX_ROUNDS)
    relaxed = {ROUND_NAMES[r]: int(per_round[r]) for r in range(1, RELAX_ROUNDS) if per_round[r]}
    nc = plan.params.get("Nc")
    short = int(((plan.available > 0) & (plan.available < nc)).sum()) if nc else 0
    timings["write"] = timings.get("write", 0.0) + time.perf_counter() - started
    if not sampler.opts.no_plots:
        started = time.perf_counter()
        title = f"{plan.name.removesuffix(SUBSET_EXT)}: {plan.rows.size} tracks, {len(rows)} classes"
        plot_class_distribution(class_plot_path(target), rows, title)
        timings["plots"] = timings.get("plots", 0.0) + time.perf_counter() - started
    report = {
        "subset": plan.name, "file": str(target), "bytes": size, "tracks": int(plan.rows.size),
        "classes": len(rows), "class_key": sampler.class_key(), "relaxed_classes": dict(relaxed),
        "classes_short": short,
        "action": sampler.opts.action, "dataset_name": sampler.dataset_name, "key_style": sampler.opts.key_style,
        **plan.params,
        "exclusions": dict(sampler.exclusions), "warnings": plan.warnings, "notes": plan.notes, **source,
        "class_table": str(class_table_path(target)),
        "plot": None if sampler.opts.no_plots else str(class_plot_path(target)),
    }
    atomic_write_json(report_path(target), report)
    return report


def run_sampling(config: CurateConfig) -> SamplingSummary:
    """Select and write the subsets of ``config.action`` from the index ``config.index_path``."""
    started = time.perf_counter()
    opts = validate_sampling(config)
    verified_yids = read_verified_yids(opts.verified_list)
    summary = SamplingSummary()
    timings = summary.timings
    columns = list(_SAMPLING_COLUMNS)
    if opts.action == "sample_class_balanced":
        columns.append("score")
        if opts.constraints.uses_motion or opts.constraints.uses_diversity:
            columns += ["tid", "fn"]
    elif opts.action == "sample_max_motion":
        columns += ["tid", "fn"]
    elif opts.action == "sample_min_red":
        columns += ["score", "tid", "fn"]
    table = load_track_table(opts.index_path, columns=columns)
    sampler = _Sampler(opts, table, verified_yids, summary.lines)
    timings["read"] = time.perf_counter() - started
    grouped = "by label id" if sampler.classes.by_id else "by label id, else by name"
    summary.lines[:0] = [f"{opts.action}: {len(table)} indexed tracks, {sampler.class_count()} classes ({grouped})",
                         *(f"  {note}" for note in sampler.class_notes())]
    select = {"sample_random": sampler.random, "sample_class_balanced": sampler.class_balanced,
              "sample_max_motion": sampler.max_motion, "sample_min_red": sampler.min_red}[opts.action]
    try:
        plans = select()
    except MetricsError as exc:
        raise UsageError(str(exc)) from exc
    timings["select"] = time.perf_counter() - started - timings["read"]
    excl = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sampler.exclusions.items())
    summary.lines.append(f"  excluded: {excl} (verified list: {opts.verified_list}, "
                         f"{len(verified_yids)} videos)")
    source = {"index_file": str(table.index_path), "verified_list": opts.verified_list}
    with IndexReader(table) as reader:
        for plan in plans:
            report = write_subset(reader, sampler, plan, source, timings)
            summary.subsets.append(report)
            summary.lines.append(subset_line(report))
    summary.seconds = round(time.perf_counter() - started, 3)
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    summary.lines.append(f"  {len(plans)} subsets in {DatasetLayout(opts.base_dir).subsets_dir()} in {summary.seconds:.1f} s "
                         f"({phases}); peak memory {peak_memory_gb():.2f} GB")
    return summary


def _class_rows(plan: SubsetPlan, codes: np.ndarray, classes: Classes) -> list[ClassRow]:
    """One row per class in the subset, most tracks first, then by label id (classes known by
    name only after the ids, by name; tracks without any class last)."""
    sel = codes[plan.rows]
    n_classes = len(classes)
    counts = np.bincount(sel + 1, minlength=n_classes + 1)
    relax = np.zeros(n_classes + 1, dtype=np.int64)
    if plan.rows.size:
        np.maximum.at(relax, sel + 1, plan.rounds.astype(np.int64))
    out = []
    for code in np.flatnonzero(counts).tolist():
        if code:
            row = ClassRow(classes.ids[code - 1], classes.names[code - 1], int(counts[code]),
                           int(plan.available[code - 1]), int(relax[code]))
        else:
            row = ClassRow(None, "(no label)", int(counts[code]), 0, int(relax[code]))
        out.append((code == 0, code, row))
    out.sort(key=lambda item: (item[0], -item[2].count, item[1]))  # codes follow ids, then names
    return [row for _, _, row in out]


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
