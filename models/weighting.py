"""How per-task losses combine into one training loss: fixed, uncertainty, DWA, GradNorm, FAMO, PCGrad.

One interface (TaskWeighting), chosen by config.train.weighting through `make_weighting`. The
trainer calls, per training step:
    total = combine(losses, present)          # differentiable; `present` = task has labels in batch
    observe(losses, present)                  # bookkeeping (DWA epoch sums, GradNorm's L(0))
    extra_gradients(tape, losses, present, shared_kernel, grad_scale)  # GradNorm's own gradients
    after_apply()                             # GradNorm renormalises its weights
and `on_epoch_end()` once per epoch (WeightingCallback; MultiTaskTrainer.fit adds it).
A weighting with `needs_per_task_gradients` (PCGrad) changes how the network's gradient is formed:
the trainer takes each task's gradient of its (present-masked) loss and calls
    project_gradients(per_task_grads, variables)  # -> one gradient per network variable
instead of differentiating `combine`'s total; the other weightings never pay for it.
The trainable weighting variables (s, w) are stepped by the trainer's task-weight optimizer
(models/optimizer.py: constant rate, lazy per task), not by the network's schedule.
`losses` and `present` are dicts of float32 scalars keyed by task. A task with no labelled example
in the batch (present = 0) contributes exactly nothing, including to its own weighting variables.
The weighting objects are Keras layers so their variables are tracked by the trainer, saved by
`save_weights` and restored by BackupAndRestore.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from data.vocabulary import WEIGHTINGS

REGRESSION_TASKS = ("depth",)  # Gaussian likelihood: 1/(2 sigma^2); the others are softmax/logistic


class TaskWeighting(keras.layers.Layer):
    """Base class: the no-op hooks. Subclasses set how `combine` weights the losses."""

    needs_persistent_tape = False
    needs_per_task_gradients = False

    def __init__(self, tasks, **kwargs):
        super().__init__(**kwargs)
        tasks = tuple(tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"task weighting needs distinct task names; Received: tasks={list(tasks)}")
        self.tasks = tasks
        self.built = True  # variables are created in __init__; the layer is never called

    def _stack(self, values):
        return tf.stack([tf.cast(values[task], tf.float32) for task in self.tasks])

    def effective_weights(self):
        """{task: scalar} the factor each task's loss is multiplied by now (for logging)."""
        raise NotImplementedError

    def combine(self, losses, present):
        weights = tf.stop_gradient(self._stack(self.effective_weights()))
        return tf.reduce_sum(weights * self._stack(losses) * self._stack(present))

    def extra_logs(self):
        return {}

    def observe(self, losses, present):
        pass

    def extra_gradients(self, tape, losses, present, shared_kernel, grad_scale):
        return []

    def after_apply(self):
        pass

    def project_gradients(self, per_task_grads, variables):
        raise NotImplementedError(f"{type(self).__name__} does not combine per-task gradients")

    def on_epoch_end(self):
        pass

    def get_config(self):
        return {**super().get_config(), "tasks": list(self.tasks)}


@keras.saving.register_keras_serializable(package="dashcam")
class FixedWeighting(TaskWeighting):
    """Constant weights from config.train.fixed_weights."""

    def __init__(self, tasks, weights=None, **kwargs):
        super().__init__(tasks, **kwargs)
        weights = dict(weights or {})
        missing = [task for task in self.tasks if task not in weights]
        if missing or any(float(weights[task]) < 0 for task in self.tasks):
            raise ValueError(f"fixed weighting needs a weight >= 0 for every task {list(self.tasks)}; "
                             f"Received: weights={weights}")
        self.weights_by_task = {task: float(weights[task]) for task in self.tasks}

    def effective_weights(self):
        return {task: tf.constant(w) for task, w in self.weights_by_task.items()}

    def get_config(self):
        return {**super().get_config(), "weights": self.weights_by_task}


