"""Augmentation with albumentations, keeping image, boxes, segmentation and depth consistent.

Runs on NumPy arrays (the input pipeline calls it through `tf.numpy_function`) and also resizes to
the model's input size, so training and evaluation share one path; evaluation passes
`training=False` and gets the resize alone.

Depth stays physically right: a flip or translation keeps metres, but a crop that is resized back up
is a zoom, which makes everything look closer by the zoom factor. A pinhole camera that sees an
object k times larger sees it as if it were k times nearer, so depth is divided by the zoom factor
(the crop keeps the aspect ratio, so the zoom is the same on both axes). Masks and depth are resized
with nearest-neighbour so class ids stay ids and sparse LiDAR depth is not smeared.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from pipeline.config import AugmentConfig

# Boxes whose visible part after a crop is smaller than this share of the original are dropped:
# the detector should not be taught to find a sliver of a car.
MIN_VISIBILITY = 0.3
MIN_BOX_PIXELS = 2.0


def _photometric(cfg: AugmentConfig) -> list:
    return [
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=cfg.brightness_contrast),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=10, p=cfg.hue_saturation),
        A.OneOf([A.MotionBlur(blur_limit=(3, 5)), A.GaussianBlur(blur_limit=(3, 5))], p=cfg.blur),
        A.GaussNoise(std_range=(0.01, 0.04), p=cfg.noise),
    ]


def _crop_window(rng: np.random.Generator, height: int, width: int, cfg: AugmentConfig):
    """A random window of the same aspect ratio, or the whole frame; returns (window, zoom)."""
    if rng.random() >= cfg.crop_probability:
        return (0, 0, width, height), 1.0
    scale = rng.uniform(*cfg.crop_scale)
    crop_w, crop_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    x0 = int(rng.integers(0, width - crop_w + 1))
    y0 = int(rng.integers(0, height - crop_h + 1))
    return (x0, y0, x0 + crop_w, y0 + crop_h), width / crop_w


def augment(image: np.ndarray, segmentation: np.ndarray, depth: np.ndarray, boxes: np.ndarray,
            classes: np.ndarray, seed: int, out_size: tuple[int, int], cfg: AugmentConfig,
            training: bool):
    """Returns (image, segmentation, depth, boxes, classes) at `out_size` (height, width)."""
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    transforms, zoom = [], 1.0
    if training and cfg.enabled:
        (x0, y0, x1, y1), zoom = _crop_window(rng, height, width, cfg)
        if zoom != 1.0:
            transforms.append(A.Crop(x_min=x0, y_min=y0, x_max=x1, y_max=y1))
    transforms.append(A.Resize(out_size[0], out_size[1], interpolation=cv2.INTER_LINEAR,
                               mask_interpolation=cv2.INTER_NEAREST))
    if training and cfg.enabled:
        transforms.append(A.HorizontalFlip(p=cfg.hflip))
        transforms += _photometric(cfg)
    pipeline = A.Compose(
        transforms,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["classes"], clip=True,
                                 min_visibility=MIN_VISIBILITY, min_width=MIN_BOX_PIXELS,
                                 min_height=MIN_BOX_PIXELS),
        additional_targets={"depth": "mask"},
        seed=int(seed) % (2**32),
    )
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    result = pipeline(image=image, mask=segmentation, depth=depth, bboxes=boxes,
                      classes=np.asarray(classes, np.int32).reshape(-1))
    out_boxes = np.asarray(result["bboxes"], np.float32).reshape(-1, 4)
    out_classes = np.asarray(result["classes"], np.int32).reshape(-1)
    out_depth = result["depth"].astype(np.float32) / np.float32(zoom)
    return (result["image"], result["mask"].astype(np.uint8), out_depth, out_boxes, out_classes)
