"""Multi-task training on any Keras backend (JAX, PyTorch, TensorFlow) through Keras' own fit.

MultiTaskTrainer (models/trainer.py) is the project's trainer: a TensorFlow train_step with every
weighting (uncertainty, DWA, GradNorm, FAMO, PCGrad), the lazy optimizer and tf.distribute. This is
the subset that Keras' `compute_loss` expresses on every backend: the same per-example losses (the
plain ones validation reports: no OHEM, no quality targets, no boxes around the centres), partial
labels, and fixed task weights (train.fixed_weights). Learned weightings need their own optimizer
or per-task gradients, so they stay with the TensorFlow trainer.

It is what the GPU readiness check trains with XLA under JAX (pipeline/bench/jax_gpu.py), and it
keeps the network honest: the graph and the losses must not depend on TensorFlow.
"""
from __future__ import annotations

import keras

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
            loss, _ = masked_task_loss(self.losses_by_task[task](y, y_pred[task]), y[f"has_{task}"])
            total = total + self.weights_by_task[task] * loss
        return total
