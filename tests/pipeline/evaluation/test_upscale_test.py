"""The upscale test: the resized net is the same net, small boxes come from the upscaled pass and the
rest from the plain one, an object found by both is kept once, segmentation averages the two passes,
a band of rows confines all of it to the band, and evaluate says it was used."""
import numpy as np
import pytest
import tensorflow as tf

from data.errors import UserError
from models.multitask import rebuild_at
from pipeline import trained
from pipeline.evaluation import evaluate
from pipeline.evaluation.upscale_test import (band, band_size, merge_segmentation, merge_small_objects,
                                               small_height, upscaled_size)
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


def test_a_band_is_whole_rows_and_its_upscaled_height_a_multiple_of_32():
    assert band(192, (0.25, 0.67)) == (48, 129)  # 128.64 rounds outwards
    assert band_size(192, 384, 1.5, (0.25, 0.67)) == (128, 576)  # 81 rows x 1.5 = 121.5 -> 4 strides
    assert band_size(192, 384, 1.5) == upscaled_size(192, 384, 1.5)
    with pytest.raises(ValueError, match="leave no band"):
        band(192, (0.5, 0.5))
    with pytest.raises(ValueError, match="leaves a 192x384 input"):  # the factor is checked on the frame
        band_size(192, 384, 1.01, (0.25, 0.67))
    with pytest.raises(ValueError, match="leaves the 128-row band at 128 rows"):  # and on the band
        band_size(192, 384, 1.1, (0.0, 2 / 3))


def test_a_band_replaces_small_boxes_inside_it_only_and_leaves_the_ones_it_cuts_to_the_first_pass():
    edges = (40, 90)  # the band the second pass saw, input px; upscaled 2x it is 100 px high
    plain = _decoded((10, 50, 14, 60, 0.6, 1),     # small, inside the band: replaced
                     (30, 5, 34, 15, 0.5, 1),      # small, above the band: kept
                     (50, 35, 54, 45, 0.4, 1))     # small, across the band's top: kept
    upscaled = _decoded((21, 21, 29, 41, 0.7, 1),  # 10.5..14.5 x 50.5..60.5 in the frame
                        (101, 0, 109, 10, 0.8, 1))  # touches the band's top: the first pass's
    merged = merge_small_objects(plain, upscaled, (2.0, 2.0), below=36.0, num_classes=2, top_k=5, edges=edges)
    assert _as_rows(merged) == [(10.5, 50.5, 14.5, 60.5, 0.7, 1), (30, 5, 34, 15, 0.5, 1), (50, 35, 54, 45, 0.4, 1)]


def test_near_a_band_edge_an_object_is_kept_once_by_either_pass_and_the_frames_own_edges_are_no_band_edges():
    # 2.5 px inside the top edge in the first pass, 0.8 px in the second: the second drops it, the first keeps it.
    plain = _decoded((10, 42.5, 14, 52.5, 0.6, 1))
    upscaled = _decoded((20, 1.6, 28, 21.6, 0.7, 1))  # 10..14 x 40.8..50.8 in the frame
    merged = merge_small_objects(plain, upscaled, (2.0, 2.0), 36.0, 2, 5, edges=(40, 90))
    assert _as_rows(merged) == [(10, 42.5, 14, 52.5, 0.6, 1)]
    # 1.5 px inside in the second pass: both keep it, and the NMS keeps the better one.
    upscaled = _decoded((20, 3, 28, 23, 0.7, 1))
    merged = merge_small_objects(plain, upscaled, (2.0, 2.0), 36.0, 2, 5, edges=(40, 90))
    assert _as_rows(merged) == [(10, 41.5, 14, 51.5, 0.7, 1)]
    # A band that reaches the frame's bottom has no bottom edge: a box cut by the frame stays the second pass's.
    plain = _decoded((10, 180, 14, 192, 0.6, 1))
    upscaled = _decoded((20, 260, 28, 284, 0.7, 1))  # 10..14 x 130..142, + 50: 180..192
    merged = merge_small_objects(plain, upscaled, (2.0, 2.0), 36.0, 2, 5, edges=(50, None))
    assert _as_rows(merged) == [(10, 180, 14, 192, 0.7, 1)]


def test_segmentation_outside_the_band_is_the_first_pass_alone():
    rng = np.random.default_rng(0)
    plain = rng.normal(size=(1, 6, 4, 3)).astype(np.float32)
    upscaled = rng.normal(size=(1, 4, 8, 3)).astype(np.float32)  # rows 2-4 at 2x
    merged = tf.nn.softmax(merge_segmentation(tf.constant(plain), tf.constant(upscaled), (2, 4))).numpy()
    alone = tf.nn.softmax(plain).numpy()
    np.testing.assert_allclose(merged[:, :2], alone[:, :2], atol=1e-6)
    np.testing.assert_allclose(merged[:, 4:], alone[:, 4:], atol=1e-6)
    shrunk = tf.image.resize(tf.nn.softmax(upscaled), (2, 4), method="area").numpy()
    np.testing.assert_allclose(merged[:, 2:4], (alone[:, 2:4] + shrunk) / 2, atol=1e-6)


def test_evaluate_with_a_band_says_which_rows_in_its_own_folder(tiny_trained, tmp_path):
    saved, plain, report = evaluated_with(tiny_trained, tmp_path,
                                          ["evaluate.upscale_test=1.5", "evaluate.upscale_rows=[0.25,0.75]"],
                                          "eval-up1.5-rows0.25-0.75")
    assert saved["upscale_rows"] == [0.25, 0.75] and saved["inference"]["upscale_band_px"] == [16, 48]
    assert "a second pass on rows 16-48 of the frame upscaled 1.5x (64x128 px)" in report
    assert "forward passes on the frame and on its rows 16-48 upscaled 1.5x" in report
    assert saved["depth"]["abs_rel"] == pytest.approx(plain["depth"]["abs_rel"], rel=1e-6)
    with pytest.raises(UserError, match="top < bottom"):
        tiny(tmp_path, "evaluate.upscale_rows=[0.6,0.4]")
