"""models/optimizer.py: task weights that reach their optimum, heads that stay still without labels."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.multitask import TASKS, build_model
from models.optimizer import (ENCODER_PREFIX, LazyAdamW, WarmupDecay, make_optimizer, make_task_weight_optimizer,
                              relay_schedule, schedule_of)
from models.trainer import MultiTaskTrainer
from models.weighting import UncertaintyWeighting
from pipeline.config import TrainConfig
from test_models import SIZE, make_batch, tiny_model, tiny_train

# Final validation losses of a default run: the scale the weights must reach.
HELD_LOSSES = {"detection": 1.2, "segmentation": 0.12, "depth": 0.034}


def test_uncertainty_log_variances_reach_their_optimum_with_losses_held_fixed():
    weighting = UncertaintyWeighting(TASKS)
    optimizer = make_task_weight_optimizer(TrainConfig())
    optimizer.build(weighting.trainable_variables)
    # Kendall et al.: classification exp(-s) L + s/2 -> s* = log 2L; regression exp(-s) L/2 + s/2 -> log L.
    optimum = np.array([math.log(2 * HELD_LOSSES["detection"]), math.log(2 * HELD_LOSSES["segmentation"]),
                        math.log(HELD_LOSSES["depth"])])
    losses = {task: tf.constant(value) for task, value in HELD_LOSSES.items()}
    present = {task: tf.constant(1.0) for task in TASKS}

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            total = weighting.combine(losses, present)
        grads = tape.gradient(total, weighting.trainable_variables)
        optimizer.apply(grads, weighting.trainable_variables)

    for _ in range(200):
        step()
    np.testing.assert_allclose(weighting.log_var.numpy(), optimum, atol=0.05)


def _head_weights(net, prefix):
    return {v.path: v.numpy().copy() for v in net.trainable_variables if v.path.startswith(prefix)}


def test_a_step_without_segmentation_labels_leaves_the_segmentation_head_bit_identical():
    keras.utils.set_random_seed(1)
    config = tiny_model()
    net = build_model(config, SIZE)
    trainer = MultiTaskTrainer(net, config, tiny_train(weight_decay=0.05))
    trainer.compile(optimizer=make_optimizer(tiny_train(weight_decay=0.05), 10), run_eagerly=True)
    labelled = make_batch()
    unlabelled = make_batch(has=(1.0, 0.0, 1.0))
    # Two labelled steps first, so Adam holds momentum that would otherwise keep moving the head.
    trainer.fit(tf.data.Dataset.from_tensors(labelled).repeat(), epochs=1, steps_per_epoch=2, verbose=0)
    seg_before, det_before = _head_weights(net, "segmentation"), _head_weights(net, "detection")
    log_var_before = trainer.weighting.log_var.numpy().copy()
    assert seg_before and det_before
    trainer.fit(tf.data.Dataset.from_tensors(unlabelled).repeat(), epochs=1, steps_per_epoch=1, verbose=0)
    for path, value in _head_weights(net, "segmentation").items():
        np.testing.assert_array_equal(value, seg_before[path], err_msg=path)
    assert any(not np.array_equal(value, det_before[path])
               for path, value in _head_weights(net, "detection").items())
    log_var = trainer.weighting.log_var.numpy()
    seg = TASKS.index("segmentation")
    assert log_var[seg] == log_var_before[seg]
    assert np.all(np.delete(log_var, seg) != np.delete(log_var_before, seg))


def _one_step(optimizer, grad):
    return _steps(optimizer, [np.ones((2, 2), np.float32)], ("kernel",), [[np.asarray(grad, np.float32)]])[0]


def _steps(optimizer, start, names, grads, compiled=False):
    """The weights after `optimizer` applies each of `grads` (one array per variable) to variables
    that start at `start`, named `names` (weight decay excludes by name); traced when `compiled`."""
    variables = [keras.Variable(w, name=name) for w, name in zip(start, names)]
    optimizer.build(variables)
    step = lambda g: optimizer.apply([tf.convert_to_tensor(x) for x in g], variables)  # noqa: E731
    step = tf.function(step) if compiled else step
    for g in grads:
        step(g)
    return [v.numpy() for v in variables]


def test_lazy_adamw_decays_weights_where_a_gradient_arrives_and_nowhere_else():
    grad = np.full((2, 2), 0.5, np.float32)
    plain = _one_step(LazyAdamW(learning_rate=0.1, weight_decay=0.0), grad)
    decayed = _one_step(LazyAdamW(learning_rate=0.1, weight_decay=0.5), grad)
    # AdamW: w <- w - lr * wd * w before the Adam step (0.1 * 0.5 * 1 = 0.05 less).
    np.testing.assert_allclose(plain - decayed, 0.05, rtol=1e-5)
    untouched = _one_step(LazyAdamW(learning_rate=0.1, weight_decay=0.5), np.zeros((2, 2)))
    np.testing.assert_array_equal(untouched, 1.0)


@pytest.mark.parametrize("compiled", [False, True])
def test_lazy_adamw_steps_as_keras_adamw_where_gradients_arrive(compiled):
    """Three scheduled steps on a kernel (decayed) and a bias (not), eager and traced: the same
    weights as Keras' own AdamW, whose decay is also w -= lr * wd * w before the Adam step."""
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in start] for _ in range(3)]

    run = lambda optimizer: _steps(optimizer, start, ("kernel", "bias"), grads, compiled)  # noqa: E731
    schedule = lambda: keras.optimizers.schedules.CosineDecay(0.0, 4, warmup_target=0.1, warmup_steps=1)  # noqa: E731
    ours = LazyAdamW(learning_rate=schedule(), weight_decay=0.3)
    ours.exclude_from_weight_decay(var_names=["bias"])
    theirs = keras.optimizers.AdamW(learning_rate=schedule(), weight_decay=0.3)
    theirs.exclude_from_weight_decay(var_names=["bias"])
    for mine, reference in zip(run(ours), run(theirs)):
        np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-7)


