"""``qa.py`` as a command: its settings as one frozen config, the input checks (a UsageError
naming the flag and the path), then the gallery page or one video's contact sheet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.core.command import Command, Outcome
from utils.core.config import base_dir_option, option
from utils.core.errors import InvalidItemError, UsageError
from utils.core.layout import DatasetLayout, validate_name, validate_yid
from utils.core.video import VideoError
from utils.records.track_files import read_records
from utils.records.tracks import RecordsFileError
from utils.use.qa import build_gallery, check_qa_inputs, contact_sheet, counted


@dataclass(frozen=True)
class QAConfig:
    base_dir: Path = base_dir_option()
    dataset_name: str = option("TrackVerseLVIS",
                               help="the dataset whose clips (and, with --yid, track metadata) are shown")
    records: str | None = option(None, help="subset or index file (relative to --base_dir, or absolute)")
    yid: str | None = option(None, help="one video: a contact sheet of all its tracks")
    clips_dir: Path | None = option(None, help="the clips' folder (default <base_dir>/tracks_mp4/<dataset_name>)")
    per_class: int = option(6, help="example tracks shown per class")
    max_classes: int = option(100, help="at most this many classes, the largest first")
    seed: int = option(0, help="random seed of the examples chosen")
    out: Path | None = option(None, help="output folder (default <base_dir>/qa/<name>)")


class QACommand(Command[QAConfig]):
    config_class = QAConfig

    def run(self, config: QAConfig) -> Outcome:
        if not config.yid and not config.records:
            raise UsageError("give --records (a subset or index file) or --yid")
        base_dir = Path(config.base_dir)
        for flag in ("per_class", "max_classes"):
            if getattr(config, flag) < 1:
                raise UsageError(f"--{flag} must be at least 1, got {getattr(config, flag)}")
        try:
            validate_name(config.dataset_name)
        except InvalidItemError as exc:
            raise UsageError(f"--dataset_name: {exc.reason}") from None
        check_qa_inputs(base_dir, config.dataset_name, Path(config.clips_dir) if config.clips_dir else None,
                        bool(config.yid))
        layout = DatasetLayout(base_dir)
        if config.yid:
            return _video_sheet(layout, config, config.yid)
        assert config.records is not None
        return _gallery(layout, config, config.records)


def _gallery(layout: DatasetLayout, config: QAConfig, records: str) -> Outcome:
    try:
        records_file = layout.relative(records)
    except InvalidItemError as exc:
        raise UsageError(f"--records: {exc.reason}") from None
    _check_file("--records", records_file)
    clips_dir = Path(config.clips_dir) if config.clips_dir else layout.tracks_mp4_dir(config.dataset_name)
    name = records_file.name.split(".jsonl")[0]
    try:
        out = config.out or layout.qa_dir(name)
    except InvalidItemError as exc:
        raise UsageError(f"--records {records_file}: no QA folder can be named after it ({exc.reason}); "
                         "give --out") from None
    try:
        result = build_gallery(layout.base_dir, records_file, out, clips_dir, config.per_class, config.max_classes,
                               config.seed)
    except RecordsFileError as exc:
        raise UsageError(f"--records {records_file}: not a track records file ({exc})") from None
    return Outcome(lines=(f"gallery of {counted(result.tracks, 'track')} in {counted(result.classes, 'class')} "
                          f"({counted(result.sheets, 'contact sheet')}, {counted(result.missing_clips, 'clip')} "
                          f"missing): open {result.page.resolve().as_uri()}",))


def _video_sheet(layout: DatasetLayout, config: QAConfig, yid: str) -> Outcome:
    try:
        validate_yid(yid)
    except InvalidItemError as exc:
        raise UsageError(f"--yid: {exc.reason}") from None
    meta = layout.tracks_meta(config.dataset_name, yid)
    if not meta.exists():
        raise UsageError(f"--yid {yid}: no track metadata {meta} (parse_tracks.py has not parsed this video "
                         f"for --dataset_name {config.dataset_name})")
    _check_file(f"--yid {yid}: track metadata", meta)
    video = layout.video_mp4(yid)
    if not video.exists():
        raise UsageError(f"--yid {yid}: its video {video} does not exist")
    try:
        records = list(read_records(meta))
    except RecordsFileError as exc:
        raise UsageError(f"--yid {yid}: unreadable track metadata ({exc})") from None
    out = config.out or layout.qa_dir(yid)
    try:
        sheet = contact_sheet(video, records, out / f"{yid}.png", frames=12)
    except VideoError as exc:
        raise UsageError(f"--yid {yid}: cannot read its video {video}: {exc}") from None
    return Outcome(lines=(f"contact sheet of {counted(len(records), 'track')}: {sheet}",))


def _check_file(what: str, path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file")
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
