"""The optimizers: AdamW for the network (warm-up + cosine), Adam at a constant rate for task weights.

Two rules make partial labels and learned task weights work:
- A variable whose gradient is exactly zero this step is left untouched: no momentum step, no
  weight decay, no moment decay. A batch without a task's labels gives that task's head an exact
  zero gradient (its loss is multiplied by has_<task> = 0), but plain Adam would still move the
  head by its momentum and AdamW would decay it: with `data.schedule: alternating` two thirds of
  each head's updates were momentum alone. This is lazy Adam (as for sparse embeddings), decided
  per variable for the network (a whole kernel at exactly zero means "no label reached it") and
  per element for the task weights (one element per task).
- The task weights (uncertainty s = log sigma^2, GradNorm's w) have their own Adam at a constant
  learning rate. On the network's warm-up + cosine schedule Adam moves a variable about one
  learning-rate step per update, so s could travel at most the schedule's sum (2.25 over 1,500
  steps at 3e-3) and never reached its optimum log(2L) or log(L).
"""
from __future__ import annotations

import keras
import tensorflow as tf

# Substrings of variable names kept out of AdamW's decoupled weight decay: biases and BatchNorm
# scale/shift (decay only fights the normalisation), the uncertainty log-variances and GradNorm
# task weights (decay would bias the weighting, not regularise the net), cross-stitch matrices
# (decay would pull them away from the identity towards 0).
NO_DECAY = ("bias", "gamma", "beta", "log_var", "task_weight", "stitch")
SKIP_GRANULARITIES = ("variable", "element")


