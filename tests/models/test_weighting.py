"""models/weighting.py: each task-weighting rule on scalar problems where the answer is known."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.weighting import (DWAWeighting, FixedWeighting, GradNormWeighting, UncertaintyWeighting,
                              make_weighting)
from pipeline.config import TrainConfig

ONE = tf.constant(1.0)


def test_fixed_weights_multiply_and_skip_absent_tasks():
    weighting = FixedWeighting(["detection", "depth"], weights={"detection": 2.0, "depth": 0.5})
    total = weighting.combine({"detection": tf.constant(3.0), "depth": tf.constant(4.0)},
                              {"detection": ONE, "depth": tf.constant(0.0)})
    assert float(total) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="Received: weights="):
        FixedWeighting(["detection", "depth"], weights={"detection": 1.0})


@pytest.mark.parametrize("task,optimum", [("depth", lambda loss: np.log(loss)),
                                          ("segmentation", lambda loss: np.log(2 * loss))])
def test_uncertainty_minimum_is_at_log_loss(task, optimum):
    """0.5 exp(-s) L + 0.5 s is minimal at s = log L (regression); exp(-s) L + 0.5 s at log 2L."""
    loss = 3.7
    weighting = UncertaintyWeighting([task])

    def gradient_at(value):
        weighting.log_var.assign([value])
        with tf.GradientTape() as tape:
            total = weighting.combine({task: tf.constant(loss)}, {task: ONE})
        return float(tape.gradient(total, weighting.log_var)[0])

    assert gradient_at(optimum(loss)) == pytest.approx(0.0, abs=1e-6)
    assert gradient_at(optimum(loss) - 0.5) < 0 < gradient_at(optimum(loss) + 0.5)
    weighting.log_var.assign([0.0])  # and plain gradient descent from s = 0 gets there
    for _ in range(300):
        with tf.GradientTape() as tape:
            total = weighting.combine({task: tf.constant(loss)}, {task: ONE})
        weighting.log_var.assign_sub(0.5 * tape.gradient(total, weighting.log_var))
    assert float(weighting.log_var[0]) == pytest.approx(optimum(loss), abs=1e-3)


def test_uncertainty_ignores_tasks_without_labels():
    weighting = UncertaintyWeighting(["detection", "depth"])
    with tf.GradientTape() as tape:
        total = weighting.combine({"detection": tf.constant(2.0), "depth": tf.constant(0.0)},
                                  {"detection": ONE, "depth": tf.constant(0.0)})
    assert tape.gradient(total, weighting.log_var).numpy()[1] == 0.0


def test_dwa_is_one_for_two_epochs_then_favours_the_slower_task():
    weighting = DWAWeighting(["fast", "slow"], temperature=2.0)
    per_epoch = [(4.0, 4.0), (1.0, 3.0), (0.5, 2.9)]
    seen = []
    for fast, slow in per_epoch:
        seen.append([float(w) for w in weighting.effective_weights().values()])
        for _ in range(3):  # three steps per epoch with the same losses
            weighting.observe({"fast": tf.constant(fast), "slow": tf.constant(slow)},
                              {"fast": ONE, "slow": ONE})
        weighting.on_epoch_end()
    assert seen[0] == [1.0, 1.0] and seen[1] == [1.0, 1.0]
    ratios = np.array([1.0 / 4.0, 3.0 / 4.0])  # L(epoch 1) / L(epoch 0)
    expected = 2 * np.exp(ratios / 2.0) / np.exp(ratios / 2.0).sum()
    np.testing.assert_allclose(seen[2], expected, rtol=1e-5)
    assert seen[2][1] > seen[2][0]


def test_gradnorm_moves_weight_towards_the_slower_task():
    """Two regressions on one shared linear layer: task b has a noise floor, so its loss ratio
    L/L(0) stays high while task a trains to ~0; GradNorm must raise w_b and lower w_a."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    target_a = x @ rng.normal(size=(8, 1)).astype(np.float32)
    target_b = (x @ rng.normal(size=(8, 1)) + rng.normal(scale=2.0, size=(256, 1))).astype(np.float32)
    shared, head_a, head_b = keras.layers.Dense(8, use_bias=False), keras.layers.Dense(1), keras.layers.Dense(1)
    for layer in (shared, head_a, head_b):
        layer.build((None, 8))
    weighting = GradNormWeighting(["a", "b"], alpha=1.5)
    variables = (shared.trainable_variables + head_a.trainable_variables + head_b.trainable_variables
                 + [weighting.task_weight])
    optimizer = keras.optimizers.Adam(0.01)
    present = {"a": ONE, "b": ONE}
    for _ in range(150):
        with tf.GradientTape(persistent=True) as tape:
            features = shared(x)
            losses = {"a": tf.reduce_mean((head_a(features) - target_a) ** 2),
                      "b": tf.reduce_mean((head_b(features) - target_b) ** 2)}
            total = weighting.combine(losses, present)
        grads = tape.gradient(total, variables)
        assert grads[-1] is None  # the network loss never trains the task weights directly
        weighting.observe(losses, present)
        [(grads[-1], _)] = weighting.extra_gradients(tape, losses, present, [shared.kernel], ONE)
        optimizer.apply(grads, variables)
        weighting.after_apply()
    w_a, w_b = weighting.task_weight.numpy()
    assert w_a + w_b == pytest.approx(2.0, rel=1e-5)
    assert w_b > w_a + 0.1


def test_make_weighting_picks_by_name_and_rejects_unknown():
    for name, cls in [("fixed", FixedWeighting), ("uncertainty", UncertaintyWeighting),
                      ("dwa", DWAWeighting), ("gradnorm", GradNormWeighting)]:
        assert isinstance(make_weighting(TrainConfig(weighting=name), ["detection", "depth"]), cls)
    with pytest.raises(ValueError, match="gradnorm"):
        make_weighting(TrainConfig(weighting="magic"), ["depth"])


def test_weighting_layers_round_trip_config_and_reject_bad_args():
    for layer in (DWAWeighting(["depth"], temperature=3.0), GradNormWeighting(["a", "b"], alpha=0.5),
                  FixedWeighting(["depth"], weights={"depth": 2.0}), UncertaintyWeighting(["a"])):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="Received: temperature=0"):
        DWAWeighting(["depth"], temperature=0.0)
    with pytest.raises(ValueError, match="Received: alpha=-1"):
        GradNormWeighting(["depth"], alpha=-1.0)
    with pytest.raises(ValueError, match="Received: tasks="):
        UncertaintyWeighting([])
