"""Fault injection: each stage is killed with SIGKILL at random moments; the previous finished outputs
stay byte for byte what they were (checksums) and the next run of the stage succeeds.

The short version (train, killed once after its first epoch) runs in `make test`; the full one (data,
train, evaluate, export, clip; FAULT_KILLS kills each at random moments, default 20) is marked slow.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from support import REPO, assert_no_partial_output

# What each stage finished writes under runs/<experiment>/, and the options it runs with.
OUTPUTS = {"data": "data", "train": "train", "evaluate": "eval", "export": "export", "clip": "clips"}
DONE = {"data": "data: synthetic clip at", "train": "train: saved", "evaluate": "evaluate: wrote",
        "export": "export: wrote {run_dir}/export\n", "clip": "clip: synthetic_clip:"}  # printed after the swap
OVERRIDES = {"export": ["export.tolerance_float=1000", "export.tolerance_int8=1000",
                        "export.tolerance_int8_abs_rel=1000"]}  # parity drift is not what this test is about


def checksums(folder: pathlib.Path) -> dict:
    """sha256 of every finished file under folder (hidden staging entries left out)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def command(stage: str, run_root: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", stage, "--config", "configs/tiny.yaml", f"run_root={run_root}",
            *OVERRIDES.get(stage, [])]


def env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def run_stage(stage: str, run_root: pathlib.Path) -> float:
    """Runs a stage to the end; returns its wall time."""
    start = time.monotonic()
    done = subprocess.run(command(stage, run_root), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{stage} failed:\n{done.stderr[-3000:]}"
    return time.monotonic() - start


def kill_at(stage: str, run_root: pathlib.Path, seconds: float, log: pathlib.Path) -> bool:
    """Starts a stage and SIGKILLs it after `seconds`; True when it was still running then (its
    output is in `log`), False when it had finished by then (successfully: asserted)."""
    with log.open("w") as handle:
        proc = subprocess.Popen(command(stage, run_root), cwd=REPO, env=env(), stdout=handle,
                                stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return True
    assert code == 0, f"{stage} failed:\n{log.read_text()[-3000:]}"
    return False


def inject(stage: str, run_root: pathlib.Path, kills: int, rng: random.Random) -> dict:
    """A finished run of `stage`, then `kills` runs SIGKILLed at random moments of its duration, each
    followed by the checksum check; then a run that must succeed. Returns the counts."""
    run_dir = run_root / "tiny"
    seconds = run_stage(stage, run_root)
    finished = checksums(run_dir / OUTPUTS[stage])
    assert finished, f"{stage} wrote nothing under {OUTPUTS[stage]}/"
    killed = damaged = 0
    log = run_root / f"{stage}.log"
    for _ in range(kills):
        was_killed = kill_at(stage, run_root, rng.uniform(0.05, 0.8) * seconds, log)
        killed += was_killed
        now = checksums(run_dir / OUTPUTS[stage])
        if now != finished:
            # A run that finished, or was killed after it had swapped in its output (it printed its
            # last line), left a finished output of its own; anything else is damage.
            if not was_killed or DONE[stage].format(run_dir=run_dir) in log.read_text():
                finished = now
            else:
                damaged += 1
    run_stage(stage, run_root)  # the next run succeeds (train resumes from its staging folder)
    leftovers = [p for p in run_dir.rglob(".*") if ".partial" in p.name or p.name.endswith(".old")]
    return {"killed": killed, "damaged": damaged, "leftovers": leftovers}


@pytest.fixture
def run_root(tiny_trained, tmp_path) -> pathlib.Path:
    """A copy of the session's tiny run (data set and finished training) to kill stages in."""
    config, _ = tiny_trained
    shutil.copytree(config.run_dir, tmp_path / "tiny", ignore=shutil.ignore_patterns(".*"))
    return tmp_path


def test_train_killed_mid_training_leaves_the_finished_run_intact_and_resumes(run_root):
    # The short version: the copied session run is the finished output, and one kill lands after the
    # first epoch's backup (when the second epoch starts), not at a random moment.
    run_dir = run_root / "tiny"
    finished = checksums(run_dir / OUTPUTS["train"])
    log = run_root / "train.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(command("train", run_root), cwd=REPO, env=env(), stdout=handle,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while "Epoch 2/" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert "Epoch 2/" in log.read_text() and DONE["train"] not in log.read_text(), log.read_text()[-3000:]
    assert checksums(run_dir / OUTPUTS["train"]) == finished
    assert (run_dir / ".train.partial" / "backup").is_dir()  # what the next run resumes from
    run_stage("train", run_root)
    assert checksums(run_dir / OUTPUTS["train"]) != finished  # the resumed run swapped in its own
    assert not [p for p in run_dir.rglob(".*") if ".partial" in p.name or p.name.endswith(".old")]
    assert_no_partial_output(run_root)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["data", "train", "evaluate", "export", "clip"])
def test_killed_stage_leaves_the_finished_outputs_intact(run_root, stage):
    kills = int(os.environ.get("FAULT_KILLS", "20"))
    result = inject(stage, run_root, kills=kills, rng=random.Random(stage))
    print(f"faults: {stage}: {kills} runs, {result['killed']} killed mid-run, {result['damaged']} damaged")
    assert result["damaged"] == 0 and not result["leftovers"], result
