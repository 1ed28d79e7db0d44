"""Issue 22: a user's slip never ends in exit 0 with an empty or wrong result.

Each test replays a slip a new user makes (a forgotten or misspelt --dataset_name, a mistyped
--base_dir, a re-export into a used --out_dir, ...) and checks that the run stops with exit 2 and a
message naming the cause, having made nothing.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import curate_db
import qa
import search_tracks
import status
from tests.helpers import CURATE_DS as DS
from tests.helpers import CURATE_INDEX as INDEX
from tests.helpers import REPO, export, write_meta, write_records_file, yid_of
from tests.helpers import curation_record as make_record
from tests.helpers import gt_records as synthetic_gt_records
from utils.clips.stage import EXTRACT_TRACKS_STAGE
from utils.core.assets import AssetError, resolve_asset
from utils.core.errors import EXIT_OK, EXIT_USAGE, UsageError
from utils.core.layout import DatasetLayout
from utils.curate.report import ClassRow
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.export.stage import EXPORT_TRACKS_STAGE
from utils.ingest.stage import BLUR_FACES_STAGE
from utils.metrics.stage import VISUAL_METRICS_STAGE
from utils.records.track_files import records_to_jsonl_gz_bytes
from utils.records.tracks import TrackRecord
from utils.relabel.scoring import relabel_fields, score_tracks
from utils.relabel.search import subset_name
from utils.relabel.stage import RELABEL_TRACKS_STAGE, read_vocabulary
from utils.relabel.text import text_cache_path
from utils.runner.cli import build_parser, main

# ------------------------------------------------------------------------------ helpers

YID = "synthVideo1"
DATASET = "TestSet"
LABEL_IDS = {"cat": 3, "cup": 5, "rocket": 7, "person": 11}


def gt_records(video):
    return synthetic_gt_records(video, YID, label_ids=LABEL_IDS)


def setup_db(db: Path, video: Path, lines: list) -> Path:
    return write_records_file(db, video, lines, YID)


def records_file(path: Path, records: list[TrackRecord]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(r.to_json() + "\n" for r in records).encode()))
    return path


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def metadata_db(base: Path, dataset: str = DS, videos: int = 2) -> list[TrackRecord]:
    records = []
    for v in range(videos):
        recs = [make_record(yid_of(v), k % 3, 0.5, v * 10 + k, t0=2.0 * k) for k in range(3)]
        write_meta_as(base, dataset, yid_of(v), recs)
        records += recs
    return records


def write_meta_as(base: Path, dataset: str, yid: str, records: list[TrackRecord]) -> None:
    path = DatasetLayout(base).tracks_meta(dataset, yid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(r.to_json() + "\n" for r in records).encode()))


# ------------------------------------------------------------------- the shared layout helper


def test_layout_helper_names_the_datasets_there_and_what_is_missing(tmp_path):
    from utils.core.layout import datasets_in, require_dataset, require_dataset_root

    base = tmp_path / "db"
    for folder in ("tracks_meta/Alpha", "tracks_mp4/Beta", "tracks_metrics/Alpha", "videos_mp4"):
        (base / folder).mkdir(parents=True)
    assert datasets_in(base) == ["Alpha", "Beta"]
    require_dataset_root(base, needs=("videos_mp4",))
    require_dataset(base, "Alpha", ("tracks_meta",))
    with pytest.raises(UsageError, match=r"--dataset_name Beta: no track metadata .*parse_tracks\.py.*Alpha, Beta"):
        require_dataset(base, "Beta", ("tracks_meta",))
    # a stage that makes the dataset's folders runs (its journal exists): what is missing is "not ready"
    (base / "logs" / "parse_tracks-Gamma").mkdir(parents=True)
    require_dataset(base, "Gamma", ("tracks_meta",), producers=("parse_tracks",))
    with pytest.raises(UsageError, match=r"has no videos_segm/ \(videos_segm/ by download_videos\.py\)"):
        require_dataset_root(base, needs=("videos_mp4", "videos_segm"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"is not a dataset root: it has none of videos_mp4/, .*tracks_meta/"):
        require_dataset_root(empty)
    with pytest.raises(UsageError, match=r"--base_dir .*nowhere does not exist"):
        require_dataset_root(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


# ------------------------------------------------------------------------ mistyped --base_dir


@pytest.fixture
def good_inputs(tmp_path) -> dict[str, Path]:
    """Inputs outside any root: a records file, an id list, prompts."""
    records = [make_record(yid_of(0), k, 0.5, k, t0=2.0 * k) for k in range(2)]
    ids = tmp_path / "inputs" / "ids.txt"
    records_path = records_file(tmp_path / "inputs" / "subset.jsonl.gzip", records)
    ids.write_text(f"{yid_of(0)}\n")
    prompts = tmp_path / "inputs" / "prompts.txt"
    prompts.write_text("cat\ndog\nbird\n")
    return {"records": records_path, "ids": ids, "prompts": prompts}


READING_STAGES = {
    "extract_tracks": (EXTRACT_TRACKS_STAGE, lambda i: ["--yid_index_fn", i["ids"]]),
    "parse_tracks": (PARSE_TRACKS_STAGE, lambda i: ["--yid_index_fn", i["ids"], "--class_prompts", i["prompts"],
                                                    "--detector", "utils.testing.ground_truth:GroundTruthDetector"]),
    "gdpr_blur_faces": (BLUR_FACES_STAGE, lambda i: ["--yid_index_fn", i["ids"]]),
    "visual_metrics": (VISUAL_METRICS_STAGE, lambda i: ["--index_file", i["records"], "--metric", "motion"]),
    "export_tracks": (EXPORT_TRACKS_STAGE, lambda i: ["--records", i["records"], "--format", "webdataset",
                                                      "--out_dir", "exports/wds"]),
    "relabel_tracks": (RELABEL_TRACKS_STAGE, lambda i: ["--index_file", i["records"], "--class_prompts", i["prompts"],
                                                        "--dataset_name", "New", "--source_dataset_name", DS]),
}


@pytest.mark.parametrize("name", sorted(READING_STAGES))
def test_a_reading_stage_refuses_a_mistyped_root_and_creates_nothing(tmp_path, good_inputs, name, capsys):
    stage, flags = READING_STAGES[name]
    typo = tmp_path / "TrackVerseDV"  # its parent exists: the root could be created, and used to be
    argv = ["--base_dir", typo, *flags(good_inputs)]
    assert main(stage, [str(a) for a in argv]) == EXIT_USAGE
    assert f"--base_dir {typo} does not exist" in capsys.readouterr().err
    assert not typo.exists()
    # an existing folder that is no dataset root (a home folder, say): refused, nothing made in it
    typo.mkdir()
    assert main(stage, [str(a) for a in argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is not a dataset root" in err and "tracks_meta/" in err and err.count("\n") == 1
    assert tree(typo) == []


def test_parse_refuses_a_root_without_videos(tmp_path, good_inputs, capsys):
    base = tmp_path / "db"
    (base / "tracks_meta").mkdir(parents=True)
    argv = ["--base_dir", base, *READING_STAGES["parse_tracks"][1](good_inputs)]
    assert main(PARSE_TRACKS_STAGE, [str(a) for a in argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "has no videos_mp4/ and no videos_segm/" in err and "download_videos.py" in err
    assert tree(base) == ["tracks_meta"]


def test_status_refuses_a_folder_that_is_no_root(tmp_path, capsys):
    (tmp_path / "Documents").mkdir()
    assert status.main(["--base_dir", str(tmp_path)]) == EXIT_USAGE
    assert "is not a dataset root" in capsys.readouterr().err


# ------------------------------------------------------------- forgotten or misspelt --dataset_name


@pytest.fixture
def example_db(tmp_path, synthetic_video) -> tuple[Path, Path]:
    """A root with the video, a 5-track subset and the dataset ``TestSet``'s clips folder."""
    db = tmp_path / "db"
    path = setup_db(db, synthetic_video.path, gt_records(synthetic_video))
    (DatasetLayout(db).tracks_mp4_dir(DATASET)).mkdir(parents=True)
    (DatasetLayout(db).tracks_meta_dir(DATASET)).mkdir(parents=True)
    return db, path


