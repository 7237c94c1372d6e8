"""Writing outputs all or nothing: staging folders swap in only on success, a killed run's staging
folder is removed by the next run that stages beside it, a swap killed half-way is recovered."""
import os
import subprocess
import sys

import pytest

from pipeline import atomic
from support import assert_no_partial_output


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staging_dir_swaps_in_only_on_success(tmp_path):
    final = tmp_path / "export"
    with atomic.staging_dir(final, "the export") as staging:
        (staging / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic.staging_dir(final, "the export") as staging:
            (staging / "a.txt").write_text("two")
            raise RuntimeError("failed half-way")
    assert (final / "a.txt").read_text() == "one"
    assert_no_partial_output(tmp_path)


def test_stale_staging_of_a_dead_process_is_removed_by_the_next_run(tmp_path):
    final = tmp_path / "export"
    stale = tmp_path / f".export.partial-{dead_pid()}"
    (stale / "saved_model").mkdir(parents=True)
    alive = tmp_path / f".export.partial-{os.getppid()}"  # a running process's staging stays
    alive.mkdir()
    other = tmp_path / f".eval.partial-{dead_pid()}"  # another output's is not this run's business
    other.mkdir()
    with atomic.staging_dir(final, "the export") as staging:
        (staging / "a.txt").write_text("one")
    assert not stale.exists() and alive.is_dir() and other.is_dir()
    assert (final / "a.txt").read_text() == "one"


def test_stale_staged_outputs_of_a_dead_process_are_removed(tmp_path):
    stale = tmp_path / f".partial-{dead_pid()}-abc123"
    stale.mkdir()
    with atomic.staged_outputs(tmp_path, ("out.txt",)) as staging:
        (staging / "out.txt").write_text("x")
    assert not stale.exists() and (tmp_path / "out.txt").read_text() == "x"
    assert_no_partial_output(tmp_path)


def test_a_swap_killed_between_its_renames_is_recovered(tmp_path):
    final = tmp_path / "export"
    old = tmp_path / ".export.old"  # what a kill between replace_dir's two renames leaves
    old.mkdir()
    (old / "a.txt").write_text("finished")
    with pytest.raises(RuntimeError):
        with atomic.staging_dir(final, "the export"):
            raise RuntimeError("this run fails too")
    assert (final / "a.txt").read_text() == "finished" and not old.exists()
