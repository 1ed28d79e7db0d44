"""``example.py`` as a command: build a small dataset end to end with every real stage, each run
as a user runs it (a subprocess of its script), then relabel and search it; prints where
everything went. The script's docstring says what the example shows."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from utils.core.command import Command, Outcome
from utils.core.config import option
from utils.core.errors import SystemicError
from utils.core.layout import DatasetLayout, report_path
from utils.core.models import DEVICE_HELP
from utils.records.track_files import read_records
from utils.relabel.search import subset_name
from utils.testing.example import PROMPTS, example_videos, make_example_videos

REPO = Path(__file__).resolve().parents[2]  # the scripts run from the repository, as a user runs them
DATASET = "Example"
RELABELLED = "ExampleRelabelled"
# A second vocabulary for relabel_tracks.py: other names for what the videos show, and a class they do not.
RELABEL_PROMPTS = [
    "kitten",
    "mug (also known as coffee mug)",
    "spaceship",
    "astronaut",
    "bicycle",
]
# A text query for search_tracks.py, naming the rocket with a word of neither vocabulary.
QUERY = "a spaceship"
QUERY_TOP = 3
TEMPLATE_DETECTOR = "utils.testing.example:TemplateDetector"


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A local HTTP server for the example videos (the stand-in for YouTube)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/{{yid}}.mp4"


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # yt-dlp closes its probe connections early: not an error worth a traceback


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass


def step(title: str, *args: str | Path) -> None:
    print(f"\n=== {title}", flush=True)
    command = [str(a) for a in args]
    if command[0].endswith(".py"):
        command = [sys.executable, *command]
    started = time.time()
    # gdpr_blur_faces.sh runs .venv/bin/python beside it, else $PYTHON: the interpreter running this example
    proc = subprocess.run(command, cwd=REPO, check=False, env={**os.environ, "PYTHON": sys.executable})
    if proc.returncode != 0:  # the step said why on stderr; the example cannot go on without it
        raise SystemicError(f"{title} failed (exit {proc.returncode}): {' '.join(command)}")
    print(f"    ({time.time() - started:.1f} s)", flush=True)


def detector_problem(detector: str, model: str | None) -> str | None:
    """Why ``--detector`` cannot be built here, found in seconds (weights neither local, cached
    nor reachable; DETIC not installed), or None. The detect step would say the same, but only
    after the download and blur steps."""
    if detector == "owlv2":
        from utils.detect.detectors.owlv2 import DEFAULT_MODEL_ID, check_weights

        return check_weights(model or DEFAULT_MODEL_ID)[1]
    if detector == "detic":
        from utils.detect.detectors.detic import DETIC_WEIGHTS_URL, check_weights, detic_available

        if not detic_available():
            return "the 'detic' detector needs detectron2, CenterNet2 and Detic installed (docs/detic.md); or use owlv2"
        return check_weights(model or DETIC_WEIGHTS_URL)
    return None


@dataclass(frozen=True)
class ExampleConfig:
    base_dir: Path = option(Path("TrackVerseExample"),
                            help="the example's dataset root, made here: its videos, tracks, index, subset, QA page "
                                 "and logs (default: ./TrackVerseExample)")
    detector: str = option(TEMPLATE_DETECTOR,
                           help=f"{TEMPLATE_DETECTOR} (default: offline, finds the example's photographs), owlv2 "
                                "(weights from the Hugging Face hub or --model), detic, or module:callable")
    model: str | None = option(None, help="OWLv2 hub id or local folder")
    device: str = option("auto", help=f"where the detector runs: {DEVICE_HELP} (default: auto)")


class ExampleCommand(Command[ExampleConfig]):
    config_class = ExampleConfig

    def run(self, args: ExampleConfig) -> Outcome:
        started = time.time()
        model = args.model
        if model and Path(model).expanduser().exists():  # the stages run from the repository
            model = str(Path(model).expanduser().resolve())
        problem = detector_problem(args.detector, model)
        if problem:  # before minutes of work that would end there
            raise SystemicError(problem)
        base = Path(args.base_dir).resolve()
        work = base / "example_inputs"
        work.mkdir(parents=True, exist_ok=True)
        print(f"building an example dataset in {base}")
        if args.detector == "owlv2" and not model:
            print("OWLv2 (google/owlv2-base-patch16-ensemble, about 620 MB) is fetched from the Hugging Face hub "
                  "on first use and cached; offline, pass --model <local folder> or "
                  f"--detector {TEMPLATE_DETECTOR}")

        sources = make_example_videos(work / "served")
        ids = work / "yids.txt"
        ids.write_text("".join(f"{v.yid}\n" for v in example_videos()))
        prompts = work / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        verified = work / "verified.txt"  # no evaluation videos among the examples
        verified.write_text("# <track file name>,<class>: none in this example\n")
        print(f"{len(sources)} example videos in {work / 'served'}")

        server, url_template = serve(work / "served")
        common = ["--base_dir", base]
        try:
            step("1-3 download + scene segments", "download_videos.py", *common, "--yid_index_fn", ids,
                 "--url_template", url_template, "--skip_cartoon_filter", "--skip_aesthetics_filter")
        finally:
            server.shutdown()
        step("3a blur faces", "./gdpr_blur_faces.sh", *common, "--yid_index_fn", ids)
        parse = ["parse_tracks.py", *common, "--yid_index_fn", ids, "--dataset_name", DATASET,
                 "--class_prompts", prompts, "--detector", args.detector, "--device", args.device]
        if model:
            parse += ["--model", model]
        step("4 detect + track", *parse)
        step("4a one mp4 per track", "extract_tracks.py", *common, "--yid_index_fn", ids, "--dataset_name", DATASET)
        index = f"tracks_subsets/{DATASET}/{DATASET}-Full.jsonl.gzip"
        step("5 index", "curate_db.py", *common, "--index_file", index, "--dataset_name", DATASET,
             "--action", "index", "--num_workers", "2")
        step("5 class-balanced subset", "curate_db.py", *common, "--index_file", index, "--dataset_name", DATASET,
             "--action", "sample_class_balanced", "--Nc", "5", "--temperature", "0", "--verified_list", verified)
        step("status", "status.py", *common)
        layout = DatasetLayout(base)
        subsets = sorted(layout.subsets_dir().glob(f"{DATASET}-CB*.jsonl.gzip"))
        if subsets:
            step("visual QA", "qa.py", *common, "--dataset_name", DATASET, "--records", subsets[-1],
                 "--out", base / "qa")

        new_prompts = work / "relabel-prompts.txt"
        new_prompts.write_text("\n".join(RELABEL_PROMPTS) + "\n")
        step("9 relabel with a second vocabulary", "relabel_tracks.py", *common, "--index_file", index,
             "--class_prompts", new_prompts, "--dataset_name", RELABELLED, "--source_dataset_name", DATASET)
        step("9 search by text", "search_tracks.py", *common, "--index_file", index, QUERY, "--top", str(QUERY_TOP))
        search_subset = layout.subset_file(subset_name(DATASET, QUERY, QUERY_TOP))
        hits = json.loads(report_path(search_subset).read_text())["hits"]  # best first

        clips = sorted((base / "tracks_mp4" / DATASET).rglob("*.mp4"))
        print(f"\nDone in {time.time() - started:.0f} s. Everything is under {base}:")
        print(f"  videos (faces blurred)  {base / 'videos_mp4'}  ({len(list((base / 'videos_mp4').rglob('*.mp4')))})")
        print(f"  scene segments          {base / 'videos_segm'}")
        print(f"  track metadata          {layout.tracks_meta_dir(DATASET)}")
        print(f"  track clips             {base / 'tracks_mp4' / DATASET}  ({len(clips)})")
        print(f"  index                   {layout.relative(index)}")
        for subset in subsets:
            print(f"  subset                  {subset}")
        print(f"  journals                {base / 'logs'}")
        if (base / "qa" / "index.html").exists():
            print(f"  gallery                 {(base / 'qa' / 'index.html').as_uri()}")
        print(f"  relabelled metadata     {layout.tracks_meta_dir(RELABELLED)}")
        for video in example_videos():
            detected = {r.tid: r for r in read_records(layout.tracks_meta(DATASET, video.yid))}
            for new in read_records(layout.tracks_meta(RELABELLED, video.yid)):
                print(f"      {video.yid}  {detected[new.tid].label} -> {new.label}  ({new.top10_logit_mu[0]:.2f})")
        print(f"  search {QUERY!r:16} {search_subset}")
        for hit in hits[:1]:
            print(f"      top hit: {hit['fn']}  (detected as {hit['label']!r}, score {hit['score']:.2f})")
        return Outcome()
