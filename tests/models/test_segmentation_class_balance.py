"""train.segmentation_class_balance: rare classes weigh more in the segmentation loss (models/segmentation.py)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from data.schema import IGNORE
from models.segmentation import segmentation_loss

CLASSES = 9
SIZE = (16, 16)


def _loss_and_gradient(labels, logits, hard_pixels=False, balance=0.0):
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = segmentation_loss(labels, logits, hard_pixels, balance)
    return loss.numpy(), tape.gradient(loss, logits).numpy()


def _scene(rng):
    """Two frames of class 0 with a few pixels of class 5 (a pole), some unlabelled; random logits."""
    labels = np.zeros((2, *SIZE), np.int32)
    labels[0, 2:10, 3] = 5          # 8 pole pixels
    labels[1, 4:8, 7] = 5           # 4 more
    labels[1, 0, :] = IGNORE
    return labels, rng.normal(size=(2, *SIZE, CLASSES)).astype(np.float32)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])  # 0: the plain mean
def test_each_pixel_weighs_its_class_share_of_the_batch_to_the_power_minus_p(power):
    labels, logits = _scene(np.random.default_rng(0))
    loss, _ = _loss_and_gradient(labels, logits, balance=power)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labelled = labels != IGNORE
    counts = {c: np.sum(labelled & (labels == c)) for c in (0, 5)}
    share = {c: counts[c] / sum(counts.values()) for c in counts}
    for frame in range(2):
        xent, weight = [], []
        for (y, x), label in np.ndenumerate(labels[frame]):
            if label != IGNORE:
                xent.append(-log_p[frame, y, x, label])
                weight.append(share[label] ** -power)
        expected = np.dot(weight, xent) / np.sum(weight)  # a weighted mean: the loss stays cross-entropy sized
        assert np.isclose(loss[frame], expected, rtol=1e-5)


def test_the_rare_class_gets_more_of_the_gradient_and_ignored_pixels_none():
    labels, logits = _scene(np.random.default_rng(1))
    _, plain = _loss_and_gradient(labels, logits)
    _, balanced = _loss_and_gradient(labels, logits, balance=0.5)
    pole = labels == 5
    share = lambda g: np.abs(g)[pole].sum() / np.abs(g).sum()  # noqa: E731
    assert share(balanced) > 3 * share(plain)
    assert np.abs(balanced[1, 0]).max() == 0.0


def test_with_ohem_the_weights_apply_to_the_hard_pixels_kept():
    labels, logits = _scene(np.random.default_rng(2))
    logits[..., 0] += 6.0 * (labels == 0)  # class-0 pixels easy, poles hard
    _, balanced = _loss_and_gradient(labels, logits, hard_pixels=True, balance=0.5)
    _, ohem = _loss_and_gradient(labels, logits, hard_pixels=True)
    kept = np.abs(ohem).sum(-1) > 0
    np.testing.assert_array_equal(np.abs(balanced).sum(-1) > 0, kept)  # the same pixels train
    assert not np.allclose(balanced, ohem)


def test_the_training_objective_takes_the_balance_from_the_config_and_validation_does_not():
    from models.losses import per_example_losses
    from pipeline.config import ModelConfig, TrainConfig

    labels, logits = _scene(np.random.default_rng(4))
    y, outputs = {"segmentation": labels}, {"segmentation": tf.constant(logits)}
    model = ModelConfig()
    training = per_example_losses(model, TrainConfig(segmentation_class_balance=0.25))["segmentation"]
    validation = per_example_losses(model)["segmentation"]
    np.testing.assert_allclose(training(y, outputs), _loss_and_gradient(labels, logits, balance=0.25)[0], rtol=1e-6)
    np.testing.assert_allclose(validation(y, outputs), _loss_and_gradient(labels, logits)[0], rtol=1e-6)
    assert not np.allclose(training(y, outputs), validation(y, outputs))