def test_make_optimizer_steps_with_the_configured_second_moment_decay():
    """train.adam_beta_2 reaches Adam: with gradients that change from step to step, the network's
    optimizer gives Keras AdamW's weights at that beta_2, and different ones at the default."""
    rng = np.random.default_rng(1)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [[rng.normal(size=start.shape).astype(np.float32) * scale] for scale in (1.0, 0.1, 3.0, 0.5)]
    run = lambda optimizer: _steps(optimizer, [start], ("kernel",), grads)[0]  # noqa: E731

    train = TrainConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.0, adam_beta_2=0.9)
    ours = run(make_optimizer(train, total_steps=100))
    theirs = run(keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(0.1, 100), weight_decay=0.0,
                                        beta_2=0.9))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    default = run(make_optimizer(TrainConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.0), 100))
    assert np.abs(default - ours).max() > 1e-3


def test_element_skip_moves_only_elements_with_a_gradient():
    moved = _one_step(LazyAdamW(learning_rate=0.1, skip="element"), [[1.0, 0.0], [0.0, -1.0]])
    np.testing.assert_array_equal(moved == 1.0, [[False, True], [True, False]])
    with pytest.raises(ValueError, match="skip"):
        LazyAdamW(skip="row")
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdamW(amsgrad=True)


@pytest.mark.parametrize("depth, last_block", [(1.0, 2), (0.5, 1), (1.5, 3)])
def test_gradnorm_measures_weights_that_every_task_reaches_under_cross_stitch(depth, last_block):
    """Each stream's last encoder projection, wherever model.encoder_depth puts it (stage 4 has 2 blocks)."""
    from models.sharing import shared_kernel

    config = tiny_model(sharing="cross_stitch", encoder_depth=depth)
    net = build_model(config, SIZE)
    kernels = shared_kernel(net)
    assert len(kernels) == len(TASKS)
    assert all(f"_s4b{last_block}_project_conv/" in kernel.path for kernel in kernels), [k.path for k in kernels]
    trainer = MultiTaskTrainer(net, config, tiny_train(weighting="fixed"))
    x, y = make_batch()
    with tf.GradientTape(persistent=True) as tape:
        _, losses, _ = trainer.compute_losses(y, net(x, training=True))
    for task in TASKS:
        grads = tape.gradient(losses[task], kernels)
        assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads), task


def test_hard_sharing_gradnorm_kernel_is_the_neck_output():
    from models.sharing import shared_kernel

    net = build_model(tiny_model(), SIZE)
    (kernel,) = shared_kernel(net)
    assert "neck_out" in kernel.path
    assert shared_kernel(build_model(tiny_model(sharing="soft"), SIZE)) is None


