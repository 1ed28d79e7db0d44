"""The shared launcher: sharding, journals, failures, summaries, submitit submission."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, journal, run_cli
from tests.toy_stage import attempts, expected_content, output_path, release_path
from utils.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, EXIT_SYSTEMIC, EXIT_USAGE, UsageError
from utils.runner.stage import resolve_rank, shard_indices

JOB = "toy"


def write_items(path: Path, items: list[str]) -> Path:
    path.write_text("\n".join(items) + "\n")
    return path


def toy(tmp_path: Path, *args: str, items: list[str] | None = None, **kw) -> subprocess.CompletedProcess:
    item_list = tmp_path / "items.txt"
    if items is not None:
        write_items(item_list, items)
    return run_cli("-m", "tests.toy_stage", "--base_dir", tmp_path / "db", "--item_list", item_list, *args, **kw)


# ---------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("num_items", [0, 1, 7, 100, 1001])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8, 128])
def test_shards_partition_items_exactly(num_items, world_size):
    seen = []
    for rank in range(world_size):
        indices = list(shard_indices(num_items, world_size, rank))
        assert all(i % world_size == rank for i in indices)
        seen.extend(indices)
    assert sorted(seen) == list(range(num_items))  # none lost, none twice


def test_rank_outside_world_is_refused():
    with pytest.raises(UsageError, match="--rank 3 is outside"):
        shard_indices(10, 3, 3)
    with pytest.raises(UsageError, match="--world_size must be at least 1"):
        shard_indices(10, 0, 0)


def test_rank_from_sbatch_array_variables():
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"}
    assert resolve_rank(None, None, env) == (5, 8)
    # an array that starts at 1 (sbatch --array=1-8)
    env = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    assert resolve_rank(None, None, env) == (7, 8)
    # explicit flags win over the environment
    assert resolve_rank(2, 4, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}) == (2, 4)
    # --world_size given, rank from the array (a partial array over a bigger world)
    assert resolve_rank(None, 128, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "10"}) == (7, 128)
    assert resolve_rank(None, None, {}) == (0, 1)
    with pytest.raises(UsageError, match="without --rank"):
        resolve_rank(None, 4, {})


def test_sbatch_array_env_selects_the_shard(tmp_path):
    items = [f"item{i}" for i in range(9)]
    for task in range(3):
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3"}
        proc = toy(tmp_path, items=items, env=env)
        assert proc.returncode == EXIT_OK, proc.stderr
        done = sorted(p.stem for p in (tmp_path / "db" / "toy").glob("*.out"))
        assert done == sorted(items[i] for i in range(9) if i % 3 <= task)


# ------------------------------------------------------------------- local runs, journals


def test_one_failing_item_is_journaled_and_the_rest_complete(tmp_path):
    items = ["a1", "fail-private", "b2", "crash-bad", "c3"]
    proc = toy(tmp_path, items=items)
    assert proc.returncode == EXIT_ITEMS_FAILED, proc.stderr
    for item in ("a1", "b2", "c3"):
        assert output_path(tmp_path / "db", item).read_bytes() == expected_content(item, 1)
    failed = {r["item"]: r for r in journal(tmp_path / "db", JOB, "failed")}
    assert set(failed) == {"fail-private", "crash-bad"}
    assert failed["fail-private"]["reason"] == "fail-private is private"
    assert failed["fail-private"]["category"] == "private"
    assert "unexpected content in crash-bad" in failed["crash-bad"]["reason"]
    assert "3 done, 0 skipped (already done), 2 failed" in proc.stderr
    assert "FAILED fail-private: fail-private is private" in proc.stderr


def test_rerun_skips_done_and_permanent_failures_retries_transient(tmp_path):
    items = ["a1", "fail-x", "flaky-y", "b2"]
    first = toy(tmp_path, items=items)
    assert first.returncode == EXIT_ITEMS_FAILED
    assert not output_path(tmp_path / "db", "flaky-y").exists()

    second = toy(tmp_path)
    assert second.returncode == EXIT_OK, second.stderr
    assert output_path(tmp_path / "db", "flaky-y").exists()  # transient: retried by a plain re-run
    assert attempts(tmp_path / "db", "a1") == 1  # done: never redone
    assert attempts(tmp_path / "db", "fail-x") == 1  # permanent: not retried
    assert "1 done, 2 skipped (already done), 0 failed, 1 failed before and not retried" in second.stderr

    third = toy(tmp_path, "--retry_failed")
    assert third.returncode == EXIT_ITEMS_FAILED
    assert attempts(tmp_path / "db", "fail-x") == 2


def test_malformed_lines_are_failed_items_naming_the_line(tmp_path):
    proc = toy(tmp_path, items=["good1", "../../etc/passwd", "Bad Name", "good2"])
    assert proc.returncode == EXIT_ITEMS_FAILED
    failed = {r["item"]: r["reason"] for r in journal(tmp_path / "db", JOB, "failed")}
    assert "not a toy item name" in failed["../../etc/passwd"]
    assert "not a toy item name" in failed["Bad Name"]
    assert output_path(tmp_path / "db", "good2").exists()
    assert not list((tmp_path / "db").rglob("passwd*"))


def test_empty_item_list_and_bad_rank_are_usage_errors(tmp_path):
    (tmp_path / "items.txt").write_text("\n# only a comment\n\n")
    proc = toy(tmp_path)
    assert proc.returncode == EXIT_USAGE
    assert "has no items" in proc.stderr and "items.txt" in proc.stderr

    proc = toy(tmp_path, "--world_size", "3", "--rank", "3", items=["a1"])
    assert proc.returncode == EXIT_USAGE
    assert "--rank 3 is outside [0, --world_size 3)" in proc.stderr

    proc = run_cli("-m", "tests.toy_stage", "--base_dir", tmp_path / "db", "--item_list", tmp_path / "nope.txt")
    assert proc.returncode == EXIT_USAGE and "nope.txt does not exist" in proc.stderr


def test_systemic_faults_stop_the_rank(tmp_path):
    proc = toy(tmp_path, items=["a1", "nospace-1", "b2"])
    assert proc.returncode == EXIT_SYSTEMIC
    assert "STOPPED" in proc.stderr and "No space left on device" in proc.stderr
    assert not output_path(tmp_path / "db", "b2").exists()  # nothing after the fault

    proc = toy(tmp_path, "--setup_fails", items=["a1"])
    assert proc.returncode == EXIT_SYSTEMIC
    assert "model weights /nowhere/model.pt not found" in proc.stderr
    assert journal(tmp_path / "db", JOB, "systemic")


def test_many_unexpected_errors_in_a_row_stop_as_systemic(tmp_path):
    proc = toy(tmp_path, "--max_consecutive_errors", "3", items=["crash1", "crash2", "crash3", "crash4", "ok1"])
    assert proc.returncode == EXIT_SYSTEMIC
    assert "3 items in a row failed" in proc.stderr
    assert not output_path(tmp_path / "db", "ok1").exists()


def test_output_check_errors_count_like_processing_errors(tmp_path):
    """An error while asking whether an item is done is that item's failure (the rest run), counts
    towards the unexpected-errors-in-a-row limit, and a disk-full error there stops the rank."""
    proc = toy(tmp_path, items=["lookcrash1", "ok1"])
    assert proc.returncode == EXIT_ITEMS_FAILED
    (failed,) = journal(tmp_path / "db", JOB, "failed")
    assert failed["item"] == "lookcrash1" and failed["category"] == "KeyError" and "no record" in failed["reason"]
    assert output_path(tmp_path / "db", "ok1").exists()

    proc = toy(tmp_path, "--max_consecutive_errors", "2", items=["lookcrash2", "crash3", "ok2"])
    assert proc.returncode == EXIT_SYSTEMIC and "2 items in a row failed" in proc.stderr
    assert not output_path(tmp_path / "db", "ok2").exists()

    proc = toy(tmp_path, items=["looknospace1", "ok3"])
    assert proc.returncode == EXIT_SYSTEMIC and "No space left on device" in proc.stderr
    assert not output_path(tmp_path / "db", "ok3").exists()


def test_teardown_failure_is_logged_and_results_stand(tmp_path):
    proc = toy(tmp_path, "--teardown_fails", items=["ok1"])
    assert proc.returncode == EXIT_OK
    assert "teardown failed: RuntimeError: could not release the GPU (simulated)" in proc.stderr
    (record,) = journal(tmp_path / "db", JOB, "teardown_failed")
    assert "could not release the GPU" in record["error"]
    assert output_path(tmp_path / "db", "ok1").exists()


def test_invalid_ids_are_typed_not_recognised_by_message(tmp_path):
    """The category comes from the error's type, whatever its text says."""
    from utils.core.errors import InvalidItemError, ItemError

    err = InvalidItemError("'../x' is not an 11-character id")
    assert isinstance(err, ItemError) and isinstance(err, ValueError) and err.category == "invalid_id"
    assert toy(tmp_path, items=["Bad Name", "ok1"]).returncode == EXIT_ITEMS_FAILED
    (failed,) = journal(tmp_path / "db", JOB, "failed")
    assert failed["category"] == "invalid_id" and failed["traceback"] is None


