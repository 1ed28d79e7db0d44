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

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from utils.core.errors import UsageError
from utils.core.io import atomic_path, atomic_write_json
from utils.core.layout import (
    SUBSET_EXT,
    YID_PATTERN,
    DatasetLayout,
    class_plot_path,
    class_table_path,
    report_path,
)
from utils.core.resources import peak_memory_gb
from utils.curate.actions import SAMPLING_ACTIONS, SamplingRun, SubsetPlan, validate_sampling
from utils.curate.config import CurateConfig
from utils.curate.constraints import (
    RELAX_ROUNDS,
)
from utils.curate.report import (
    ROUND_NAMES,
    ClassRow,
    plot_class_distribution,
    subset_line,
    write_class_table,
)
from utils.records.index_file import Classes, IndexReader, load_track_table
from utils.records.metrics_store import MetricsError
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
class SamplingSummary:
    subsets: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # read, select, write, plots (seconds)
    exit_code: int = 0


def write_subset(reader: IndexReader, sampler: SamplingRun, plan: SubsetPlan, source: dict,
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
    action = SAMPLING_ACTIONS[opts.action]
    table = load_track_table(opts.index_path, columns=list(action.columns(opts)))
    sampler = SamplingRun(opts, table, verified_yids, summary.lines)
    timings["read"] = time.perf_counter() - started
    grouped = "by label id" if sampler.classes.by_id else "by label id, else by name"
    summary.lines[:0] = [f"{opts.action}: {len(table)} indexed tracks, {sampler.class_count()} classes ({grouped})",
                         *(f"  {note}" for note in sampler.class_notes())]
    try:
        plans = action.select(sampler)
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
