"""train.detection_size_gradient: the box sizes' gradient is scaled, the loss value is not."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.detection import detection_loss
from models.losses import per_example_losses
from pipeline.config import ModelConfig, TrainConfig
from support import one_object_targets

CLASSES = 3
GRID = (6, 8)


def _loss_and_gradient(loss):
    """loss(y, output) on a prediction that misses in every part -> (value, d value / d output)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(-2.0, 1.0, (1, *GRID, CLASSES))
    sizes = np.full((1, *GRID, 2), 3.0)  # 3x3 cells against 2x5
    offsets = np.full((1, *GRID, 2), 0.2)
    output = tf.Variable(np.concatenate([logits, sizes, offsets], axis=-1).astype(np.float32))
    with tf.GradientTape() as tape:
        value = loss(one_object_targets(GRID, CLASSES), output)
    return float(value[0]), tape.gradient(value, output).numpy()


@pytest.mark.parametrize("quality", [False, True])
def test_the_size_gradient_scales_the_sizes_gradient_and_leaves_the_value_and_the_rest(quality):
    value, gradient = _loss_and_gradient(lambda y, out: detection_loss(y, out, quality))
    scaled_value, scaled = _loss_and_gradient(
        lambda y, out: detection_loss(y, out, quality, size_gradient=3.0))
    assert scaled_value == pytest.approx(value, rel=1e-6)  # what uncertainty weighting reads
    sizes = slice(CLASSES, CLASSES + 2)
    assert np.abs(gradient[..., sizes]).max() > 0.0
    np.testing.assert_allclose(scaled[..., sizes], 3.0 * gradient[..., sizes], rtol=1e-5)
    np.testing.assert_allclose(scaled[..., :CLASSES], gradient[..., :CLASSES], rtol=1e-6)
    np.testing.assert_allclose(scaled[..., CLASSES + 2:], gradient[..., CLASSES + 2:], rtol=1e-6)


def test_training_reads_the_config_and_validation_does_not():
    model_config = ModelConfig(tasks=["detection"])
    losses = [per_example_losses(model_config, train_config)["detection"]
              for train_config in (TrainConfig(detection_size_gradient=2.0), TrainConfig(), None)]
    # The per-task losses read the net's outputs by name.
    doubled, single, plain = (_loss_and_gradient(lambda y, out, loss=loss: loss(y, {"detection": out}))[1]
                              for loss in losses)
    sizes = slice(CLASSES, CLASSES + 2)
    np.testing.assert_allclose(doubled[..., sizes], 2.0 * single[..., sizes], rtol=1e-5)
    np.testing.assert_allclose(plain[..., sizes], single[..., sizes], rtol=1e-6)
