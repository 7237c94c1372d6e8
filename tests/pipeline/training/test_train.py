"""The train stage's promises: its outputs, a falling loss, kill-and-resume, a refused resume of a
changed model, NaN handling, and partial labels across real data sets (KITTI + CamVid fixtures).

Every run is the tiny config (64 px frames, widths 8..32, 3 steps an epoch). Most of a run's time is
TensorFlow tracing the train step once (~15-40 s depending on the machine's load), so tests share
the session's synthetic data set (the tiny_config fixture) and train into their own tmp_path.
Distribution strategies are in test_distribute.py.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from data.errors import UserError
from data.vocabulary import TASKS
from models import multitask
from models import trainer as trainer_lib
from pipeline import trained
from pipeline.config import load_config
from pipeline.inputs import dataset as inputs
from pipeline.inputs import records
from pipeline.training import fit as train_stage
from support import FIXTURES, REPO, assert_user_error_exit, run_cli, tiny


def history(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def h5_arrays(path) -> dict:
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return arrays


# --- outputs and a falling loss ------------------------------------------------------------------


def test_training_writes_its_outputs_and_lowers_the_loss(tmp_path):
    # The tiny config leaves the gradient-conflict log off (tracing it costs seconds); this run has it.
    # Validation on epochs 1, 3 (every 3rd) and 4 (the last), as the default validates on every 5th.
    config = tiny(tmp_path, "train.epochs=4", "data.deterministic=true", "train.conflict_every=2",
                  "train.validate_every=3")
    records.build_all(config)
    model_path = train_stage.run_training(config, verbose=0)

    out = tmp_path / "tiny" / "train"  # runs/<experiment>/train under run_root
    assert model_path == out / "model.keras" and model_path.is_file()
    for name in ("history.csv", "training_curves.png", "speed.json", "task_weights.json",
                 "best.weights.h5", "config.yaml", "model_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "backup").exists(), "a finished run deletes its backup"
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = history(out / "history.csv")
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    columns = set(rows[0])
    for task in TASKS:
        assert {f"{task}_loss", f"{task}_weight", f"val_{task}_loss", f"{task}_log_var"} <= columns
    assert {"loss", "learning_rate", "val_task_loss_sum"} <= columns
    # Gradient conflict on training steps only, on steps 0, 2, 4, ... (3 steps an epoch: each epoch has one).
    conflicts = {"cos_detection_segmentation", "cos_detection_depth", "cos_segmentation_depth"}
    assert conflicts <= columns and not {f"val_{name}" for name in conflicts} & columns
    assert all(-1.0 <= float(row[name]) <= 1.0 and float(row[name]) != 0.0 for row in rows for name in conflicts)
    validated = [row for row in rows if row["val_task_loss_sum"]]
    assert [int(row["epoch"]) for row in validated] == [0, 2, 3]
    # The epoch without validation has every val_ cell empty and every other one filled.
    assert all(value == "" for name, value in rows[1].items() if name.startswith("val_")), rows[1]
    for row in rows:
        assert all(math.isfinite(float(value)) for name, value in row.items()
                   if row in validated or not name.startswith("val_")), row

    # Warm-up then cosine decay to 0 over the run: the schedule is what the optimizer used.
    rates = [float(row["learning_rate"]) for row in rows]
    assert max(rates) <= config.train.learning_rate and rates[-1] == pytest.approx(0.0, abs=1e-6)
    assert rates == sorted(rates, reverse=True)

    # 12 steps at a fixed seed: the unweighted task losses fall, on training and validation data.
    task_sum = [sum(float(row[f"{task}_loss"]) for task in TASKS) for row in rows]
    assert task_sum[-1] < task_sum[0], task_sum
    val_sum = [float(row["val_task_loss_sum"]) for row in validated]
    assert val_sum[-1] < val_sum[0], val_sum

    speed = json.loads((out / "speed.json").read_text())
    assert speed["replicas"] == 1 and speed["batch_size"] == config.train.batch_size
    assert speed["images_per_second_median"] > 0 and len(speed["per_epoch"]) == 4
    # each validation timed on its own (the images per second leave it out)
    assert len(speed["validation_seconds"]) == 3 and all(s > 0 for s in speed["validation_seconds"])
    weights = json.loads((out / "task_weights.json").read_text())
    assert set(weights) == set(TASKS) and all(w > 0 for w in weights.values())
    # Uncertainty weighting, depth is a regression task: 1/(2 sigma^2), starting at 0.5.
    # Validation runs after the last step, with the weights fixed: its mean is the final weight.
    assert weights["depth"] == pytest.approx(float(rows[-1]["val_depth_weight"]), abs=1e-4)

    net = trained.load(model_path)
    assert set(net.output) == set(TASKS)
    # model.keras holds the best validation epoch's weights: every one of its weights is, value for
    # value, an array of best.weights.h5 (which also holds the weighting's and optimizer's state).
    best = h5_arrays(out / "best.weights.h5")
    assert len(best) > len(net.weights)
    by_shape = {}
    for array in best.values():
        by_shape.setdefault(np.shape(array), []).append(np.asarray(array))
    for weight in net.weights:
        value = np.asarray(weight.numpy())
        assert any(np.array_equal(value, candidate) for candidate in by_shape.get(value.shape, [])), weight.path


def test_train_crop_trains_on_crops_and_saves_a_whole_frame_model(tiny_config, tmp_path):
    """data.train_crop: batches are crops (centred ones for validation), the saved net takes whole
    frames at data.image_size with the trained weights."""
    config = load_config(REPO / "configs" / "tiny.yaml",
                         [f"run_root={tiny_config.run_root}", "data.train_crop=[32,64]", "train.epochs=1",
                          "train.steps_per_epoch=2"])
    x, y = next(iter(inputs.make_dataset(config, "train", training=True)))
    assert x["image"].shape == (4, 32, 64, 3) and y["segmentation"].shape == (4, 32, 64)
    assert y["det_heatmap"].shape[1:3] == (8, 16)
    x, _ = next(iter(inputs.make_dataset(config, "validation", training=False, crop=True)))
    assert x["image"].shape[1:3] == (32, 64)
    x, y = next(iter(inputs.make_dataset(config, "validation", training=False)))
    assert x["image"].shape[1:3] == (64, 96), "evaluation sees whole frames"

    model_path = train_stage.run_training(config, out=tmp_path / "train", verbose=0)
    net = trained.load(model_path)
    assert trained.input_size(net) == (64, 96)
    outputs = net(x, training=False)
    assert outputs["segmentation"].shape[1:3] == (64, 96)
    best = h5_arrays(model_path.parent / "best.weights.h5")
    trained_values = [np.asarray(v) for v in best.values()]
    for weight in net.weights:  # the whole-frame net holds the trained (best-epoch) weights
        value = np.asarray(weight.numpy())
        assert any(v.shape == value.shape and np.array_equal(v, value) for v in trained_values), weight.path


# --- resume bookkeeping, without training --------------------------------------------------------


def test_fresh_run_clears_the_previous_runs_history_and_best_checkpoint(tmp_path):
    config = tiny(tmp_path)
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1.0\n1,0.5\n")
    (tmp_path / "best.weights.h5").write_bytes(b"stale")
    assert train_stage.check_resume(tmp_path, config) is False
    assert (tmp_path / "history.csv").exists(), "checking writes nothing"
    train_stage.begin_run(tmp_path, config, resuming=False)
    assert not (tmp_path / "history.csv").exists() and not (tmp_path / "best.weights.h5").exists()
    saved = json.loads((tmp_path / "model_config.json").read_text())
    assert saved["model"]["head_width"] == config.model.head_width


def test_resume_keeps_history_and_refuses_a_changed_model_or_weighting(tmp_path):
    train_stage.begin_run(tmp_path, tiny(tmp_path), resuming=False)
    (tmp_path / "backup").mkdir()
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1.0\n")
    assert train_stage.check_resume(tmp_path, tiny(tmp_path, "train.epochs=9")) is True
    assert (tmp_path / "history.csv").exists()
    with pytest.raises(UserError, match=r"changed: model\.head_width\)"):
        train_stage.check_resume(tmp_path, tiny(tmp_path, "model.head_width=24"))
    with pytest.raises(UserError, match=r"changed: train\.weighting\)"):
        train_stage.check_resume(tmp_path, tiny(tmp_path, "train.weighting=gradnorm"))
    with pytest.raises(UserError, match=r"changed: data\.image_size\)"):
        train_stage.check_resume(tmp_path, tiny(tmp_path, "data.image_size=[64,128]"))
    with pytest.raises(UserError, match=r"changed: data\.train_crop\)"):  # the trained net's size
        train_stage.check_resume(tmp_path, tiny(tmp_path, "data.train_crop=[32,64]"))


def test_resume_ignores_a_branch_point_that_hard_sharing_does_not_build(tmp_path):
    """model.shared_through is moot under hard sharing: the same net, so the resume goes on; under
    cross-stitch sharing it builds another net, so the resume is refused."""
    train_stage.begin_run(tmp_path, tiny(tmp_path), resuming=False)
    (tmp_path / "backup").mkdir()
    assert train_stage.check_resume(tmp_path, tiny(tmp_path, "model.shared_through=P4")) is True
    with pytest.raises(UserError, match=r"changed: model\.sharing, model\.shared_through\)"):
        train_stage.check_resume(tmp_path, tiny(tmp_path, "model.sharing=cross_stitch", "model.shared_through=P4"))


def test_resume_of_a_run_saved_before_a_model_key_existed(tmp_path):
    """Its saved signature lacks the key (simulated by deleting model.soft_sharing_beta); the key's
    default is the model it built."""
    train_stage.begin_run(tmp_path, tiny(tmp_path), resuming=False)
    (tmp_path / "backup").mkdir()
    saved = json.loads((tmp_path / "model_config.json").read_text())
    del saved["model"]["soft_sharing_beta"]
    (tmp_path / "model_config.json").write_text(json.dumps(saved))
    assert train_stage.check_resume(tmp_path, tiny(tmp_path)) is True
    with pytest.raises(UserError, match=r"changed: model\.soft_sharing_beta\)"):
        train_stage.check_resume(tmp_path, tiny(tmp_path, "model.soft_sharing_beta=0.5"))
    saved["model"]["retired_option"] = True  # a key that no longer exists is named too
    (tmp_path / "model_config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"changed: model\.retired_option \(no longer a key\)\)"):
        train_stage.check_resume(tmp_path, tiny(tmp_path))


def test_resume_trims_history_to_the_backup_and_keeps_the_best_so_far(tmp_path):
    (tmp_path / "history.csv").write_text(
        "epoch,loss,val_task_loss_sum\n0,3.0,9.0\n1,2.0,7.5\n2,1.5,8.0\n3,1.2,6.0\n")
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": 0}))
    (tmp_path / "best.weights.h5").write_bytes(b"")

    class Checkpoint:
        filepath = str(tmp_path / "best.weights.h5")
        best = math.inf

    backup = train_stage.GuardedBackup(str(tmp_path / "backup"), train_stage.StopOnNaNTask(TASKS))
    resume = train_stage.ResumeHistory(tmp_path / "history.csv", backup, Checkpoint)
    resume.on_train_begin()
    # Epoch 3 was logged after the last backup was written: it is run again, so its row goes.
    assert [row["epoch"] for row in history(tmp_path / "history.csv")] == ["0", "1", "2"]
    assert resume.resumed_from == 3 and Checkpoint.best == 7.5


@pytest.mark.parametrize("epochs, every, expected", [
    (15, 5, [1, 5, 10, 15]), (4, 1, [1, 2, 3, 4]), (7, 3, [1, 3, 6, 7]), (3, 10, [1, 3]), (1, 5, [1])])
def test_validation_epochs_are_every_nth_and_the_first_and_last(epochs, every, expected):
    assert train_stage.validation_epochs(epochs, every) == expected


def test_a_resumed_history_keeps_the_files_columns_when_its_first_epoch_does_not_validate(tmp_path):
    """Keras' CSVLogger takes its columns from the first epoch it logs; a resumed run that starts on
    an epoch without validation must still write under the file's header."""
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss,val_task_loss_sum\n0,3.0,2.5,9.0\n")
    logger = train_stage.HistoryCSV(path)
    logger.on_train_begin()
    logger.on_epoch_end(1, {"loss": 2.0})
    logger.on_epoch_end(2, {"loss": 1.5, "val_loss": 1.25, "val_task_loss_sum": 7.0})
    logger.on_train_end()
    assert history(path) == [{"epoch": "0", "loss": "3.0", "val_loss": "2.5", "val_task_loss_sum": "9.0"},
                             {"epoch": "1", "loss": "2.0", "val_loss": "", "val_task_loss_sum": ""},
                             {"epoch": "2", "loss": "1.5", "val_loss": "1.25", "val_task_loss_sum": "7.0"}]


