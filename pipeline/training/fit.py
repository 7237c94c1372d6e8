"""Training: fit the multi-task model on the input pipeline and save it (the train stage's work).

Writes `runs/<experiment>/train/`: model.keras (the functional net, best validation epoch),
best.weights.h5, history.csv (per-task losses, task weights, learning rate, step), training_curves.png,
tensorboard/, model_config.json (a resume with a changed model is refused), config.yaml (the
resolved config), camera.json (the camera its depth assumes, pipeline/deploy/camera.py), speed.json,
task_weights.json and, under train.minutes, budget.json (the steps planned for the time budget,
pipeline/training/budget.py).

A run writes nothing until everything it needs is checked (config, data set, resume, model), then
trains in the staging folder `.train.partial/` beside train/ (with backup/: BackupAndRestore, a run
killed mid-way continues from its last epoch) and swaps it in for train/ only when it has finished:
a failing or killed run never changes the last finished run.

A resumed run keeps history.csv's rows of the epochs it continues from (and drops any written after
the backup), and its best checkpoint competes with the best epoch before the interruption. A loss
that turns NaN stops training with a line naming the task; neither best.weights.h5 nor backup/ is
overwritten with the broken weights, so the last good state stays (lower train.learning_rate and
run again to resume from it).
"""
from __future__ import annotations

import json
import math
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from data.errors import UserError
from models import multitask
from pipeline import atomic, layout
from pipeline.deploy import camera
from pipeline.config import Config, save_config, to_dict
from pipeline.evaluation import plots
from pipeline.inputs import dataset as inputs
from pipeline.training import devices, onednn
from pipeline.training.budget import PLAN_FILE, TimeBudget, validation_epochs
from pipeline.training.callbacks import (AveragedWeightsForValidation, EncoderThaw, GuardedBackup, GuardedCheckpoint,
                                         HistoryCSV, LogLearningRateAndStep, ResumeHistory, StopOnNaNTask,
                                         SyncReplicaStatistics, Throughput, ValidationTaskSum)
from pipeline.training.progress import CompactProgbarLogger


MAX_BUDGET_EPOCHS = 1_000_000  # fit()'s epochs under train.minutes: the budget stops it long before


def resume_signature(config: Config) -> dict:
    """What a backup's weights depend on: the model, the input size, the weighting's variables
    and the precision (a loss-scale optimizer has its own state)."""
    signature = {"model": to_dict(config)["model"], "image_size": list(config.data.image_size),
                 "train": {"weighting": config.train.weighting, "precision": config.train.precision}}
    if config.data.train_crop:  # the trained net's input size (older signatures have no key)
        signature["train_crop"] = list(config.data.train_crop)
    return signature


def staging_folder(out: pathlib.Path) -> pathlib.Path:
    """Where a run trains until it has finished: a hidden folder beside `out`, swapped in at the end.

    Its name holds no process id: a killed run's folder (with its backup/) is where the next run
    resumes from, while `out` keeps the last finished run untouched."""
    return out.with_name(f".{out.name}.partial")


def check_resume(work: pathlib.Path, config: Config) -> bool:
    """A resume must continue the same model: refuse one whose model config changed. Writes nothing.

    Returns True when `work` holds an unfinished run to resume."""
    saved = work / "model_config.json"
    current = resume_signature(config)
    current["model"] = multitask.as_built(current["model"])  # keys the built net ignores change no model
    resuming = (work / "backup").exists()
    if resuming and saved.exists():
        previous = json.loads(saved.read_text())
        previous.setdefault("train", current["train"])  # written before the signature had it
        # A model key added since the run was saved (e.g. model.classes) has the default
        # that builds the model that run built.
        previous["model"] = multitask.as_built({**to_dict(Config())["model"], **previous["model"]})
        if previous != current:
            changed = [f"model.{k}" for k in current["model"] if current["model"][k] != previous["model"].get(k)]
            changed += [f"model.{k} (no longer a key)" for k in previous["model"] if k not in current["model"]]
            changed += ["data.image_size"] if current["image_size"] != previous["image_size"] else []
            changed += ["data.train_crop"] if current.get("train_crop") != previous.get("train_crop") else []
            changed += [f"train.{k}" for k in current["train"] if current["train"][k] != previous["train"].get(k)]
            raise UserError(f"{work} holds an unfinished run of a different model (changed: "
                            f"{', '.join(changed)}); delete {work / 'backup'} to start afresh, or "
                            f"train into another folder (--out or another experiment name)")
    return resuming


