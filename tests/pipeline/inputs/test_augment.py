"""Augmentation keeps boxes on their objects and masks/depth aligned with the image."""
import dataclasses

import numpy as np
import pytest

from pipeline.inputs.augment import augment, resize_depth
from pipeline.config import AugmentConfig

RED = (255, 0, 0)


def known_frame():
    """A grey frame with one red rectangle (class 6, 10 m away) on a ground at 30 m."""
    image = np.full((96, 192, 3), 90, np.uint8)
    image[40:70, 120:160] = RED
    segmentation = np.zeros((96, 192), np.uint8)
    segmentation[40:70, 120:160] = 6
    depth = np.full((96, 192), 30.0, np.float32)
    depth[40:70, 120:160] = 10.0
    boxes = np.array([[120, 40, 160, 70]], np.float32)
    return image, segmentation, depth, boxes, np.array([0], np.int32)


GEOMETRIC_ONLY = dataclasses.replace(AugmentConfig(), brightness_contrast=0, hue_saturation=0, blur=0,
                                     noise=0, crop_probability=1.0, crop_scale=(0.7, 0.95))


@pytest.mark.parametrize("seed", range(12))
def test_box_mask_and_depth_follow_the_object(seed):
    image, seg, depth, boxes, classes, ignore = augment(*known_frame(), seed=seed, out_size=(64, 128),
                                                     cfg=GEOMETRIC_ONLY, training=True)
    assert image.shape == (64, 128, 3) and seg.shape == (64, 128) and depth.shape == (64, 128)
    red = np.all(image == RED, axis=-1)
    object_pixels = seg == 6
    # the mask covers the red pixels (nearest-neighbour keeps them aligned up to the boundary row/col)
    assert (red & object_pixels).sum() >= 0.9 * red.sum()
    if len(boxes):
        assert len(ignore) == 0
        x1, y1, x2, y2 = boxes[0]
        ys, xs = np.nonzero(object_pixels)
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
    elif object_pixels.any():  # an ignore region when the crop cut most of the object away
        assert object_pixels.sum() < 0.3 * (30 * 40) * (64 / 96) ** 2 / 0.7 ** 2
        assert len(ignore) == 1
    else:
        assert len(ignore) == 0


def test_crop_zoom_scales_depth_by_the_zoom():
    frame = known_frame()
    for seed in range(20):
        _, seg, depth, _, _, _ = augment(*frame, seed=seed, out_size=(96, 192), cfg=GEOMETRIC_ONLY, training=True)
        ground = depth[seg == 0]
        zoom = 30.0 / np.median(ground)
        assert 1 / 0.95 - 0.02 <= zoom <= 1 / 0.7 + 0.02  # the zoom of a 0.7..0.95 crop
        if (seg == 6).any():
            np.testing.assert_allclose(np.median(depth[seg == 6]), 10.0 / zoom, rtol=1e-5)


def test_flip_keeps_depth_and_mirrors_box():
    cfg = dataclasses.replace(GEOMETRIC_ONLY, crop_probability=0.0, hflip=1.0)
    _, seg, depth, boxes, _, _ = augment(*known_frame(), seed=0, out_size=(96, 192), cfg=cfg, training=True)
    np.testing.assert_allclose(boxes[0], [192 - 160, 40, 192 - 120, 70], atol=1e-4)
    assert np.all(depth[seg == 6] == 10.0)


def test_evaluation_path_only_resizes():
    image, seg, depth, boxes, _, _ = augment(*known_frame(), seed=3, out_size=(48, 96), cfg=AugmentConfig(),
                                          training=False)
    np.testing.assert_allclose(boxes[0], [60, 20, 80, 35], atol=1e-4)
    assert np.all(depth[seg == 6] == 10.0) and np.all(depth[seg == 0] == 30.0)


