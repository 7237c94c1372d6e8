"""The detector's training targets: box sizes over each object's area (TTFNet)."""
import numpy as np
import tensorflow as tf

from pipeline.inputs import detection_targets as targets

IMAGE = (128, 256)  # 32 x 64 cells at stride 4


def _encode(boxes, classes):
    maps = targets.encode_detection(tf.constant(boxes, tf.float32), tf.constant(classes, tf.int32), IMAGE, 3)
    return {k: v.numpy() for k, v in maps.items()}


def test_a_box_size_is_learned_over_its_area_with_weights_summing_to_one():
    car, person = [40.0, 20.0, 80.0, 44.0], [180.0, 60.0, 186.0, 76.0]  # 10 x 6 and 1.5 x 4 cells
    maps = _encode([car, person], [0, 1])
    weight, size = maps["det_size_weight"], maps["det_size"]
    car_cells = weight[:, :40] > 0
    np.testing.assert_allclose(weight[:, :40].sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(weight[:, 40:].sum(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(size[:, :40][car_cells], np.tile([10.0, 6.0], (car_cells.sum(), 1)))
    np.testing.assert_array_equal(size[:, :40][~car_cells], 0.0)
    # the box scaled by 0.54 about its centre (15, 8): cells 12-17 x 6-9; the centre cell, which
    # decoding reads, weighs most
    expected = np.zeros_like(car_cells)
    expected[6:10, 12:18] = True
    np.testing.assert_array_equal(car_cells, expected)
    assert np.unravel_index(np.argmax(weight[:, :40]), car_cells.shape) == (8, 15)


def test_a_cell_in_two_areas_belongs_to_the_object_centred_nearer():
    car, person = [40.0, 20.0, 80.0, 44.0], [66.0, 26.0, 72.0, 42.0]  # the person's centre cell (8, 17)
    for boxes, classes in (([car, person], [0, 1]), ([person, car], [1, 0])):  # whichever comes first
        maps = _encode(boxes, classes)
        # (7, 17) is in both areas, nearer the person's centre (its Gaussian 0.021 there, the car's 0.015)
        for cell in ((8, 17), (7, 17), (9, 17)):
            np.testing.assert_array_equal(maps["det_size"][cell], [1.5, 4.0])
        np.testing.assert_array_equal(maps["det_size"][8, 15], [10.0, 6.0])
        np.testing.assert_allclose(maps["det_size_weight"].sum(), 2.0, rtol=1e-5)  # each object once


def test_a_centre_cell_two_objects_share_goes_to_the_smaller_box_size_and_offset_alike():
    car, person = [40.0, 20.0, 80.0, 44.0], [58.0, 26.0, 64.0, 42.0]  # both centred in cell (8, 15)
    for boxes, classes in (([car, person], [0, 1]), ([person, car], [1, 0])):
        maps = _encode(boxes, classes)
        np.testing.assert_array_equal(maps["det_size"][8, 15], [1.5, 4.0])
        np.testing.assert_array_equal(maps["det_offset"][8, 15], [0.25, 0.5])  # the car's is (0, 0)
        assert maps["det_mask"].sum() == 1.0 and maps["det_mask"][8, 15] == 1.0


def test_a_frame_without_objects_has_no_size_targets():
    maps = _encode(np.zeros((0, 4)), np.zeros((0,)))
    assert maps["det_size_weight"].shape == (32, 64) and not maps["det_size_weight"].any()
    assert not maps["det_size"].any()
