"""MultiTaskTrainer: wraps the functional net with the multi-task train_step.

Why a custom train_step: partial labels (a task's loss is averaged only over the examples that
have its label, so a batch without it gives that task exactly zero gradient), learnable task
weighting (uncertainty, GradNorm's per-task gradients at the last shared layer need a persistent
tape) and the soft-sharing penalty are not expressible with compile(loss=...).

The trainer itself is not saved as .keras; `net` is (it is a plain functional model), and
`save_weights` / `load_weights` cover net + weighting state (checkpoints, BackupAndRestore).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from models.depth import depth_loss
from models.detection import detection_loss
from models.optimizer import make_task_weight_optimizer
from models.segmentation import segmentation_loss
from models.sharing import shared_kernel, soft_sharing_penalty, task_encoders
from models.weighting import WeightingCallback, make_weighting
from data.errors import UserError

TASK_ORDER = ("detection", "segmentation", "depth")



def per_example_losses(model_config):
    """{task: (batch targets y, the task's output) -> per-example loss [B]}."""
    return {
        "detection": lambda y, out: detection_loss(y, out),
        "segmentation": lambda y, out: segmentation_loss(y["segmentation"], out),
        # Depth is scored on the range the model can output (the evaluation protocol's too).
        "depth": lambda y, out: depth_loss(y["depth"], out, model_config.max_depth),
    }


def masked_task_loss(per_example, has_label):
    """sum(flag * L) / max(1, sum(flag)) and whether any example had the label (float 0/1)."""
    flag = tf.cast(has_label, tf.float32)
    count = tf.reduce_sum(flag)
    loss = tf.reduce_sum(flag * tf.cast(per_example, tf.float32)) / tf.maximum(count, 1.0)
    return loss, tf.cast(count > 0.0, tf.float32)


class MultiTaskTrainer(keras.Model):
    """MultiTaskTrainer(net, model_config, train_config); compile(optimizer=...) then fit(dataset).

    Under tf.distribute, build the net and the trainer (and the optimizer) inside strategy.scope().
    On CPU prefer jit_compile=False: XLA's CPU depthwise convolution is several times slower than
    TensorFlow's kernel (measured ~6x), so the XLA step is slower, not faster; on GPU use True.

    Logs: loss (the weighted total), <task>_loss (unweighted, averaged over batches that had the
    label), <task>_weight (effective weight), <task>_log_var (uncertainty weighting only).
    """

    def __init__(self, net, model_config, train_config, **kwargs):
        super().__init__(**kwargs)
        built = set(net.output.keys()) if isinstance(net.output, dict) else set()
        self.tasks = tuple(task for task in TASK_ORDER if task in model_config.tasks)
        if not self.tasks or not set(self.tasks) <= built:
            raise ValueError(f"net outputs {sorted(built)} do not cover the configured tasks; "
                             f"Received: tasks={list(model_config.tasks)}")
        self.net = net
        self.losses_by_task = per_example_losses(model_config)
        self.weighting = make_weighting(train_config, self.tasks)
        # Task weights learn on their own optimizer (see models/optimizer.py); built here, inside
        # the caller's strategy scope, so its slots exist before the first traced step.
        self.task_weight_optimizer = make_task_weight_optimizer(train_config)
        if self.weighting.trainable_variables:
            self.task_weight_optimizer.build(self.weighting.trainable_variables)
        soft = model_config.sharing == "soft" and len(self.tasks) > 1
        self.soft_beta = float(model_config.soft_sharing_beta) if soft else 0.0
        if self.weighting.needs_persistent_tape and shared_kernel(net) is None:
            # A config combination the user chose, so a one-line UserError rather than a traceback.
            raise UserError("train.weighting=gradnorm needs a layer shared by all tasks: use "
                            f"model.sharing=hard or cross_stitch (got sharing={model_config.sharing})")
        names = ["loss"] + [f"{task}_loss" for task in self.tasks] + [f"{task}_weight" for task in self.tasks]
        names += list(self.weighting.extra_logs())
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True  # every variable exists already (net is built, weighting made its own)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    def fit(self, *args, callbacks=None, **kwargs):
        """keras.Model.fit, plus the epoch hook the weighting needs (DWA) unless already given.

        The hook goes first, so checkpoints written at the same epoch end (BackupAndRestore,
        ModelCheckpoint) already hold the rolled-over DWA state and a resumed run continues exactly.
        """
        callbacks = list(callbacks or [])
        if not any(isinstance(callback, WeightingCallback) for callback in callbacks):
            callbacks.insert(0, WeightingCallback())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def compute_losses(self, y, outputs):
        """-> (total, {task: loss}, {task: 1.0 if the batch had the label else 0.0}).

        Each task loss is the mean over the examples that have the label; total is what the
        optimiser minimises (weighting + soft-sharing penalty).
        """
        losses, present = {}, {}
        for task in self.tasks:
            per_example = self.losses_by_task[task](y, outputs[task])
            losses[task], present[task] = masked_task_loss(per_example, y[f"has_{task}"])
        total = self.weighting.combine(losses, present)
        if self.soft_beta:
            total += soft_sharing_penalty(task_encoders(self.net, self.tasks), self.soft_beta)
        return total, losses, present

    def _update_logs(self, total, losses, present):
        self.trackers["loss"].update_state(total)
        weights = self.weighting.effective_weights()
        for task in self.tasks:
            # sample_weight=present: a batch without the label does not dilute the epoch average.
            self.trackers[f"{task}_loss"].update_state(losses[task], sample_weight=present[task])
            self.trackers[f"{task}_weight"].update_state(weights[task])
        for name, value in self.weighting.extra_logs().items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        x, y = data[0], data[1]
        # Keras' optimizer sums gradients over replicas, so each replica's loss is divided here.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape(persistent=self.weighting.needs_persistent_tape) as tape:
            outputs = self.net(x, training=True)
            total, losses, present = self.compute_losses(y, outputs)
            # Mixed precision: a LossScaleOptimizer scales here and unscales in apply().
            scaled = self.optimizer.scale_loss(total / replicas)
        net_variables = self.net.trainable_variables
        weight_variables = self.weighting.trainable_variables
        grads = tape.gradient(scaled, net_variables + weight_variables)
        self.weighting.observe(losses, present)
        grad_scale = self.optimizer.scale_loss(tf.constant(1.0)) / replicas
        extra = self.weighting.extra_gradients(tape, losses, present, shared_kernel(self.net), grad_scale)
        del tape
        own = {id(variable): grad for grad, variable in extra}
        self.optimizer.apply(grads[:len(net_variables)], net_variables)
        if weight_variables:
            # The network's optimizer unscales its own gradients (mixed precision); these are
            # unscaled here. Replica division stays: the optimizer sums replicas into the mean.
            loss_scale = self.optimizer.scale_loss(tf.constant(1.0))
            weight_grads = [own.get(id(variable), grad) / loss_scale
                            for grad, variable in zip(grads[len(net_variables):], weight_variables)]
            self.task_weight_optimizer.apply(weight_grads, weight_variables)
        self.weighting.after_apply()
        return self._update_logs(total, losses, present)

    def test_step(self, data):
        x, y = data[0], data[1]
        outputs = self.net(x, training=False)
        total, losses, present = self.compute_losses(y, outputs)
        return self._update_logs(total, losses, present)
