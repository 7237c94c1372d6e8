"""The optimizers: AdamW for the network (warm-up, then a cosine or linear decay), Adam at a constant rate for
task weights.

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

import math

import keras
import tensorflow as tf

from data.vocabulary import LR_DECAYS

# Substrings of variable names kept out of AdamW's decoupled weight decay: biases and BatchNorm
# scale/shift (decay only fights the normalisation), the uncertainty log-variances and GradNorm
# task weights (decay would bias the weighting, not regularise the net), cross-stitch matrices
# (decay would pull them away from the identity towards 0).
NO_DECAY = ("bias", "gamma", "beta", "log_var", "task_weight", "stitch")
# The shared encoder's variables (and soft sharing's per-task copies, "encoder_<task>_*"): models/
# multitask.py names every encoder layer with this prefix. `encoder_rate_scale` applies to them.
ENCODER_PREFIX = "encoder"
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

    def __init__(self, weight_decay=0.0, skip="variable", encoder_rate_scale=1.0, **kwargs):
        kwargs.pop("name", None)
        super().__init__(name="lazy_adamw", **kwargs)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; Received: weight_decay={weight_decay}")
        if skip not in SKIP_GRANULARITIES:
            raise ValueError(f"skip must be one of {SKIP_GRANULARITIES}; Received: skip={skip!r}")
        if self.amsgrad:  # update_step writes out plain Adam
            raise ValueError("LazyAdamW has no amsgrad; Received: amsgrad=True")
        if encoder_rate_scale <= 0:
            raise ValueError(f"encoder_rate_scale must be > 0; Received: encoder_rate_scale={encoder_rate_scale}")
        self.decoupled_weight_decay = float(weight_decay)
        self.skip = skip
        # The encoder's steps (Adam's and the decay's) are this share of everyone else's.
        self.encoder_rate_scale = float(encoder_rate_scale)
        self._step_scalars = None

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # Per variable index: update_step sees the backend's variable, which lacks the Keras path.
        self._rate_scales = [self.encoder_rate_scale if variable.path.startswith(ENCODER_PREFIX) else 1.0
                             for variable in self._trainable_variables]

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
        if self._rate_scales[index] != 1.0:
            rate, alpha = rate * self._rate_scales[index], alpha * self._rate_scales[index]
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
        return {**super().get_config(), "weight_decay": self.decoupled_weight_decay, "skip": self.skip,
                "encoder_rate_scale": self.encoder_rate_scale}


@keras.saving.register_keras_serializable(package="dashcam")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up 0 -> `peak` over `warmup_steps`, then a decay down to 0 at `total_steps`, whose end
    can move while training runs (a time budget plans the steps then: pipeline/training/budget.py).
    `decay="cosine"` is Keras' CosineDecay with warmup_target and alpha 0, step for step;
    `decay="linear"` falls in a straight line (Keras' PolynomialDecay with power 1 after the warm-up).

    The decay's phase runs linearly from `anchor_phase` at `anchor_step` to 1 at `end_step` (and
    stays 1 from there: the rate is 0 at and past the end); it is 0 at the warm-up's end until the end
    moves. `relay` past the warm-up anchors the phase the rate has now, so the rate goes on from
    where it is and only decays faster or slower to the new end. Inside the configured warm-up, or
    once the schedule it was on is used up (a provisional schedule shorter than the first epoch),
    it lays the whole schedule over the new count instead (`lay`: the warm-up at its configured
    length, cut to total_steps - 1, then the cosine). The four numbers are variables: the traced
    train step reads them at every step.
    """

    NAMES = ("warmup_steps", "anchor_step", "anchor_phase", "end_step")

    def __init__(self, peak, warmup_steps, total_steps, anchor_step=None, anchor_phase=0.0, decay="cosine"):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; Received: total_steps={total_steps}")
        if decay not in LR_DECAYS:
            raise ValueError(f"decay must be one of {LR_DECAYS}; Received: decay={decay!r}")
        self.decay = decay
        self.peak = float(peak)
        self.configured_warmup = int(warmup_steps)
        self._state = [keras.Variable(0.0, dtype="float32", trainable=False, name=name) for name in self.NAMES]
        self.lay(total_steps)
        if anchor_step is not None:  # a re-laid schedule's config
            self.restore({**self.state(), "anchor_step": anchor_step, "anchor_phase": anchor_phase})

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup, anchor, phase0, end = (tf.convert_to_tensor(v) for v in self._state)
        warming = self.peak * step / tf.maximum(warmup, 1.0)
        phase = phase0 + (step - anchor) * (1.0 - phase0) / tf.maximum(end - anchor, 1.0)
        phase = tf.where(step >= end, 1.0, tf.clip_by_value(phase, 0.0, 1.0))
        falling = 1.0 - phase if self.decay == "linear" else 0.5 * (1.0 + tf.cos(math.pi * phase))
        return tf.where(step < warmup, warming, self.peak * falling)

    def state(self) -> dict:
        """The schedule's variables, for a plan file (restore() takes them back)."""
        return {name: float(keras.ops.convert_to_numpy(v)) for name, v in zip(self.NAMES, self._state)}

    def restore(self, state: dict) -> None:
        for variable, name in zip(self._state, self.NAMES):
            variable.assign(float(state[name]))

    def lay(self, total_steps: int) -> None:
        """The whole schedule over `total_steps`: the configured warm-up (cut to total_steps - 1),
        then the decay to 0 at total_steps."""
        warmup = max(0, min(self.configured_warmup, int(total_steps) - 1))
        self.restore({"warmup_steps": warmup, "anchor_step": warmup, "anchor_phase": 0.0,
                      "end_step": int(total_steps)})

    def relay(self, total_steps: int, step: int) -> None:
        """Lays the rest of the schedule over `total_steps` from `step` on (see the class docstring)."""
        total_steps, step = int(total_steps), int(step)
        state = self.state()
        if step < self.configured_warmup or step >= state["end_step"]:
            self.lay(total_steps)
            return
        span = max(state["end_step"] - state["anchor_step"], 1.0)
        phase = state["anchor_phase"] + (step - state["anchor_step"]) * (1.0 - state["anchor_phase"]) / span
        self.restore({**state, "anchor_step": step, "anchor_phase": min(max(phase, 0.0), 1.0),
                      "end_step": total_steps})

    def get_config(self):
        state = self.state()
        return {"peak": self.peak, "warmup_steps": self.configured_warmup, "total_steps": int(state["end_step"]),
                "anchor_step": state["anchor_step"], "anchor_phase": state["anchor_phase"], "decay": self.decay}


