"""Augmentation keeps boxes on their objects and masks/depth aligned with the image."""
import dataclasses

import numpy as np
import pytest

from pipeline.inputs.augment import augment
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
    image, seg, depth, boxes, classes = augment(*known_frame(), seed=seed, out_size=(64, 128),
                                                cfg=GEOMETRIC_ONLY, training=True)
    assert image.shape == (64, 128, 3) and seg.shape == (64, 128) and depth.shape == (64, 128)
    red = np.all(image == RED, axis=-1)
    object_pixels = seg == 6
    # the mask covers the red pixels (nearest-neighbour keeps them aligned up to the boundary row/col)
    assert (red & object_pixels).sum() >= 0.9 * red.sum()
    if len(boxes):
        x1, y1, x2, y2 = boxes[0]
        ys, xs = np.nonzero(object_pixels)
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
    else:  # only dropped when the crop cut most of the object away
        assert object_pixels.sum() < 0.3 * (30 * 40) * (64 / 96) ** 2 / 0.7 ** 2


def test_crop_zoom_scales_depth_by_the_zoom():
    frame = known_frame()
    for seed in range(20):
        _, seg, depth, _, _ = augment(*frame, seed=seed, out_size=(96, 192), cfg=GEOMETRIC_ONLY, training=True)
        ground = depth[seg == 0]
        zoom = 30.0 / np.median(ground)
        assert 1 / 0.95 - 0.02 <= zoom <= 1 / 0.7 + 0.02  # the zoom of a 0.7..0.95 crop
        if (seg == 6).any():
            np.testing.assert_allclose(np.median(depth[seg == 6]), 10.0 / zoom, rtol=1e-5)


def test_flip_keeps_depth_and_mirrors_box():
    cfg = dataclasses.replace(GEOMETRIC_ONLY, crop_probability=0.0, hflip=1.0)
    _, seg, depth, boxes, _ = augment(*known_frame(), seed=0, out_size=(96, 192), cfg=cfg, training=True)
    np.testing.assert_allclose(boxes[0], [192 - 160, 40, 192 - 120, 70], atol=1e-4)
    assert np.all(depth[seg == 6] == 10.0)


def test_evaluation_path_only_resizes():
    image, seg, depth, boxes, _ = augment(*known_frame(), seed=3, out_size=(48, 96), cfg=AugmentConfig(),
                                          training=False)
    np.testing.assert_allclose(boxes[0], [60, 20, 80, 35], atol=1e-4)
    assert np.all(depth[seg == 6] == 10.0) and np.all(depth[seg == 0] == 30.0)


def test_same_seed_same_result():
    a = augment(*known_frame(), seed=5, out_size=(64, 128), cfg=AugmentConfig(), training=True)
    b = augment(*known_frame(), seed=5, out_size=(64, 128), cfg=AugmentConfig(), training=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
