"""The upscale test: the resized net is the same net, small boxes come from the upscaled pass and the
rest from the plain one, an object found by both is kept once, segmentation averages the two passes,
and evaluate says it was used."""
import numpy as np
import pytest
import tensorflow as tf

from data.errors import UserError
from models.multitask import rebuild_at
from pipeline import trained
from pipeline.evaluation import evaluate
from pipeline.evaluation.upscale_test import merge_segmentation, merge_small_objects, small_height, upscaled_size
from support import evaluated_with, tiny


def _decoded(*detections):
    """[(x1, y1, x2, y2, score, class), ...] -> one frame's decoded detections (batch 1)."""
    rows = np.array(detections, np.float32)
    return {"boxes": tf.constant(rows[None, :, :4]), "scores": tf.constant(rows[None, :, 4]),
            "classes": tf.constant(rows[None, :, 5].astype(np.int32))}


def _as_rows(merged):
    kept = merged["scores"][0].numpy() > 0
    return [tuple(np.round(box, 3)) + (round(float(score), 3), int(label)) for box, score, label in
            zip(merged["boxes"][0].numpy()[kept], merged["scores"][0].numpy()[kept], merged["classes"][0].numpy()[kept])]


def test_sizes_round_to_the_encoders_multiple_of_32_and_the_split_is_the_height_band_edge():
    assert upscaled_size(192, 384, 1.5) == (288, 576)
    assert upscaled_size(64, 96, 1.5) == (96, 128)  # 144 px is 4.5 strides: rounded to 4
    with pytest.raises(ValueError, match="leaves a 192x384 input at 192x384"):
        upscaled_size(192, 384, 1.01)
    assert small_height(192) == 36.0 and small_height(128) == 24.0


def test_small_boxes_come_from_the_upscaled_pass_and_the_rest_from_the_plain_one():
    plain = _decoded((10, 10, 60, 60, 0.9, 0),    # a car 50 px high: kept
                     (100, 20, 104, 30, 0.6, 1),  # a person 10 px high: replaced by the upscaled pass's
                     (200, 5, 203, 14, 0.5, 1))   # 9 px, found only here: dropped with the small range
    upscaled = _decoded((20, 20, 120, 120, 0.95, 0),  # the car at 2x, 50 px: dropped (the large range)
                        (201, 41, 209, 61, 0.7, 1),   # the person at 2x: 100.5..104.5 x 20.5..30.5
                        (201, 41, 209, 61, 0.4, 2))   # the same box as another class: NMS is per class
    merged = merge_small_objects(plain, upscaled, (2.0, 2.0), below=36.0, num_classes=3, top_k=5)
    assert _as_rows(merged) == [(10, 10, 60, 60, 0.9, 0), (100.5, 20.5, 104.5, 30.5, 0.7, 1),
                                (100.5, 20.5, 104.5, 30.5, 0.4, 2)]
    assert merged["scores"].shape == (1, 5) and merged["classes"].dtype == tf.int32
    # The boxes outside their pass's range are gone, not kept at score 0: the last two slots are padding.
    np.testing.assert_array_equal(merged["boxes"][0, 3:].numpy(), 0.0)
    np.testing.assert_array_equal(merged["scores"][0, 3:].numpy(), 0.0)


def test_an_object_at_the_split_height_found_by_both_passes_is_kept_once():
    plain = _decoded((10, 10, 30, 47, 0.8, 1))  # 37 px: the plain pass's
    upscaled = _decoded((21, 21, 61, 91, 0.9, 1))  # at 2x: 10.5..30.5 x 10.5..45.5, 35 px: the upscaled pass's
    merged = merge_small_objects(plain, upscaled, (2.0, 2.0), below=36.0, num_classes=2, top_k=3)
    assert _as_rows(merged) == [(10.5, 10.5, 30.5, 45.5, 0.9, 1)]


