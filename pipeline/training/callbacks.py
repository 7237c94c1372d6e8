"""Keras callbacks of the fit loop: the checkpoint metric, NaN guard, guarded backup and checkpoint,
averaged weights for validation (train.ema), resumed history, replica statistics sync, throughput,
the learning-rate log and the encoder's late thaw (train.thaw_through)."""
from __future__ import annotations

import csv
import json
import math
import pathlib
import shutil
import time

import keras
import tensorflow as tf

from data.errors import UserError
from models.optimizer import schedule_of, step_of


class ValidationTaskSum(keras.callbacks.Callback):
    """Adds `val_task_loss_sum`: the unweighted sum of validation task losses.

    The weighted total is no yardstick across epochs when the weights are learned (uncertainty
    weighting can lower it by moving s alone), so the best checkpoint is picked on this sum.
    """

    def __init__(self, tasks):
        super().__init__()
        self.tasks = tasks

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and all(f"val_{t}_loss" in logs for t in self.tasks):
            logs["val_task_loss_sum"] = float(sum(logs[f"val_{t}_loss"] for t in self.tasks))


class StopOnNaNTask(keras.callbacks.Callback):
    """Stops training when a task's loss (or the weighted total) is not finite; remembers which.

    Keras still ends the epoch after `stop_training` (validation, epoch-end callbacks): the
    checkpointing callbacks below consult `failed` so the broken weights are never saved.
    """

    def __init__(self, tasks):
        super().__init__()
        self.tasks = tasks
        self.failed = None  # (task or "total", epoch, batch), all 0-based
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.failed:
            return
        logs = logs or {}
        for name in [f"{task}_loss" for task in self.tasks] + ["loss"]:
            value = logs.get(name)
            if value is not None and not math.isfinite(float(value)):
                task = name[:-len("_loss")] if name != "loss" else "total (weighted)"
                self.failed = (task, self._epoch, batch)
                self.model.stop_training = True
                return


class GuardedBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that keeps the last good state when training stopped on a NaN.

    double_checkpoint: a kill while the backup is being written falls back to the previous one.
    """

    def __init__(self, backup_dir, nan_guard):
        super().__init__(backup_dir, double_checkpoint=True)
        self.nan_guard = nan_guard

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except OSError as err:
            # An unreadable file (and no readable previous one): a run killed while it wrote its
            # first backup. Nothing in it can be resumed, so it is set aside and training starts
            # afresh; refusing would make every later run fail on it.
            aside = pathlib.Path(f"{self.backup_dir}.unreadable")
            shutil.rmtree(aside, ignore_errors=True)
            pathlib.Path(self.backup_dir).rename(aside)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            print(f"train: the backup could not be read ({reason}); starting afresh (kept in {aside})")
            super().on_train_begin(logs)
        except (ValueError, KeyError) as err:  # a backup of other code: the user decides
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"cannot restore the backup in {self.backup_dir} ({reason}); delete it "
                            f"to start afresh") from None

    def on_epoch_end(self, epoch, logs=None):
        if not self.nan_guard.failed:
            super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if not self.nan_guard.failed:
            super().on_train_end(logs)  # a finished run deletes its backup

    def resumed_epoch(self) -> int:
        """The epoch fit continues from (0 for a fresh run); valid after on_train_begin."""
        path = pathlib.Path(self._training_metadata_path)
        return int(json.loads(path.read_text())["epoch"]) if path.exists() else 0


class GuardedCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint (best epoch by val_task_loss_sum) that never saves after a NaN."""

    def __init__(self, path, nan_guard):
        super().__init__(str(path), monitor="val_task_loss_sum", mode="min", save_best_only=True,
                         save_weights_only=True)
        self.nan_guard = nan_guard

    def on_epoch_end(self, epoch, logs=None):
        # An epoch without validation (train.validate_every) has nothing to compare: ModelCheckpoint
        # would warn that the metric is missing and then save the unvalidated weights as the best.
        if not self.nan_guard.failed and self.monitor in (logs or {}):
            super().on_epoch_end(epoch, logs)


class AveragedWeightsForValidation(keras.callbacks.Callback):
    """train.ema: validation and the best checkpoint see the optimizer's moving average of the weights
    while training goes on from the raw weights.

    Keras' own way, ema_overwrite_frequency, writes the average into the model and trains on from it,
    setting training back each time; without it the average reaches the model only at the end of fit,
    after the best checkpoint was saved from the raw weights (what train.ema did before). Here the
    average is swapped in when validation begins and the raw weights back at the epoch's end: put
    this callback after the checkpoint (which saves the average) and before the backup (which must
    hold the raw weights a resumed run trains on from). Keras keeps the average in the optimizer's
    _model_variables_moving_average, one per variable of its _trainable_variables, no public API.
    """

    def __init__(self):
        super().__init__()
        self._raw = None

    def _pairs(self):
        optimizer = self.model.optimizer
        return list(zip(optimizer._trainable_variables, optimizer._model_variables_moving_average))

    def on_test_begin(self, logs=None):
        if self._raw is None and getattr(self.model.optimizer, "use_ema", False):
            pairs = self._pairs()
            self._raw = [variable.numpy() for variable, _ in pairs]
            for variable, average in pairs:
                if average is not None:
                    variable.assign(average)

    def on_epoch_end(self, epoch, logs=None):
        if self._raw is not None:
            for (variable, _), raw in zip(self._pairs(), self._raw):
                variable.assign(raw)
            self._raw = None


