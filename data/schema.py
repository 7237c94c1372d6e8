"""The one example schema every source produces, and the project's default classes.

An example is a dict of NumPy arrays:
  image         uint8   [H, W, 3]  RGB
  boxes         float32 [N, 4]     pixel boxes x1, y1, x2, y2 (x right, y down; x2 > x1, y2 > y1)
  classes       int32   [N]        index into the detection classes (default DETECTION_CLASSES)
  segmentation  uint8   [H, W]     index into the segmentation classes (default SEGMENTATION_CLASSES),
                                   IGNORE = not labelled
  depth         float32 [H, W]     metres, 0 = no measurement (sparse LiDAR allowed)
  has_detection, has_segmentation, has_depth   bool: which labels the example really has
A source without a task sets its flag False and fills a placeholder (no boxes, all-IGNORE mask,
all-zero depth); the losses multiply by the flags, so sources with different labels train together.
The class lists below are the defaults; a config may give others (data/classes.py).
"""
from __future__ import annotations

import numpy as np

DETECTION_CLASSES = ("vehicle", "pedestrian", "cyclist")
SEGMENTATION_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "pole",
                        "vehicle", "pedestrian", "cyclist")
IGNORE = 255

# Colours (RGB) used by every overlay, so a class looks the same in previews, reports and clips.
SEGMENTATION_COLOURS = np.array([
    (128, 64, 128),   # road
    (244, 35, 232),   # sidewalk
    (70, 70, 70),     # building
    (107, 142, 35),   # vegetation
    (70, 130, 180),   # sky
    (153, 153, 153),  # pole
    (0, 0, 142),      # vehicle
    (220, 20, 60),    # pedestrian
    (255, 0, 0),      # cyclist
], dtype=np.uint8)
DETECTION_COLOURS = np.array([(0, 255, 255), (255, 80, 80), (255, 200, 0)], dtype=np.uint8)

TASK_FLAGS = {"detection": "has_detection", "segmentation": "has_segmentation", "depth": "has_depth"}


def placeholder(height: int, width: int) -> dict:
    """An example with no labels at all; a reader fills in what its source has."""
    return {
        "image": np.zeros((height, width, 3), np.uint8),
        "boxes": np.zeros((0, 4), np.float32),
        "classes": np.zeros((0,), np.int32),
        "segmentation": np.full((height, width), IGNORE, np.uint8),
        "depth": np.zeros((height, width), np.float32),
        "has_detection": False,
        "has_segmentation": False,
        "has_depth": False,
    }


class BadExample(ValueError):
    """An example that breaks the schema; the message names the example and what is wrong."""


def validate(example: dict, name: str, detection_classes: int = len(DETECTION_CLASSES),
             segmentation_classes: int = len(SEGMENTATION_CLASSES)) -> dict:
    """Checks an example against the schema; returns it with canonical dtypes or raises BadExample.
    Class ids must be below the class counts (the config's model.classes; the default 3 and 9)."""
    image = np.asarray(example["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise BadExample(f"{name}: image must be uint8 [H,W,3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
    classes = np.asarray(example["classes"], np.int32).reshape(-1)
    if len(boxes) != len(classes):
        raise BadExample(f"{name}: {len(boxes)} boxes but {len(classes)} classes")
    if len(classes) and (classes.min() < 0 or classes.max() >= detection_classes):
        raise BadExample(f"{name}: unknown detection class id {int(classes.max())}; "
                         f"valid 0..{detection_classes - 1}")
    if len(boxes):
        if not np.all(np.isfinite(boxes)):
            raise BadExample(f"{name}: a box has a non-finite coordinate")
        if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
            raise BadExample(f"{name}: a box has zero or negative area")
        if (np.any(boxes[:, :2] < -0.5) or np.any(boxes[:, 2] > width + 0.5)
                or np.any(boxes[:, 3] > height + 0.5)):
            raise BadExample(f"{name}: a box lies outside the {width}x{height} frame")
    segmentation = np.asarray(example["segmentation"], np.uint8)
    if segmentation.shape != (height, width):
        raise BadExample(f"{name}: segmentation is {segmentation.shape}, image is {(height, width)}")
    valid = segmentation[segmentation != IGNORE]
    if valid.size and valid.max() >= segmentation_classes:
        raise BadExample(f"{name}: unknown segmentation class id {int(valid.max())}")
    depth = np.asarray(example["depth"], np.float32)
    if depth.shape != (height, width):
        raise BadExample(f"{name}: depth is {depth.shape}, image is {(height, width)}")
    if not np.all(np.isfinite(depth)) or np.any(depth < 0):
        raise BadExample(f"{name}: depth has NaN, infinite or negative values")
    return {
        "image": image, "boxes": boxes, "classes": classes,
        "segmentation": segmentation, "depth": depth,
        "has_detection": bool(example["has_detection"]),
        "has_segmentation": bool(example["has_segmentation"]),
        "has_depth": bool(example["has_depth"]),
    }