def test_the_resized_net_is_the_same_net_at_another_input_size(tiny_trained):
    _, model_path = tiny_trained
    net = trained.load(model_path)
    height, width = net.inputs[0].shape[1:3]
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)), tf.float32)
    same = rebuild_at(net, (height, width))
    for task, value in net({"image": image}, training=False).items():
        np.testing.assert_array_equal(same({"image": image}, training=False)[task].numpy(), value.numpy())
    bigger = rebuild_at(net, (2 * height, 2 * width))
    outputs = bigger({"image": tf.image.resize(image, (2 * height, 2 * width))}, training=False)
    assert outputs["depth"].shape[1:3] == (2 * height, 2 * width)
    assert outputs["detection"].shape[1:3] == tuple(2 * np.array(net.output["detection"].shape[1:3]))


def test_evaluate_with_the_upscale_test_says_so_in_its_own_folder(tiny_trained, tmp_path):
    saved, plain, report = evaluated_with(tiny_trained, tmp_path, "evaluate.upscale_test=1.5", "eval-up1.5")
    assert saved["upscale_test"] == 1.5 and saved["inference"]["upscale_test"] == 1.5 and plain["upscale_test"] == 1.0
    assert "upscale test: boxes under 12 px from a second pass on the frame upscaled 1.5x (96x128 px)" in report
    assert saved["inference"]["upscaled_size"] == [96, 128]
    assert saved["depth"]["abs_rel"] == pytest.approx(plain["depth"]["abs_rel"], rel=1e-6)  # the plain pass's
    # Segmentation averages in the upscaled pass: every pixel's probabilities move, and the score with them.
    assert saved["segmentation"]["mIoU"] != pytest.approx(plain["segmentation"]["mIoU"], rel=1e-6)


def test_segmentation_averages_the_two_passes_probabilities_at_the_frames_size():
    plain = np.log(np.array([[[[0.6, 0.4], [0.2, 0.8]]]], np.float32))  # [1, 1, 2, 2]: two pixels
    # At 2x each pixel is 2x2 cells; the first pixel's cells average to (0.2, 0.8), the second's to (0.4, 0.6).
    upscaled = np.zeros((1, 2, 4, 2), np.float32)
    upscaled[0, :, :2] = np.log([[[0.1, 0.9], [0.3, 0.7]], [[0.1, 0.9], [0.3, 0.7]]])
    upscaled[0, :, 2:] = np.log([0.4, 0.6])
    merged = tf.nn.softmax(merge_segmentation(tf.constant(plain), tf.constant(upscaled))).numpy()
    np.testing.assert_allclose(merged[0, 0], [[0.4, 0.6], [0.3, 0.7]], atol=1e-6)


def test_a_depth_only_model_a_shrinking_factor_or_one_that_rounds_to_nothing_is_refused(tiny_trained, monkeypatch):
    config, model_path = tiny_trained
    with pytest.raises(UserError, match="evaluate.upscale_test"):
        tiny(config.run_root, "evaluate.upscale_test=0.5")
    net = trained.load(model_path)
    frame = np.zeros((1, *net.inputs[0].shape[1:]), np.float32)
    with pytest.raises(UserError, match="evaluate.upscale_test: an upscale of 1.1 leaves a 64x96 input"):
        evaluate.predict_batch(net, frame, upscale=1.1)
    monkeypatch.setattr(trained, "tasks", lambda model: ["depth"])
    with pytest.raises(UserError, match="neither head"):
        evaluate.predict_batch(net, frame, upscale=1.5)


def test_the_studies_score_one_pass_whatever_the_evaluate_options(tmp_path):
    """Baselines and ablation time one pass per model, so they score one pass too."""
    config = tiny(tmp_path, "evaluate.flip_test=true", "evaluate.upscale_test=1.5", "evaluate.grid_frames=2")
    plain = evaluate.one_pass(config)
    assert (plain.evaluate.flip_test, plain.evaluate.upscale_test, plain.evaluate.grid_frames) == (False, 1.0, 2)
    assert (config.evaluate.flip_test, config.evaluate.upscale_test) == (True, 1.5)  # a copy, not changed