class HistoryCSV(keras.callbacks.CSVLogger):
    """CSVLogger (appending) for fits that validate on some epochs only.

    Keras takes the columns from the first epoch it logs: a resumed run whose first epoch has no
    validation would write rows under another header than the file's. Here an appended file keeps its
    own columns, and an epoch without validation leaves its val_ cells empty (Keras writes "NA").
    """

    def __init__(self, filename):
        super().__init__(filename, append=True)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # resets the columns
        path = pathlib.Path(self.filename)
        if path.is_file():
            with path.open(newline="") as handle:
                header = next(csv.reader(handle), None)
            if header:
                self.keys = header[1:]  # after "epoch"

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        for key in self.keys or ():
            logs.setdefault(key, "")
        super().on_epoch_end(epoch, logs)


class ResumeHistory(keras.callbacks.Callback):
    """On a resume, trims history.csv to the epochs before the one training continues from and
    lets the best checkpoint compete with the best epoch before the interruption.

    Must come after the backup callback (which restores the epoch) and before HistoryCSV (which
    reads the trimmed file's header and opens it for appending) in the callback list.
    """

    def __init__(self, history_csv, backup, checkpoint):
        super().__init__()
        self.history_csv, self.backup, self.checkpoint = history_csv, backup, checkpoint
        self.resumed_from = 0

    def on_train_begin(self, logs=None):
        self.resumed_from = self.backup.resumed_epoch()
        if not self.resumed_from:
            # A fresh start (also after an unreadable backup was set aside): nothing before it counts.
            self.history_csv.unlink(missing_ok=True)
            pathlib.Path(self.checkpoint.filepath).unlink(missing_ok=True)
            return
        if not self.history_csv.exists():
            return
        with self.history_csv.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames, [row for row in reader if int(row["epoch"]) < self.resumed_from]
        if not fields:  # killed after the first backup, before the first row: nothing to keep
            self.history_csv.unlink()
            return
        with self.history_csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        previous = [float(row["val_task_loss_sum"]) for row in rows if row.get("val_task_loss_sum")]
        previous = [value for value in previous if math.isfinite(value)]
        if previous and pathlib.Path(self.checkpoint.filepath).exists():
            self.checkpoint.best = min(previous)
        print(f"train: resuming from epoch {self.resumed_from + 1} (backup in {self.backup.backup_dir})")


class SyncReplicaStatistics(keras.callbacks.Callback):
    """Averages the net's non-trainable float state (BatchNorm moving mean/variance) over all
    replicas at each epoch end, before anything is checkpointed.

    Keras creates BatchNorm's moving statistics with aggregation "none": under tf.distribute each
    replica updates its own copy from its own share of the batch, so the copies drift apart (and a
    saved model holds replica 0's only). The moving averages are linear in the batch statistics, so
    averaging the copies at epoch end gives exactly what averaging them every step would.
    """

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy
        self._sync = None

    def on_train_begin(self, logs=None):
        variables = [v for v in self.model.net.non_trainable_variables
                     if v.aggregation == "none" and "float" in str(v.dtype)
                     and isinstance(v.value, tf.distribute.DistributedValues)]
        if not variables or self.strategy.num_replicas_in_sync < 2:
            return

        def replica_fn():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
            for variable, mean in zip(variables, means):
                variable.assign(mean)

        self._sync = tf.function(lambda: self.strategy.run(replica_fn))

    def on_epoch_end(self, epoch, logs=None):
        if self._sync is not None:
            self._sync()


class Throughput(keras.callbacks.Callback):
    """Images per second per epoch (the first includes tracing and compilation; a time budget's last
    epoch may stop early, so each epoch's steps are counted), and the seconds each validation took,
    which the images per second leave out."""

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size
        self.per_epoch = []
        self.validation_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = time.perf_counter(), 0

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation_seconds.append(round(time.perf_counter() - self._test_start, 2))

    def on_train_batch_end(self, batch, logs=None):
        self._last, self._steps = time.perf_counter(), self._steps + 1

    def on_epoch_end(self, epoch, logs=None):
        last = getattr(self, "_last", None)
        if self._steps and last > self._start:
            self.per_epoch.append(self.batch_size * self._steps / (last - self._start))


class LogLearningRateAndStep(keras.callbacks.Callback):
    """history.csv's learning_rate and step (the optimizer's steps so far, which a time budget's
    partial last epoch makes more than epochs times steps_per_epoch tells)."""

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        logs["step"] = step_of(optimizer)


class EncoderThaw(keras.callbacks.Callback):
    """train.thaw_through: at the epoch boundary nearest `at` of the schedule's steps, the frozen
    encoder blocks above thaw_through train too (MultiTaskTrainer.thaw), for the rest of the training.

    Why late: frozen steps are cheaper, so the budget holds more of them, and once the heads have
    learned the early levels can adapt to what they need (ULMFiT's gradual unfreezing, one step). A
    resumed run past that boundary thaws at its first epoch. With a time budget, its later plans go by
    the thawed epochs' times (TimeBudget.restart_timing).
    """

    def __init__(self, at: float, level: str, budget=None):
        super().__init__()
        self.at, self.level, self.budget = float(at), level, budget

    def on_epoch_begin(self, epoch, logs=None):
        trainer = self.model
        if trainer.thawed:
            return
        end = schedule_of(trainer.optimizer).state()["end_step"]
        if step_of(trainer.optimizer) < self.at * end - self.params["steps"] / 2:
            return
        layers = trainer.thaw()
        if self.budget is not None:
            self.budget.restart_timing()
        print(f"train: the encoder's frozen blocks above {self.level} ({layers} layers) train from epoch "
              f"{epoch + 1} on", flush=True)
