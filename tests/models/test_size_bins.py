"""model.detection_size_bins: box sides as distributions over log sizes (GFL's distribution focal
loss), the bins' logits a training-only output."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from data.errors import UserError
from models.detection import (BIN_LOSS_WEIGHT, SIZE_BINS, SMALLEST_BIN, BinSize, bin_log_sizes,
                              build_detection_head, detection_loss, with_size_bins)
from models.multitask import MultiTaskTrainer, build_model
from pipeline.config import load_config
from support import one_object_targets
from test_models import SIZE, make_batch, tiny_model, tiny_train

CLASSES = 3
GRID = (6, 8)
BINS = 8
LARGEST = 24.0  # cells


def test_bin_size_is_exp_of_the_expected_log_size_per_side():
    values = bin_log_sizes(BINS, LARGEST)
    assert values[0] == pytest.approx(math.log(SMALLEST_BIN)) and values[-1] == pytest.approx(math.log(LARGEST))
    logits = np.full((1, 1, 1, 2 * BINS), -30.0, np.float32)
    logits[..., 5] = 30.0  # width: all on bin 5; height: uniform over bins 0 and 1
    logits[..., BINS:BINS + 2] = 0.0
    size = BinSize(BINS, LARGEST)(logits).numpy()[0, 0, 0]
    np.testing.assert_allclose(size, [math.exp(values[5]), math.exp((values[0] + values[1]) / 2)], rtol=1e-5)


def _loss_and_gradients(size_bins):
    """detection_loss on a prediction that misses, with or without bin logits -> (value, gradients)."""
    rng = np.random.default_rng(1)
    output = tf.Variable(np.concatenate([rng.normal(-2.0, 1.0, (1, *GRID, CLASSES)), np.full((1, *GRID, 2), 3.0),
                                         np.full((1, *GRID, 2), 0.2)], axis=-1).astype(np.float32))
    logits = tf.Variable(rng.normal(0.0, 1.0, (1, *GRID, 2 * BINS)).astype(np.float32))
    with tf.GradientTape() as tape:
        value = detection_loss(one_object_targets(GRID, CLASSES), output, size_bins=logits if size_bins else None,
                               largest=LARGEST)
    output_gradient, logits_gradient = tape.gradient(value, [output, logits])
    return float(value[0]), output_gradient.numpy(), logits, logits_gradient


def test_the_bin_loss_moves_the_bins_towards_the_two_hot_target_and_nothing_else():
    value, gradient, _, _ = _loss_and_gradients(False)
    binned_value, binned_gradient, logits, logits_gradient = _loss_and_gradients(True)
    # Gradient only: the value uncertainty weighting reads, and the other channels' gradients, stay.
    assert binned_value == pytest.approx(value, rel=1e-6)
    np.testing.assert_allclose(binned_gradient, gradient, rtol=1e-6)
    # At the one object's centre cell (weight 1, one object, two sides): BIN_LOSS_WEIGHT x the
    # gradient of KL(two-hot || softmax) = softmax - target, / 2 sides; zero at every other cell.
    logits_gradient = logits_gradient.numpy()
    values = bin_log_sizes(BINS, LARGEST)
    expected = np.zeros_like(logits_gradient)
    for side, true_size in enumerate([2.0, 5.0]):  # one_object_targets' box, in cells
        position = (math.log(true_size) - values[0]) / (values[1] - values[0])
        left = int(position)
        target = np.zeros(BINS)
        target[left], target[left + 1] = left + 1 - position, position - left
        softmax = tf.nn.softmax(logits[0, 2, 3, side * BINS:(side + 1) * BINS]).numpy()
        expected[0, 2, 3, side * BINS:(side + 1) * BINS] = BIN_LOSS_WEIGHT * (softmax - target) / 2
    np.testing.assert_allclose(logits_gradient, expected, atol=1e-7)


def test_the_saved_net_keeps_its_outputs_and_training_reads_the_bins():
    net = build_model(tiny_model(tasks=["detection"], detection_size_bins=BINS, detection_largest_box=96), SIZE)
    assert list(net.output) == ["detection"] and net.output["detection"].shape[-1] == CLASSES + 4
    training = with_size_bins(net)
    assert training.output[SIZE_BINS].shape[-1] == 2 * BINS
    assert training.count_params() == net.count_params()  # the same layers
    plain = build_model(tiny_model(tasks=["detection"]), SIZE)
    assert with_size_bins(plain) is plain
    # One training step moves the bins' conv, and the trainer holds each weight once (checkpoints).
    trainer = MultiTaskTrainer(net, tiny_model(tasks=["detection"], detection_size_bins=BINS,
                                               detection_largest_box=96), tiny_train())
    assert len(trainer.weights) == len(net.weights) + len(trainer.weighting.weights)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    kernel = net.get_layer(SIZE_BINS).kernel
    before = kernel.numpy()
    x, y = make_batch(seed=2)
    trainer.train_on_batch(x, y)
    assert np.abs(kernel.numpy() - before).max() > 0.0


def test_the_net_with_bins_saves_and_loads(tmp_path):
    net = build_model(tiny_model(detection_size_bins=BINS, detection_largest_box=96), SIZE)
    path = tmp_path / "net.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    x, _ = make_batch(seed=3)
    np.testing.assert_allclose(loaded(x)["detection"], net(x)["detection"], rtol=1e-5, atol=1e-5)
    assert isinstance(loaded.get_layer("detection_size_cells"), BinSize)


@pytest.mark.parametrize("override, fragment", [
    ("model.detection_size_bins=1", "at least 2"),
    ("model.detection_size_bins=-3", "model.detection_size_bins must be >= 0"),
    ("model.detection_largest_box=2", "model.detection_largest_box must be > 2"),
])
def test_bad_size_bin_settings_are_one_line_errors(override, fragment):
    with pytest.raises(UserError, match=fragment) as raised:
        load_config(None, [override])
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("bins", [1, -1])
def test_the_head_refuses_a_bin_count_that_is_no_distribution(bins):
    with pytest.raises(ValueError, match=f"size_bins={bins}"):
        build_detection_head(keras.Input((8, 8, 16)), 16, size_bins=bins)
