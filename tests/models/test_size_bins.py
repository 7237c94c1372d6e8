"""model.detection_size_bins: box sides as distributions over log sizes (GFL's distribution focal
loss), the bins' logits a training-only output."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.detection import (BIN_LOSS_WEIGHT, SIZE_BINS, SMALLEST_BIN, BinSize, bin_log_sizes,
                              build_detection_head, detection_loss, with_size_bins)
from models.multitask import MultiTaskTrainer, build_model
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


def _expected_bin_gradient(logits, cell, sizes, weight):
    """BIN_LOSS_WEIGHT x the gradient of KL(two-hot || softmax), softmax - target, at one cell whose
    true box is `sizes` (cells), x its weight / 2 sides (one object)."""
    values = bin_log_sizes(BINS, LARGEST)
    expected = np.zeros((2 * BINS,), np.float32)
    for side, true_size in enumerate(sizes):
        position = (math.log(true_size) - values[0]) / (values[1] - values[0])
        left = int(position)
        target = np.zeros(BINS)
        target[left], target[left + 1] = left + 1 - position, position - left
        softmax = tf.nn.softmax(logits[0, cell[0], cell[1], side * BINS:(side + 1) * BINS]).numpy()
        expected[side * BINS:(side + 1) * BINS] = BIN_LOSS_WEIGHT * weight * (softmax - target) / 2
    return expected


def _loss_and_gradients(size_bins, y=None, neighbours=False):
    """detection_loss on a prediction that misses, with or without bin logits -> (value, gradients)."""
    rng = np.random.default_rng(1)
    output = tf.Variable(np.concatenate([rng.normal(-2.0, 1.0, (1, *GRID, CLASSES)), np.full((1, *GRID, 2), 3.0),
                                         np.full((1, *GRID, 2), 0.2)], axis=-1).astype(np.float32))
    logits = tf.Variable(rng.normal(0.0, 1.0, (1, *GRID, 2 * BINS)).astype(np.float32))
    with tf.GradientTape() as tape:
        value = detection_loss(one_object_targets(GRID, CLASSES) if y is None else y, output,
                               neighbours=neighbours, size_bins=logits if size_bins else None, largest=LARGEST)
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
    expected = np.zeros(logits_gradient.shape, np.float32)
    expected[0, 2, 3] = _expected_bin_gradient(logits, (2, 3), [2.0, 5.0], 1.0)  # one_object_targets' box
    np.testing.assert_allclose(logits_gradient.numpy(), expected, atol=1e-7)


def test_the_cells_around_a_centre_train_their_bins_by_their_weight():
    """With neighbours, a cell next to the centre learns the bins of the box it points at, by its
    weight, on top of the centre's."""
    y = one_object_targets(GRID, CLASSES)
    y["det_near_box"] = np.zeros((1, *GRID, 4), np.float32)
    y["det_near_weight"] = np.zeros((1, *GRID), np.float32)
    y["det_near_box"][0, 1, 3] = [3.0, 7.0, 0.5, 1.5]
    y["det_near_weight"][0, 1, 3] = 0.4
    _, _, logits, logits_gradient = _loss_and_gradients(True, y, neighbours=True)
    expected = np.zeros(logits_gradient.shape, np.float32)
    expected[0, 2, 3] = _expected_bin_gradient(logits, (2, 3), [2.0, 5.0], 1.0)
    expected[0, 1, 3] = _expected_bin_gradient(logits, (1, 3), [3.0, 7.0], 0.4)
    np.testing.assert_allclose(logits_gradient.numpy(), expected, atol=1e-7)


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


@pytest.mark.parametrize("bins", [1, -1])
def test_the_head_refuses_a_bin_count_that_is_no_distribution(bins):
    with pytest.raises(ValueError, match=f"size_bins={bins}"):
        build_detection_head(keras.Input((8, 8, 16)), 16, size_bins=bins)
