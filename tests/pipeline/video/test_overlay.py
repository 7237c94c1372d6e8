"""The overlay draws on BGR frames (as decoded and as encoded, issue 15): the class colours, the box
colours and the depth inset must come out in BGR order, or a red car would be drawn blue."""
import numpy as np

from data import schema
from pipeline import draw
from pipeline.video.fitting import Fit
from pipeline.video.overlay import SEGMENTATION_ALPHA, overlay

VEHICLE = schema.SEGMENTATION_CLASSES.index("vehicle")


def test_segmentation_boxes_and_inset_are_drawn_in_bgr_order():
    height, width = 180, 320
    frame_bgr = np.zeros((height, width, 3), np.uint8)
    frame_bgr[..., 0] = 200  # a blue frame (BGR)
    fit = Fit((height, width), (45, 80), "stretch")
    depth = np.full((45, 80), 5.0, np.float32)
    analysis = {"segmentation": np.full((45, 80), VEHICLE, np.uint8), "depth": depth,
                "kept": (np.float32([[20, 20, 120, 100]]), np.float32([0.9]), np.int32([0]), [5.0])}
    image = overlay(frame_bgr, analysis, fit, 12.0, 80.0)
    rgb = schema.SEGMENTATION_COLOURS[VEHICLE].astype(np.float64)
    expected_bgr = (1 - SEGMENTATION_ALPHA) * np.array([200, 0, 0]) + SEGMENTATION_ALPHA * rgb[::-1]
    np.testing.assert_allclose(image[60, 200], expected_bgr, atol=1.0)  # inside the class map, off the box
    box_rgb = schema.DETECTION_COLOURS[0].astype(int)
    assert abs(box_rgb[0] - box_rgb[2]) > 100 and abs(rgb[0] - rgb[2]) > 50  # colours that show the order
    edge = image[60, 20].astype(int)  # the box's left edge (anti-aliased: close, not equal)
    assert np.abs(edge - box_rgb[::-1]).max() <= 30 < np.abs(edge - box_rgb).max()
    inset_rgb = draw.colorize_depth(depth, 80.0)[0, 0]
    margin = max(2, min(height, width) // 100)
    np.testing.assert_array_equal(image[height - margin - 5, width - margin - 5], inset_rgb[::-1])
