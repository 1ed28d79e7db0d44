"""Visual QA: contact sheets of source frames with every track's boxes and labels, and one
static HTML gallery (per class, N example clips with score and duration, the sheets, and the
subset's class table and plot) that opens in a browser with no server.

A class is its label id (``top10_lbl[0]``), shown as ``<id> <name>``: the LVIS list's two
``bow`` lines are two classes with two sections. A record without an id is grouped by its name
alone, apart from every id.
"""

from __future__ import annotations

import colorsys
import hashlib
import html
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.core.errors import UsageError
from utils.core.io import atomic_path, atomic_write_text
from utils.core.layout import (
    DatasetLayout,
    class_plot_path,
    class_table_path,
    describe_datasets,
    inside,
    require_dataset,
    require_dataset_root,
)
from utils.core.video import VideoError, probe_video, read_frames_at
from utils.records.track_files import read_records
from utils.records.tracks import TrackRecord


def counted(n: int, noun: str) -> str:
    """``1 track``, ``2 tracks``, ``1 class``, ``2 classes``."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun}es" if noun.endswith(("s", "x", "ch", "sh")) else f"{n} {noun}s"


def check_qa_inputs(base_dir: Path, dataset_name: str, clips_dir: Path | None, video: bool) -> None:
    """UsageError, before anything is written, unless ``base_dir`` is a dataset root holding what
    the page shows: with ``video`` (one video's sheet) the dataset's track metadata, else its clips
    (``tracks_mp4/<dataset_name>``, or an existing ``clips_dir``). The message names the datasets
    that are there."""
    require_dataset_root(base_dir)
    if video:
        require_dataset(base_dir, dataset_name, ("tracks_meta",), producers=("parse_tracks", "relabel_tracks"))
    elif clips_dir is None:
        require_dataset(base_dir, dataset_name, ("tracks_mp4",), producers=("extract_tracks",))
    elif not clips_dir.is_dir():
        problem = "is a file, not a folder" if clips_dir.exists() else "does not exist"
        raise UsageError(f"--clips_dir {clips_dir} {problem}")


def class_of(record: TrackRecord) -> tuple[int, str]:
    """The class key of a record: ``(label id, "")``, or ``(-1, name)`` without an id."""
    if record.top10_lbl:
        return record.top10_lbl[0], ""
    return -1, record.label or "?"


def class_title(record: TrackRecord) -> str:
    """What a person reads for a record's class: ``<id> <name>`` (the name alone without an id)."""
    if not record.top10_lbl:
        return record.label or "?"
    return f"{record.top10_lbl[0]} {record.label}" if record.label else str(record.top10_lbl[0])


def track_color(tid: str) -> tuple[int, int, int]:
    """A stable, saturated RGB colour per track."""
    hue = int(hashlib.md5(tid.encode()).hexdigest()[:4], 16) / 0xFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def box_at(record: TrackRecord, t: float) -> tuple[float, float, float, float] | None:
    """The track's [x0, y0, x1, y1] at time ``t`` (linear between its timestamps), or None
    outside its span."""
    ts = np.asarray(record.track_ts, dtype=np.float64)
    if len(ts) == 0 or t < ts[0] - 1e-6 or t > ts[-1] + 1e-6:
        return None
    boxes = record.bboxes_xyxy()
    return tuple(float(np.interp(t, ts, boxes[:, k])) for k in range(4))


def draw_tracks(image: np.ndarray, records: Sequence[TrackRecord], t: float, scale: float = 1.0) -> np.ndarray:
    """Draw the boxes and labels of the tracks alive at ``t`` onto an RGB frame (in place)."""
    thickness = max(2, round(min(image.shape[:2]) / 200))
    for record in records:
        box = box_at(record, t)
        if box is None:
            continue
        x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
        color = track_color(record.tid)
        cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness)
        text = f"{class_title(record)} {record.tid[:6]}"
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        cv2.rectangle(image, (x0, max(0, y0 - h - 6)), (x0 + w + 4, max(h + 6, y0)), color, -1)
        cv2.putText(image, text, (x0 + 2, max(h + 2, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return image


def contact_sheet(video: Path, records: Sequence[TrackRecord], out: Path, frames: int = 8, columns: int = 4,
                  width: int = 320) -> Path:
    """A PNG grid of ``frames`` source frames spread over the tracks' span, boxes drawn."""
    info = probe_video(video, decode_check=False)
    start = min((r.track_ts[0] for r in records), default=0.0)
    end = max((r.track_ts[-1] for r in records), default=info.duration)
    times = np.linspace(start, end, frames) if frames > 1 else np.array([start])
    scale = width / info.width
    height = int(round(info.height * scale)) // 2 * 2
    tiles = []
    for frame in read_frames_at(video, times, size=(width, height)):
        tile = draw_tracks(frame.image.copy(), records, frame.time, scale)
        cv2.putText(tile, f"{frame.time:.2f}s", (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255),
                    1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    sheet = np.concatenate(rows, axis=0)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"cannot encode {out}")
    with atomic_path(out) as tmp:
        tmp.write_bytes(png.tobytes())
    return out


@dataclass
class GalleryResult:
    page: Path
    classes: int
    tracks: int
    sheets: int
    missing_clips: int


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def build_gallery(
    base_dir: Path,
    records_file: Path,
    out_dir: Path,
    clips_dir: Path,
    per_class: int = 6,
    max_classes: int = 100,
    seed: int = 0,
    sheets: bool = True,
) -> GalleryResult:
    """Write ``out_dir/index.html``: per class, ``per_class`` random example tracks (clip,
    score, duration) and, per example's video, a contact sheet of all its shown tracks."""
    layout = DatasetLayout(base_dir)
    records = list(read_records(records_file))
    by_class: dict[tuple[int, str], list[TrackRecord]] = defaultdict(list)
    for r in records:
        by_class[class_of(r)].append(r)
    # an id's title from its first record; ids first (ascending), then classes known by name only
    titles = {key: class_title(recs[0]) for key, recs in by_class.items()}
    rng = random.Random(seed)
    chosen: dict[tuple[int, str], list[TrackRecord]] = {}
    for key in sorted(by_class, key=lambda c: (-len(by_class[c]), c[0] < 0, c))[:max_classes]:
        pool = by_class[key]
        chosen[key] = sorted(rng.sample(pool, min(per_class, len(pool))), key=lambda r: r.fn)

    if not records:
        raise UsageError(f"{records_file} holds no tracks: no gallery to make")
    shown = [inside(clips_dir, r.fn) for examples in chosen.values() for r in examples]
    if not any(clip.exists() for clip in shown):
        # a page of "clip missing" cards (written over a good one) is a wrong folder, not a QA result
        raise UsageError(f"none of the {counted(len(shown), 'clip')} to show is in {clips_dir} (e.g. {shown[0]}): a "
                         f"wrong --dataset_name or --clips_dir, or clips not extracted yet (extract_tracks.py); "
                         f"{describe_datasets(base_dir)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet_of: dict[str, Path] = {}
    if sheets:
        per_video: dict[str, list[TrackRecord]] = defaultdict(list)
        for examples in chosen.values():
            for r in examples:
                per_video[r.yid].append(r)
        for yid, recs in sorted(per_video.items()):
            video = layout.video_mp4(yid)
            if not video.exists():
                continue
            try:
                sheet_of[yid] = contact_sheet(video, recs, out_dir / "sheets" / f"{yid}.png")
            except VideoError:
                continue

    missing = 0
    parts = []
    for key, examples in chosen.items():
        cards = []
        for r in examples:
            clip = inside(clips_dir, r.fn)
            score = r.top10_wlogit_mu[0] if r.top10_wlogit_mu else None
            media = (f'<video src="{html.escape(_rel(clip, out_dir))}" muted loop autoplay playsinline '
                     f'width="200"></video>') if clip.exists() else '<div class="missing">clip missing</div>'
            missing += not clip.exists()
            sheet = (f'<a href="{html.escape(_rel(sheet_of[r.yid], out_dir))}">contact sheet</a>'
                     if r.yid in sheet_of else "")
            cards.append(
                f'<figure class="card">{media}<figcaption>{html.escape(r.yid)} · '
                f'{r.duration:.1f} s' + (f" · score {score:.2f}" if score is not None else "")
                + f"<br>{sheet}</figcaption></figure>")
        parts.append(f'<section><h2>{html.escape(titles[key])} <small>({counted(len(by_class[key]), "track")})</small></h2>'
                     f'<div class="grid">{"".join(cards)}</div></section>')

    stem = records_file.name.split(".jsonl")[0]
    extras = []
    plot, table = class_plot_path(records_file), class_table_path(records_file)  # written by curate_db
    if plot.exists():
        extras.append(f'<a href="{html.escape(_rel(plot, out_dir))}">class distribution</a>'
                      f'<br><img class="plot" src="{html.escape(_rel(plot, out_dir))}" alt="class distribution">')
    if table.exists():
        extras.append(f'<a href="{html.escape(_rel(table, out_dir))}">class counts (CSV)</a>')
    page = out_dir / "index.html"
    atomic_write_text(page, _PAGE.format(
        title=html.escape(stem), n_tracks=counted(len(records), "track"), n_classes=counted(len(by_class), "class"),
        shown=counted(len(chosen), "class"),
        extras=" ".join(extras), sections="\n".join(parts)))
    return GalleryResult(page, len(chosen), sum(len(v) for v in chosen.values()), len(sheet_of), missing)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}: track gallery</title>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; background: #fafafa; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ margin: 0; background: #fff; padding: 6px; border: 1px solid #ddd; font-size: 12px; }}
.card video {{ display: block; max-height: 200px; background: #000; }}
.missing {{ width: 200px; height: 120px; background: #eee; color: #a00; text-align: center; line-height: 120px; }}
.plot {{ max-width: 100%; }}
h2 small {{ color: #777; font-weight: normal; }}
</style></head>
<body><h1>{title}</h1>
<p>{n_tracks} in {n_classes}; showing {shown}. {extras}</p>
{sections}
</body></html>
"""