def test_same_seed_same_result():
    a = augment(*known_frame(), seed=5, out_size=(64, 128), cfg=AugmentConfig(), training=True)
    b = augment(*known_frame(), seed=5, out_size=(64, 128), cfg=AugmentConfig(), training=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_shrinking_sparse_depth_keeps_every_measured_cell():
    """LiDAR-like depth: one point in every 3x3 block; nearest-neighbour alone lost most of them."""
    depth = np.zeros((96, 192), np.float32)
    depth[1::3, 2::3] = np.linspace(5.0, 60.0, 32 * 64).reshape(32, 64)
    out = resize_depth(depth, (32, 64))
    assert np.count_nonzero(out) == 32 * 64  # every output cell holds its one point
    np.testing.assert_array_equal(out, depth[1::3, 2::3])
    dense = np.full((96, 192), 7.0, np.float32)
    np.testing.assert_array_equal(resize_depth(dense, (48, 96)), 7.0)


def test_sparse_depth_keeps_the_nearest_surface_of_a_cell():
    depth = np.zeros((4, 4), np.float32)
    depth[0, 1], depth[1, 0] = 20.0, 8.0  # two returns in the top-left 2x2 cell, none at its nearest sample
    out = resize_depth(depth, (2, 2))
    assert out[0, 0] == 8.0 and np.count_nonzero(out) == 1


def test_boxes_below_the_size_protocol_become_ignore_regions_and_ignore_regions_follow_the_flip():
    image, seg, depth, boxes, classes = known_frame()
    boxes = np.concatenate([boxes, [[10, 10, 14, 16]]]).astype(np.float32)  # 6 px tall at 96 px
    classes = np.array([0, 1], np.int32)
    dont_care = np.array([[100, 80, 110, 90]], np.float32)
    cfg = dataclasses.replace(GEOMETRIC_ONLY, crop_probability=0.0, hflip=1.0)
    out = augment(image, seg, depth, boxes, classes, seed=0, out_size=(96, 192), cfg=cfg, training=True,
                  ignore_boxes=dont_care, min_box_height=8.0)
    out_boxes, out_classes, ignore = out[3], out[4], out[5]
    np.testing.assert_array_equal(out_classes, [0])
    np.testing.assert_allclose(out_boxes, [[32, 40, 72, 70]], atol=1e-4)
    np.testing.assert_allclose(sorted(ignore.tolist()), [[82, 80, 92, 90], [178, 10, 182, 16]], atol=1e-4)
    # Evaluation applies the same protocol.
    evaluated = augment(image, seg, depth, boxes, classes, seed=0, out_size=(96, 192), cfg=cfg, training=False,
                        min_box_height=8.0)
    np.testing.assert_array_equal(evaluated[4], [0])
    np.testing.assert_allclose(evaluated[5], [[10, 10, 14, 16]], atol=1e-4)


# --- training crops at the model's scale (data.train_crop) ---------------------------------------

NO_ZOOM = dataclasses.replace(GEOMETRIC_ONLY, crop_probability=0.0, hflip=0.0)


def test_a_centred_crop_outside_training_keeps_the_models_scale():
    """Frame 96x192 -> model 96x192, crop 64x128: the centred window, nothing resized."""
    image, seg, depth, boxes, _, _ = augment(*known_frame(), seed=0, out_size=(96, 192), cfg=AugmentConfig(),
                                          training=False, crop_size=(64, 128))
    assert image.shape == (64, 128, 3) and seg.shape == (64, 128) and depth.shape == (64, 128)
    np.testing.assert_allclose(boxes[0], [120 - 32, 40 - 16, 160 - 32, 70 - 16], atol=1e-4)
    assert np.all(np.all(image == RED, axis=-1) == (seg == 6))
    assert np.all(depth[seg == 6] == 10.0) and np.all(depth[seg == 0] == 30.0)


def test_a_crop_of_a_larger_frame_is_cut_at_the_models_scale():
    """Frame 96x192 -> model 48x96 (half), crop 32x64: a 64x128 window halved, so the box is half size."""
    _, seg, depth, boxes, _, _ = augment(*known_frame(), seed=0, out_size=(48, 96), cfg=AugmentConfig(),
                                         training=False, crop_size=(32, 64))
    assert seg.shape == (32, 64)
    np.testing.assert_allclose(boxes[0], [(120 - 32) / 2, (40 - 16) / 2, (160 - 32) / 2, (70 - 16) / 2], atol=1e-4)
    assert np.all(depth[seg == 6] == 10.0), "no zoom: metres unchanged"


@pytest.mark.parametrize("seed", range(8))
def test_random_training_crops_move_but_never_rescale_the_object(seed):
    """Without zoom, every training crop shows the object at its full-frame size and depth."""
    _, seg, depth, boxes, _, _ = augment(*known_frame(), seed=seed, out_size=(96, 192), cfg=NO_ZOOM,
                                         training=True, crop_size=(64, 128))
    assert seg.shape == (64, 128)
    assert np.all(depth[seg == 6] == 10.0) and np.all(depth[seg == 0] == 30.0)
    inside = [box for box in boxes if box[0] > 0 and box[1] > 0 and box[2] < 128 and box[3] < 64]
    for box in inside:  # an object the crop did not cut keeps its 40x30 px
        np.testing.assert_allclose(box[2:] - box[:2], [40, 30], atol=1e-4)


def test_boxes_a_crop_cuts_below_min_visibility_become_ignore_regions():
    """Centred 96x96 crop of a 96x192 frame: window x 48-144. Objects the crop cuts to under 30 % are
    ignore regions (evaluation, on whole frames, scores them, so their slivers are not background);
    objects it cuts less stay objects; objects it does not show are gone."""
    image, seg, depth, _, _ = known_frame()
    boxes = np.array([[30, 10, 60, 40],     # 12 of 30 px wide in view: 40 %, an object
                      [130, 50, 170, 80],   # 14 of 40: 35 %, an object
                      [0, 50, 55, 80],      # 7 of 55: 13 %, an ignore region
                      [150, 10, 190, 40]],  # not in view
                     np.float32)
    classes = np.array([0, 1, 2, 0], np.int32)
    dont_care = np.array([[140, 0, 160, 20]], np.float32)  # 4 of 20 px: still an ignore region
    _, _, _, out_boxes, out_classes, ignore = augment(
        image, seg, depth, boxes, classes, seed=0, out_size=(96, 192), cfg=NO_ZOOM, training=False,
        ignore_boxes=dont_care, crop_size=(96, 96))
    np.testing.assert_array_equal(out_classes, [0, 1])
    np.testing.assert_allclose(out_boxes, [[0, 10, 12, 40], [82, 50, 96, 80]], atol=1e-4)
    np.testing.assert_allclose(sorted(ignore.tolist()), [[0, 50, 7, 80], [92, 0, 96, 20]], atol=1e-4)


def test_training_crops_make_the_object_an_ignore_region_exactly_when_they_show_under_30_percent():
    """Random 96x64 training crops, flipped: the object (40 px wide) is an object when at least 30 % of
    its width is in view, an ignore region covering its visible pixels when less, and gone when none."""
    image, seg, depth, boxes, classes = known_frame()
    cfg = dataclasses.replace(NO_ZOOM, hflip=1.0)
    cases = set()
    for seed in range(60):
        _, out_seg, _, out_boxes, _, ignore = augment(image, seg, depth, boxes, classes, seed=seed,
                                                      out_size=(96, 192), cfg=cfg, training=True,
                                                      crop_size=(96, 64))
        columns = np.nonzero((out_seg == 6).any(axis=0))[0]
        share = len(columns) / 40
        if share >= 0.3:
            cases.add("object")
            assert len(out_boxes) == 1 and len(ignore) == 0
            np.testing.assert_allclose(out_boxes[0][[0, 2]], [columns.min(), columns.max() + 1], atol=1e-4)
        elif share > 0:
            cases.add("ignore")
            assert len(out_boxes) == 0 and len(ignore) == 1
            np.testing.assert_allclose(ignore[0][[0, 2]], [columns.min(), columns.max() + 1], atol=1e-4)
        else:
            cases.add("gone")
            assert len(out_boxes) == 0 and len(ignore) == 0
    assert cases == {"object", "ignore", "gone"}


def test_a_box_partly_outside_the_frame_is_measured_by_its_part_in_the_frame():
    """Albumentations clips boxes to the frame first; the 30 % rule measures the same in-frame area."""
    image, seg, depth, _, _ = known_frame()
    boxes = np.array([[-20, 10, 60, 40],   # 60 px in frame, 12 in the window 48-144: 20 %, ignore
                      [-100, 50, 55, 80]], np.float32)  # 55 px in frame, 7 in view: 13 %, ignore
    _, _, _, out_boxes, _, ignore = augment(image, seg, depth, boxes, np.array([0, 1], np.int32), seed=0,
                                            out_size=(96, 192), cfg=NO_ZOOM, training=False, crop_size=(96, 96))
    assert len(out_boxes) == 0
    np.testing.assert_allclose(sorted(ignore.tolist()), [[0, 10, 12, 40], [0, 50, 7, 80]], atol=1e-4)
    wide = np.array([[-20, 10, 80, 40]], np.float32)  # 80 px in frame, 32 in view: 40 %, an object
    _, _, _, out_boxes, _, _ = augment(image, seg, depth, wide, np.array([0], np.int32), seed=0,
                                       out_size=(96, 192), cfg=NO_ZOOM, training=False, crop_size=(96, 96))
    np.testing.assert_allclose(out_boxes, [[0, 10, 32, 40]], atol=1e-4)


def test_some_training_crop_holds_the_whole_object():
    """The object (x 120-160, y 40-70 of 96x192) fits a 64x128 crop: some seed's crop must hold it whole
    (so the size check above is not vacuous)."""
    whole = 0
    for seed in range(8):
        _, _, _, boxes, _, _ = augment(*known_frame(), seed=seed, out_size=(96, 192), cfg=NO_ZOOM, training=True,
                                       crop_size=(64, 128))
        whole += any(np.allclose(box[2:] - box[:2], [40, 30], atol=1e-4) for box in boxes)
    assert whole >= 1


@pytest.mark.parametrize("enabled", [True, False])
def test_crop_positions_differ_between_examples_even_without_augmentation(enabled):
    """With data.augment.enabled=false a fixed window would never train on the rest of the frame."""
    cfg = dataclasses.replace(NO_ZOOM, enabled=enabled)
    windows = set()
    for seed in range(10):
        _, seg, _, _, _, _ = augment(*known_frame(), seed=seed, out_size=(96, 192), cfg=cfg,
                                     training=True, crop_size=(64, 128))
        ys, xs = np.nonzero(seg == 6)
        windows.add((xs.min(), ys.min()) if len(xs) else None)
    assert len(windows) >= 5


def test_zoomed_training_crops_still_divide_depth_by_the_zoom():
    for seed in range(12):
        _, seg, depth, _, _, _ = augment(*known_frame(), seed=seed, out_size=(96, 192), cfg=GEOMETRIC_ONLY,
                                         training=True, crop_size=(64, 128))
        zoom = 30.0 / np.median(depth[seg == 0])
        assert 1 / 0.95 - 0.02 <= zoom <= 1 / 0.7 + 0.02


def test_a_crop_larger_than_the_model_input_is_refused():
    with pytest.raises(ValueError, match="larger than the model input"):
        augment(*known_frame(), seed=0, out_size=(64, 128), cfg=AugmentConfig(), training=True, crop_size=(96, 128))