@keras.saving.register_keras_serializable(package="dashcam")
class UncertaintyWeighting(TaskWeighting):
    """Kendall, Gal & Cipolla 2018: learn s_t = log sigma_t^2 per task.

    regression (depth):       0.5 * exp(-s) * L + 0.5 * s   (minimum at s = log L)
    classification (others):        exp(-s) * L + 0.5 * s   (minimum at s = log 2L)
    s is named "log_var" so make_optimizer keeps AdamW's weight decay off it (decay would pull
    every sigma to 1 regardless of the data).

    `priorities` {task: k} (train.uncertainty_priority; 1 for a task it does not name) multiply a
    task's whole term: its optimum s stays where it was, and the network sees k times the gradient
    the weighting would give it. At the optimum every task's gradient is (1/2) grad log L: each
    loss's relative change counts the same, so the task whose loss is smallest in relative terms
    gets the largest share; a priority says which task matters more to the user.
    """

    def __init__(self, tasks, priorities=None, **kwargs):
        super().__init__(tasks, **kwargs)
        priorities = {task: float(k) for task, k in dict(priorities or {}).items()}
        if any(not k > 0 for k in priorities.values()):
            raise ValueError(f"uncertainty priorities must be > 0; Received: priorities={priorities}")
        self.priorities = {task: priorities.get(task, 1.0) for task in self.tasks}
        self.log_var = self.add_weight(shape=(len(self.tasks),), initializer="zeros", name="log_var")
        self.factors = tf.constant([0.5 if t in REGRESSION_TASKS else 1.0 for t in self.tasks])
        self.scales = tf.constant([self.priorities[t] for t in self.tasks])

    def effective_weights(self):
        weights = self.scales * self.factors * tf.exp(-tf.convert_to_tensor(self.log_var))
        return {task: weights[i] for i, task in enumerate(self.tasks)}

    def combine(self, losses, present):
        log_var = tf.convert_to_tensor(self.log_var)
        terms = self.factors * tf.exp(-log_var) * self._stack(losses) + 0.5 * log_var
        return tf.reduce_sum(self.scales * terms * self._stack(present))

    def extra_logs(self):
        return {f"{task}_log_var": self.log_var[i] for i, task in enumerate(self.tasks)}

    def get_config(self):
        return {**super().get_config(), "priorities": self.priorities}