def make_optimizer(train_config, total_steps):
    """The network's LazyAdamW (lr: 0 -> learning_rate over warmup_steps, then train.lr_decay -> 0 at
    total_steps; WarmupDecay; the encoder's times train.encoder_learning_rate_scale). train.ema > 0
    keeps an exponential moving average of the weights (Keras' use_ema) that validation, the best
    checkpoint and the saved model see
    (pipeline/training/callbacks.AveragedWeightsForValidation); training goes on from the raw weights."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; Received: total_steps={total_steps}")
    if train_config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0; Received: learning_rate={train_config.learning_rate}")
    schedule = WarmupDecay(train_config.learning_rate, int(train_config.warmup_steps), total_steps,
                           decay=train_config.lr_decay)
    ema = float(getattr(train_config, "ema", 0.0) or 0.0)
    optimizer = LazyAdamW(learning_rate=schedule, weight_decay=train_config.weight_decay,
                          encoder_rate_scale=train_config.encoder_learning_rate_scale,
                          beta_2=train_config.adam_beta_2, use_ema=ema > 0, ema_momentum=ema or 0.99)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer


def schedule_of(optimizer) -> WarmupDecay:
    """make_optimizer's schedule; under mixed_float16 compile() wraps the optimizer in a
    LossScaleOptimizer, and the schedule is the inner one's."""
    return getattr(optimizer, "inner_optimizer", optimizer)._learning_rate


def step_of(optimizer) -> int:
    """The optimizer's step count as a Python int, read on the host (under tf.distribute its
    iterations are a MirroredVariable, which int() refuses)."""
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def relay_schedule(optimizer, total_steps: int) -> dict:
    """Lays the rest of make_optimizer's schedule over `total_steps` from the optimizer's current step,
    without a jump in the rate (WarmupDecay.relay); returns the schedule's state for a plan file."""
    schedule = schedule_of(optimizer)
    schedule.relay(total_steps, step_of(optimizer))
    return schedule.state()


def make_task_weight_optimizer(train_config):
    """Adam at train.task_weight_learning_rate, constant, lazy per element (one element per task)."""
    rate = float(train_config.task_weight_learning_rate)
    if rate <= 0:
        raise ValueError(f"task_weight_learning_rate must be > 0; Received: {rate}")
    return LazyAdamW(learning_rate=rate, weight_decay=0.0, skip="element")
