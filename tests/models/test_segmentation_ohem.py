"""train.segmentation_ohem: the segmentation loss on hard pixels only (models/segmentation.py)."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from data.schema import IGNORE
from models.multitask import build_model
from models.segmentation import OHEM_MIN_KEPT, OHEM_THRESHOLD, segmentation_loss
from models.trainer import MultiTaskTrainer
from pipeline.config import ModelConfig, TrainConfig

CLASSES = 9
SIZE = (32, 32)  # 1,024 pixels: OHEM keeps at least the 64 hardest


def _logits_with_probability(probability: np.ndarray) -> np.ndarray:
    """[B, H, W, CLASSES] logits whose class 0 has the given softmax probability."""
    rest = (1.0 - probability) / (CLASSES - 1)
    logits = np.repeat(np.log(rest)[..., None], CLASSES, axis=-1)
    logits[..., 0] = np.log(probability)
    return logits.astype(np.float32)


def _loss_and_gradient(labels, logits, hard_pixels):
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = segmentation_loss(labels, logits, hard_pixels)
    return loss.numpy(), tape.gradient(loss, logits).numpy()


def test_ohem_trains_on_the_hard_pixels_and_leaves_the_easy_ones_alone():
    probability = np.full((1, *SIZE), 0.95)
    probability[0, :4, :] = 0.2  # 128 hard pixels: more than the 64 kept at least
    labels = np.zeros((1, *SIZE), np.int32)
    loss, gradient = _loss_and_gradient(labels, _logits_with_probability(probability), True)
    assert np.isclose(loss[0], -math.log(0.2), rtol=1e-5)  # the mean over the hard pixels only
    assert np.abs(gradient[0, 4:]).max() == 0.0
    assert np.abs(gradient[0, :4]).min() > 0.0
    plain, _ = _loss_and_gradient(labels, _logits_with_probability(probability), False)
    assert plain[0] < 0.5 * loss[0]


def test_ohem_keeps_the_hardest_pixels_when_few_are_hard():
    rng = np.random.default_rng(0)
    probability = rng.uniform(0.75, 0.99, (1, *SIZE))  # every pixel easy
    labels = np.zeros((1, *SIZE), np.int32)
    loss, gradient = _loss_and_gradient(labels, _logits_with_probability(probability), True)
    kept = int(SIZE[0] * SIZE[1] * OHEM_MIN_KEPT)
    hardest = np.sort(-np.log(probability.ravel()))[-kept:]
    assert np.isclose(loss[0], hardest.mean(), rtol=1e-5)
    assert np.count_nonzero(np.abs(gradient).sum(-1)) == kept
    assert -math.log(OHEM_THRESHOLD) > hardest.max()  # they were kept for the count, not the threshold


def test_ohem_ignores_unlabelled_pixels_and_keeps_a_sparse_example_whole():
    probability = np.full((2, *SIZE), 0.9)
    labels = np.full((2, *SIZE), IGNORE, np.int32)
    labels[1, 0, :10] = 0  # 10 labelled pixels, fewer than the 64 kept at least: all of them count
    probability[1, 0, :10] = np.linspace(0.5, 0.95, 10)
    loss, gradient = _loss_and_gradient(labels, _logits_with_probability(probability), True)
    assert loss[0] == 0.0 and np.abs(gradient[0]).max() == 0.0
    assert np.isclose(loss[1], np.mean(-np.log(probability[1, 0, :10])), rtol=1e-5)
    assert np.abs(gradient[1, 1:]).max() == 0.0


def test_the_trainer_trains_on_ohem_and_validates_on_plain_cross_entropy():
    model_config = ModelConfig(tasks=["segmentation"], widths=(8, 16, 24, 32), neck_width=16, head_width=16)
    net = build_model(model_config, SIZE)
    plain = MultiTaskTrainer(net, model_config, TrainConfig(weighting="fixed"))
    ohem = MultiTaskTrainer(net, model_config, TrainConfig(weighting="fixed", segmentation_ohem=True))
    probability = np.full((2, *SIZE), 0.95)
    probability[:, :4] = 0.2
    y = {"segmentation": np.zeros((2, *SIZE), np.int32), "has_segmentation": np.ones(2, np.float32)}
    outputs = {"segmentation": tf.constant(_logits_with_probability(probability))}
    _, trained, _ = ohem.compute_losses(y, outputs, training=True)
    _, validated, _ = ohem.compute_losses(y, outputs)
    _, reference, _ = plain.compute_losses(y, outputs, training=True)
    assert np.isclose(float(validated["segmentation"]), float(reference["segmentation"]), rtol=1e-6)
    assert float(trained["segmentation"]) > 1.01 * float(reference["segmentation"])
