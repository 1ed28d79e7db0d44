"""What a person reads about a subset: its file name, the per-class table (CSV), the class
distribution plot (PNG) and the one-line summary.

Subset names (``total`` = tracks selected, ``N`` in thousands as given, numbers printed like
temperatures by ``format_number``):

=========================  ===============================================================
action                     name
=========================  ===============================================================
``sample_random``          ``<dataset_name>-<N>K-RND.jsonl.gzip``
``sample_class_balanced``  ``<dataset_name>-CB<Nc>-<total//1000>K-T<T>[suffix].jsonl.gzip``
``sample_max_motion``      ``<dataset_name>-Max<Col>Motion-CB<Nc>-<total//1000>K.jsonl.gzip``
``sample_min_red``         ``<dataset_name>-MinRed-CB<Nc>-<total//1000>K.jsonl.gzip``
=========================  ===============================================================

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

import numpy as np

from utils.core.io import atomic_path, atomic_write_text
from utils.core.layout import SUBSET_EXT
from utils.curate.constraints import RELAX_FACTOR, RELAX_ROUNDS, SamplingConstraints
from utils.curate.sampling import check_temperature, format_number

ROUND_NAMES = {r: f"x{format_number(round(RELAX_FACTOR**r, 6))}" for r in range(1, RELAX_ROUNDS - 1)}
ROUND_NAMES[RELAX_ROUNDS - 1] = "off"


def write_class_table(path: Path, rows: list[tuple[str, int, int, int]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "count", "available", "relax_round"])
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_class_distribution(path: Path, rows: list[tuple[str, int, int, int]], title: str) -> None:
    """Tracks per class, most first (relaxed classes in orange)."""
    from matplotlib.figure import Figure  # imported here: it takes a while and only plots need it
    counts = np.array([r[1] for r in rows], dtype=np.float64)
    relaxed = np.array([r[3] > 0 for r in rows], dtype=bool)
    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax = fig.add_subplot()
    if len(rows) <= 40:
        x = np.arange(len(rows))
        ax.bar(x, counts, color=np.where(relaxed, "#e07b39", "#3b75af").tolist())
        ax.set_xticks(x, [r[0] for r in rows], rotation=60, ha="right", fontsize=8)
    else:  # one artist per colour: a thousand bars would take seconds
        ax.stairs(counts, fill=True, color="#3b75af", label="within constraints")
        if relaxed.any():
            ax.stairs(np.where(relaxed, counts, 0), fill=True, color="#e07b39", label="relaxed")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("classes, most tracks first")
        ax.set_xlim(0, len(rows))
    if counts.size and counts.max() > 20 * max(counts.min(), 1):
        ax.set_yscale("log")
    ax.set_ylabel("tracks")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(bottom=0.3 if len(rows) <= 40 else 0.12, left=0.07, right=0.98)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


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
    N: float | None = None,
    Nc: int | None = None,
    total: int | None = None,
    temperature: float | None = None,
    constraints: SamplingConstraints | None = None,
    motion_column: str = "q90",
) -> str:
    """File name of a subset (the table in the module docstring).

    ``kind``: ``random`` (needs ``N``, thousands), ``class_balanced`` (``Nc``, ``total``,
    ``temperature``, optional ``constraints`` for the suffix), ``max_motion`` (``Nc``,
    ``total``, ``motion_column``) or ``min_red`` (``Nc``, ``total``); the ``sample_`` prefixes
    of the ``--action`` names are accepted.
    """
    kind_key = kind.removeprefix("sample_")
    suffix = constraints.suffix() if constraints is not None else ""
    if kind_key == "random":
        if N is None:
            raise ValueError("a random subset name needs N (thousands)")
        return f"{dataset_name}-{format_number(N)}K-RND{suffix}{SUBSET_EXT}"
    if kind_key in ("class_balanced", "max_motion", "min_red"):
        if Nc is None or total is None:
            raise ValueError(f"a {kind_key} subset name needs Nc and total")
        size = f"CB{int(Nc)}-{int(total) // 1000}K"
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


def motion_name(column: str) -> str:
    """The motion column as it appears in a ``sample_max_motion`` name: ``q90`` -> ``Q90``."""
    if not re.fullmatch(r"[A-Za-z0-9]+", column or ""):
        raise ValueError(f"motion column {column!r} cannot name a subset: letters and digits only")
    return column[0].upper() + column[1:]
