"""What a person reads about a subset: its file name, the per-class table (CSV), the class
distribution plot (PNG) and the one-line summary.

Classes are label ids (:class:`utils.records.index_file.Classes`): the table has one row per id,
with its id and name in two columns (``label_id,label,count,available,relax_round``; the id is
empty for a class known only by name, from records without one), and the plot and summary show
``<id> <name>`` (``135 bow``), so the LVIS list's same-named classes stay apart.

Subset names (``<size>`` = the number of tracks the subset really holds, see below; numbers
printed like temperatures by ``format_number``):

=========================  ===============================================================
action                     name
=========================  ===============================================================
``sample_random``          ``<dataset_name>-<size>-RND.jsonl.gzip``
``sample_class_balanced``  ``<dataset_name>-CB<Nc>-<size>-T<T>[suffix].jsonl.gzip``
``sample_max_motion``      ``<dataset_name>-Max<Col>Motion-CB<Nc>-<size>.jsonl.gzip``
``sample_min_red``         ``<dataset_name>-MinRed-CB<Nc>-<size>.jsonl.gzip``
=========================  ===============================================================

``<size>`` (:func:`size_label`): below 1,000 tracks the exact count (``6``, ``950``); from 1,000
up, whole thousands rounded down, with ``K`` (``1K`` for 1,000-1,999, ``392K`` for 392,417), the
convention of the released TrackVerse names (``CB100-82K``, ``CB1000-392K``), which keep their
names. So ``-6-RND`` and ``CB5-6-T0`` for 6 tracks, never ``-0K``. A random subset is named by
the tracks it holds, not by the ``--N`` asked for: fewer eligible tracks than asked give a smaller
name (and a warning); two sizes of one run that would share a name are refused.

``<Col>`` is the motion column with its first letter upper-cased: ``q90`` (the default) gives
``MaxQ90Motion``, the original's name; columns are restricted to letters and digits. The last
two follow the original TrackVerse names (``-MaxQ90Motion-CB<Nc>-<N>K``, ``-MinRed-CB<Nc>-<N>K``).

Constraint suffixes of class-balanced subsets (appended in this order):

=================  ==================  ==========================================================
constraint         suffix              meaning
=================  ==================  ==========================================================
``min_motion``     ``-MM<v>``          per-track motion value >= v (e.g. ``-MM1``), a mask
``min_nn_dist``    ``-NN<v>``          diversity: embedding distance to kept tracks >= v
``max_spt_iou``    ``-IoU<v>[B<b>]``   overlap: spatio-temporal IoU with kept tracks of the same
                                       video <= v, optional time buffer b seconds
=================  ==================  ==========================================================
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from utils.core.io import atomic_path, atomic_write_text
from utils.core.layout import SUBSET_EXT
from utils.curate.constraints import RELAX_FACTOR, RELAX_ROUNDS, SamplingConstraints
from utils.curate.sampling import check_temperature, format_number

ROUND_NAMES = {r: f"x{format_number(round(RELAX_FACTOR**r, 6))}" for r in range(1, RELAX_ROUNDS - 1)}
ROUND_NAMES[RELAX_ROUNDS - 1] = "off"


class ClassRow(NamedTuple):
    """One class of a subset: its label id (None: known by name only), name, tracks selected,
    tracks it could draw from, and the last relaxation round that accepted one of them."""

    label_id: int | None
    label: str
    count: int
    available: int
    relax_round: int

    @property
    def display(self) -> str:
        """``<id> <name>`` (the name alone without an id)."""
        if self.label_id is None:
            return self.label
        return f"{self.label_id} {self.label}" if self.label else str(self.label_id)


CLASS_TABLE_COLUMNS = ("label_id", "label", "count", "available", "relax_round")


def write_class_table(path: Path, rows: list[ClassRow]) -> None:
    """The class table: one row per class (``CLASS_TABLE_COLUMNS``; an empty ``label_id`` for a
    class known by name only), most tracks first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CLASS_TABLE_COLUMNS)
    writer.writerows(("" if r.label_id is None else r.label_id, *r[1:]) for r in rows)
    atomic_write_text(path, buf.getvalue())


