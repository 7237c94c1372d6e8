"""The flip test: a mirrored frame's outputs land in the original frame's coordinates, averaging two
equal predictions changes nothing, and flip-tested predictions of a mirrored frame are the mirror
image of those of the frame itself."""
import numpy as np
import pytest
import tensorflow as tf

from models.detection_decode import decode_detections
from pipeline import trained
from pipeline.evaluation.flip_test import flip_tested, merge_outputs, mirror_outputs
from support import evaluated_with

STRIDE = 4


def _one_box_map(box, height=8, width=16, classes=2, label=1):
    """A detection output [1, h, w, C+4] holding one peak that decodes to `box` (x1, y1, x2, y2 px)."""
    out = np.zeros((1, height, width, classes + 4), np.float32)
    out[..., :classes] = -10.0
    cx, cy = (box[0] + box[2]) / 2 / STRIDE, (box[1] + box[3]) / 2 / STRIDE
    col, row = int(cx), int(cy)
    out[0, row, col, label] = 5.0
    out[0, row, col, classes:classes + 2] = ((box[2] - box[0]) / STRIDE, (box[3] - box[1]) / STRIDE)
    out[0, row, col, classes + 2:] = (cx - col, cy - row)
    return out


def test_a_mirrored_frames_box_decodes_where_the_object_is_in_the_original():
    width = 16 * STRIDE
    box = (30.0, 10.0, 45.0, 28.0)  # centre x 37.5: cell 9 at offset 0.375; mirrored 26.5: cell 6, 0.625
    mirrored = (width - box[2], box[1], width - box[0], box[3])
    back = mirror_outputs({"detection": tf.constant(_one_box_map(mirrored))})["detection"]
    decoded = decode_detections(back, top_k=1)
    np.testing.assert_allclose(decoded["boxes"][0, 0].numpy(), box, atol=1e-4)
    assert int(decoded["classes"][0, 0]) == 1


def test_averaging_a_prediction_with_itself_changes_nothing():
    rng = np.random.default_rng(0)
    detection = np.concatenate([rng.normal(0, 3, (2, 8, 16, 3)), rng.uniform(0.5, 9, (2, 8, 16, 2)),
                                rng.uniform(0, 1, (2, 8, 16, 2))], -1).astype(np.float32)
    outputs = {"detection": detection, "segmentation": rng.normal(0, 2, (2, 32, 64, 5)).astype(np.float32),
               "depth": rng.uniform(1, 80, (2, 32, 64, 1)).astype(np.float32)}
    merged = merge_outputs(outputs, outputs)
    np.testing.assert_allclose(merged["detection"].numpy(), detection, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(tf.argmax(merged["segmentation"], -1).numpy(),
                                  np.argmax(outputs["segmentation"], -1))
    np.testing.assert_allclose(merged["depth"].numpy(), outputs["depth"], rtol=1e-6)


def test_flip_tested_predictions_are_mirror_symmetric(tiny_trained):
    config, model_path = tiny_trained
    net = trained.load(model_path)
    height, width = net.inputs[0].shape[1:3]
    image = tf.constant(np.random.default_rng(1).uniform(0, 255, (1, height, width, 3)), tf.float32)
    plain = trained.decode(flip_tested(net, image), top_k=5)
    mirrored = trained.decode(flip_tested(net, tf.reverse(image, axis=[2])), top_k=5)
    np.testing.assert_array_equal(mirrored["segmentation"].numpy(), plain["segmentation"].numpy()[:, :, ::-1])
    np.testing.assert_allclose(mirrored["depth"].numpy(), plain["depth"].numpy()[:, :, ::-1], rtol=1e-4)
    np.testing.assert_allclose(mirrored["scores"].numpy(), plain["scores"].numpy(), rtol=1e-4)
    boxes = plain["boxes"].numpy()[0]
    expected = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], -1)
    np.testing.assert_allclose(mirrored["boxes"].numpy()[0], expected, atol=1e-3)


def test_evaluate_with_the_flip_test_says_so_in_its_own_folder(tiny_trained, tmp_path):
    saved, plain, report = evaluated_with(tiny_trained, tmp_path, "evaluate.flip_test=true", "eval-flip")
    assert saved["flip_test"] is True and saved["inference"]["flip_test"] is True and plain["flip_test"] is False
    assert "flip test: each frame and its mirror image" in report
    # Averaging with the mirror image moves the depth estimate of every pixel: a different score.
    assert saved["depth"]["abs_rel"] != pytest.approx(plain["depth"]["abs_rel"], rel=1e-6)