def test_task_weight_learning_rate_must_be_positive():
    with pytest.raises(ValueError, match="task_weight_learning_rate"):
        make_task_weight_optimizer(TrainConfig(task_weight_learning_rate=0.0))



def test_cosine_decay_is_keras_cosine_decay_with_warm_up_step_for_step():
    ours = WarmupDecay(0.01, warmup_steps=10, total_steps=100)
    theirs = keras.optimizers.schedules.CosineDecay(0.0, 90, warmup_target=0.01, warmup_steps=10)
    no_warmup = WarmupDecay(0.01, warmup_steps=0, total_steps=100)
    plain = keras.optimizers.schedules.CosineDecay(0.01, 100)
    for step in range(0, 111):
        assert float(ours(step)) == pytest.approx(float(theirs(step)), abs=1e-7)
        assert float(no_warmup(step)) == pytest.approx(float(plain(step)), abs=1e-7)


def test_linear_decay_is_keras_polynomial_decay_after_the_warm_up_step_for_step():
    ours = WarmupDecay(0.01, warmup_steps=10, total_steps=100, decay="linear")
    theirs = keras.optimizers.schedules.PolynomialDecay(0.01, 90, end_learning_rate=0.0, power=1.0)
    for step in range(0, 111):
        expected = 0.01 * step / 10 if step < 10 else float(theirs(step - 10))
        assert float(ours(step)) == pytest.approx(expected, abs=1e-7)
    cosine = WarmupDecay(0.01, warmup_steps=10, total_steps=100)
    assert float(ours(32)) < float(cosine(32)) and float(ours(78)) > float(cosine(78))  # lower early, higher late


def test_make_optimizer_lays_the_configured_decay_and_keeps_it_through_a_relay_and_its_config():
    optimizer = make_optimizer(TrainConfig(learning_rate=0.01, warmup_steps=10, lr_decay="linear"), total_steps=100)
    optimizer.iterations.assign(40)
    before = float(schedule_of(optimizer)(40))
    relay_schedule(optimizer, 190)  # a longer plan: on from the same rate, in a straight line to 0 at 190
    schedule = schedule_of(optimizer)
    assert float(schedule(40)) == pytest.approx(before, rel=1e-6)
    assert float(schedule(115)) == pytest.approx(before / 2, rel=1e-5)
    copy = WarmupDecay.from_config(schedule.get_config())
    assert [float(copy(step)) for step in (5, 40, 115, 189)] == pytest.approx(
        [float(schedule(step)) for step in (5, 40, 115, 189)])
    with pytest.raises(ValueError, match="decay"):
        WarmupDecay(0.01, warmup_steps=10, total_steps=100, decay="step")


def test_relaying_the_schedule_inside_a_traced_step_never_makes_the_rate_jump():
    train = TrainConfig(learning_rate=0.01, warmup_steps=10)
    optimizer = make_optimizer(train, total_steps=100)
    schedule = schedule_of(optimizer)
    rate = tf.function(lambda step: schedule(step))  # traced once, as the train step is
    # Inside the warm-up (a budget's first plan): the warm-up keeps its length, the cosine is laid after it.
    optimizer.iterations.assign(5)
    relay_schedule(optimizer, 190)
    assert float(rate(tf.constant(5))) == pytest.approx(0.005)
    assert float(rate(tf.constant(100))) == pytest.approx(0.005)  # half-way down the new cosine
    assert float(rate(tf.constant(190))) == pytest.approx(0.0, abs=1e-7)
    # Past the warm-up, a longer plan: the rate goes on from where it is and reaches 0 at the new end.
    optimizer.iterations.assign(150)
    before = float(rate(tf.constant(150)))
    state = relay_schedule(keras.optimizers.LossScaleOptimizer(optimizer), 250)  # mixed_float16 wraps it
    assert float(rate(tf.constant(150))) == pytest.approx(before, rel=1e-5)
    assert before > float(rate(tf.constant(200))) > float(rate(tf.constant(249))) > 0.0
    assert float(rate(tf.constant(250))) == pytest.approx(0.0, abs=1e-7)
    assert state["anchor_step"] == 150 and state["end_step"] == 250
    later = float(rate(tf.constant(200)))
    # A shorter plan: the same rate now, 0 sooner.
    relay_schedule(optimizer, 160)
    assert float(rate(tf.constant(150))) == pytest.approx(before, rel=1e-5)
    assert float(rate(tf.constant(160))) == pytest.approx(0.0, abs=1e-7)
    # A plan file's state sets it back exactly (a resumed run).
    fresh = make_optimizer(train, total_steps=100)
    schedule_of(fresh).restore(state)
    assert float(schedule_of(fresh)(200)) == pytest.approx(later, rel=1e-6)
    # A plan that ends now (the current epoch becomes the last): 0 at its end, as every plan's end.
    relay_schedule(optimizer, 150)
    assert float(rate(tf.constant(150))) == 0.0
    # Its config carries the re-laid state too.
    copy = WarmupDecay.from_config(schedule_of(fresh).get_config())
    assert [float(copy(step)) for step in (5, 160, 200, 249)] == pytest.approx(
        [float(schedule_of(fresh)(step)) for step in (5, 160, 200, 249)])


