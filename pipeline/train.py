"""`train` stage: fit the multi-task model on the input pipeline and save it.

Writes `runs/<experiment>/train/`: model.keras (the functional net, best validation epoch),
best.weights.h5, history.csv (per-task losses, task weights, learning rate), training_curves.png,
tensorboard/, backup/ (BackupAndRestore: a run killed mid-way continues from its last epoch),
model_config.json (a resume with a changed model is refused) and speed.json.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time

import keras
import numpy as np

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
    """Stops training when a task's loss is NaN and remembers which task it was."""

    def __init__(self, tasks):
        super().__init__()
        self.tasks = tasks
        self.failed = None

    def on_train_batch_end(self, batch, logs=None):
        for task in self.tasks:
            value = (logs or {}).get(f"{task}_loss")
            if value is not None and not math.isfinite(float(value)):
                self.failed = (task, batch)
                self.model.stop_training = True
                return


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
        self.per_epoch.append(self.images / max(self._last - self._start, 1e-9))


class LogLearningRate(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def check_resume(out: pathlib.Path, config: Config) -> None:
    """A resume must continue the same model: refuse one whose model config changed."""
    saved = out / "model_config.json"
    current = {"model": to_dict(config)["model"], "image_size": list(config.data.image_size)}
    if (out / "backup").exists() and saved.exists():
        previous = json.loads(saved.read_text())
        if previous != current:
            changed = sorted(k for k in current["model"] if current["model"][k] != previous["model"].get(k))
            raise UserError(f"{out} holds an unfinished run of a different model (changed: "
                            f"{', '.join(changed) or 'image_size'}); delete {out / 'backup'} or use "
                            f"another experiment name")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(current, indent=1))


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
    is_chief = devices.is_chief(strategy)
    if not is_chief:  # non-chief workers write their checkpoints to a scratch folder
        out = out / f"worker-{devices.task_index()}"
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
    total_steps = config.train.epochs * config.train.steps_per_epoch

    with strategy.scope():
        net = multitask.build_model(config.model, tuple(config.data.image_size))
        trainer = multitask.MultiTaskTrainer(net, config.model, config.train)
        trainer.compile(optimizer=multitask.make_optimizer(config.train, total_steps), jit_compile=jit)

    nan_guard = StopOnNaNTask(tasks)
    speed = Throughput(global_batch, config.train.steps_per_epoch)
    best = out / "best.weights.h5"
    callbacks = [
        nan_guard,
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        ValidationTaskSum(tasks),
        LogLearningRate(),
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_task_loss_sum", mode="min",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0),
        speed,
    ]  # the trainer adds the weighting's own epoch hook (DWA) itself
    print(f"train: {len(tasks)} task(s) {tasks}, weighting={config.train.weighting}, "
          f"sharing={config.model.sharing}, precision={precision}, jit_compile={jit}, "
          f"replicas={strategy.num_replicas_in_sync}, {net.count_params():,} parameters")
    trainer.fit(train_ds, epochs=config.train.epochs, steps_per_epoch=config.train.steps_per_epoch,
                validation_data=val_ds, validation_steps=config.train.validation_steps,
                callbacks=callbacks, verbose=verbose)
    if nan_guard.failed:
        task, step = nan_guard.failed
        kept = f"the last good checkpoint is kept at {best}" if best.exists() else "no checkpoint was saved yet"
        raise UserError(f"training stopped: the {task} loss became NaN at step {step}; {kept}")

    if best.exists():
        trainer.load_weights(str(best))
    model_path = out / "model.keras"
    partial = out / "model.partial.keras"
    net.save(str(partial))
    os.replace(partial, model_path)  # a crash never leaves a half-written model.keras
    plot_history(out / "history.csv", out / "training_curves.png")
    measured = speed.per_epoch[1:] or speed.per_epoch
    (out / "speed.json").write_text(json.dumps({
        "images_per_second_median": float(np.median(measured)) if measured else None,
        "per_epoch": speed.per_epoch, "batch_size": global_batch, "precision": precision,
        "jit_compile": jit, "replicas": strategy.num_replicas_in_sync,
        "note": "the first epoch includes tracing/compilation and is left out of the median"}, indent=1))
    weights = {task: round(float(w), 4) for task, w in trainer.weighting.effective_weights().items()}
    (out / "task_weights.json").write_text(json.dumps(weights, indent=1))
    print(f"train: saved {model_path}; effective task weights at the end: {weights}")
    return model_path


def main(config: Config, args=None) -> pathlib.Path:
    out = getattr(args, "out", None)
    return run_training(config, pathlib.Path(out) if out else None)