@keras.saving.register_keras_serializable(package="dashcam")
class DWAWeighting(TaskWeighting):
    """Liu, Johns & Davison 2019 (MTAN): Dynamic Weight Average.

    w_t = T * softmax_t(r_t / temperature), r_t = L_t(epoch-1) / L_t(epoch-2); w = 1 for the first
    two epochs. Epoch averages are kept in non-trainable variables (saved with the weights, so a
    resumed run keeps its history); `on_epoch_end` rolls them.
    """

    def __init__(self, tasks, temperature=2.0, **kwargs):
        super().__init__(tasks, **kwargs)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be > 0; Received: temperature={temperature}")
        self.temperature = float(temperature)
        count = len(self.tasks)

        def state(name, value=0.0, shape=(count,)):
            # "mean": per-replica updates under tf.distribute average into one value.
            return self.add_weight(shape=shape, initializer=keras.initializers.Constant(value),
                                   trainable=False, name=name, aggregation="mean")

        self.weights_now = state("dwa_weight", 1.0)
        self.epoch_sum = state("dwa_epoch_sum")
        self.epoch_count = state("dwa_epoch_count")
        self.previous = state("dwa_previous")  # L(epoch - 1)
        self.before_previous = state("dwa_before_previous")  # L(epoch - 2)
        self.epochs_seen = state("dwa_epochs_seen", shape=())

    def effective_weights(self):
        return {task: self.weights_now[i] for i, task in enumerate(self.tasks)}

    def observe(self, losses, present):
        present = self._stack(present)
        self.epoch_sum.assign_add(self._stack(losses) * present)
        self.epoch_count.assign_add(present)

    def on_epoch_end(self):
        count = tf.convert_to_tensor(self.epoch_count)
        # A task without labels this epoch keeps its last average (ratio 1 next time).
        average = tf.where(count > 0, self.epoch_sum / tf.maximum(count, 1.0), self.previous)
        self.before_previous.assign(self.previous)
        self.previous.assign(average)
        self.epochs_seen.assign_add(1.0)
        ratio = tf.where(self.before_previous > 0, self.previous / tf.maximum(self.before_previous, 1e-12), 1.0)
        weights = len(self.tasks) * tf.nn.softmax(ratio / self.temperature)
        self.weights_now.assign(tf.where(self.epochs_seen >= 2.0, weights, tf.ones_like(weights)))
        self.epoch_sum.assign(tf.zeros_like(self.epoch_sum))
        self.epoch_count.assign(tf.zeros_like(self.epoch_count))

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="dashcam")
class GradNormWeighting(TaskWeighting):
    """Chen et al. 2018: learn w_t so each task's gradient norm at the last shared layer W tracks
    its relative training rate.

    G_t = ||grad_W (w_t L_t)|| = w_t ||grad_W L_t||; r_t = (L_t / L_t(0)) / mean_j(L_j / L_j(0));
    L_grad = sum_t |G_t - stop_gradient(mean(G) * r_t^alpha)|. The network gets the gradient of
    sum w_t L_t (w held constant); w gets the gradient of L_grad through the same optimizer (as in
    the paper: the trainer's task-weight optimizer), then is renormalised to sum to T. w is named
    "task_weight" (no weight decay).
    """

    needs_persistent_tape = True

    def __init__(self, tasks, alpha=1.5, **kwargs):
        super().__init__(tasks, **kwargs)
        if alpha < 0:
            raise ValueError(f"GradNorm alpha must be >= 0; Received: alpha={alpha}")
        self.alpha = float(alpha)
        count = len(self.tasks)
        self.task_weight = self.add_weight(shape=(count,), initializer="ones", name="task_weight",
                                           aggregation="mean")
        self.initial_loss = self.add_weight(shape=(count,), initializer="zeros", trainable=False,
                                            name="gradnorm_initial_loss", aggregation="mean")

    def effective_weights(self):
        return {task: self.task_weight[i] for i, task in enumerate(self.tasks)}

    def observe(self, losses, present):
        # L(0) is each task's loss the first time it has labels (partial labels may delay it).
        losses, present = self._stack(losses), self._stack(present)
        first = (self.initial_loss <= 0.0) & (present > 0.0)
        self.initial_loss.assign(tf.where(first, losses, self.initial_loss))

    def extra_gradients(self, tape, losses, present, shared_kernel, grad_scale):
        """[(grad, task_weight)]. shared_kernel: the list of weights every task reaches (GradNorm's
        W; their global norm is G_t). grad_scale: the factor the main loss was scaled by (loss
        scale / replicas), applied here too so both gradients are unscaled alike."""
        if not shared_kernel:
            raise ValueError("GradNorm needs a layer shared by all tasks (sharing=hard or cross_stitch)")
        kernels = list(shared_kernel)
        norms = []
        for task in self.tasks:
            # output_gradients=scale: scaled backprop (mixed precision) without re-recording the loss.
            grads = tape.gradient(losses[task], kernels, output_gradients=tf.cast(grad_scale, tf.float32))
            grads = [tf.cast(tf.zeros_like(k) if g is None else g, tf.float32) for g, k in zip(grads, kernels)]
            norms.append(tf.linalg.global_norm(grads) / tf.cast(grad_scale, tf.float32))
        norms = tf.stop_gradient(tf.stack(norms))
        losses, present = self._stack(losses), self._stack(present)
        count = tf.maximum(tf.reduce_sum(present), 1.0)
        ratio = tf.where(self.initial_loss > 0, losses / tf.maximum(self.initial_loss, 1e-12), 1.0)
        relative = ratio / tf.maximum(tf.reduce_sum(ratio * present) / count, 1e-12)
        with tf.GradientTape() as weight_tape:
            norm_weighted = tf.convert_to_tensor(self.task_weight) * norms
            mean_norm = tf.reduce_sum(norm_weighted * present) / count
            target = tf.stop_gradient(mean_norm * tf.pow(relative, self.alpha))
            grad_loss = tf.reduce_sum(tf.abs(norm_weighted - target) * present)
        grad = weight_tape.gradient(grad_loss, self.task_weight)
        return [(grad * tf.cast(grad_scale, tf.float32), self.task_weight)]

    def after_apply(self):
        # Keep weights positive and summing to T so the overall learning rate is unchanged.
        weights = tf.maximum(tf.convert_to_tensor(self.task_weight), 1e-3)
        self.task_weight.assign(len(self.tasks) * weights / tf.reduce_sum(weights))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="dashcam")
