"""Repeat factor sampling: LVIS's factors, the size protocol, and how often frames come back."""
import cv2
import numpy as np
import pytest
import tensorflow as tf

from pipeline.inputs import repeat_factor


def test_factors_follow_lvis_and_leave_common_and_absent_classes_at_one():
    factors = repeat_factor.class_factors([0.9, 0.25, 0.04, 0.0], threshold=1.0)
    np.testing.assert_allclose(factors, [np.sqrt(1 / 0.9), 2.0, 5.0, 1.0])
    np.testing.assert_allclose(repeat_factor.class_factors([0.9, 0.25], threshold=0.1), [1.0, 1.0])


@pytest.mark.parametrize("height, width", [(1, 3), (192, 384), (375, 1242), (70000, 2)])
def test_png_size_reads_the_header(height, width):
    ok, png = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    assert repeat_factor.png_size(tf.constant(png.tobytes())).numpy().tolist() == [height, width]


def test_a_class_counts_only_with_a_box_the_size_protocol_keeps():
    """A 375x1242 frame seen at 192x640: a 20-px-tall box is 10.2 px there, under a 12-px protocol;
    a 3-px-wide one is 1.5 px, under augment.py's 2 px."""
    boxes = tf.constant([[0, 0, 8, 20], [0, 0, 8, 30], [0, 0, 3, 40], [0, 0, 8, 40]], tf.float32)
    classes = tf.constant([0, 1, 2, -1], tf.int32)  # -1: an ignore region, never a class
    held = repeat_factor.classes_held(boxes, classes, tf.constant([375, 1242]), 3, model_size=(192, 640),
                                      min_box_height=12)
    assert held.numpy().tolist() == [False, True, False]


def _frames(classes_per_frame):
    examples = [{"image": np.zeros((8, 8, 3), np.uint8),
                 "boxes": np.array([[0, 0, 2, 8]] * len(c), np.float32).reshape(-1, 4),
                 "classes": np.array(c, np.int32),
                 "frame": np.int64(i)} for i, c in enumerate(classes_per_frame)]
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={"image": tf.TensorSpec([8, 8, 3], tf.uint8), "boxes": tf.TensorSpec([None, 4], tf.float32),
                          "classes": tf.TensorSpec([None], tf.int32), "frame": tf.TensorSpec([], tf.int64)})


def test_frames_come_back_by_their_rarest_class_on_average_and_the_draws_repeat_by_seed():
    """100 frames: 80 with class 0 only, 20 with classes 0 and 1. At t = 1.25 class 1 (f = 0.2) has
    the factor sqrt(1.25 / 0.2) = 2.5: over 40 passes each of its frames comes 2.5 times a pass."""
    frames = [[0]] * 80 + [[0, 1]] * 20
    factors = repeat_factor.class_factors([1.0, 0.2], threshold=1.25)
    np.testing.assert_allclose(factors, [1.25 ** 0.5, 2.5])

    def counts(seed):
        stream = repeat_factor.repeated(_frames(frames), factors, model_size=(8, 8), min_box_height=1, seed=seed)
        seen = np.zeros(100)
        passes = 40
        expected = passes * (80 * factors[0] + 20 * 2.5)
        for example in stream.take(int(expected)).as_numpy_iterator():
            seen[example["frame"]] += 1
        return seen, passes

    seen, passes = counts(seed=3)
    common, rare = seen[:80].sum() / (80 * passes), seen[80:].sum() / (20 * passes)
    assert abs(rare - 2.5) < 0.15 and abs(common - factors[0]) < 0.1
    assert rare / common == pytest.approx(2.5 / factors[0], rel=0.08)
    assert np.array_equal(seen, counts(seed=3)[0])
    assert not np.array_equal(seen, counts(seed=4)[0])


def test_copies_of_one_frame_are_drawn_anew_each_pass():
    """Frame 0 (class 1, factor 1.5) comes once or twice a pass; frame 1 (factor 1) once, between passes."""
    stream = repeat_factor.repeated(_frames([[1], [0]]), np.array([1.0, 1.5]), model_size=(8, 8),
                                    min_box_height=1, seed=0)
    order = "".join(str(int(e["frame"])) for e in stream.take(600).as_numpy_iterator())
    per_pass = [len(copies) for copies in order.split("1")[:-1]]
    assert set(per_pass) == {1, 2}
    assert 1.4 < np.mean(per_pass) < 1.6
