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

from models.detection import with_size_bins
from models.encoder import thawing_layers
from models.losses import masked_task_loss, per_example_losses
from models.optimizer import make_task_weight_optimizer
from models.sharing import shared_kernel, soft_sharing_penalty, task_encoders
from models.weighting import WeightingCallback, gradient_cosines, make_weighting
from data.errors import UserError

TASK_ORDER = ("detection", "segmentation", "depth")


class MultiTaskTrainer(keras.Model):
    """MultiTaskTrainer(net, model_config, train_config); compile(optimizer=...) then fit(dataset).

    Under tf.distribute, build the net and the trainer (and the optimizer) inside strategy.scope().
    On CPU prefer jit_compile=False: XLA's CPU depthwise convolution is several times slower than
    TensorFlow's kernel (measured ~6x), so the XLA step is slower, not faster; on GPU use True.

    Logs: loss (the weighted total), <task>_loss (unweighted, averaged over batches that had the
    label), <task>_weight (effective weight), <task>_log_var (uncertainty weighting only),
    cos_<a>_<b> (training only: gradient conflict, the cosine between tasks a's and b's loss gradients
    on the shared kernel, models.sharing.shared_kernel; epoch mean over the steps it was measured on,
    every train.conflict_every-th step, where both tasks had labels; not logged without a shared
    layer (soft sharing), with one task, or with conflict_every = 0).
    """

    def __init__(self, net, model_config, train_config, **kwargs):
        super().__init__(**kwargs)
        built = set(net.output.keys()) if isinstance(net.output, dict) else set()
        self.tasks = tuple(task for task in TASK_ORDER if task in model_config.tasks)
        if not self.tasks or not set(self.tasks) <= built:
            raise ValueError(f"net outputs {sorted(built)} do not cover the configured tasks; "
                             f"Received: tasks={list(model_config.tasks)}")
        self.net = net
        # Training reads the detection head's size-bin logits too (model.detection_size_bins), which
        # the saved net does not output. Held in a closure: as an attribute, Keras would track the
        # second model and save every shared weight twice in the checkpoints.
        training_net = with_size_bins(net)
        self.training_forward = lambda x: training_net(x, training=True)
        # The training objective, and the plain losses test_step reports (see per_example_losses).
        self.losses_by_task = per_example_losses(model_config, train_config)
        self.evaluation_losses = per_example_losses(model_config)
        self.weighting = make_weighting(train_config, self.tasks)
        # train.thaw_through: the frozen encoder blocks that train late in training (thaw()). A
        # closure, not an attribute: Keras would track the layers twice in the checkpoints.
        thawing = thawing_layers(net, model_config, train_config.thaw_through)
        self.thawing_layers = lambda: thawing
        self.thawed = False
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
        self.conflict_every = int(train_config.conflict_every or 0)
        has_shared = shared_kernel(net) is not None
        self.conflict_pairs = [(a, b) for i, a in enumerate(self.tasks) for b in self.tasks[i + 1:]
                               if self.conflict_every > 0 and has_shared]
        self.conflict_names = [f"cos_{a}_{b}" for a, b in self.conflict_pairs]
        names += self.conflict_names
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

    def compile(self, optimizer="rmsprop", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        # The network's optimizer steps the net's variables only (the task weights have their own).
        # Built here on exactly those: Keras would build it on every trainable variable (fit's
        # symbolic build, BackupAndRestore), and a restored backup's optimizer state (step count,
        # moments) would then not match the saved one and be skipped, restarting the schedule.
        if self.optimizer is not None and not self.optimizer.built:
            # The blocks that thaw later get their Adam slots now, so that a checkpoint's optimizer
            # state has one layout before and after the thaw.
            for layer in self.thawing_layers():
                layer.trainable = True
            self.optimizer.build(self.net.trainable_variables)
            for layer in self.thawing_layers():
                layer.trainable = self.thawed

    def thaw(self):
        """train.thaw_through: the frozen blocks between it and model.freeze_through train from the next
        step on, their BatchNorms on the batch's statistics; the train step is traced again (a frozen
        block's backward pass is not in the traced graph). -> how many layers thawed."""
        for layer in self.thawing_layers():
            layer.trainable = True
        self.thawed = True
        self.make_train_function(force=True)
        return len(self.thawing_layers())

    def compute_losses(self, y, outputs, training=False):
        """-> (total, {task: loss}, {task: 1.0 if the batch had the label else 0.0}).

        Each task loss is the mean over the examples that have the label; total is what the
        optimiser minimises (weighting + soft-sharing penalty). training: the training objective's
        task losses (train.segmentation_ohem, train.detection_quality), else the plain ones
        validation reports.
        """
        losses, present, penalty = self.compute_task_losses(y, outputs, training)
        total = self.weighting.combine(losses, present)
        if penalty is not None:
            total += penalty
        return total, losses, present

    def compute_task_losses(self, y, outputs, training=False):
        """-> ({task: loss}, {task: present}, soft-sharing penalty or None); training as compute_losses."""
        losses, present = {}, {}
        by_task = self.losses_by_task if training else self.evaluation_losses
        for task in self.tasks:
            per_example = by_task[task](y, outputs)
            losses[task], present[task] = masked_task_loss(per_example, y[f"has_{task}"])
        penalty = None
        if self.soft_beta:
            penalty = soft_sharing_penalty(task_encoders(self.net, self.tasks), self.soft_beta)
        return losses, present, penalty

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

    def _evaluation_logs(self, logs):
        # The conflict cosines are measured on training steps only.
        return {name: value for name, value in logs.items() if name not in self.conflict_names}

    def train_step(self, data):
        x, y = data[0], data[1]
        # Keras' optimizer sums gradients over replicas, so each replica's loss is divided here.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        per_task = self.weighting.needs_per_task_gradients
        persistent = self.weighting.needs_persistent_tape or per_task or bool(self.conflict_pairs)
        with tf.GradientTape(persistent=persistent) as tape:
            outputs = self.training_forward(x)
            losses, present, penalty = self.compute_task_losses(y, outputs, training=True)
            total = self.weighting.combine(losses, present)
            if penalty is not None:
                total += penalty
            # Mixed precision: a LossScaleOptimizer scales here and unscales in apply().
            scaled = self.optimizer.scale_loss(total / replicas)
            if per_task:
                scaled_tasks = {task: self.optimizer.scale_loss(losses[task] * present[task] / replicas)
                                for task in self.tasks}
                scaled_penalty = None if penalty is None else self.optimizer.scale_loss(penalty / replicas)
        net_variables = self.net.trainable_variables
        weight_variables = self.weighting.trainable_variables
        task_grads = None
        if per_task:
            # PCGrad: one backward pass per task; the weighting combines them (no weight variables).
            task_grads = {task: tape.gradient(scaled_tasks[task], net_variables) for task in self.tasks}
            net_grads = self.weighting.project_gradients(task_grads, net_variables)
            if scaled_penalty is not None:
                net_grads = [a if b is None else (b if a is None else a + b) for a, b in
                             zip(net_grads, tape.gradient(scaled_penalty, net_variables))]
            net_grads = [tf.zeros_like(v) if g is None else g for g, v in zip(net_grads, net_variables)]
            grads = net_grads + [tf.zeros_like(v) for v in weight_variables]
        else:
            grads = tape.gradient(scaled, net_variables + weight_variables)
        self.weighting.observe(losses, present)
        grad_scale = self.optimizer.scale_loss(tf.constant(1.0)) / replicas
        extra = self.weighting.extra_gradients(tape, losses, present, shared_kernel(self.net), grad_scale)
        if self.conflict_pairs:
            self._log_conflicts(tape, losses, present, task_grads, grad_scale)
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

    def _log_conflicts(self, tape, losses, present, task_grads, grad_scale):
        """Updates the cos_<a>_<b> trackers on every conflict_every-th step: the cosine of the task
        gradients on the shared kernel.

        A measured step costs one backward pass per task from its loss to the shared kernel (heads and
        the last shared layer for hard sharing), about 10 % of a default step; the other steps skip it
        (tf.cond), and PCGrad, whose per-task gradients exist anyway, measures for free."""
        measured = tf.equal(self.optimizer.iterations % self.conflict_every, 0)
        if task_grads is not None:
            cosines = self._conflict_cosines(tape, losses, task_grads, grad_scale)
        else:
            cosines = tf.cond(measured, lambda: self._conflict_cosines(tape, losses, None, grad_scale),
                              lambda: tf.zeros([len(self.conflict_pairs)]))
        measured = tf.cast(measured, tf.float32)
        for index, ((a, b), name) in enumerate(zip(self.conflict_pairs, self.conflict_names)):
            self.trackers[name].update_state(cosines[index], sample_weight=measured * present[a] * present[b])

    def _conflict_cosines(self, tape, losses, task_grads, grad_scale):
        """[cosine of each conflict pair] on the shared kernel, from per-task gradients when given."""
        kernels = list(shared_kernel(self.net))
        if task_grads is not None:
            index = {id(v): k for k, v in enumerate(self.net.trainable_variables)}
            kernel_grads = {task: [task_grads[task][index[id(k)]] for k in kernels] for task in self.tasks}
        else:
            scale = tf.cast(grad_scale, tf.float32)  # cosines ignore the scale; it avoids fp16 underflow
            kernel_grads = {task: tape.gradient(losses[task], kernels, output_gradients=scale)
                            for task in self.tasks}
        cosines = gradient_cosines(kernel_grads, self.tasks)
        return tf.stack([tf.cast(cosines[pair], tf.float32) for pair in self.conflict_pairs])

    def test_step(self, data):
        x, y = data[0], data[1]
        outputs = self.net(x, training=False)
        total, losses, present = self.compute_losses(y, outputs)
        return self._evaluation_logs(self._update_logs(total, losses, present))
