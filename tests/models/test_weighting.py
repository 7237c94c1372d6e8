"""models/weighting.py: each task-weighting rule on scalar problems where the answer is known."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.weighting import (DWAWeighting, FAMOWeighting, FixedWeighting, GradNormWeighting, PCGradWeighting,
                              UncertaintyWeighting, gradient_cosines, project_conflicting,
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


def test_a_priority_scales_a_tasks_gradient_and_leaves_its_optimum():
    """train.uncertainty_priority: k times the task's whole term, so its s optimum (log 2L here) stays
    and the network's gradient through the task's loss is k times the weight exp(-s)."""
    loss = tf.constant(0.8)
    plain = UncertaintyWeighting(["segmentation", "depth"])
    ranked = UncertaintyWeighting(["segmentation", "depth"], priorities={"segmentation": 2.0})
    for weighting in (plain, ranked):
        weighting.log_var.assign([np.log(2 * 0.8), 0.0])
    gradients = {}
    for name, weighting in (("plain", plain), ("ranked", ranked)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(loss)
            total = weighting.combine({"segmentation": loss, "depth": tf.constant(0.1)}, {"segmentation": ONE, "depth": ONE})
        gradients[name] = (float(tape.gradient(total, loss)), tape.gradient(total, weighting.log_var).numpy())
    assert gradients["ranked"][0] == pytest.approx(2 * gradients["plain"][0])  # 2 x exp(-s) = 2 / (2L)
    assert gradients["plain"][1][0] == pytest.approx(0.0, abs=1e-6)  # s = log 2L is the optimum ...
    assert gradients["ranked"][1][0] == pytest.approx(0.0, abs=1e-6)  # ... with the priority too
    assert gradients["ranked"][1][1] == pytest.approx(gradients["plain"][1][1])  # depth: untouched
    assert float(ranked.effective_weights()["segmentation"]) == pytest.approx(2 / 1.6)
    assert ranked.priorities == {"segmentation": 2.0, "depth": 1.0}
    with pytest.raises(ValueError, match="Received: priorities="):
        UncertaintyWeighting(["depth"], priorities={"depth": 0.0})
    made = make_weighting(TrainConfig(uncertainty_priority={"segmentation": 2.0}), ["segmentation", "depth"])
    assert made.priorities == {"segmentation": 2.0, "depth": 1.0}


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
                  FixedWeighting(["depth"], weights={"depth": 2.0}), UncertaintyWeighting(["a"]),
                  UncertaintyWeighting(["a", "b"], priorities={"b": 3.0})):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="Received: temperature=0"):
        DWAWeighting(["depth"], temperature=0.0)
    with pytest.raises(ValueError, match="Received: alpha=-1"):
        GradNormWeighting(["depth"], alpha=-1.0)
    with pytest.raises(ValueError, match="Received: tasks="):
        UncertaintyWeighting([])


# ------------------------------------------------------------------------------------ FAMO
def _numpy_famo_adam(w, grads, beta, gamma):
    """torch.optim.Adam(lr=beta, weight_decay=gamma) on w, one step per gradient (the authors' code)."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        g = g + gamma * w
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - beta * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return w


def test_famo_loss_weights_and_logit_update_match_a_hand_worked_example():
    tasks = ["detection", "depth"]
    weighting = FAMOWeighting(tasks, beta=0.1, gamma=0.01)
    both = {"detection": ONE, "depth": ONE}
    # z = (0.5, 0.5); c = 0.5/2 + 0.5/0.5 = 1.25; total = (0.5 log 2 + 0.5 log 0.5) / c = 0;
    # d total / d L_t = z_t / (c L_t) = (0.2, 0.8): the task with the smaller loss weighs more.
    values = [tf.Variable(2.0), tf.Variable(0.5)]
    with tf.GradientTape() as tape:
        total = weighting.combine(dict(zip(tasks, values)), both)
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose([float(g) for g in tape.gradient(total, values)], [0.2, 0.8], rtol=1e-5)
    np.testing.assert_allclose([float(w) for w in weighting.effective_weights().values()], [0.2, 0.8], rtol=1e-5)
    # Logits learn from the change in log losses between consecutive steps (first step: no change yet).
    steps = [(2.0, 0.5), (1.0, 0.45), (0.8, 0.44)]
    for a, b in steps:
        weighting.observe({"detection": tf.constant(a), "depth": tf.constant(b)}, both)
    w, grads = np.zeros(2), []
    for before, after in zip(steps, steps[1:]):
        z = np.exp(w) / np.exp(w).sum()
        delta = np.log(before) - np.log(after)
        grads.append(z * (delta - (z * delta).sum()))  # softmax Jacobian^T delta
        w = _numpy_famo_adam(np.zeros(2), grads, 0.1, 0.01)  # replay from the start with all grads
    np.testing.assert_allclose(weighting.logits.numpy(), w, rtol=1e-5, atol=1e-7)
    # Detection's log loss fell faster, so its logit fell: FAMO favours the slower task.
    assert weighting.logits.numpy()[0] < 0 < weighting.logits.numpy()[1]


def test_famo_task_without_labels_has_no_change_and_no_weight():
    weighting = FAMOWeighting(["detection", "depth"], beta=0.1, gamma=0.0)
    labelled = {"detection": ONE, "depth": tf.constant(0.0)}
    for loss in (3.0, 1.0):
        weighting.observe({"detection": tf.constant(loss), "depth": tf.constant(9.0)}, labelled)
    # Only detection has a before and after: delta = (log 3, 0), d = z (delta - z.delta) = (+, -) log3/4.
    logits = weighting.logits.numpy()
    assert logits[0] == pytest.approx(-0.1, rel=1e-4) and logits[1] == pytest.approx(0.1, rel=1e-4)
    with tf.GradientTape() as tape:
        depth = tf.Variable(9.0)
        total = weighting.combine({"detection": tf.constant(1.0), "depth": depth}, labelled)
    grad = tape.gradient(total, depth)
    assert grad is None or float(grad) == 0.0


# ---------------------------------------------------------------------------------- PCGrad
def test_pcgrad_projects_conflicting_shared_gradients_like_the_hand_worked_example():
    """g_a = (1, 0), g_b = (-1, 1) on a shared variable: a.b = -1 < 0, so
    a' = a - (a.b)/|b|^2 b = (0.5, 0.5), b' = b - (a.b)/|a|^2 a = (0, 1); sum (0.5, 1.5).
    A head only task a reaches keeps its plain gradient; a task without labels (zero gradient)
    changes nothing."""
    shared, head_a = tf.Variable([0.0, 0.0]), tf.Variable([0.0])
    weighting = PCGradWeighting(["detection", "segmentation", "depth"])
    per_task = {"detection": [tf.constant([1.0, 0.0]), tf.constant([3.0])],
                "segmentation": [tf.constant([-1.0, 1.0]), None],
                "depth": [tf.zeros([2]), None]}  # absent from the batch
    for _ in range(4):  # any task order gives the same answer with two conflicting tasks
        grads = weighting.project_gradients(per_task, [shared, head_a])
        np.testing.assert_allclose(grads[0].numpy(), [0.5, 1.5], rtol=1e-6)
        np.testing.assert_allclose(grads[1].numpy(), [3.0])
    # No conflict (a.b >= 0): the plain sum.
    agree = {"detection": [tf.constant([1.0, 0.0]), None], "segmentation": [tf.constant([1.0, 1.0]), None],
             "depth": [tf.zeros([2]), None]}
    np.testing.assert_allclose(weighting.project_gradients(agree, [shared, head_a])[0].numpy(), [2.0, 1.0])


def test_pcgrad_three_tasks_follow_the_drawn_order():
    flat = tf.constant([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
    out = project_conflicting(flat, tf.constant([0, 1, 2])).numpy()
    # task 0: vs 1 (dot -1) -> (0.5, 0.5); vs 2 (dot -0.5) -> (0.5, 0). task 1: vs 0 (dot -1) -> (0, 1);
    # vs 2 (dot -1) -> (0, 0). task 2: vs 0 (dot 0) unchanged; vs 1 (dot -1) -> (0,-1) + 0.5 (-1, 1).
    np.testing.assert_allclose(out, [[0.5, 0.0], [0.0, 0.0], [-0.5, -0.5]], atol=1e-6)


# ------------------------------------------------------------------------- gradient conflict
def test_opposite_task_gradients_have_cosine_minus_one():
    kernel = tf.Variable([[1.0, -2.0], [0.5, 3.0]])
    with tf.GradientTape(persistent=True) as tape:
        loss_a = tf.reduce_sum(kernel * [[1.0, 2.0], [3.0, 4.0]])
        loss_b = -2.0 * loss_a
        loss_c = tf.reduce_sum(kernel * [[-2.0, 1.0], [0.0, 0.0]])  # orthogonal to a
    grads = {name: [tape.gradient(loss, kernel)] for name, loss in (("a", loss_a), ("b", loss_b), ("c", loss_c))}
    cosines = gradient_cosines(grads, ("a", "b", "c"))
    assert float(cosines[("a", "b")]) == pytest.approx(-1.0, abs=1e-6)
    assert float(cosines[("a", "c")]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name,kind", [("famo", FAMOWeighting), ("pcgrad", PCGradWeighting)])
def test_make_weighting_builds_famo_and_pcgrad(name, kind):
    assert isinstance(make_weighting(TrainConfig(weighting=name), ["detection", "depth"]), kind)
