"""relabel_tracks.py: every track of an index's videos scored against a new vocabulary from the
embeddings parse_tracks.py stored, without detecting again; one metadata file per video under
the new dataset name, with the record keys of detected metadata except ``top10_logit_std``.

Items are the index's videos (in index order). For each, the source dataset's metadata file and
its embeddings file (:mod:`utils.records.track_embeddings`) are read, every track with an
embedding is scored against every class (:mod:`utils.relabel.scoring`) and written to
``tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip`` (and its embeddings file, so the
new dataset can be searched or relabelled again), both atomically, embeddings first.

Records keep the source's ``yid``, ``tid``, ``video_size``, ``track_ts``, ``track_bbox``,
``segment``, ``scores`` and extra keys; ``fn`` carries the new top-1 label; ``top10_*`` come from
the scores (``top10_logit_std`` is left out: one embedding per track, no per-frame spread);
``vocab_hash`` is the new vocabulary's; ``relabelled`` says from which dataset and vocabulary,
with which score. The file's provenance header names the source detector and weights, the new
vocabulary, and ``relabel_tracks:<detector spec>`` as what made it, so index and curation
treat it as any dataset (one vocabulary, one detector) and never mix it with detected metadata.

A video is done when its output exists with this vocabulary, its embeddings file was written
with it, and it was made from the source metadata file as it is now (its sha256 is recorded);
anything else is relabelled again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.core.config import option
from utils.core.errors import ItemError, NotReady, SystemicError, UsageError, is_systemic
from utils.core.io import file_sha256
from utils.core.layout import DatasetLayout, companion_path, require_dataset, require_dataset_root
from utils.records.index_file import check_index, load_track_table
from utils.records.prompts import Vocabulary, parse_prompt_lines
from utils.records.provenance import Provenance, read_provenance
from utils.records.released import KEY_STYLE_HELP, KEY_STYLES
from utils.records.track_embeddings import (
    EmbeddingsError,
    embeddings_info,
    embeddings_path,
    embeddings_problem,
    read_video_embeddings,
    write_video_tracks,
)
from utils.records.track_files import iter_records, read_records
from utils.records.tracks import RELABELLED, RecordsFileError, TrackRecord, TrackRecordError, track_filename
from utils.relabel.scoring import relabel_fields, score_tracks
from utils.relabel.text import Encoder, encoder_of, text_embeddings
from utils.runner.stage import Stage, StageConfig, check_dataset_name

log = logging.getLogger("trackverse.relabel")

RELABEL_GROUP = "relabel_tracks"
RELABEL_SPEC_PREFIX = "relabel_tracks:"
SCORE_NAME = "cosine(track mean embedding, text embedding)"
TOP_K = 10


# ---------------------------------------------------------------------------- inputs


def read_vocabulary(path: Path, flag: str = "--class_prompts") -> Vocabulary:
    """The new vocabulary; UsageError (one line) for a missing or empty file or repeated lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{flag} {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    lines = parse_prompt_lines(text.splitlines())
    if not lines:
        raise UsageError(f"{flag} {path}: no class prompts (the file is empty or only blank and # comment lines)")
    seen: dict[str, int] = {}
    for i, line in enumerate(lines):
        # the text encoders lower-case and split on white space: "Zebra" and "zebra " are one text to them
        key = " ".join(line.casefold().split())
        if key in seen:
            j = seen[key]
            detail = "" if lines[j] == line else (f"; {line!r} differs from it only in letter case or spacing, "
                                                  "which the text encoders do not see: they lower-case")
            raise UsageError(f"{flag} {path}: class {i} repeats class {j} ({lines[j]!r}{detail}): each line must "
                             "be a different class (two equal prompts would always tie)")
        seen[key] = i
    try:
        return Vocabulary.from_lines(lines, source=str(path))
    except ValueError as exc:
        raise UsageError(f"{flag} {path}: {exc}") from None


@functools.lru_cache(maxsize=4)
def _vocabulary(path: str, size: int, mtime_ns: int) -> Vocabulary:
    return read_vocabulary(Path(path))


def vocabulary_of(config: RelabelTracksConfig) -> Vocabulary:
    st = os.stat(config.class_prompts)
    return _vocabulary(str(config.class_prompts), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _index_videos(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    if companion_path(path).is_file():
        yids = load_track_table(path, columns=["yid"]).table.column("yid").to_pylist()
    else:  # a records file without companion (e.g. a released subset): streamed
        try:
            yids = [r.yid for r in iter_records(path, validate=False)]
        except (RecordsFileError, TrackRecordError) as exc:
            raise UsageError(f"--index_file {path} is not a track index or subset file: {exc}") from None
    return tuple(dict.fromkeys(yids))


def index_videos(index_file: Path) -> list[str]:
    """The index's videos, each once, in the order of their first track (from its companion
    when curate_db.py wrote one, else by streaming its records)."""
    st = os.stat(index_file)
    return list(_index_videos(str(index_file), st.st_size, st.st_mtime_ns))


# ---------------------------------------------------------------------------- the stage


@dataclass(frozen=True, kw_only=True)
class RelabelTracksConfig(StageConfig):
    index_file: Path = option(group=RELABEL_GROUP,
                              help="the index (curate_db.py --action index) whose videos are relabelled; relative "
                                   "paths are under --base_dir")
    class_prompts: Path = option(group=RELABEL_GROUP,
                                 help="the new vocabulary: one 'name (also known as ...)' per line, every line a "
                                      "different class")
    dataset_name: str = option(group=RELABEL_GROUP,
                               help="the new dataset: tracks_meta/<dataset_name>/ (not the source's)")
    source_dataset_name: str | None = option(
        None, group=RELABEL_GROUP,
        help="the dataset whose metadata and track embeddings are relabelled (default: the one the index was built from)")
    key_style: str = option("compact", group=RELABEL_GROUP, choices=KEY_STYLES, help=KEY_STYLE_HELP)


@dataclass
class RelabelResources:
    vocab: Vocabulary
    encoder: Encoder
    text: np.ndarray  # (C, D) unit rows


class RelabelTracksStage(Stage[RelabelTracksConfig]):
    """Score every track of an index's videos against a new vocabulary from the stored embeddings."""

    name = "relabel_tracks"
    description = (
        "Relabel the tracks of --index_file's videos with a new vocabulary (--class_prompts) from the track "
        "embeddings parse_tracks.py stored, on a CPU, without detecting again: writes "
        "tracks_meta/<dataset_name>/<yid[:2]>/<yid>-meta.jsonl.gzip (+ <yid>-emb.parquet) per video, with the "
        "record keys of detected metadata except top10_logit_std (one embedding per track: no per-frame spread to "
        "measure; README); curate_db.py then indexes and samples it as any dataset. Scores are cosine "
        "similarities of each track's mean embedding and each class's text embedding (README: how they relate "
        "to detected logits)."
    )
    default_slurm = {"cpus_per_task": 4, "mem_gb": 8}
    config_class = RelabelTracksConfig

    def validate(self, config: RelabelTracksConfig) -> RelabelTracksConfig:
        check_dataset_name(config.dataset_name)
        layout = DatasetLayout(config.base_dir)
        index_file = layout.relative(config.index_file)
        if index_file.is_dir() or not index_file.is_file():
            raise UsageError(f"--index_file {index_file} is not a file (curate_db.py --action index writes one)")
        require_dataset_root(config.base_dir, needs=("tracks_meta",))
        meta = check_index(index_file)[0] if companion_path(index_file).is_file() else {}
        if not index_videos(index_file):  # a run with no item would end "done" having done nothing
            raise UsageError(f"--index_file {index_file} holds no tracks: nothing to relabel")
        source = config.source_dataset_name or meta.get("dataset_name")
        if not source:
            raise UsageError(f"{index_file} does not say which dataset it was built from: give --source_dataset_name")
        check_dataset_name(source)
        require_dataset(config.base_dir, source, ("tracks_meta",), producers=("parse_tracks", "relabel_tracks"),
                        flag="--source_dataset_name" if config.source_dataset_name else
                        f"the dataset {index_file.name} was built from (--source_dataset_name)")
        if source == config.dataset_name:
            raise UsageError(f"--dataset_name {config.dataset_name} is the source dataset: give the relabelled "
                             "tracks a new name (the source's metadata stays as it is)")
        prompts = config.class_prompts
        if not prompts.is_absolute() and not prompts.exists():
            prompts = layout.base_dir / prompts
        read_vocabulary(prompts)
        config = dataclasses.replace(config, index_file=index_file.absolute(), class_prompts=prompts.absolute(),
                                     source_dataset_name=source)
        return config

    def check_items(self, config: RelabelTracksConfig, items: Sequence[str]) -> None:
        """Every source video of this run with embeddings must come from one encoder, and no
        output of this run's videos may hold another vocabulary or encoder."""
        layout = DatasetLayout(config.base_dir)
        assert config.source_dataset_name is not None
        src = [layout.tracks_meta(config.source_dataset_name, yid) for yid in items]
        with ThreadPoolExecutor(max(1, min(16, len(src)))) as pool:
            encoders = [e for e in pool.map(encoder_of, src) if e is not None]
        if not encoders:
            raise UsageError(f"none of the {len(items)} videos of this run has track embeddings in "
                             f"tracks_meta/{config.source_dataset_name}: parse them with parse_tracks.py first "
                             "(it stores each track's embedding beside the metadata)")
        found = sorted({(e.spec, e.weights or "") for e in encoders})
        if len(found) > 1:
            raise UsageError(f"the track embeddings of tracks_meta/{config.source_dataset_name} come from "
                             f"{len(found)} detectors or weights ({'; '.join(f'{s} {w or chr(45)}' for s, w in found)}): "
                             "their spaces differ, relabel one at a time (--index_file of one of them)")
        encoder = encoders[0]
        vocab_hash = vocabulary_of(config).hash
        outputs = [layout.tracks_meta(config.dataset_name, yid) for yid in items]
        with ThreadPoolExecutor(max(1, min(16, len(outputs)))) as pool:
            provs = list(pool.map(_provenance_or_none, outputs))
        other = [p for p in provs if p is not None and (p.vocab_hash != vocab_hash or p.detector_spec !=
                                                        RELABEL_SPEC_PREFIX + encoder.spec or p.weights != encoder.weights)]
        if other:
            raise UsageError(f"{len(other)} video(s) in tracks_meta/{config.dataset_name} hold metadata of another "
                             f"vocabulary or detector ({other[0].describe()}): give another --dataset_name, or "
                             "remove that folder to relabel it with this vocabulary")

    def job_key(self, config: RelabelTracksConfig) -> str:
        return f"{self.name}-{config.dataset_name}"

    def list_items(self, config: RelabelTracksConfig) -> list[str]:
        return index_videos(config.index_file)

    def output_exists(self, config: RelabelTracksConfig, item: str) -> bool:
        layout = DatasetLayout(config.base_dir)
        out = layout.tracks_meta(config.dataset_name, item)
        prov = _provenance_or_none(out)
        if prov is None or prov.vocab_hash != vocabulary_of(config).hash or embeddings_problem(out) is not None:
            return False
        assert config.source_dataset_name is not None
        source = layout.tracks_meta(config.source_dataset_name, item)
        try:
            return embeddings_info(embeddings_path(out)).get("source_meta_sha256") == file_sha256(source)
        except (EmbeddingsError, FileNotFoundError):
            return False

    def setup(self, config: RelabelTracksConfig, items: Sequence[str]) -> RelabelResources:
        vocab = vocabulary_of(config)
        layout = DatasetLayout(config.base_dir)
        assert config.source_dataset_name is not None
        encoder = None
        for yid in index_videos(config.index_file):
            encoder = encoder_of(layout.tracks_meta(config.source_dataset_name, yid))
            if encoder is not None:
                break
        if encoder is None:
            raise SystemicError(f"no video of the index has track embeddings in tracks_meta/{config.source_dataset_name}")
        text = text_embeddings(encoder.spec, encoder.weights, vocab.lines)
        log.info("relabel_tracks: %d classes (vocabulary %s) encoded with %s", len(vocab), vocab.hash[:12],
                 encoder.describe())
        return RelabelResources(vocab, encoder, text)

    def process(self, config: RelabelTracksConfig, item: str, resources: RelabelResources) -> dict[str, float]:
        layout = DatasetLayout(config.base_dir)
        assert config.source_dataset_name is not None
        source = layout.tracks_meta(config.source_dataset_name, item)
        if not source.exists():
            raise NotReady(f"no metadata {source} yet (parse_tracks.py has not parsed this video)")
        try:
            source_sha = file_sha256(source)
            records = read_records(source)
            emb = read_video_embeddings(source)
        except RecordsFileError as exc:
            raise ItemError(str(exc), category="bad_tracks") from None
        except EmbeddingsError as exc:
            raise ItemError(f"{exc}: parse it again (parse_tracks.py) to store its track embeddings",
                            category="no_embeddings") from None
        encoder = Encoder(str(emb.info.get("detector_spec")), emb.info.get("weights"), emb.info.get("detector"))
        if (encoder.spec, encoder.weights) != (resources.encoder.spec, resources.encoder.weights):
            raise ItemError(f"{embeddings_path(source)}: embeddings of {encoder.describe()}, not of this run's "
                            f"{resources.encoder.describe()}", category="other_detector")
        if emb.tids != [r.tid for r in records]:
            raise ItemError(f"{embeddings_path(source)} lists other tracks than {source.name}", category="no_embeddings")
        if emb.present.any() and emb.dim != resources.text.shape[1]:
            raise SystemicError(f"track embeddings of {emb.dim} dimensions but {resources.encoder.describe()} encodes "
                                f"text in {resources.text.shape[1]}: these embeddings are not in its text space")
        keep = np.flatnonzero(emb.present)
        top = score_tracks(emb.vectors[keep], resources.text, TOP_K)
        vocab = resources.vocab
        fields = relabel_fields(top, vocab.labels, [np.asarray(records[i].scores or [], float) for i in keep])
        source_prov = read_provenance(source)
        relabelled = {"from_dataset": config.source_dataset_name,
                      "from_vocab_hash": source_prov.vocab_hash if source_prov else None, "score": SCORE_NAME}
        out_records = [_relabelled(records[i], f, vocab, relabelled) for i, f in zip(keep, fields, strict=True)]
        provenance = Provenance(detector=encoder.detector, weights=encoder.weights, vocab_hash=vocab.hash,
                                classes=len(vocab), detector_spec=RELABEL_SPEC_PREFIX + encoder.spec)
        write_video_tracks(
            layout.tracks_meta(config.dataset_name, item), out_records, [emb.vectors[i] for i in keep], provenance,
            info={"detector_spec": encoder.spec, "source_meta_sha256": source_sha, "vocab_hash": vocab.hash,
                  "relabelled_from": config.source_dataset_name},
            key_style=config.key_style,
        )
        stats = {"tracks": float(len(out_records))}
        if keep.size < len(records):  # dropped: nothing to score them with (counted, not hidden)
            stats["tracks_without_embedding"] = float(len(records) - keep.size)
        return stats


def _provenance_or_none(path: Path) -> Provenance | None:
    try:
        return read_provenance(path, from_records=False)
    except FileNotFoundError:
        return None
    except (OSError, RecordsFileError) as exc:
        if is_systemic(exc):
            raise
        return None


def _relabelled(record: TrackRecord, fields: dict[str, Any], vocab: Vocabulary, relabelled: dict[str, Any]) -> TrackRecord:
    file_label = vocab.file_labels[fields["top10_lbl"][0]]  # the full prompt line's name (released rule)
    return dataclasses.replace(
        record, fn=track_filename(record.yid, file_label, record.tid), vocab_hash=vocab.hash,
        top10_logit_std=None, extra={**record.extra, RELABELLED: relabelled}, **fields)


RELABEL_TRACKS_STAGE = RelabelTracksStage()
