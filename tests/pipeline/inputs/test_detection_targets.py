"""The detector's training targets: box sizes over each object's area (TTFNet)."""
import numpy as np
import tensorflow as tf

from data.vocabulary import HEAT_CENTRE
from pipeline.inputs import detection_targets as targets

IMAGE = (128, 256)  # 32 x 64 cells at stride 4


def _encode(boxes, classes):
    maps = targets.encode_detection(tf.constant(boxes, tf.float32), tf.constant(classes, tf.int32), IMAGE, 3,
                                    neighbour_boxes=True)
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


def test_the_cells_around_a_centre_learn_its_box_weighted_by_nearness():
    # a person centred on the boundary of rows 7 and 8 (x 8.5, y 8.0 in cells): its centre cell is
    # (8, 8), the row above as near to the centre as the centre cell is
    maps = _encode([[30.0, 20.0, 38.0, 44.0]], [1])
    weight, box = maps["det_near_weight"], maps["det_near_box"]
    near = np.exp(-0.5 ** 2 / (2 * targets.NEIGHBOUR_SIGMA ** 2))
    np.testing.assert_allclose(weight[7, 8], near, rtol=1e-5)
    np.testing.assert_allclose(weight[9, 8], np.exp(-1.5 ** 2 / (2 * targets.NEIGHBOUR_SIGMA ** 2)), rtol=1e-5)
    assert weight[8, 8] == 0.0  # the centre cell keeps its own target (det_offset, det_mask)
    assert np.count_nonzero(weight) == 8 and weight[6].sum() == weight[10].sum() == 0.0
    # each cell's offset points back at the object's centre; the size is the object's
    np.testing.assert_allclose(box[7, 7], [2.0, 6.0, 1.5, 1.0])
    np.testing.assert_allclose(box[9, 9], [2.0, 6.0, -0.5, -1.0])
    np.testing.assert_allclose(box[8, 9, 2:] + [9, 8], box[7, 8, 2:] + [8, 7])


def test_a_cell_around_two_centres_goes_to_the_nearer_and_never_over_another_objects_area():
    left, right = [24.0, 20.0, 30.0, 36.0], [32.0, 20.0, 38.0, 36.0]  # centres x 6.75 and 8.75 cells
    for boxes in ([left, right], [right, left]):
        maps = _encode(boxes, [1, 1])
        # column 7 lies between the centre cells 6 and 8 (row 7): its middle is nearer the left centre
        np.testing.assert_allclose(maps["det_near_box"][6:9, 7, 2], 6.75 - 7.0)
        np.testing.assert_allclose(maps["det_near_box"][6:9, 9, 2], 8.75 - 9.0)
        # its middle (7.5, 7.5) is 0.75 and 0.5 cells from the left centre (6.75, 7.0)
        distance2 = 0.75 ** 2 + 0.5 ** 2
        np.testing.assert_allclose(maps["det_near_weight"][7, 7], np.exp(-distance2 / (2 * targets.NEIGHBOUR_SIGMA ** 2)),
                                   rtol=1e-5)
    car, person = [40.0, 20.0, 80.0, 44.0], [66.0, 26.0, 72.0, 42.0]  # the person's centre cell (8, 17)
    maps = _encode([car, person], [0, 1])
    # (8, 16) is around the person's centre but in the car's size area: one size target per cell
    assert maps["det_size_weight"][8, 16] > 0 and maps["det_near_weight"][8, 16] == 0.0
    assert maps["det_near_weight"][7, 18] > 0


def test_a_heat_map_peak_is_one_at_each_centre_cell_and_nowhere_else():
    car, person = [40.0, 20.0, 80.0, 44.0], [180.0, 60.0, 186.0, 76.0]
    heat = _encode([car, person], [0, 1])["det_heatmap"]
    assert heat[8, 15, 0] == 1.0 and heat[17, 45, 1] == 1.0  # centres (15.0, 8.0) and (45.75, 17.0)
    assert (heat >= 1.0 - 1e-3).sum() == 2  # the focal loss's positives: one per object
    assert heat[..., 2].max() == 0.0  # no cyclist


def test_the_heat_map_gaussian_is_centred_on_the_object_not_on_its_cell():
    # a 1.5 x 4-cell person centred at (45.75, 17.0) cells: on the border of rows 16 and 17 (its
    # centre cell is row 17), and in the right half of column 45
    heat = _encode([[180.0, 60.0, 186.0, 76.0]], [1])["det_heatmap"][..., 1]
    sigma_x, sigma_y = 0.3, 0.54 * 4.0 / 6.0  # TTFNet's alpha x side / 6, floored at 0.3 cells

    def gaussian(row, column):  # about the object's centre, measured to the cell's middle
        dx, dy = column + 0.5 - 45.75, row + 0.5 - 17.0
        return np.exp(-dx ** 2 / (2 * sigma_x ** 2) - dy ** 2 / (2 * sigma_y ** 2))

    for cell in ((16, 45), (18, 45), (17, 46), (17, 44), (16, 46)):
        np.testing.assert_allclose(heat[cell], gaussian(*cell), rtol=1e-4, atol=1e-7)
    assert heat[16, 45] > 0.25  # the cell across the border its centre sits on: a near miss
    assert heat[16, 45] > 10 * heat[18, 45] and heat[17, 46] > 10 * heat[17, 44]  # the sides it leans to


def test_a_very_large_box_centred_on_a_cell_border_still_has_one_positive():
    # 250 x 125 cells, its centre on the border of columns 124 and 125: sigma 22.5 cells across, so
    # the next cell's Gaussian is 0.9998, above the focal loss's HEAT_CENTRE (0.999) for a centre
    maps = targets.encode_detection(tf.constant([[0.0, 0.0, 1000.0, 500.0]]), tf.constant([0]), (512, 1024), 3)
    heat = maps["det_heatmap"].numpy()
    assert (heat >= HEAT_CENTRE).sum() == 1 and heat[62, 125, 0] == 1.0
    assert heat[62, 124, 0] == np.float32(targets.NEAR_MISS_CAP)