class FAMOWeighting(TaskWeighting):
    """Liu et al. 2023 (NeurIPS), FAMO: Fast Adaptive Multitask Optimization.

    Task logits w, z = softmax(w). The network minimises sum_t z_t log L_t / c with
    c = sum_t z_t / L_t held constant, i.e. task t's loss gets the effective weight z_t / (c L_t)
    (the weights sum to 1; all tasks' log losses fall at the same rate to first order).
    After a step, w learns from how the log losses changed: delta_t = log L_t(before) - log L_t(after)
    and the gradient of w is the softmax Jacobian applied to delta, d = J_z(w)^T delta
    (d_i = z_i (delta_i - sum_j z_j delta_j)). As in the authors' code (Cranial-XIX/FAMO), w is
    stepped by Adam at its own rate beta (`train.famo_beta`) with L2 decay gamma added to the
    gradient (`train.famo_gamma`), and "after" is measured on the next step's losses (no extra
    forward pass: O(T) extra per step). The step happens in `observe`, inside this layer, not by the
    trainer's task-weight optimizer: that one follows the training loss' gradient at
    train.task_weight_learning_rate without decay, while FAMO's w is not trained through the loss.
    Partial labels: delta_t = 0 unless task t had labels in both steps, and c sums the present tasks.
    """

    def __init__(self, tasks, beta=0.025, gamma=0.01, epsilon=1e-8, **kwargs):
        super().__init__(tasks, **kwargs)
        if beta <= 0 or gamma < 0:
            raise ValueError(f"FAMO needs beta > 0 and gamma >= 0; Received: beta={beta}, gamma={gamma}")
        self.beta, self.gamma, self.epsilon = float(beta), float(gamma), float(epsilon)
        count = len(self.tasks)

        def state(name, shape=(count,)):
            return self.add_weight(shape=shape, initializer="zeros", trainable=False, name=name,
                                   aggregation="mean")

        self.logits = state("famo_logits")  # w
        self.previous_loss = state("famo_previous_loss")
        self.previous_present = state("famo_previous_present")
        self.moment = state("famo_adam_m")
        self.velocity = state("famo_adam_v")
        self.step = state("famo_adam_step", shape=())
        self.weights_now = self.add_weight(shape=(count,), initializer=keras.initializers.Constant(1.0 / count),
                                           trainable=False, name="famo_weight", aggregation="mean")

    def _log_loss(self, losses):
        return tf.math.log(tf.maximum(losses, 0.0) + self.epsilon)

    def effective_weights(self):
        return {task: self.weights_now[i] for i, task in enumerate(self.tasks)}

    def combine(self, losses, present):
        losses, present = self._stack(losses), self._stack(present)
        z = tf.nn.softmax(tf.convert_to_tensor(self.logits))
        floored = tf.maximum(losses, 0.0) + self.epsilon
        c = tf.stop_gradient(tf.maximum(tf.reduce_sum(present * z / floored), 1e-12))
        self.weights_now.assign(tf.stop_gradient(present * z / (c * floored)))
        return tf.reduce_sum(present * z * self._log_loss(losses)) / c

    def observe(self, losses, present):
        losses, present = self._stack(losses), self._stack(present)
        both = present * self.previous_present
        delta = both * (self._log_loss(self.previous_loss) - self._log_loss(losses))
        z = tf.nn.softmax(tf.convert_to_tensor(self.logits))
        grad = z * (delta - tf.reduce_sum(z * delta)) + self.gamma * self.logits
        any_change = tf.reduce_any(both > 0)
        # Adam (torch's defaults: 0.9, 0.999, 1e-8), only when some task has a before and an after.
        beta_1, beta_2, eps = 0.9, 0.999, 1e-8
        step = self.step + 1.0
        moment = beta_1 * self.moment + (1 - beta_1) * grad
        velocity = beta_2 * self.velocity + (1 - beta_2) * tf.square(grad)
        update = self.beta * (moment / (1 - beta_1 ** step)) / (tf.sqrt(velocity / (1 - beta_2 ** step)) + eps)
        self.logits.assign(tf.where(any_change, self.logits - update, self.logits))
        self.moment.assign(tf.where(any_change, moment, self.moment))
        self.velocity.assign(tf.where(any_change, velocity, self.velocity))
        self.step.assign(tf.where(any_change, step, self.step))
        # A task without labels now keeps its last loss as "before" for its next labelled step.
        self.previous_loss.assign(tf.where(present > 0, losses, self.previous_loss))
        self.previous_present.assign(tf.maximum(self.previous_present, present))

    def extra_logs(self):
        z = tf.nn.softmax(tf.convert_to_tensor(self.logits))
        return {f"{task}_famo_z": z[i] for i, task in enumerate(self.tasks)}

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "gamma": self.gamma, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="dashcam")
class PCGradWeighting(TaskWeighting):
    """Yu et al. 2020, Gradient Surgery for Multi-Task Learning (PCGrad).

    Every task's loss has weight 1. On the shared parameters (those more than one task's gradient
    reaches) each task gradient g_i is projected, in a random task order drawn each step, off every
    other task's gradient g_j it conflicts with (g_i . g_j < 0): g_i -= (g_i . g_j) / |g_j|^2 g_j,
    using the partly projected g_i as in the paper; the projected gradients are summed. Parameters
    only one task reaches get that task's plain gradient. A task without labels in the batch has an
    exactly zero gradient and so neither projects nor is projected on.
    """

    needs_per_task_gradients = True

    def effective_weights(self):
        return {task: tf.constant(1.0) for task in self.tasks}

    def project_gradients(self, per_task_grads, variables):
        """per_task_grads: {task: [grad or None per variable]} -> [grad per variable]."""
        count = len(self.tasks)
        grads = [[per_task_grads[task][k] for task in self.tasks] for k in range(len(variables))]
        shared = [k for k, by_task in enumerate(grads) if sum(g is not None for g in by_task) > 1]
        out = []
        for k, variable in enumerate(variables):
            found = [tf.cast(g, tf.float32) for g in grads[k] if g is not None]
            out.append(None if not found else tf.cast(tf.add_n(found), variable.dtype))
        if not shared or count < 2:
            return out
        flat = tf.stack([tf.concat([tf.reshape(tf.cast(tf.zeros_like(variables[k]) if grads[k][t] is None
                                                                 else grads[k][t], tf.float32), [-1])
                                    for k in shared], 0) for t in range(count)])  # [T, D]
        projected = project_conflicting(flat, tf.random.shuffle(tf.range(count)))
        total = tf.reduce_sum(projected, 0)
        offset = 0
        for k in shared:
            size = int(variables[k].shape.num_elements())
            out[k] = tf.cast(tf.reshape(total[offset:offset + size], variables[k].shape), variables[k].dtype)
            offset += size
        return out


