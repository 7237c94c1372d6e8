"""Multi-task training on any Keras backend (JAX, PyTorch, TensorFlow) through Keras' own fit.

MultiTaskTrainer (models/trainer.py) is the project's trainer: a TensorFlow train_step with every
weighting (uncertainty, DWA, GradNorm, FAMO, PCGrad), the lazy optimizer and tf.distribute. This is
the subset that Keras' `compute_loss` expresses on every backend: the same per-example losses (the
plain ones validation reports: no OHEM, no quality targets, no boxes around the centres, no size-bin
loss), partial labels, and fixed task weights (train.fixed_weights). Learned weightings need their
own optimizer or per-task gradients, so they stay with the TensorFlow trainer.

It is what the GPU readiness check trains with XLA under JAX (pipeline/bench/jax_gpu.py), and it
keeps the network honest: the graph and the losses must not depend on TensorFlow.
"""
from __future__ import annotations

import time

import keras
import numpy as np

from models.losses import masked_task_loss, per_example_losses
from data.vocabulary import TASKS


class PortableMultiTask(keras.Model):
    """PortableMultiTask(net, model_config, fixed_weights); compile(optimizer) then fit((x, y)).

    x = {"image": ...}; y = the batch targets of pipeline/inputs (det_*, segmentation, depth and
    has_<task> flags). The loss is sum over tasks of weight * (mean loss over labelled examples).
    """

    def __init__(self, net, model_config, fixed_weights, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.tasks = tuple(task for task in TASKS if task in model_config.tasks)
        missing = [task for task in self.tasks if task not in fixed_weights]
        if missing:
            raise ValueError(f"fixed_weights needs a weight for every task {list(self.tasks)}; "
                             f"Received: fixed_weights={dict(fixed_weights)}")
        self.weights_by_task = {task: float(fixed_weights[task]) for task in self.tasks}
        self.losses_by_task = per_example_losses(model_config)

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total = 0.0
        for task in self.tasks:
            loss, _ = masked_task_loss(self.losses_by_task[task](y, y_pred), y[f"has_{task}"])
            total = total + self.weights_by_task[task] * loss
        return total


def tiled(batches, size: int, steps: int) -> tuple[dict, dict]:
    """steps * size examples cycled in order from a list of (x, y) batches, as stacked arrays: fit
    with shuffle=False and batch_size=size then trains on the same examples in the same order on
    every backend."""
    xs = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    ys = {k: np.concatenate([b[1][k] for b in batches]) for k in batches[0][1]}
    index = np.arange(steps * size) % len(next(iter(xs.values())))
    return {k: v[index] for k, v in xs.items()}, {k: v[index] for k, v in ys.items()}


class StepLosses(keras.callbacks.Callback):
    """Each training step's own loss and the time it ended. Keras logs the epoch's running mean (over
    equal batches), so step k's loss is k * mean_k - (k - 1) * mean_(k-1), k counted from 1 within each
    epoch (float64; the mean is kept in float32, so a recovered loss carries
    about k * 1e-7 relative rounding)."""

    def __init__(self):
        super().__init__()
        self.losses, self.ends, self._last_mean = [], [], 0.0

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
        mean = float(logs["loss"])
        self.losses.append((batch + 1) * mean - batch * self._last_mean)
        self._last_mean = mean


def fit_in_order(model, batches, size: int, steps: int) -> StepLosses:
    """`steps` steps of a compiled model on the batches cycled in order (tiled), one epoch, no
    shuffling: the same training on every backend. Returns the per-step losses and end times."""
    x, y = tiled(batches, size, steps)
    recorder = StepLosses()
    model.fit(x, y, batch_size=size, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    return recorder
