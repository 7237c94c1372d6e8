"""A quiet console: no library start-up chatter without --verbose, and progress lines fit 80 columns."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from pipeline.console import COLUMNS
from pipeline.training.progress import CompactBar, shown
from support import REPO, assert_user_error_exit, run_cli

NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations",
         "Could not find cuda drivers", "failed call to cuInit", "CUDA error",
         "`shuffle=True` was passed", "Downloading and preparing dataset", "Unknown size")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROGRESS = re.compile(r"━|─|%\||\d+/\d+ |it/s|examples/s|splits/s")  # Keras', ours, tqdm's


def screen_lines(text: str) -> list[str]:
    """What a terminal shows: ANSI codes stripped, each \\r-separated update a line of its own."""
    return [part for line in ANSI.sub("", text).split("\n") for part in line.split("\r")]


def assert_quiet(result) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for noise in NOISE:
        assert noise not in output, (noise, output[-3000:])
    too_wide = [line for line in screen_lines(output) if PROGRESS.search(line) and len(line.rstrip()) > COLUMNS]
    assert not too_wide, too_wide


def test_data_and_train_stages_are_quiet(tmp_path):
    # Two workers: the data stage imports TensorFlow itself, while they render (pipeline/stages/data.py).
    data = run_cli("data", "--config", "configs/tiny.yaml", f"run_root={tmp_path}", "data.workers=2")
    assert_quiet(data)
    assert "data: building synthetic records (train, validation)" in data.stdout
    again = run_cli("data", "--config", "configs/tiny.yaml", f"run_root={tmp_path}", "data.workers=2")
    assert_quiet(again)
    assert "data: synthetic already built" in again.stdout
    train = run_cli("train", "--config", "configs/tiny.yaml", f"run_root={tmp_path}", "train.epochs=1")
    assert_quiet(train)
    bar = [line for line in screen_lines(train.stdout) if line.startswith("3/3 ")]
    assert bar and " - loss " in bar[-1] and " det " in bar[-1] and "_log_var" not in train.stdout
    assert "validation: loss" in train.stdout
    # The bar is narrowed, the history keeps every metric.
    header = (tmp_path / "tiny" / "train" / "history.csv").read_text().splitlines()[0]
    assert "detection_log_var" in header and "val_depth_loss" in header


IMPORTS = """
import sys
from pipeline import console
console.import_stage("pipeline.stages.data", verbose=False)
print("tensorflow" in sys.modules)
console.import_stage("pipeline.stages.evaluate", verbose=False)
print("tensorflow" in sys.modules)
"""


def test_the_data_stage_leaves_tensorflow_to_its_workers_start():
    """Its worker processes render while it imports TensorFlow (3 s of one core): not before."""
    result = subprocess.run([sys.executable, "-c", IMPORTS], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.stdout.split() == ["False", "True"], result.stderr[-2000:]


TF_LOGGER = """
from pipeline import console
console.quiet()
import tensorflow as tf
tf.get_logger().warning("a deprecation note")
tf.get_logger().error("an error")
"""


def test_quiet_keeps_tensorflows_python_errors_not_its_warnings():
    result = subprocess.run([sys.executable, "-c", TF_LOGGER], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert "an error" in result.stderr and "a deprecation note" not in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_verbose_keeps_the_library_logs(tmp_path):
    result = run_cli("data", "--config", "configs/tiny.yaml", f"run_root={tmp_path}", "--verbose")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "oneDNN custom operations" in result.stderr or "cuda" in result.stderr.lower()


def test_compact_bar_fits_80_columns_with_any_step_count():
    logs = {"loss": 123456.789, "detection_loss": -1.23456e-7, "segmentation_loss": 2.5, "depth_loss": 0.1,
            "detection_log_var": 0.2, "val_loss": 1.0, "val_detection_loss": 1.0, "val_segmentation_loss": 1.0,
            "val_depth_loss": 1.0, "detection_weight": 0.9}
    bar = CompactBar(target=123456)
    for current, finalize in ((1, False), (60000, False), (123456, True)):
        assert len(bar.line(current, logs, finalize)) <= COLUMNS
    assert shown(logs) == "loss 1.235e+05  det -1.235e-07  seg 2.5  depth 0.1"
    assert shown(logs, "val_") == "loss 1  det 1  seg 1  depth 1"


def test_another_keras_backend_is_one_line_error(tmp_path):
    result = run_cli("data", "--config", "configs/tiny.yaml", f"run_root={tmp_path}",
                     env={**os.environ, "KERAS_BACKEND": "jax"})
    assert_user_error_exit(result, "KERAS_BACKEND", "'jax'")
    assert not any(tmp_path.iterdir())