def test_the_checkpoint_passes_over_an_epoch_without_validation_silently(tmp_path):
    """Keras' ModelCheckpoint would warn and then save the unvalidated weights as the best."""
    import warnings

    class Model:
        saved = []

        def save_weights(self, path, overwrite=True):
            self.saved.append(path)

    checkpoint = train_stage.GuardedCheckpoint(tmp_path / "best.weights.h5", train_stage.StopOnNaNTask(TASKS))
    checkpoint.set_model(Model())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.on_epoch_end(0, {"loss": 1.0})
    assert Model.saved == []
    checkpoint.on_epoch_end(1, {"loss": 1.0, "val_task_loss_sum": 2.0})
    assert Model.saved == [str(tmp_path / "best.weights.h5")]


def test_resume_after_a_kill_before_the_first_history_row_starts_the_history_afresh(tmp_path):
    (tmp_path / "history.csv").write_text("")  # the CSV logger opens the file before its first row
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))

    class Checkpoint:
        filepath = str(tmp_path / "best.weights.h5")

    backup = train_stage.GuardedBackup(str(tmp_path / "backup"), train_stage.StopOnNaNTask(TASKS))
    resume = train_stage.ResumeHistory(tmp_path / "history.csv", backup, Checkpoint)
    resume.on_train_begin()
    assert resume.resumed_from == 1 and not (tmp_path / "history.csv").exists()