def test_sigkill_mid_write_leaves_nothing_a_rerun_trusts(tmp_path):
    db = tmp_path / "db"
    items = ["big0", "big1", "hold2", "big3", "big4", "big5"]
    write_items(tmp_path / "items.txt", items)
    cmd = [sys.executable, "-m", "tests.toy_stage", "--base_dir", str(db),
           "--item_list", str(tmp_path / "items.txt"), "--chunks", "20"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out_dir = db / "toy"
    try:  # killed while the third item is being written: it is held there, its temporary written
        _wait_for(lambda: out_dir.is_dir() and any(p.name.startswith(".hold2.out.tmp-") for p in out_dir.iterdir()),
                  300, "the third item's temporary")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not output_path(db, "hold2").exists()
    for item in items:  # every final file present is whole
        path = output_path(db, item)
        if path.exists():
            assert path.read_bytes() == expected_content(item, 20)
    assert any(p.name.startswith(".") for p in out_dir.iterdir())  # the torn temporary

    release_path(db).touch()
    rerun = toy(tmp_path, "--chunks", "20")
    assert rerun.returncode == EXIT_OK, rerun.stderr
    for item in items:
        assert output_path(db, item).read_bytes() == expected_content(item, 20)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{i}.out" for i in items)  # no temporaries
    assert attempts(db, "big0", "done") == 1 and not any(attempts(db, i, "redone") for i in items)


# ------------------------------------------------------------------------ submitit


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def let_go(tmp_path):
    """The release of the ``hold*`` items, given whatever happened at the end of the test: no
    local job is left waiting."""
    release = release_path(tmp_path / "db")
    yield release
    release.parent.mkdir(parents=True, exist_ok=True)
    release.touch()


def submission_records(db: Path) -> list[Path]:
    """The committed submission records (not a temporary being written)."""
    return [p for p in (db / "logs" / "slurm" / "toy" / "submissions").glob("*.json") if not p.name.startswith(".")]


def test_slurm_without_rank_submits_an_array_and_skips_queued_ranks(tmp_path, let_go):
    db = tmp_path / "db"
    items = [f"hold{i}" for i in range(6)]  # every job waits for the test: still running for the second call
    args = ["--slurm", "--slurm_cluster", "local", "--world_size", "3"]
    first = toy(tmp_path, *args, items=items)
    assert first.returncode == EXIT_OK, first.stderr
    assert "submitted 3 job(s)" in first.stdout
    assert "logs:" in first.stdout

    second = toy(tmp_path, *args)
    assert second.returncode == EXIT_OK, second.stderr
    assert second.stdout.count("already queued or running") == 3
    assert "job(s)" not in second.stdout and "nothing to submit" in second.stdout

    let_go.touch()
    _wait_for(lambda: all(attempts(db, i, "done") for i in items), 300, "all outputs")
    assert [attempts(db, i) for i in items] == [1] * 6
    (record,) = submission_records(db)
    ranks = sorted(j["rank"] for j in json.loads(record.read_text())["jobs"])
    assert ranks == [0, 1, 2]

    _wait_for(lambda: "nothing to submit" in toy(tmp_path, *args).stdout, 300, "jobs to end")


def test_slurm_with_rank_submits_one_job_and_waits(tmp_path):
    items = [f"it{i}" for i in range(4)]
    proc = toy(tmp_path, "--slurm", "--slurm_cluster", "local", "--world_size", "2", "--rank", "1",
               "--slurm_wait", items=items)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "submitted 1 job(s)" in proc.stdout
    assert "[toy rank 1/2] 2 items: 2 done" in proc.stdout
    assert sorted(p.stem for p in (tmp_path / "db" / "toy").glob("*.out")) == ["it1", "it3"]


def test_checkpointable_job_requeued_mid_shard_finishes_without_redoing_items(tmp_path, let_go):
    """The job's time limit (30 s) expires while it is held inside its fourth item: submitit
    signals it, the job checkpoints and is requeued, and the rerun resumes there. The test lets
    the item go only once the job was requeued: no race with the clock (the limit leaves room for
    a slow start on a loaded machine)."""
    db = tmp_path / "db"
    items = ["it0", "it1", "it2", "hold3", "it4", "it5"]
    with open(tmp_path / "out.txt", "w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.toy_stage", "--base_dir", str(db),
             "--item_list", str(write_items(tmp_path / "items.txt", items)), "--slurm", "--slurm_cluster", "local",
             "--rank", "0", "--timeout_min", "0.5", "--chunks", "2", "--slurm_wait"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
        )
        _wait_for(lambda: len(journal(tmp_path / "db", JOB, "start")) >= 2, 300, "the job to be requeued")
        let_go.touch()
        proc.wait(timeout=300)
        out.seek(0)
        output = out.read()
    assert proc.returncode == EXIT_OK, output
    for item in items:
        assert output_path(db, item).read_bytes() == expected_content(item, 2)
    assert [attempts(db, i) for i in items] == [1, 1, 1, 2, 1, 1]  # only the interrupted item again
    assert not any(attempts(db, i, "redone") for i in items)  # never redone
    done_by = {r["item"]: r["pid"] for r in journal(tmp_path / "db", JOB, "done")}
    assert len({done_by[i] for i in items[:3]}) == 1 and len({done_by[i] for i in items[3:]}) == 1
    assert done_by["it0"] != done_by["hold3"]  # finished by two different processes
    assert sorted(p.name for p in (db / "toy").iterdir()) == sorted(f"{i}.out" for i in items)


def test_cancelled_job_is_reported_and_rerun_finishes(tmp_path, let_go):
    """Cancelled while inside its third item (held there until the test lets it go: no race with
    the clock), the job is reported, not waited on; a re-run does the rest and redoes nothing."""
    db = tmp_path / "db"
    items = ["it0", "it1", "hold2", "it3", "it4"]
    args = ["--slurm", "--slurm_cluster", "local", "--rank", "0"]
    # Files, not pipes: the local job's controller inherits the waiter's descriptors.
    with open(tmp_path / "out.txt", "w+") as out, open(tmp_path / "err.txt", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.toy_stage", "--base_dir", str(db),
             "--item_list", str(write_items(tmp_path / "items.txt", items)), *args, "--slurm_wait"],
            cwd=REPO, stdout=out, stderr=err, text=True,
        )
        _wait_for(lambda: attempts(db, "hold2") == 1, 300, "the job to reach its third item")
        (record,) = submission_records(db)
        job_id = json.loads(record.read_text())["jobs"][0]["job_id"]
        os.kill(int(job_id), signal.SIGINT)  # how submitit cancels a local job (its scancel)
        proc.wait(timeout=300)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert proc.returncode == EXIT_ITEMS_FAILED, stdout + stderr
    assert "did not complete" in stdout and "Re-run the same command" in stdout
    assert [output_path(db, i).exists() for i in items] == [True, True, False, False, False]

    let_go.touch()
    rerun = toy(tmp_path, *args, "--slurm_wait", timeout=300)
    assert rerun.returncode == EXIT_OK, rerun.stdout + rerun.stderr
    assert all(output_path(db, i).read_bytes() == expected_content(i, 1) for i in items)
    assert [attempts(db, i) for i in items] == [1, 1, 2, 1, 1]  # only the cancelled item again
    assert not any(attempts(db, i, "redone") for i in items)


