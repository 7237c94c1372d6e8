"""`train` stage: fit the multi-task model on the input pipeline and save it.

Writes `runs/<experiment>/train/`: model.keras (the functional net, best validation epoch),
best.weights.h5, history.csv (per-task losses, task weights, learning rate), training_curves.png,
tensorboard/, backup/ (BackupAndRestore: a run killed mid-way continues from its last epoch),
model_config.json (a resume with a changed model is refused), speed.json and task_weights.json.

A resumed run keeps history.csv's rows of the epochs it continues from (and drops any written after
the backup), and its best checkpoint competes with the best epoch before the interruption. A loss
that turns NaN stops training with a line naming the task; neither best.weights.h5 nor backup/ is
overwritten with the broken weights, so the last good state stays (lower train.learning_rate and
run again to resume from it).
"""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from pipeline import devices
from pipeline.config import Config, save_config, to_dict
from pipeline.errors import UserError


def train_dir(config: Config) -> pathlib.Path:
    return config.run_dir / "train"


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
        except (ValueError, OSError, KeyError) as err:  # a backup of other code or a broken file
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
        if not self.nan_guard.failed:
            super().on_epoch_end(epoch, logs)


class ResumeHistory(keras.callbacks.Callback):
    """On a resume, trims history.csv to the epochs before the one training continues from and
    lets the best checkpoint compete with the best epoch before the interruption.

    Must come after the backup callback (which restores the epoch) and before CSVLogger (which
    opens history.csv for appending) in the callback list.
    """

    def __init__(self, history_csv, backup, checkpoint):
        super().__init__()
        self.history_csv, self.backup, self.checkpoint = history_csv, backup, checkpoint
        self.resumed_from = 0

    def on_train_begin(self, logs=None):
        self.resumed_from = self.backup.resumed_epoch()
        if not self.resumed_from or not self.history_csv.exists():
            return
        with self.history_csv.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames, [row for row in reader if int(row["epoch"]) < self.resumed_from]
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
    """Images per second per epoch; the first epoch includes tracing and compilation."""

    def __init__(self, batch_size, steps):
        super().__init__()
        self.images = batch_size * steps
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        last = getattr(self, "_last", None)
        if last is not None and last > self._start:
            self.per_epoch.append(self.images / (last - self._start))