def project_conflicting(flat, order):
    """PCGrad's surgery: flat [T, D] task gradients, order [T] the task order -> projected [T, D]."""
    count = flat.shape[0]
    squared = tf.reduce_sum(tf.square(flat), 1)
    rows = []
    for i in range(count):
        g = flat[i]
        for k in range(count):
            j = order[k]
            other = tf.gather(flat, j)
            dot = tf.reduce_sum(g * other)
            conflict = tf.logical_and(tf.not_equal(j, i), dot < 0.0)
            g = tf.where(conflict, g - dot / tf.maximum(tf.gather(squared, j), 1e-20) * other, g)
        rows.append(g)
    return tf.stack(rows)


def gradient_cosines(per_task_grads, tasks):
    """{(a, b): cosine between task a's and task b's gradients} for every task pair; each value in
    per_task_grads is a list of gradients (None = not reached, counted as zero)."""
    flat = {}
    for task in tasks:
        parts = [tf.reshape(tf.cast(g, tf.float32), [-1]) for g in per_task_grads[task] if g is not None]
        flat[task] = tf.concat(parts, 0) if parts else tf.zeros([1])
    out = {}
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            norm = tf.norm(flat[a]) * tf.norm(flat[b])
            out[(a, b)] = tf.reduce_sum(flat[a] * flat[b]) / tf.maximum(norm, 1e-30)
    return out


def make_weighting(train_config, tasks):
    """The TaskWeighting named by train_config.weighting for `tasks`."""
    name = train_config.weighting
    if name == "fixed":
        return FixedWeighting(tasks, weights=train_config.fixed_weights, name="weighting")
    if name == "uncertainty":
        return UncertaintyWeighting(tasks, priorities=train_config.uncertainty_priority, name="weighting")
    if name == "dwa":
        return DWAWeighting(tasks, temperature=train_config.dwa_temperature, name="weighting")
    if name == "gradnorm":
        return GradNormWeighting(tasks, alpha=train_config.gradnorm_alpha, name="weighting")
    if name == "famo":
        return FAMOWeighting(tasks, beta=train_config.famo_beta, gamma=train_config.famo_gamma, name="weighting")
    if name == "pcgrad":
        return PCGradWeighting(tasks, name="weighting")
    raise ValueError(f"unknown weighting '{name}'; valid: {', '.join(WEIGHTINGS)}. Received: weighting={name!r}")


class WeightingCallback(keras.callbacks.Callback):
    """Calls model.weighting.on_epoch_end() after every training epoch (DWA needs it)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.weighting.on_epoch_end()
