"""Bad flags and inputs end with one line naming the path and the problem and exit status 2,
never a traceback: a --base_dir that is a file, read-only, or whose parent does not exist
(refused, not created), for every stage script."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import STAGES, run_cli
from tests.toy_stage import STAGE as TOY_STAGE
from utils.core.errors import EXIT_USAGE, UsageError
from utils.runner.cli import build_parser, main

ALL_STAGES = [*STAGES, TOY_STAGE]


def required_args(stage, tmp_path: Path) -> list[str]:
    """Values for the stage's required flags (the base_dir check comes before they are used)."""
    ids = tmp_path / "ids.txt"
    ids.write_text("aaaaaaaaaaa\n")
    args: list[str] = []
    for action in build_parser(stage)._actions:
        if action.required:
            args += [action.option_strings[0], str(action.choices[0]) if action.choices else str(ids)]
    return args


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: --base_dir ")
    return err


@pytest.mark.parametrize("stage", ALL_STAGES, ids=lambda s: s.name)
def test_base_dir_that_is_a_file(stage, tmp_path, capsys):
    base = tmp_path / "db"
    base.write_text("not a folder\n")
    assert main(stage, ["--base_dir", str(base), *required_args(stage, tmp_path)]) == EXIT_USAGE
    assert one_line_error(capsys) == f"error: --base_dir {base} is a file, not a folder"


@pytest.mark.parametrize("stage", ALL_STAGES, ids=lambda s: s.name)
def test_base_dir_whose_parent_does_not_exist_is_refused_not_created(stage, tmp_path, capsys):
    base = tmp_path / "typo" / "db"
    assert main(stage, ["--base_dir", str(base), *required_args(stage, tmp_path)]) == EXIT_USAGE
    err = one_line_error(capsys)
    assert f"its parent folder {tmp_path / 'typo'} does not exist" in err
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("stage", ALL_STAGES, ids=lambda s: s.name)
def test_read_only_base_dir(stage, tmp_path, capsys, monkeypatch):
    """Simulated through os.access, so that it holds when the tests run as root (whom file
    modes do not stop; a read-only file system does)."""
    base = tmp_path / "db"
    base.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: (
        Path(path) != base and real_access(path, mode, *a, **k)))
    assert main(stage, ["--base_dir", str(base), *required_args(stage, tmp_path)]) == EXIT_USAGE
    assert one_line_error(capsys).startswith(f"error: --base_dir {base} is read-only")
    assert list(base.iterdir()) == []


def test_base_dir_checks_and_what_they_allow(tmp_path):
    from utils.runner.stage import check_base_dir

    check_base_dir(tmp_path)  # an existing writable folder
    check_base_dir(tmp_path / "new")  # a new folder in an existing one: created by the run
    with pytest.raises(UsageError, match="is a file, not a folder"):
        (tmp_path / "f").write_text("x")
        check_base_dir(tmp_path / "f")
    with pytest.raises(UsageError, match=r"its parent .*/f is a file, not a folder"):
        check_base_dir(tmp_path / "f" / "db")
    with pytest.raises(UsageError, match="broken symbolic link"):
        (tmp_path / "link").symlink_to(tmp_path / "gone")
        check_base_dir(tmp_path / "link")


@pytest.mark.skipif(os.geteuid() == 0, reason="file modes do not stop root (test_read_only_base_dir covers it)")
def test_read_only_base_dir_of_a_real_script(tmp_path):
    base = tmp_path / "db"
    base.mkdir()
    (tmp_path / "items.txt").write_text("a1\n")
    base.chmod(0o555)
    try:
        proc = run_cli("-m", "tests.toy_stage", "--base_dir", base, "--item_list", tmp_path / "items.txt")
    finally:
        base.chmod(0o755)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip() == f"error: --base_dir {base} is read-only (not writable by this user, or a " \
                                  "read-only file system)"


@pytest.mark.parametrize("script", ["download_videos.py", "gdpr_blur_faces.py"])
def test_stage_scripts_print_one_line(script, tmp_path):
    """The scripts as a user runs them (no required flags): the check comes before the id list
    is fetched or a model loaded."""
    base = tmp_path / "db"
    base.write_text("x")
    proc = run_cli(script, "--base_dir", base)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip() == f"error: --base_dir {base} is a file, not a folder"
    proc = run_cli(script, "--base_dir", tmp_path / "nowhere" / "db")
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr
    assert f"its parent folder {tmp_path / 'nowhere'} does not exist" in proc.stderr
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("kind, message", [("folder", "is a folder, not an index or subset file"),
                                           ("junk", "is not a track index or subset file"),
                                           ("missing", "does not exist")])
def test_visual_metrics_bad_index_file_is_one_line(tmp_path, kind, message):
    index = tmp_path / "index.jsonl.gzip"
    if kind == "folder":
        index.mkdir()
    elif kind == "junk":
        index.write_bytes(b"\x00\x01 not json lines at all\n")
    (tmp_path / "db").mkdir()
    proc = run_cli("visual_metrics.py", "--base_dir", tmp_path / "db", "--index_file", index, "--metric", "motion")
    assert proc.returncode == EXIT_USAGE
    assert "Traceback" not in proc.stderr and message in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --index_file ")