class LogLearningRate(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def resume_signature(config: Config) -> dict:
    """What a backup's weights depend on: the model, the input size, the weighting's variables
    and the precision (a loss-scale optimizer has its own state)."""
    return {"model": to_dict(config)["model"], "image_size": list(config.data.image_size),
            "train": {"weighting": config.train.weighting, "precision": config.train.precision}}


def check_resume(out: pathlib.Path, config: Config) -> bool:
    """A resume must continue the same model: refuse one whose model config changed.

    Returns True when `out` holds an unfinished run to resume. A fresh run clears the previous
    run's history and best checkpoint so they are not mixed into this one.
    """
    saved = out / "model_config.json"
    current = resume_signature(config)
    resuming = (out / "backup").exists()
    if resuming and saved.exists():
        previous = json.loads(saved.read_text())
        previous.setdefault("train", current["train"])  # written before the signature had it
        if previous != current:
            changed = [f"model.{k}" for k in current["model"] if current["model"][k] != previous["model"].get(k)]
            changed += ["data.image_size"] if current["image_size"] != previous["image_size"] else []
            changed += [f"train.{k}" for k in current["train"] if current["train"][k] != previous["train"].get(k)]
            raise UserError(f"{out} holds an unfinished run of a different model (changed: "
                            f"{', '.join(changed)}); delete {out / 'backup'} to start afresh, or "
                            f"train into another folder (--out or another experiment name)")
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        for stale in ("history.csv", "best.weights.h5"):
            (out / stale).unlink(missing_ok=True)
    saved.write_text(json.dumps(current, indent=1))
    return resuming


def multi_worker_compat(trainer, strategy) -> None:
    """Works around two Keras 3 fit() bugs under MultiWorkerMirroredStrategy, on this trainer only.

    1. Before training, fit() `strategy.reduce`s a whole input batch to build the model
       symbolically; MultiWorkerMirroredStrategy cannot reduce a nested (x, y) batch
       (keras-team/keras#20329). The trainer is already fully built (functional net, weighting, no
       compiled loss or metrics), so once the optimizer is built that step has nothing left to do
       and is skipped.
    2. fit() reduces each step's logs with `strategy.reduce("MEAN", value, axis=0)` across workers,
       which fails on scalar logs ("Invalid reduction dimension 0 for input with 0 dimensions",
       tensorflow/tensorflow#72388): the steps return their logs as shape [1] instead, which that
       reduction turns back into the scalar mean over replicas.
    """
    with strategy.scope():
        if not trainer.optimizer.built:
            trainer.optimizer.build(trainer.trainable_variables)
    unbuilt = [layer.name for layer in trainer._flatten_layers() if not layer.built]
    if unbuilt:
        raise RuntimeError(f"cannot skip Keras' symbolic build: unbuilt layers {unbuilt[:5]}")
    trainer._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def vector_logs(step):
        return lambda data: {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    trainer.train_step = vector_logs(trainer.train_step)
    trainer.test_step = vector_logs(trainer.test_step)


def plot_history(history_csv: pathlib.Path, out_png: pathlib.Path) -> None:
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(history_csv.open()))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (ax_loss, ax_weight) = plt.subplots(1, 2, figsize=(11, 4))
    for key in rows[0]:
        values = [float(r[key]) if r[key] not in ("", None) else np.nan for r in rows]
        if key.endswith("_loss") and key != "val_task_loss_sum":
            ax_loss.plot(epochs, values, ("--" if key.startswith("val_") else "-"), label=key)
        elif key.endswith("_weight") and not key.startswith("val_"):
            ax_weight.plot(epochs, values, label=key)
    ax_loss.set(title="task losses (unweighted)", xlabel="epoch", yscale="log")
    ax_weight.set(title="effective task weights", xlabel="epoch")
    for ax in (ax_loss, ax_weight):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def run_training(config: Config, out: pathlib.Path | None = None, verbose: int = 1) -> pathlib.Path:
    """Trains per `config` into `out` (default runs/<experiment>/train); returns the model path."""
    from models import multitask
    from pipeline import inputs

    out = pathlib.Path(out or train_dir(config))
    strategy = devices.make_strategy(config.train.strategy)
    if not devices.is_chief(strategy):  # non-chief workers write their checkpoints to a scratch folder
        out = out / devices.worker_folder(strategy)
    check_resume(out, config)
    save_config(config, out / "config.yaml")
    precision = devices.resolve_precision(config.train.precision)
    keras.mixed_precision.set_global_policy(precision)
    jit = devices.resolve_jit(config.train.jit_compile)
    keras.utils.set_random_seed(config.seed)

    tasks = list(config.model.tasks)
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync
    train_ds = inputs.make_dataset(config, "train", training=True, batch_size=global_batch)
    val_ds = inputs.make_dataset(config, "validation", training=False, batch_size=global_batch)
    # Evaluation batches carry names and ignore boxes the losses do not use.
    val_ds = val_ds.map(lambda x, y: (x, {k: v for k, v in y.items() if k not in ("key", "ignore_boxes")}))
    # Never ask for more validation batches than the split has: Keras would warn that the input
    # ran out and later epochs could validate on nothing (no val_task_loss_sum, no checkpoint).
    val_examples = sum(inputs.split_size(config, source, "validation") for source in config.data.sources)
    available = max(1, math.ceil(val_examples / global_batch))
    validation_steps = min(config.train.validation_steps or available, available)
    total_steps = config.train.epochs * config.train.steps_per_epoch

    with strategy.scope():
        net = multitask.build_model(config.model, tuple(config.data.image_size))
        trainer = multitask.MultiTaskTrainer(net, config.model, config.train)
        trainer.compile(optimizer=multitask.make_optimizer(config.train, total_steps), jit_compile=jit)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        multi_worker_compat(trainer, strategy)

    nan_guard = StopOnNaNTask(tasks)
    speed = Throughput(global_batch, config.train.steps_per_epoch)
    best = out / "best.weights.h5"
    history_csv = out / "history.csv"
    backup = GuardedBackup(str(out / "backup"), nan_guard)
    checkpoint = GuardedCheckpoint(best, nan_guard)
    resume = ResumeHistory(history_csv, backup, checkpoint)
    # Order matters at each epoch end: replicas agree before anything is saved, the NaN guard has
    # looked at every batch, and the backup is written before the history row that it covers.
    callbacks = [
        SyncReplicaStatistics(strategy),
        nan_guard,
        backup,
        resume,
        ValidationTaskSum(tasks),
        LogLearningRate(),
        checkpoint,
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0),
        speed,
    ]  # the trainer adds the weighting's own epoch hook (DWA) itself
    print(f"train: {len(tasks)} task(s) {tasks}, weighting={config.train.weighting}, "
          f"sharing={config.model.sharing}, precision={precision}, jit_compile={jit}, "
          f"replicas={strategy.num_replicas_in_sync}, {net.count_params():,} parameters")
    trainer.fit(train_ds, epochs=config.train.epochs, steps_per_epoch=config.train.steps_per_epoch,
                validation_data=val_ds, validation_steps=validation_steps,
                callbacks=callbacks, verbose=verbose)
    if nan_guard.failed:
        task, epoch, step = nan_guard.failed
        kept = [f"best checkpoint {best}" if best.exists() else None,
                f"backup after epoch {backup.resumed_epoch()} in {out / 'backup'} (a rerun resumes from it)"
                if (out / "backup").exists() else None]
        kept = [item for item in kept if item]
        raise UserError(f"training stopped: the {task} loss became NaN at epoch {epoch + 1}, step {step + 1}; "
                        + (f"kept the last good state: {' and '.join(kept)}; lower train.learning_rate "
                           "before resuming" if kept else "no epoch had finished, nothing was saved"))

    if best.exists():
        trainer.load_weights(str(best))
    model_path = out / "model.keras"
    partial = out / "model.partial.keras"
    net.save(str(partial))
    os.replace(partial, model_path)  # a crash never leaves a half-written model.keras
    plot_history(history_csv, out / "training_curves.png")
    measured = speed.per_epoch[1:] or speed.per_epoch
    (out / "speed.json").write_text(json.dumps({
        "images_per_second_median": float(np.median(measured)) if measured else None,
        "per_epoch": speed.per_epoch, "batch_size": global_batch, "precision": precision,
        "jit_compile": jit, "replicas": strategy.num_replicas_in_sync, "resumed_from_epoch": resume.resumed_from,
        "note": "the first epoch includes tracing/compilation and is left out of the median"}, indent=1))
    weights = {task: round(float(w), 4) for task, w in trainer.weighting.effective_weights().items()}
    (out / "task_weights.json").write_text(json.dumps(weights, indent=1))
    print(f"train: saved {model_path}; effective task weights at the end: {weights}")
    return model_path


def main(config: Config, args=None) -> pathlib.Path:
    out = getattr(args, "out", None)
    return run_training(config, pathlib.Path(out) if out else None)