def begin_run(work: pathlib.Path, config: Config, resuming: bool) -> None:
    """The first writes of a run, once everything it needs is checked: the folder, its resolved config
    and model signature. A fresh run clears an unfinished run's history and best checkpoint so they
    are not mixed into this one."""
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write the training run to {work.parent}: {err.strerror or err}") from None
    if not resuming:
        for stale in ("history.csv", "best.weights.h5", PLAN_FILE):
            (work / stale).unlink(missing_ok=True)
    atomic.write_text(work / "model_config.json", json.dumps(resume_signature(config), indent=1))
    save_config(config, work / "config.yaml")
    camera.write(config, work)  # the camera its depth assumes (pipeline/deploy/camera.py)


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


def run_training(config: Config, out: pathlib.Path | None = None, verbose: int = 1) -> pathlib.Path:
    """Trains per `config` into `out` (default runs/<experiment>/train); returns the model path."""
    started = time.perf_counter()  # train.minutes counts from here
    out = pathlib.Path(out or layout.train_dir(config))
    atomic.recover(out)  # a run killed inside its final swap left the finished run as .train.old
    strategy = devices.make_strategy(config.train.strategy)
    chief = devices.is_chief(strategy)
    # The run trains in a staging folder and replaces `out` only when it has finished: a run that
    # fails or is killed leaves the last finished run as it was. Non-chief workers write their
    # checkpoints to a scratch folder of their own.
    work = staging_folder(out) if chief else out.with_name(f".{out.name}.{devices.worker_folder(strategy)}")
    resuming = check_resume(work, config)
    precision = devices.resolve_precision(config.train.precision)
    keras.mixed_precision.set_global_policy(precision)
    jit = devices.resolve_jit(config.train.jit_compile)
    keras.utils.set_random_seed(config.seed)

    tasks = list(config.model.tasks)
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync
    train_ds = inputs.make_dataset(config, "train", training=True, batch_size=global_batch)
    # With data.train_crop the net trains on crops and validates on centred crops of the same size;
    # the saved model.keras takes whole frames at data.image_size (the same weights).
    val_ds = inputs.make_dataset(config, "validation", training=False, batch_size=global_batch, crop=True)
    # Evaluation batches carry names and box lists (of varying length) that the losses do not use.
    unused = ("key", "ignore_boxes", "boxes", "classes")
    val_ds = val_ds.map(lambda x, y: (x, {k: v for k, v in y.items() if k not in unused}))
    # Never ask for more validation batches than the split has: Keras would warn that the input
    # ran out and later epochs could validate on nothing (no val_task_loss_sum, no checkpoint).
    val_examples = sum(inputs.split_size(config, source, "validation") for source in config.data.sources)
    available = max(1, math.ceil(val_examples / global_batch))
    validation_steps = min(config.train.validation_steps or available, available)
    total_steps = config.train.epochs * config.train.steps_per_epoch

    with strategy.scope():
        net = multitask.build_model(config.model, inputs.output_size(config, crop=True))
        trainer = multitask.MultiTaskTrainer(net, config.model, config.train)
        trainer.compile(optimizer=multitask.make_optimizer(config.train, total_steps), jit_compile=jit)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        multi_worker_compat(trainer, strategy)

    # Everything is checked (config, data set, resume, model): the run's first write.
    begin_run(work, config, resuming)

    nan_guard = StopOnNaNTask(tasks)
    speed = Throughput(global_batch)
    best = work / "best.weights.h5"
    history_csv = work / "history.csv"
    backup = GuardedBackup(str(work / "backup"), nan_guard)
    checkpoint = GuardedCheckpoint(best, nan_guard)
    resume = ResumeHistory(history_csv, backup, checkpoint)
    budget = None
    if config.train.minutes:
        budget = TimeBudget(config.train.minutes, started, config.train.steps_per_epoch,
                            config.train.validate_every, work / PLAN_FILE, strategy)
    # Order matters at each epoch end: replicas agree before anything is saved, the NaN guard has
    # looked at every batch, the best checkpoint is written before the backup (a run killed between
    # the two runs that epoch again instead of keeping an older best: with validation on every 5th
    # epoch that would be 5 epochs older), and the backup before the history row that it covers.
    callbacks = [
        SyncReplicaStatistics(strategy),
        nan_guard,
        ValidationTaskSum(tasks),
        *([budget] if budget else []),  # before the backup: a run resumed from it finds the plan
        # Before the checkpoint: the epoch it begins trains thawed. After the budget: its plan is laid.
        *([EncoderThaw(config.train.thaw_at, config.train.thaw_through, budget)] if config.train.thaw_through else []),
        checkpoint,
        AveragedWeightsForValidation(),  # between the two: the checkpoint saves the average, the backup the raw
        backup,
        resume,
        LogLearningRateAndStep(),
        HistoryCSV(history_csv),
        keras.callbacks.TensorBoard(str(work / "tensorboard"), write_graph=False, profile_batch=0),
        speed,
        CompactProgbarLogger(),  # the bar shows the losses only; the logs above keep every metric
    ]  # the trainer adds the weighting's own epoch hook (DWA) itself
    print(f"train: {len(tasks)} task(s) {tasks}, weighting={config.train.weighting}, "
          f"sharing={config.model.sharing}, precision={precision}, jit_compile={jit}, "
          f"onednn={'on' if onednn.enabled() else 'off'}, "
          f"replicas={strategy.num_replicas_in_sync}, {net.count_params():,} parameters")
    if budget:  # the budget plans the epochs after the first one and stops fit() after the last
        epochs, validation_freq = MAX_BUDGET_EPOCHS, budget.validation
    else:
        epochs, validation_freq = config.train.epochs, validation_epochs(config.train.epochs,
                                                                           config.train.validate_every)
    trainer.fit(train_ds, epochs=epochs, steps_per_epoch=config.train.steps_per_epoch,
                validation_data=val_ds, validation_steps=validation_steps, validation_freq=validation_freq,
                callbacks=callbacks, verbose=verbose)
    if nan_guard.failed:
        task, epoch, step = nan_guard.failed
        kept = [f"best checkpoint {best}" if best.exists() else None,
                f"backup after epoch {backup.resumed_epoch()} in {work / 'backup'} (a rerun resumes from it)"
                if (work / "backup").exists() else None]
        kept = [item for item in kept if item]
        raise UserError(f"training stopped: the {task} loss became NaN at epoch {epoch + 1}, step {step + 1}; "
                        + (f"kept the last good state: {' and '.join(kept)}; lower train.learning_rate "
                           "before resuming" if kept else "no epoch had finished, nothing was saved"))

    if best.exists():
        trainer.load_weights(str(best))
    if config.data.train_crop:
        net = multitask.rebuild_at(net, tuple(config.data.image_size))
    with atomic.partial_file(work / layout.MODEL_FILE) as partial:
        net.save(str(partial))
    plots.training_curves(history_csv, work / "training_curves.png")
    measured = speed.per_epoch[1:] or speed.per_epoch
    (work / "speed.json").write_text(json.dumps({
        "images_per_second_median": float(np.median(measured)) if measured else None,
        "per_epoch": speed.per_epoch, "validation_seconds": speed.validation_seconds,
        "batch_size": global_batch, "precision": precision,
        "jit_compile": jit, "onednn": onednn.enabled(), "replicas": strategy.num_replicas_in_sync,
        "resumed_from_epoch": resume.resumed_from, "epochs": budget.epochs if budget else config.train.epochs,
        "steps": budget.steps if budget else config.train.epochs * config.train.steps_per_epoch,
        "stage_seconds": round(time.perf_counter() - started, 1),
        "note": "the first epoch includes tracing/compilation and is left out of the median"}, indent=1))
    weights = {task: round(float(w), 4) for task, w in trainer.weighting.effective_weights().items()}
    (work / "task_weights.json").write_text(json.dumps(weights, indent=1))
    model_path = out / layout.MODEL_FILE
    if chief:
        atomic.replace_dir(work, out)  # the finished run replaces the previous one, whole
    else:
        model_path = work / layout.MODEL_FILE
    if budget:
        print(f"train: {budget.describe()} in {(time.perf_counter() - started) / 60:.1f} min "
              f"(budget {config.train.minutes:g} min)")
    print(f"train: saved {model_path}; effective task weights at the end: {weights}")
    return model_path
