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
        self.decoupled_weight_decay = float(weight_decay)
        self.skip = skip

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        state = (variable, self._momentums[index], self._velocities[index])
        before = [tf.identity(tf.convert_to_tensor(item)) for item in state]
        if self.decoupled_weight_decay and self._use_weight_decay(variable):
            rate = tf.cast(learning_rate, variable.dtype) * self.decoupled_weight_decay
            self.assign_sub(variable, tf.convert_to_tensor(variable) * rate)
        super().update_step(gradient, variable, learning_rate)
        moved = tf.not_equal(tf.cast(gradient, variable.dtype), 0)
        if self.skip == "variable":
            moved = tf.reduce_any(moved)
        for item, old in zip(state, before):
            self.assign(item, tf.where(moved, tf.convert_to_tensor(item), old))

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.decoupled_weight_decay, "skip": self.skip}


def make_optimizer(train_config, total_steps, steps_per_epoch=None):
    """The network's LazyAdamW (lr: 0 -> learning_rate over warmup_steps, then cosine -> 0 at
    total_steps). train.ema > 0 keeps an exponential moving average of the weights (Keras'
    use_ema) and writes it into the model every `steps_per_epoch` steps, so validation, the best
    checkpoint and the saved model all see the averaged weights."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; Received: total_steps={total_steps}")
    if train_config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0; Received: learning_rate={train_config.learning_rate}")
    warmup = max(0, min(int(train_config.warmup_steps), total_steps - 1))
    decay_steps = max(1, total_steps - warmup)
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, warmup_target=train_config.learning_rate, warmup_steps=warmup)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(train_config.learning_rate, decay_steps)
    ema = float(getattr(train_config, "ema", 0.0) or 0.0)
    optimizer = LazyAdamW(learning_rate=schedule, weight_decay=train_config.weight_decay,
                          use_ema=ema > 0, ema_momentum=ema or 0.99,
                          ema_overwrite_frequency=steps_per_epoch if ema > 0 else None)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer


def make_task_weight_optimizer(train_config):
    """Adam at train.task_weight_learning_rate, constant, lazy per element (one element per task)."""
    rate = float(train_config.task_weight_learning_rate)
    if rate <= 0:
        raise ValueError(f"task_weight_learning_rate must be > 0; Received: {rate}")
    return LazyAdamW(learning_rate=rate, weight_decay=0.0, skip="element")