def test_webdataset_export_of_a_dataset_that_is_not_there(example_db, capsys):
    db, path = example_db
    out = db / "exports" / "wds"
    assert export(db, path, "webdataset", out) == EXIT_USAGE  # --dataset_name forgotten: TrackVerseLVIS
    err = capsys.readouterr().err
    assert "--dataset_name TrackVerseLVIS" in err and f"datasets under {db}: {DATASET}" in err
    assert not out.exists() and not (db / "logs").exists()


def test_visual_metrics_of_a_dataset_that_is_not_there(example_db, capsys):
    db, path = example_db
    assert main(VISUAL_METRICS_STAGE, ["--base_dir", str(db), "--index_file", str(path), "--metric", "motion",
                                       "--dataset_name", "TestSey"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--dataset_name TestSey: no track clips" in err and DATASET in err


def test_extract_of_a_dataset_that_is_not_there(example_db, tmp_path, capsys):
    db, _ = example_db
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{YID}\n")
    assert main(EXTRACT_TRACKS_STAGE, ["--base_dir", str(db), "--yid_index_fn", str(ids)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--dataset_name TrackVerseLVIS: no track metadata" in err and DATASET in err
    assert not DatasetLayout(db).tracks_mp4_dir("TrackVerseLVIS").exists()


def test_relabel_of_a_source_dataset_that_is_not_there(example_db, tmp_path, capsys):
    db, path = example_db
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("cat\ndog\n")
    assert main(RELABEL_TRACKS_STAGE, ["--base_dir", str(db), "--index_file", str(path), "--class_prompts",
                                       str(prompts), "--dataset_name", "New", "--source_dataset_name",
                                       "Missing"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--source_dataset_name Missing: no track metadata" in err and DATASET in err


def test_qa_of_a_dataset_that_is_not_there_keeps_the_good_gallery(example_db, capsys):
    db, path = example_db
    page = DatasetLayout(db).qa_dir("subset") / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("the good gallery")
    assert qa.main(["--base_dir", str(db), "--records", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--dataset_name TrackVerseLVIS: no track clips" in err and DATASET in err
    # the right dataset, but none of its clips there (not extracted, or another --clips_dir): no page of
    # "clip missing" cards either
    assert qa.main(["--base_dir", str(db), "--records", str(path), "--dataset_name", DATASET]) == EXIT_USAGE
    assert "none of the 5 clips to show" in capsys.readouterr().err
    assert page.read_text() == "the good gallery"


def test_status_names_the_known_datasets(tmp_path, capsys):
    base = tmp_path / "db"
    (base / "tracks_meta" / "Example").mkdir(parents=True)
    (base / "logs" / "parse_tracks-Example").mkdir(parents=True)
    assert status.main(["--base_dir", str(base), "--dataset_name", "Exampel"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--dataset_name Exampel" in err and "known: Example" in err
    assert status.main(["--base_dir", str(base), "--dataset_name", "Example"]) == EXIT_OK


def test_curate_index_of_a_dataset_that_is_not_there_names_the_ones_there(tmp_path, capsys):
    base = tmp_path / "db"
    metadata_db(base, "Alpha")
    assert curate_db.main(["--action", "index", "--base_dir", str(base), "--dataset_name", "Alpah",
                           "--index_file", INDEX, "--num_workers", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--dataset_name Alpah" in err and "Alpha" in err and "parse_tracks.py" in err


# --------------------------------------------------------------------- re-export into a used out_dir


def test_sot_reexport_of_another_subset_is_refused_then_overwritten_exactly(example_db, synthetic_video, capsys):
    db, path = example_db
    records = gt_records(synthetic_video)
    out = db / "exports" / "sot"
    assert export(db, path, "sot", out, "--nframes", "3") == EXIT_OK
    assert len(list(out.glob("*/sequence_meta.json"))) == len(records) == 5
    # the same request again resumes (nothing to do)
    assert export(db, path, "sot", out, "--nframes", "3") == EXIT_OK
    assert f"{len(records)} skipped (already done)" in capsys.readouterr().err

    subset = records_file(db / "tracks_subsets" / "smaller.jsonl.gzip", records[:3])
    before = tree(out)
    assert export(db, subset, "sot", out, "--nframes", "3") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "another --records content" in err and "--overwrite" in err and err.count("\n") == 1
    assert tree(out) == before
    # another --nframes is another request too
    assert export(db, path, "sot", out, "--nframes", "4") == EXIT_USAGE
    assert "--nframes 3 (this run: 4)" in capsys.readouterr().err

    assert export(db, subset, "sot", out, "--nframes", "3", "--overwrite") == EXIT_OK
    wanted = sorted(f"{r.yid}-{r.tid}" for r in records[:3])
    assert sorted(p.parent.name for p in out.glob("*/sequence_meta.json")) == wanted
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == wanted
    gt = [json.loads(line)["seq_id"] for line in (db / "exports" / "sot.gt.jsonl").read_text().splitlines()]
    assert sorted(gt) == wanted
    assert sorted(p.stem for p in (db / "exports" / "sot.gt.jsonl.parts").glob("*.json")) == wanted
    assert len(json.loads((out / "gt_requests.json").read_text())["requests"]) == 3 * 3


def test_frames_reexport_with_another_stride_or_format(example_db, capsys):
    db, path = example_db
    out = db / "exports" / "frames"
    assert export(db, path, "frames", out, "--stride", "4") == EXIT_OK
    first = sorted(p.name for p in (out / "frames" / YID).iterdir())
    assert all(int(name.split("_")[1].split(".")[0]) % 4 == 0 for name in first)
    for extra in (("--stride", "6"), ("--image_format", "png")):
        assert export(db, path, "frames", out, "--stride", "4", *extra) == EXIT_USAGE
        assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "frames" / YID).iterdir()) == first
    assert export(db, path, "frames", out, "--stride", "6", "--image_format", "png", "--overwrite") == EXIT_OK
    names = sorted(p.name for p in (out / "frames" / YID).iterdir())
    assert names and all(n.endswith(".png") and int(n.split("_")[1].split(".")[0]) % 6 == 0 for n in names)
    rows = (out / "annotations.csv").read_text().splitlines()[1:]
    assert rows and all(round(float(r.split(",")[1]) * 25) % 6 == 0 for r in rows)


def test_overwrite_never_deletes_what_no_export_wrote(example_db, capsys):
    db, path = example_db
    out = db / "exports" / "mine"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    # files without a record of what made them: refused, overwrite or not, and kept
    assert export(db, path, "sot", out, "--nframes", "2") == EXIT_USAGE
    assert "no record of what export made them" in capsys.readouterr().err
    assert export(db, path, "sot", out, "--nframes", "2", "--overwrite") == EXIT_USAGE
    assert "notes.txt" in capsys.readouterr().err
    assert tree(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    # a recorded export with a user file added later: the overwrite is refused too
    other = db / "exports" / "wds"
    assert export(db, path, "sot", other, "--nframes", "2") == EXIT_OK
    (other / "README.txt").write_text("what this is")
    assert export(db, path, "sot", other, "--nframes", "3", "--overwrite") == EXIT_USAGE
    assert (other / "README.txt").exists() and len(list(other.glob("*/sequence_meta.json"))) == 5


def test_manifest_records_the_request_beside_the_folder(example_db):
    from utils.export import manifest

    db, path = example_db
    out = db / "exports" / "bench"
    assert export(db, path, "sot", out, "--nframes", "2") == EXIT_OK
    recorded = manifest.read_manifest(out)
    assert recorded is not None and recorded["request"]["format"] == "sot"
    assert recorded["request"]["nframes"] == "2" and recorded["records"] == str(path)
    assert manifest.manifest_path(out).parent == out.parent  # nothing added to what is handed on


# ---------------------------------------------------------------------------------- curate_db


def test_index_file_that_is_a_folder_is_a_usage_error(tmp_path, capsys):
    base = tmp_path / "db"
    metadata_db(base)
    folder = DatasetLayout(base).relative(INDEX)
    folder.mkdir(parents=True)
    assert curate_db.main(["--action", "index", "--base_dir", str(base), "--dataset_name", DS,
                           "--index_file", INDEX, "--num_workers", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--index_file {folder} is a folder" in err and "Traceback" not in err


def test_offline_sampling_names_the_verified_list_flag(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "assets"
    empty.mkdir()
    monkeypatch.setenv("TRACKVERSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRACKVERSE_ASSETS_URL", empty.as_uri() + "/")
    base = tmp_path / "db"
    metadata_db(base)
    assert curate_db.main(["--action", "index", "--base_dir", str(base), "--dataset_name", DS,
                           "--index_file", INDEX, "--num_workers", "1"]) == EXIT_OK
    capsys.readouterr()
    assert curate_db.main(["--action", "sample_random", "--base_dir", str(base), "--index_file", INDEX,
                           "--N", "0.001"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "pass its path with --verified_list" in err and "the stage's flag" not in err
    with pytest.raises(AssetError, match="is a folder"):
        resolve_asset(empty, "trackverse-verified-6perclass.txt", flag="--verified_list")


# ------------------------------------------------------------------------------- search_tracks


def test_search_messages_name_the_real_cause(tmp_path, capsys):
    base = tmp_path / "db"
    write_meta(base, yid_of(0), [], DS)  # a video with no track: the index holds none
    assert curate_db.main(["--action", "index", "--base_dir", str(base), "--dataset_name", DS,
                           "--index_file", INDEX, "--num_workers", "1"]) == EXIT_OK
    capsys.readouterr()
    queries = tmp_path / "queries.txt"
    queries.write_text("# a comment only\n\n")
    assert search_tracks.main(["--base_dir", str(base), "--index_file", INDEX, "--queries_file", str(queries)]) \
        == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--queries_file {queries} has no query" in err
    assert search_tracks.main(["--base_dir", str(base), "--index_file", INDEX, "cat"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "indexes no tracks" in err and "parsed again" not in err


def test_search_subsets_are_named_after_the_request_not_the_hits():
    names = {subset_name("D", "cat", 200), subset_name("D", "cat", 200, 0.8), subset_name("D", "cat", 200, 0.5),
             subset_name("D", "cat", 100), subset_name("D", "a-cat", 200), subset_name("D", "a cat", 200),
             subset_name("D", "A cat", 200), subset_name("D", "a  cat", 200)}
    assert len(names) == 8
    assert subset_name("D", "a red umbrella", 3) == "D-search-a-red-umbrella-top3.jsonl.gzip"
    assert subset_name("D", "cat", 200, 0.8) == "D-search-cat-top200-min0.8.jsonl.gzip"
    long = "x" * 70
    assert subset_name("D", long, 5) != subset_name("D", long + "y", 5)


# ------------------------------------------------------------------------------ relabel_tracks


def test_vocabulary_lines_differing_only_in_case_are_one_class(tmp_path):
    prompts = tmp_path / "vocab.txt"
    prompts.write_text("zebra\ncat\nZebra\n")
    with pytest.raises(UsageError, match=r"class 2 repeats class 0 \('zebra'; 'Zebra' differs from it only in letter "
                                         r"case"):
        read_vocabulary(prompts)
    prompts.write_text("zebra\ncat\nzebra  crossing\nzebra crossing\n")
    with pytest.raises(UsageError, match="class 3 repeats class 2"):
        read_vocabulary(prompts)


def test_relabelled_scores_have_the_decimals_parse_writes():
    STAT_DECIMALS = 5  # noqa: N806 (utils.records.tracks.STAT_DECIMALS: what parse writes)
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(4, 8)).astype(np.float32)
    text = rng.normal(size=(3, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    fields = relabel_fields(score_tracks(embeddings, text, 3), ["a", "b", "c"], [rng.random(5) for _ in range(4)])
    for f in fields:
        for key in ("top10_logit_mu", "top10_wlogit_mu", "top10_wlogit_std"):
            assert all(v == round(v, STAT_DECIMALS) for v in f[key])
            assert all(len(json.dumps(v).split(".")[-1]) <= STAT_DECIMALS for v in f[key])


def test_text_cache_key_follows_a_plugin_detectors_code(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "my_slips_plugin.py"
    module.write_text("def make(class_names, **kw):\n    return None\n")
    importlib.invalidate_caches()
    spec = "my_slips_plugin:make"
    before = text_cache_path(spec, None, ["cat"])
    assert text_cache_path(spec, None, ["cat"]) == before
    module.write_text("def make(class_names, **kw):\n    return None  # embed_text edited\n")
    assert text_cache_path(spec, None, ["cat"]) != before
    # a registry name (our own code) keeps its key
    assert text_cache_path("owlv2", None, ["cat"]) == text_cache_path("owlv2", None, ["cat"])


def test_relabel_help_says_which_keys_are_left_out():
    text = " ".join(build_parser(RELABEL_TRACKS_STAGE).format_help().split())
    assert "same record keys" not in text and "except top10_logit_std" in text


# ------------------------------------------------------------------------------------- --help

STAGE_SCRIPTS = ("download_videos", "parse_tracks", "extract_tracks", "visual_metrics", "download_tracks",
                 "export_tracks", "relabel_tracks", "gdpr_blur_faces")
PARSER_SCRIPTS = ("curate_db", "search_tracks", "qa", "status")


def _stage_of(script: str):
    from utils.clips.released import DOWNLOAD_TRACKS_STAGE
    from utils.ingest.stage import DOWNLOAD_VIDEOS_STAGE
    return {"download_videos": DOWNLOAD_VIDEOS_STAGE, "parse_tracks": PARSE_TRACKS_STAGE,
            "extract_tracks": EXTRACT_TRACKS_STAGE, "visual_metrics": VISUAL_METRICS_STAGE,
            "download_tracks": DOWNLOAD_TRACKS_STAGE, "export_tracks": EXPORT_TRACKS_STAGE,
            "relabel_tracks": RELABEL_TRACKS_STAGE, "gdpr_blur_faces": BLUR_FACES_STAGE}[script]


def _parser(script: str) -> argparse.ArgumentParser:
    if script in STAGE_SCRIPTS:
        return build_parser(_stage_of(script))
    return importlib.import_module(script).build_parser()


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("width", ["50", "80", "123"])
@pytest.mark.parametrize("script", STAGE_SCRIPTS + PARSER_SCRIPTS)
def test_help_never_splits_a_path_or_a_word(script, width, monkeypatch):
    monkeypatch.setenv("COLUMNS", width)
    parser = _parser(script)
    text = parser.format_help()
    flat = " ".join(text.split())
    for action in _actions(parser):
        help_text = " ".join((action.help or "").replace("%%", "%").split())
        assert help_text in flat, (script, action.dest)
    if script in STAGE_SCRIPTS:  # the description is wrapped too (the other scripts lay theirs out by hand)
        assert " ".join(parser.description.split()) in flat, script
    assert not re.search(r"[A-Za-z_/]- [a-z]", flat.replace(" - ", " ")), re.findall(r"\S+- \S+", flat)


@pytest.mark.parametrize("script", STAGE_SCRIPTS + PARSER_SCRIPTS)
def test_help_gives_every_flag_a_text_and_its_default(script, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser = _parser(script)
    formatter = parser._get_formatter()
    for action in _actions(parser):
        assert action.help, (script, action.dest)
        shown = formatter._expand_help(action) if action.help else ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
            assert "default" in shown.lower(), (script, action.dest, shown)


def test_help_texts_of_the_issue():
    def flag_help(script: str, flag: str) -> str:
        parser = _parser(script)
        action = next(a for a in parser._actions if f"--{flag}" in a.option_strings)
        return " ".join(parser._get_formatter()._expand_help(action).split())

    assert "default: 200" in flag_help("search_tracks", "top")
    assert "default: 10" in flag_help("search_tracks", "show")
    assert "default: none" in flag_help("search_tracks", "min_score")
    assert "default: INFO" in flag_help("curate_db", "log_level")
    assert "pixels" in flag_help("curate_db", "min_motion")
    assert "0 to 2" in flag_help("curate_db", "min_nn_dist")
    from utils.ingest.scenes import DEFAULT_BACKEND
    assert f"default: {DEFAULT_BACKEND}" in flag_help("download_videos", "scene_backend")


def test_example_help_has_every_flag_with_its_default():
    proc = subprocess.run([sys.executable, "example.py", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "the example's dataset root" in flat and "(default: ./TrackVerseExample)" in flat
    assert "where the detector runs: auto (CUDA if available)" in flat
    assert not re.search(r"\w- \w", flat.replace(" - ", " "))


def test_wrap_words_breaks_only_at_spaces():
    from utils.core.config import wrap_words

    text = "writes tracks_subsets/<dataset>-search-<query>-top<N>.jsonl.gzip and yt-dlp shard-NNNNNN.tar"
    lines = wrap_words(text, 12)
    assert " ".join(lines) == text and "tracks_subsets/<dataset>-search-<query>-top<N>.jsonl.gzip" in lines


# ----------------------------------------------------------------------------------- gallery


def test_class_plot_counts_whole_tracks():
    from utils.curate.report import class_distribution_figure

    rows = [ClassRow(1, "cat", 1, 3, 0), ClassRow(2, "dog", 2, 2, 0)]
    ax = class_distribution_figure(rows, "two classes").axes[0]
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


# ------------------------------------------------------------------ empty inputs: nothing to do


def test_empty_records_or_index_is_refused_not_done(example_db, tmp_path, capsys):
    db, _ = example_db
    empty = records_file(db / "tracks_subsets" / "empty.jsonl.gzip", [])
    assert export(db, empty, "sot", db / "exports" / "nothing") == EXIT_USAGE
    assert "holds no track or sequence: nothing to export" in capsys.readouterr().err
    assert not (db / "exports" / "nothing").exists()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("cat\ndog\n")
    assert main(RELABEL_TRACKS_STAGE, ["--base_dir", str(db), "--index_file", str(empty), "--class_prompts",
                                       str(prompts), "--dataset_name", "New", "--source_dataset_name",
                                       DATASET]) == EXIT_USAGE
    assert "holds no tracks: nothing to relabel" in capsys.readouterr().err
    assert main(VISUAL_METRICS_STAGE, ["--base_dir", str(db), "--index_file", str(empty), "--metric", "motion",
                                       "--dataset_name", DATASET]) == EXIT_USAGE
    assert "has no tracks" in capsys.readouterr().err
    assert qa.main(["--base_dir", str(db), "--records", str(empty), "--dataset_name", DATASET]) == EXIT_USAGE
    assert "holds no tracks" in capsys.readouterr().err


def test_sampling_with_a_misspelt_dataset_name(tmp_path, capsys):
    base = tmp_path / "db"
    metadata_db(base)
    assert curate_db.main(["--action", "index", "--base_dir", str(base), "--dataset_name", DS,
                           "--index_file", INDEX, "--num_workers", "1"]) == EXIT_OK
    capsys.readouterr()
    verified = tmp_path / "verified.txt"
    verified.write_text("")
    assert curate_db.main(["--action", "sample_random", "--base_dir", str(base), "--index_file", INDEX, "--N", "0.001",
                           "--verified_list", str(verified), "--dataset_name", DS + "x"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--dataset_name {DS}x: the index was built from {DS}" in err
    assert not list((base / "tracks_subsets").glob(f"{DS}x-*"))


def test_visual_metrics_with_its_own_clips_folder_may_make_the_root(tmp_path, synthetic_video):
    """With --clips_dir (and an index given by path) the root only receives the metric files: a
    new root is an output like any other, not a slip (the Slurm tests' reference runs do this)."""
    record = gt_records(synthetic_video)[0]
    index = tmp_path / "index.jsonl.gzip"
    index.write_bytes(records_to_jsonl_gz_bytes([record]))
    clips = tmp_path / "clips"
    (clips / record.fn).parent.mkdir(parents=True)
    shutil.copyfile(synthetic_video.path, clips / record.fn)
    new_root = tmp_path / "metrics-root"
    argv = ["--base_dir", str(new_root), "--index_file", str(index), "--metric", "motion", "--flow", "dis",
            "--clips_dir", str(clips), "--dataset_name", DATASET]
    assert main(VISUAL_METRICS_STAGE, argv) == EXIT_OK
    assert list((new_root / "tracks_metrics" / DATASET / "motion").glob("*.parquet"))