@keras.saving.register_keras_serializable(package="dashcam")
class LazyAdamW(keras.optimizers.Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019) that leaves a variable (or an
    element, `skip="element"`) with an exactly-zero gradient untouched, slots included.

    The decay is applied inside `update_step` (not by Keras' `_apply_weight_decay`, which runs
    before and regardless of the gradient) so the skip covers it; otherwise it is AdamW's:
    w -= lr * weight_decay * w. Works per replica component under tf.distribute, because the
    gradient it tests is the all-reduced one, identical on every replica.
    """

    def __init__(self, weight_decay=0.0, skip="variable", **kwargs):
        kwargs.pop("name", None)
        super().__init__(name="lazy_adamw", **kwargs)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; Received: weight_decay={weight_decay}")
        if skip not in SKIP_GRANULARITIES:
            raise ValueError(f"skip must be one of {SKIP_GRANULARITIES}; Received: skip={skip!r}")
        if self.amsgrad:  # update_step writes out plain Adam
            raise ValueError("LazyAdamW has no amsgrad; Received: amsgrad=True")
        self.decoupled_weight_decay = float(weight_decay)
        self.skip = skip
        self._step_scalars = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # The step's scalars (learning rate, Adam's bias correction) once per step, not once per variable.
        # With them, and three variable reads per update instead of nine, the tiny net's update (109
        # variables) has 3,813 graph ops instead of 6,086: every training traces that much less.
        # update_step computes them itself when this hook is not called (another Keras version).
        self._step_scalars = self._scalars(learning_rate)
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_scalars = None

    def _scalars(self, learning_rate):
        """(learning rate, alpha = lr sqrt(1 - b2^t) / (1 - b1^t)) as float32 tensors for step t."""
        rate = tf.cast(learning_rate, tf.float32)
        step = tf.cast(self.iterations + 1, tf.float32)
        alpha = rate * tf.sqrt(1.0 - tf.pow(float(self.beta_2), step)) / (1.0 - tf.pow(float(self.beta_1), step))
        return rate, alpha

    def update_step(self, gradient, variable, learning_rate):
        # Keras Adam's arithmetic (m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2), w -= alpha m / (sqrt v + eps)),
        # written out so that the skip is one select per state (not a copy and restore of each).
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        rate, alpha = self._step_scalars or self._scalars(learning_rate)
        rate, alpha = tf.cast(rate, dtype), tf.cast(alpha, dtype)
        gradient = tf.cast(gradient, dtype)
        moved = tf.not_equal(gradient, 0)
        if self.skip == "variable":
            moved = tf.reduce_any(moved)
        m_old, v_old, w_old = (tf.convert_to_tensor(state) for state in (momentum, velocity, variable))
        m = m_old + (gradient - m_old) * (1 - self.beta_1)
        v = v_old + (tf.square(gradient) - v_old) * (1 - self.beta_2)
        w = w_old
        if self.decoupled_weight_decay and self._use_weight_decay(variable):
            w = w - w * (rate * self.decoupled_weight_decay)  # AdamW: decay, then the Adam step
        w = w - m * alpha / (tf.sqrt(v) + self.epsilon)
        self.assign(momentum, tf.where(moved, m, m_old))
        self.assign(velocity, tf.where(moved, v, v_old))
        self.assign(variable, tf.where(moved, w, w_old))

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.decoupled_weight_decay, "skip": self.skip}


def make_optimizer(train_config, total_steps):
    """The network's LazyAdamW (lr: 0 -> learning_rate over warmup_steps, then cosine -> 0 at
    total_steps). train.ema > 0 keeps an exponential moving average of the weights (Keras'
    use_ema) that validation, the best checkpoint and the saved model see
    (pipeline/training/callbacks.AveragedWeightsForValidation); training goes on from the raw weights."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; Received: total_steps={total_steps}")
    if train_config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0; Received: learning_rate={train_config.learning_rate}")
    warmup = max(0, min(int(train_config.warmup_steps), total_steps - 1))
    # A variable, so that a time budget (pipeline/training/budget.py) can lay the cosine over a step
    # count decided after training has started: the traced train step reads it at every step.
    decay_steps = keras.Variable(max(1, total_steps - warmup), dtype="float32", trainable=False,
                                 name="decay_steps")
    if warmup:
        warmup_steps = keras.Variable(warmup, dtype="float32", trainable=False, name="warmup_steps")
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, warmup_target=train_config.learning_rate, warmup_steps=warmup_steps)
        schedule.configured_warmup = int(train_config.warmup_steps)  # set_total_steps re-fits it
    else:
        schedule = keras.optimizers.schedules.CosineDecay(train_config.learning_rate, decay_steps)
    ema = float(getattr(train_config, "ema", 0.0) or 0.0)
    optimizer = LazyAdamW(learning_rate=schedule, weight_decay=train_config.weight_decay,
                          use_ema=ema > 0, ema_momentum=ema or 0.99)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer


def set_total_steps(optimizer, total_steps: int) -> None:
    """Lays make_optimizer's warm-up + cosine over `total_steps` instead: the warm-up keeps its
    configured length (cut to total_steps - 1, as make_optimizer cuts it), the cosine reaches 0 at the
    new end. A step already past the warm-up sees the rate jump to the new curve."""
    # Under mixed_float16, compile() wraps the optimizer in a LossScaleOptimizer: the schedule is the inner one's.
    schedule = getattr(optimizer, "inner_optimizer", optimizer)._learning_rate
    total_steps = int(total_steps)
    warmup = 0
    if schedule.warmup_target is not None:
        warmup = max(0, min(schedule.configured_warmup, total_steps - 1))
        schedule.warmup_steps.assign(float(warmup))
    schedule.decay_steps.assign(float(max(1, total_steps - warmup)))


def make_task_weight_optimizer(train_config):
    """Adam at train.task_weight_learning_rate, constant, lazy per element (one element per task)."""
    rate = float(train_config.task_weight_learning_rate)
    if rate <= 0:
        raise ValueError(f"task_weight_learning_rate must be > 0; Received: {rate}")
    return LazyAdamW(learning_rate=rate, weight_decay=0.0, skip="element")