def test_resume_of_a_changed_model_exits_2_with_one_line(tiny_config, tmp_path):
    out = tmp_path / "train"
    work = train_stage.staging_folder(out)
    train_stage.begin_run(work, tiny_config, resuming=False)  # what an interrupted run leaves: its model config ...
    (work / "backup").mkdir()  # ... and a backup
    result = run_cli("train", "--config", "configs/tiny.yaml", f"run_root={tiny_config.run_root}",
                 "model.head_width=24", "--out", out, timeout=180)
    assert_user_error_exit(result, "model.head_width", "unfinished run")
    assert not (work / "history.csv").exists() and not out.exists()


def test_a_backup_cut_short_by_a_kill_is_set_aside_and_training_starts_afresh(tiny_config, tmp_path, capsys):
    out = tmp_path / "train"
    work = train_stage.staging_folder(out)
    train_stage.begin_run(work, tiny_config, resuming=False)
    (work / "backup").mkdir()
    (work / "backup" / "latest.weights.h5").write_bytes(b"not an HDF5 file")  # a write cut short
    (work / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    (work / "history.csv").write_text("epoch,loss\n0,1.0\n")  # left by the killed run
    train_stage.run_training(tiny_config, out, verbose=0)
    assert "starting afresh" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(row["epoch"]) for row in rows] == list(range(tiny_config.train.epochs))
    assert (out / "backup.unreadable" / "latest.weights.h5").read_bytes() == b"not an HDF5 file"
    assert (out / "model.keras").is_file()


