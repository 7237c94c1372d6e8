"""train.detection_quality: heat-map centres learn the IoU of their box (GFL's quality focal loss)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.detection import box_iou_at_cells, detection_loss, focal_loss
from models.multitask import build_model
from models.trainer import MultiTaskTrainer
from pipeline.config import ModelConfig, TrainConfig
from support import one_object_targets

CLASSES = 3
GRID = (6, 8)


def _output(heat_logits, size, offset):
    return np.concatenate([heat_logits, size, offset], axis=-1).astype(np.float32)


def test_box_iou_at_cells_is_the_iou_of_the_two_boxes():
    true_size = np.array([[2.0, 5.0]], np.float32)
    true_offset = np.array([[0.5, 0.5]], np.float32)

    def iou(size, offset):
        box = np.array([[*size, *offset]], np.float32)
        return float(box_iou_at_cells(box, true_size, true_offset)[0])

    assert np.isclose(iou([2.0, 5.0], [0.5, 0.5]), 1.0)
    assert np.isclose(iou([1.0, 5.0], [0.5, 0.5]), 0.5)  # half as wide, same centre
    assert np.isclose(iou([2.0, 2.0], [0.5, 0.5]), 4.0 / 10.0)
    assert np.isclose(iou([2.0, 5.0], [1.5, 0.5]), 1.0 / 3.0)  # a cell to the right: 5 of 15 cells
    assert np.isclose(iou([0.4, 0.4], [0.9, 0.9]), 0.16 / 10.0)  # inside it, off centre: its own area
    assert np.isclose(iou([0.2, 5.0], [0.5, 0.5]), 0.1)


def test_quality_one_is_centernets_focal_loss_and_below_one_gfls():
    rng = np.random.default_rng(0)
    y = one_object_targets(GRID, CLASSES)
    logits = rng.normal(-2.0, 2.0, (1, *GRID, CLASSES)).astype(np.float32)
    prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    heat = y["det_heatmap"]
    peak = heat == 1.0
    centernet = np.where(peak, -(1 - prob) ** 2 * np.log(prob), -(1 - heat) ** 4 * prob ** 2 * np.log(1 - prob))
    plain = float(focal_loss(heat, logits)[0])
    assert np.isclose(plain, centernet.sum(), rtol=1e-5)
    assert np.isclose(float(focal_loss(heat, logits, quality=np.ones((1, *GRID)))[0]), plain, rtol=1e-6)
    q = 0.6  # and below 1, GFL's quality focal loss at the centre; the negatives as before
    gfl = np.where(peak, -np.abs(q - prob) ** 2 * (q * np.log(prob) + (1 - q) * np.log(1 - prob)), centernet)
    assert np.isclose(float(focal_loss(heat, logits, quality=np.full((1, *GRID), q))[0]), gfl.sum(), rtol=1e-5)


def test_a_centre_is_pulled_towards_its_iou_and_no_further():
    heat = one_object_targets(GRID, CLASSES)["det_heatmap"]
    quality = np.full((1, *GRID), 0.6, np.float32)

    def gradient_at_centre(probability):
        logits = np.full((1, *GRID, CLASSES), -8.0, np.float32)
        logits[0, 2, 3, 1] = np.log(probability / (1 - probability))
        logits = tf.constant(logits)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = focal_loss(heat, logits, quality=quality)
        return float(tape.gradient(loss, logits)[0, 2, 3, 1])

    assert gradient_at_centre(0.3) < 0.0  # below its IoU: the score is raised
    assert gradient_at_centre(0.9) > 0.0  # above it: lowered, where the plain loss raises it to 1
    assert abs(gradient_at_centre(0.6)) < 1e-6


def test_the_quality_target_moves_the_score_not_the_box():
    y = one_object_targets(GRID, CLASSES)
    logits = np.random.default_rng(1).normal(-2.0, 1.0, (1, *GRID, CLASSES))
    logits[0, 2, 3, 1] = 2.0  # a score of 0.88 on the centre's box (3x3 cells, offset 0.3): IoU 6 / 13
    out = _output(logits, np.full((1, *GRID, 2), 3.0), np.full((1, *GRID, 2), 0.3))

    def gradients(quality):
        pred = tf.constant(out)
        with tf.GradientTape() as tape:
            tape.watch(pred)
            loss = detection_loss(y, pred, quality)
        return tape.gradient(loss, pred).numpy()

    plain, with_quality = gradients(False), gradients(True)
    np.testing.assert_array_equal(with_quality[..., CLASSES:], plain[..., CLASSES:])
    assert plain[0, 2, 3, 1] < 0.0 < with_quality[0, 2, 3, 1]  # raised towards 1; lowered towards 0.46


def test_the_trainer_trains_on_quality_targets_and_validates_on_the_plain_loss():
    model_config = ModelConfig(tasks=["detection"], widths=(8, 16, 24, 32), neck_width=16, head_width=16)
    net = build_model(model_config, (32, 32))  # the outputs below are given, not the net's
    plain = MultiTaskTrainer(net, model_config, TrainConfig(weighting="fixed"))
    quality = MultiTaskTrainer(net, model_config, TrainConfig(weighting="fixed", detection_quality=True))
    y = {**one_object_targets(GRID, CLASSES), "has_detection": np.ones(1, np.float32)}
    logits = np.full((1, *GRID, CLASSES), -6.0, np.float32)
    logits[0, 2, 3, 1] = 4.0  # a confident peak on a box of IoU 0.4: the quality target penalises it
    outputs = {"detection": tf.constant(_output(logits, np.full((1, *GRID, 2), 2.0), np.full((1, *GRID, 2), 0.5)))}
    _, trained, _ = quality.compute_losses(y, outputs, training=True)
    _, validated, _ = quality.compute_losses(y, outputs)
    _, reference, _ = plain.compute_losses(y, outputs, training=True)
    assert np.isclose(float(validated["detection"]), float(reference["detection"]), rtol=1e-6)
    assert float(trained["detection"]) > 1.5 * float(reference["detection"])