def test_unanswered_squeue_refuses_to_submit_duplicates(tmp_path):
    """When Slurm jobs were submitted before and squeue cannot be asked, nothing is submitted."""
    items = ["it0", "it1"]
    write_items(tmp_path / "items.txt", items)
    from tests.toy_stage import STAGE
    from utils.runner.cli import parse_config
    from utils.runner.slurm import job_name

    config, _ = parse_config(STAGE, ["--base_dir", str(tmp_path / "db"), "--item_list", "x"])
    name = job_name(STAGE, config, 1)
    record_dir = tmp_path / "db" / "logs" / "slurm" / "toy" / "submissions"
    record_dir.mkdir(parents=True)
    (record_dir / "1-100.json").write_text(json.dumps(
        {"name": name, "cluster": "slurm", "jobs": [{"job_id": "100", "rank": 0}]}))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    squeue = fake_bin / "squeue"  # Slurm's CLI is the edge of the world here: it fails
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out' >&2\nexit 1\n")
    squeue.chmod(0o755)
    proc = toy(tmp_path, "--slurm", "--slurm_cluster", "local",
               env={"PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert proc.returncode == EXIT_USAGE
    assert "not submitting, to avoid duplicate jobs" in proc.stderr
    assert "Socket timed out" in proc.stderr
    assert len(list(record_dir.glob("*.json"))) == 1


def test_slurm_without_sbatch_is_refused_not_run_here(tmp_path):
    """Without Slurm, submitit's automatic choice ran the jobs on this machine in the background
    and the command exited 0, as if they were queued; a plain run started next raced with them."""
    no_slurm = tmp_path / "bin"  # a PATH without sbatch (the interpreter is called by its full path)
    no_slurm.mkdir()
    for extra in ([], ["--slurm_cluster", "slurm"]):
        proc = toy(tmp_path, "--slurm", "--world_size", "2", *extra, items=["it0", "it1", "it2"],
                   env={"PATH": str(no_slurm)})
        assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
        assert proc.stderr.strip() == (
            "error: --slurm: Slurm's sbatch and srun are not on PATH (no Slurm client on this machine, or its "
            "module is not loaded); nothing was submitted. Run on a Slurm login node, or drop --slurm to process the "
            "items here (--world_size N --rank R for one shard)")
        assert "submitted" not in proc.stdout
    assert not (tmp_path / "db" / "logs" / "slurm").exists()
    assert not (tmp_path / "db" / "toy_attempts").exists()


def test_duplicate_items_are_reported_once_and_processed_once(tmp_path):
    proc = toy(tmp_path, items=["a1", "b2", "a1", "c3", "a1", "b2", "# a1 in a comment"])
    assert proc.returncode == EXIT_OK, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "more than once" in line]
    assert len(warnings) == 1
    assert "lists 2 item(s) more than once, each is processed once: 'a1' (3 times), 'b2' (2 times)" in warnings[0]
    assert "items.txt" in warnings[0]
    assert "[toy rank 0/1] 3 items: 3 done, 0 skipped" in proc.stderr
    assert attempts(tmp_path / "db", "a1") == 1

    # the same list sharded: each item belongs to exactly one rank
    for rank in range(2):
        toy(tmp_path, "--world_size", "2", "--rank", str(rank), check=True)
    starts = [r for r in journal(tmp_path / "db", JOB, "start") if r["world_size"] == 2]
    assert sorted(i for r in starts for i in r["shard_items"]) == ["a1", "b2", "c3"]


def test_sbatch_refusing_the_submission_is_one_line(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    sbatch = fake_bin / "sbatch"  # Slurm's CLI is the edge of the world here: it refuses
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpux' >&2\n"
                      "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\n"
                      "exit 1\n")
    sbatch.chmod(0o755)
    srun = fake_bin / "srun"  # present, as on any Slurm login node; never called at submission
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    proc = toy(tmp_path, "--slurm", "--partition", "gpux", items=["it0"],
               env={"PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        "error: --slurm: sbatch refused the submission, nothing was submitted: sbatch: error: invalid partition "
        "specified: gpux; sbatch: error: Batch job submission failed: Invalid partition name specified")
    assert not list((tmp_path / "db" / "logs" / "slurm" / "toy").glob("submissions/*.json"))


def test_sbatch_without_srun_is_one_line(tmp_path):
    """submitit refuses a Slurm client without srun with a RuntimeError traceback: one line, exit 2."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    sbatch = fake_bin / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'Submitted batch job 1'\n")
    sbatch.chmod(0o755)
    proc = toy(tmp_path, "--slurm", items=["it0"], env={"PATH": str(fake_bin)})
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --slurm: Slurm's srun is not on PATH (no Slurm client on this machine, or its module is not loaded); "
        "nothing was submitted. Run on a Slurm login node, or drop --slurm to process the items here "
        "(--world_size N --rank R for one shard)"]
    assert not (tmp_path / "db" / "logs" / "slurm").exists()


def test_a_scheduler_interruption_is_no_items_failure(tmp_path):
    """An error a job's signal handler raises in the middle of an item (submitit's "not requeued")
    ends the shard; the item is not journaled as failed, so the next run does it."""
    from submitit.core.utils import UncompletedJobError

    from tests.toy_stage import STAGE
    from utils.runner.cli import parse_config
    from utils.runner.stage import run_shard

    write_items(tmp_path / "items.txt", ["a1", "preempt1", "b2"])
    config, _ = parse_config(STAGE, ["--base_dir", str(tmp_path / "db"), "--item_list", str(tmp_path / "items.txt")])
    with pytest.raises(UncompletedJobError):
        run_shard(STAGE, config, interruptions=(UncompletedJobError,))
    assert not journal(tmp_path / "db", JOB, "failed") and journal(tmp_path / "db", JOB, "interrupted")
    assert output_path(tmp_path / "db", "a1").exists() and not output_path(tmp_path / "db", "b2").exists()
    assert toy(tmp_path).returncode == EXIT_OK  # the next run finishes it
    assert output_path(tmp_path / "db", "preempt1").exists() and output_path(tmp_path / "db", "b2").exists()