def test_relaying_a_cut_warm_up_or_a_used_up_schedule_lays_the_whole_schedule_afresh():
    # A provisional schedule shorter than the warm-up (train.epochs=1 under a budget): the warm-up was
    # cut to 5 of its 10 steps; the plan at step 5 gives it back, and the rate never sticks at 0.
    optimizer = make_optimizer(TrainConfig(learning_rate=0.01, warmup_steps=10), total_steps=6)
    schedule = schedule_of(optimizer)
    optimizer.iterations.assign(5)
    relay_schedule(optimizer, 100)
    assert schedule.state()["warmup_steps"] == 10
    assert float(schedule(5)) == pytest.approx(0.005) and float(schedule(50)) > 0.0
    # A schedule used up before the plan (no warm-up, 70 provisional steps, planned at step 70): the
    # whole cosine over the plan's steps, not a phase anchored at its end.
    optimizer = make_optimizer(TrainConfig(learning_rate=0.01, warmup_steps=0), total_steps=70)
    schedule = schedule_of(optimizer)
    optimizer.iterations.assign(70)
    relay_schedule(optimizer, 280)
    assert float(schedule(140)) == pytest.approx(0.005) and float(schedule(200)) > 0.0


def test_encoder_rate_scale_shrinks_the_encoders_steps_and_decay_and_nothing_else():
    """Adam's first step moves each weight by about lr (times the sign of its gradient); the encoder's
    by scale * lr, and AdamW's decay w -= lr * wd * w by scale * lr too."""
    grad = [np.full((2, 2), 0.5, np.float32)] * 2
    names = ("encoder_blocks_5_expand_conv_kernel", "neck_lateral_kernel")
    start = [np.ones((2, 2), np.float32)] * 2
    train = TrainConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.0, encoder_learning_rate_scale=0.25)
    encoder, neck = _steps(make_optimizer(train, total_steps=100), start, names, [grad])
    np.testing.assert_allclose(1.0 - encoder, 0.025, rtol=1e-3)
    np.testing.assert_allclose(1.0 - neck, 0.1, rtol=1e-3)
    decayed = TrainConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.5, encoder_learning_rate_scale=0.25)
    encoder_decayed, neck_decayed = _steps(make_optimizer(decayed, total_steps=100), start, names, [grad])
    np.testing.assert_allclose(encoder - encoder_decayed, 0.25 * 0.1 * 0.5, rtol=1e-3)
    np.testing.assert_allclose(neck - neck_decayed, 0.1 * 0.5, rtol=1e-3)


@pytest.mark.parametrize("sharing, encoder", [("hard", {}), ("soft", {}),
                                               ("hard", {"backbone": "efficientnet_lite0"})])
def test_the_encoder_prefix_names_exactly_the_encoders_variables(sharing, encoder):
    """encoder_rate_scale finds the encoder by ENCODER_PREFIX: every trainable variable of the
    encoder (its per-task copies under soft sharing; the default's EfficientNet-Lite0 too) carries
    it, and no neck or head variable does."""
    config = tiny_model(sharing=sharing, **encoder)
    net = build_model(config, SIZE)
    encoders = [layer for layer in net.layers if layer.name.startswith(ENCODER_PREFIX) and isinstance(layer, keras.Model)]
    assert encoders
    encoder_paths = {v.path for encoder in encoders for v in encoder.trainable_variables}
    prefixed = {v.path for v in net.trainable_variables if v.path.startswith(ENCODER_PREFIX)}
    assert encoder_paths and prefixed == encoder_paths