# --- kill and resume -----------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_epoch(tiny_config, tmp_path):
    out = tmp_path / "train"
    work = train_stage.staging_folder(out)  # where the run trains until it has finished
    # Validation on epochs 1, 4 and 6: the resumed run usually starts on an epoch without it.
    args = ["train", "--config", "configs/tiny.yaml", f"run_root={tiny_config.run_root}",
            "train.epochs=6", "train.validate_every=4", "--out", out]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO,
                             stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and first.poll() is None:
            if (work / "history.csv").exists() and len(history(work / "history.csv")) >= 2:
                break
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before it could be killed: " + \
            (tmp_path / "first.log").read_text()[-2000:]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()

    metadata = json.loads((work / "backup" / "training_metadata.json").read_text())
    done = metadata["epoch"]
    assert done >= 2 and not out.exists() and not (work / "model.keras").exists()

    # While the backup exists, a resume with another model is refused: one line, exit code 2.
    refused = run_cli(*args, "model.head_width=24", timeout=180)
    assert_user_error_exit(refused, "model.head_width")

    resumed = run_cli(*args, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from epoch {done + 1}" in resumed.stdout
    rows = history(out / "history.csv")
    assert [int(row["epoch"]) for row in rows] == list(range(6)), "epochs continue, none repeated"
    # One header for both runs (csv puts surplus cells under None, missing ones as None), the train
    # columns filled on every row and the val_ ones exactly on the validated epochs.
    assert all(None not in row and None not in row.values() for row in rows)
    assert all(math.isfinite(float(row["loss"])) for row in rows)
    assert [int(row["epoch"]) for row in rows if row["val_task_loss_sum"]] == [0, 3, 5]
    assert (out / "model.keras").is_file() and not (out / "backup").exists() and not work.exists()
    speed = json.loads((out / "speed.json").read_text())
    assert speed["resumed_from_epoch"] == done and len(speed["per_epoch"]) == 6 - done
    # The optimizer state came back too: the learning-rate schedule continues where it was.
    rates = [float(row["learning_rate"]) for row in rows]
    assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(0.0, abs=1e-6)


# --- NaN -----------------------------------------------------------------------------------------


def test_nan_loss_stops_training_naming_the_task_and_keeps_the_last_good_state(
        tiny_config, tmp_path, monkeypatch):
    import tensorflow as tf


    # The depth loss turns NaN from its 8th evaluation on: epoch 1 uses calls 1-3 (train) and 4-5
    # (validation), so training breaks at epoch 2, step 3.
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)
    real_losses = trainer_lib.per_example_losses

    def losses_with_nan_depth(model_config, train_config=None):
        losses = real_losses(model_config, train_config)
        depth_loss = losses["depth"]

        def nan_from_the_8th_call(y, out):
            loss = depth_loss(y, out)
            count = calls.assign_add(1)
            return tf.where(count >= 8, tf.fill(tf.shape(loss), float("nan")), loss)

        return {**losses, "depth": nan_from_the_8th_call}

    monkeypatch.setattr(trainer_lib, "per_example_losses", losses_with_nan_depth)
    out = tmp_path / "train"
    with pytest.raises(UserError) as raised:
        train_stage.run_training(tiny(tiny_config.run_root, "train.epochs=3"), out, verbose=0)
    message = str(raised.value)
    assert "the depth loss became NaN at epoch 2, step 3" in message
    assert "best.weights.h5" in message and "backup after epoch 1" in message
    assert "\n" not in message

    work = train_stage.staging_folder(out)  # the failed run's state stays in its staging folder
    assert not out.exists() and not (work / "model.keras").exists()
    best = h5_arrays(work / "best.weights.h5")
    assert best and all(np.all(np.isfinite(a)) for a in best.values() if a.dtype.kind == "f")
    # The backup still holds epoch 1 (not the broken weights), so a rerun resumes from there.
    assert json.loads((work / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    backup = h5_arrays(work / "backup" / "latest.weights.h5")
    assert all(np.all(np.isfinite(a)) for a in backup.values() if a.dtype.kind == "f")
    rows = history(work / "history.csv")
    assert math.isfinite(float(rows[0]["depth_loss"])) and math.isnan(float(rows[1]["depth_loss"]))
    assert math.isfinite(float(rows[1]["segmentation_loss"]))


# --- a failing run leaves the last finished one as it was ---------------------------------------


def checksums(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_that_fails_before_training_changes_nothing_of_the_finished_run(tiny_trained, tmp_path):
    config, model_path = tiny_trained
    out = model_path.parent
    before = checksums(out)
    assert {"history.csv", "best.weights.h5", "config.yaml", "model_config.json", "model.keras"} <= set(before)
    common = ["train", "--config", "configs/tiny.yaml", f"run_root={config.run_root}"]
    # No data set (another run root, --out the finished run), then bad values: exit 2, one line.
    missing = run_cli(*common[:-1], f"run_root={tmp_path}", "--out", out, "train.epochs=1", timeout=180)
    assert_user_error_exit(missing, "no 'synthetic' data set", "make data")
    for override, key in (("train.epochs=abc", "train.epochs"), ("data.augment.enabled=maybe", "enabled")):
        assert_user_error_exit(run_cli(*common, override, timeout=60), key)
    assert checksums(out) == before
    assert not train_stage.staging_folder(out).exists() and not any(tmp_path.iterdir())


# --- partial labels across real data sets --------------------------------------------------------


# A frame without boxes (every CamVid frame) once got a -inf heat map: 0 * inf = NaN under the
# partial-label mask. These tests train and differentiate through such frames.


@pytest.fixture(scope="module")
def mixed_config(tmp_path_factory):
    """configs/kitti_camvid.yaml on the KITTI and CamVid fixtures, small frames and model."""

    root = tmp_path_factory.mktemp("mixed")
    config = load_config(REPO / "configs" / "kitti_camvid.yaml", [
        f"run_root={root}", f"data.sources.0.path={FIXTURES / 'kitti'}",
        f"data.sources.1.path={FIXTURES / 'camvid'}", "data.image_size=[64,192]", "data.shuffle_buffer=4",
        "model.widths=[8,16,24,32]", "model.neck_width=16", "model.head_width=16", "model.top_k=20",
        "train.batch_size=2", "train.epochs=2", "train.steps_per_epoch=3", "train.warmup_steps=1",
        "train.validation_steps=1", "train.jit_compile=false", "train.precision=float32"])
    reports = records.build_all(config)
    assert [r["source"] for r in reports] == ["kitti", "camvid"]
    return config


def _all_frames(config):
    """Every frame of both splits of both sources as one batch, without augmentation."""

    parts = [next(iter(inputs.make_dataset(config, split, training=False, batch_size=16)))
             for split in ("train", "validation")]
    x = {key: np.concatenate([p[0][key].numpy() for p in parts]) for key in parts[0][0]}
    # Box lists are padded per evaluation batch (their lengths differ); the losses read the dense maps.
    y = {key: np.concatenate([p[1][key].numpy() for p in parts]) for key in parts[0][1]
         if key not in ("boxes", "classes", "ignore_boxes")}
    return x, y


def test_partial_labels_unlabelled_examples_give_exactly_zero_gradient(mixed_config):
    import keras
    import tensorflow as tf


    config = mixed_config
    x, y = _all_frames(config)
    kitti = np.flatnonzero(y["has_detection"] > 0)
    camvid = np.flatnonzero(y["has_segmentation"] > 0)
    # The readers' flags: KITTI labels boxes and LiDAR depth, CamVid labels pixels, nothing else.
    assert len(kitti) == 2 and len(camvid) == 2 and set(kitti).isdisjoint(camvid)
    assert np.all(y["has_depth"][kitti] == 1) and np.all(y["has_segmentation"][kitti] == 0)
    assert np.all(y["has_detection"][camvid] == 0) and np.all(y["has_depth"][camvid] == 0)

    keras.utils.set_random_seed(config.seed)
    net = multitask.build_model(config.model, tuple(config.data.image_size))
    trainer = multitask.MultiTaskTrainer(net, config.model, config.train)
    heads = {task: [v for v in net.trainable_variables if v.path.startswith(task)] for task in TASKS}
    assert all(heads.values()), {task: len(v) for task, v in heads.items()}

    def gradients(index, training=True):
        """{(loss, head): [gradient per head variable]} for losses = each task and the total."""
        xs = {key: tf.gather(value, index) for key, value in x.items()}
        ys = {key: tf.gather(value, index) for key, value in y.items() if key != "key"}
        with tf.GradientTape(persistent=True) as tape:
            total, losses, _ = trainer.compute_losses(ys, net(xs, training=training))
        losses = {**losses, "total": total}
        grads = {(loss, head): tape.gradient(losses[loss], heads[head]) for loss in losses for head in TASKS}
        del tape
        return grads

    def exactly_zero(grads):
        return all(g is not None and not np.any(g.numpy()) for g in grads)

    def nonzero(grads):
        return any(g is not None and np.any(g.numpy()) for g in grads)

    only_kitti, only_camvid = gradients(kitti), gradients(camvid)
    # KITTI examples contribute exactly nothing to the segmentation head ...
    assert exactly_zero(only_kitti["segmentation", "segmentation"])
    assert exactly_zero(only_kitti["total", "segmentation"])
    # ... CamVid examples exactly nothing to the detection and depth heads ...
    for task in ("detection", "depth"):
        assert exactly_zero(only_camvid[task, task]), task
        assert exactly_zero(only_camvid["total", task]), task
    # ... while each source does train the heads it has labels for (the check is not vacuous).
    assert nonzero(only_camvid["segmentation", "segmentation"])
    assert nonzero(only_kitti["detection", "detection"]) and nonzero(only_kitti["depth", "depth"])

    # In a mixed batch a task's loss is the mean over the examples that have its label. In
    # inference mode examples are independent, so the mixed batch's segmentation gradient is the
    # CamVid-only one (in training mode BatchNorm's batch statistics still see every example).
    mixed = gradients(np.arange(len(y["has_detection"])), training=False)
    alone = {"segmentation": gradients(camvid, training=False), "detection": gradients(kitti, training=False)}
    for task, grads in alone.items():
        for got, want in zip(mixed[task, task], grads[task, task]):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-7)


def test_mixed_kitti_camvid_training_runs_end_to_end(mixed_config, tmp_path):
    out = tmp_path / "train"
    model_path = train_stage.run_training(mixed_config, out, verbose=0)
    assert model_path.is_file()
    rows = history(out / "history.csv")
    assert len(rows) == mixed_config.train.epochs
    for task in TASKS:
        values = [float(row[f"{task}_loss"]) for row in rows]
        assert all(math.isfinite(v) for v in values) and sum(values) > 0, (task, values)
        assert math.isfinite(float(rows[-1][f"val_{task}_loss"]))