def plot_class_distribution(path: Path, rows: list[ClassRow], title: str) -> None:
    """Tracks per class, most first (relaxed classes in orange); ticks read ``<id> <name>``."""
    fig = class_distribution_figure(rows, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def class_distribution_figure(rows: list[ClassRow], title: str) -> Any:
    """The matplotlib Figure of :func:`plot_class_distribution` (whole numbers of tracks on its axis)."""
    from matplotlib.figure import Figure  # imported here: it takes a while and only plots need it
    from matplotlib.ticker import MaxNLocator
    counts = np.array([r.count for r in rows], dtype=np.float64)
    relaxed = np.array([r.relax_round > 0 for r in rows], dtype=bool)
    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax = fig.add_subplot()
    if len(rows) <= 40:
        x = np.arange(len(rows))
        ax.bar(x, counts, color=np.where(relaxed, "#e07b39", "#3b75af").tolist())
        ax.set_xticks(x, [r.display for r in rows], rotation=60, ha="right", fontsize=8)
    else:  # one artist per colour: a thousand bars would take seconds
        ax.stairs(counts, fill=True, color="#3b75af", label="within constraints")
        if relaxed.any():
            ax.stairs(np.where(relaxed, counts, 0), fill=True, color="#e07b39", label="relaxed")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("classes, most tracks first")
        ax.set_xlim(0, len(rows))
    if counts.size and counts.max() > 20 * max(counts.min(), 1):
        ax.set_yscale("log")
    else:  # a count of tracks is whole: no 0.5 tick
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("tracks")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(bottom=0.3 if len(rows) <= 40 else 0.12, left=0.07, right=0.98)
    return fig


def subset_line(report: dict) -> str:
    """The summary line of one written subset (from its report)."""
    text = f"  {report['subset']}: {report['tracks']} tracks, {report['classes']} classes"
    if report["relaxed_classes"]:
        parts = ", ".join(f"{k}: {v}" for k, v in report["relaxed_classes"].items())
        text += f"; {sum(report['relaxed_classes'].values())} classes relaxed ({parts})"
    if report.get("Nc"):
        text += f"; {report['classes_short']} classes have fewer than {report['Nc']} eligible tracks"
    for note in report.get("notes", []):
        text += f"; {note}"
    for warning in report["warnings"]:
        text += f"; WARNING: {warning}"
    return text


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------
def subset_name(
    dataset_name: str,
    kind: str,
    *,
    Nc: int | None = None,
    total: int | None = None,
    temperature: float | None = None,
    constraints: SamplingConstraints | None = None,
    motion_column: str = "q90",
) -> str:
    """File name of a subset (the table in the module docstring).

    ``total`` is the number of tracks the subset holds. ``kind``: ``random`` (``total``),
    ``class_balanced`` (``Nc``, ``total``, ``temperature``, optional ``constraints`` for the
    suffix), ``max_motion`` (``Nc``, ``total``, ``motion_column``) or ``min_red`` (``Nc``,
    ``total``); the ``sample_`` prefixes of the ``--action`` names are accepted.
    """
    kind_key = kind.removeprefix("sample_")
    suffix = constraints.suffix() if constraints is not None else ""
    if kind_key == "random":
        if total is None:
            raise ValueError("a random subset name needs total (the tracks it holds)")
        return f"{dataset_name}-{size_label(total)}-RND{suffix}{SUBSET_EXT}"
    if kind_key in ("class_balanced", "max_motion", "min_red"):
        if Nc is None or total is None:
            raise ValueError(f"a {kind_key} subset name needs Nc and total")
        size = f"CB{int(Nc)}-{size_label(total)}"
        if kind_key == "max_motion":
            return f"{dataset_name}-Max{motion_name(motion_column)}Motion-{size}{SUBSET_EXT}"
        if kind_key == "min_red":
            return f"{dataset_name}-MinRed-{size}{SUBSET_EXT}"
        if temperature is None:
            raise ValueError("a class-balanced subset name needs Nc, total and temperature")
        temp = format_number(check_temperature(temperature))
        return f"{dataset_name}-{size}-T{temp}{suffix}{SUBSET_EXT}"
    raise ValueError(
        f"unknown subset kind {kind!r}: expected 'random', 'class_balanced', 'max_motion' or 'min_red'"
    )


def size_label(total: int) -> str:
    """A subset's size in its name: the exact count below 1,000 (``6``), else whole thousands
    rounded down with ``K`` (``1K`` for 1,000-1,999, ``392K`` for 392,417)."""
    total = int(total)
    if total < 0:
        raise ValueError(f"a subset cannot hold {total} tracks")
    return str(total) if total < 1000 else f"{total // 1000}K"


def motion_name(column: str) -> str:
    """The motion column as it appears in a ``sample_max_motion`` name: ``q90`` -> ``Q90``."""
    if not re.fullmatch(r"[A-Za-z0-9]+", column or ""):
        raise ValueError(f"motion column {column!r} cannot name a subset: letters and digits only")
    return column[0].upper() + column[1:]
