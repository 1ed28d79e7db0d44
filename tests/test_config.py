"""Settings are described once, as frozen config dataclasses: flags are generated from their
fields, parsed flags become the config, and library code takes the config, never parsed flags."""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import STAGES
from utils.core.config import add_config_arguments, config_fields, config_from_args, nested, option
from utils.detect.stage import PARSE_TRACKS_STAGE
from utils.runner.cli import build_parser
from utils.runner.slurm import SlurmOptions

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True)
class Inner:
    url: str = option("http://x/{yid}", group="inner", help="where")
    retries: int = option(3, group="inner")


@dataclass(frozen=True, kw_only=True)
class Config:
    items: Path = option(group="main", help="the list")
    sizes: tuple[float, ...] = option((1.0, 2.0), group="main")
    mode: str = option("a", group="main", choices=["a", "b"], aliases=["old_mode"])
    limit: int | None = option(None, group="main")
    fast: bool = option(False, group="main")
    secret: str | None = option(None, hidden=True)
    inner: Inner = nested(Inner)
    not_a_flag: int = 7


@dataclass(frozen=True, kw_only=True)
class Outer(Config):
    shared: Inner = nested(Inner, group="main")  # same flags twice would clash: used only for field listing


def _parser(cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return parser


def test_flags_come_from_fields_and_parse_back_into_a_frozen_config():
    parser = _parser(Config)
    config = config_from_args(Config, parser.parse_args(["--items", "ids.txt", "--sizes", "3", "4.5", "--old_mode", "b",
                                                          "--limit", "9", "--fast", "--retries", "5"]))
    assert config == Config(items=Path("ids.txt"), sizes=(3.0, 4.5), mode="b", limit=9, fast=True,
                            inner=Inner(retries=5))
    assert config_from_args(Config, parser.parse_args(["--items", "x"])) == Config(items=Path("x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.fast = False  # type: ignore[misc]
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --items has no default: required
    with pytest.raises(SystemExit):
        parser.parse_args(["--items", "x", "--mode", "c"])
    help_text = parser.format_help()
    assert "--secret" not in help_text and "--not_a_flag" not in help_text and "--url" in help_text
    assert [f.name for f, _, _ in config_fields(Outer)][-4:] == ["url", "retries", "url", "retries"]
    assert {spec.group for f, _, spec in config_fields(Outer)[-2:]} == {"main"}  # nested group override


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_flag_of_a_stage_is_a_config_field(stage):
    """Nothing is parsed that the config does not carry (so nothing reaches the library as a
    loose flag), and the config is frozen."""
    parser = build_parser(stage)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    fields = {f.name for f, _, _ in config_fields(stage.config_class)} | {f.name for f, _, _ in
                                                                         config_fields(SlurmOptions)}
    assert flags == fields
    assert stage.config_class.__dataclass_params__.frozen


def test_library_code_never_takes_parsed_flags():
    """argparse lives in the flag generator and the CLI entry only."""
    allowed = {ROOT / "utils/core/config.py", ROOT / "utils/core/command.py", ROOT / "utils/runner/cli.py",
               ROOT / "utils/curate/config.py"}
    offenders = []
    for path in (ROOT / "utils").rglob("*.py"):
        text = path.read_text()
        if path not in allowed and re.search(r"\bargparse\b", text):
            offenders.append(str(path.relative_to(ROOT)))
        if re.search(r"argparse\.Namespace", text) and path != ROOT / "utils/core/config.py":
            offenders.append(f"{path.relative_to(ROOT)} (Namespace)")
    assert offenders == []


def test_tracker_defaults_are_defined_once():
    from utils.detect.parse import ParseConfig
    from utils.detect.tracking import ByteTracker
    from utils.detect.tracking.bytetrack import DEFAULTS

    tracker, config = ByteTracker(), ParseConfig()
    for name in ("track_thresh", "low_thresh", "match_thresh", "motion_weight"):
        assert getattr(tracker, name) == getattr(config, name) == getattr(DEFAULTS, name)
    assert config.make_tracker().max_time_lost == tracker.max_time_lost


def _script_parser(script: str) -> argparse.ArgumentParser:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_script_{script}", ROOT / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    return ([(stage.name, build_parser(stage)) for stage in STAGES]
            + [(script, _script_parser(script)) for script in ("curate_db", "status", "qa")])


def test_every_flag_has_help_with_one_default():
    """Every flag of every script says what it is for; the default is stated once (argparse's
    defaults formatter appended "(default: X)" after help texts that already gave it)."""
    missing, doubled = [], []
    for name, parser in every_parser():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings or action.dest == "help":
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {action.option_strings[0]}")
                continue
            text = formatter._expand_help(action)
            appended = text[len(action.help):].lower() if text.startswith(action.help) else ""
            if text.lower().count("(default") > 1 or ("default" in action.help.lower() and "(default" in appended):
                doubled.append(f"{name} {action.option_strings[0]}: {text}")
        assert "%(default)" not in parser.format_help()
    assert missing == [], "flags without help: " + ", ".join(missing)
    assert doubled == [], "defaults stated twice: " + "; ".join(doubled)


def test_help_states_defaults_once_and_units():
    text = " ".join(build_parser(PARSE_TRACKS_STAGE).format_help().split())
    assert "number of ranks (default 1, or SLURM_ARRAY_TASK_COUNT in an sbatch array) --rank" in text
    assert "memory per job, in GB (default: 32)" in text
    assert "job time limit, in minutes; on expiry the job checkpoints and is requeued (default: 1440)" in text
    assert "GPUs per job (0: a CPU-only job) (default: 1)" in text
    assert "how much the run logs to stderr (default: INFO)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
