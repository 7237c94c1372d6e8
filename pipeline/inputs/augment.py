"""Augmentation with albumentations, keeping image, boxes, segmentation and depth consistent.

Runs on NumPy arrays (the input pipeline calls it through `tf.numpy_function`) and also resizes to
the model's input size, so training and evaluation share one path; evaluation passes
`training=False` and gets the resize alone.

Depth stays physically right: a flip or translation keeps metres, but a crop that is resized back up
is a zoom, which makes everything look closer by the zoom factor. A pinhole camera that sees an
object k times larger sees it as if it were k times nearer, so depth is divided by the zoom factor
(the crop keeps the aspect ratio, so the zoom is the same on both axes). Masks are resized
nearest-neighbour so class ids stay ids; depth is never interpolated (no smeared LiDAR) and no
measurement is lost when it shrinks (`resize_depth`).

Ignore regions (KITTI DontCare, heavily occluded synthetic objects) travel with the boxes. The
size protocol turns boxes shorter than `min_box_height` model-input pixels into ignore regions,
the same way for training and evaluation: such objects are neither taught nor scored (KITTI's
difficulty levels do the same with a minimum height). A crop that leaves less than MIN_VISIBILITY
of a box in view makes it an ignore region too: evaluation, on whole frames, scores that object, so
its sliver must not be taught as background.
"""
from __future__ import annotations

import dataclasses

import albumentations as A
import cv2
import numpy as np

from pipeline.config import AugmentConfig
from pipeline.inputs import per_worker
from pipeline.inputs.depth_maps import resize_depth

# Boxes whose visible part after a crop is smaller than this share of the original become ignore
# regions: the detector should not be taught to find a sliver of a car, nor that it is background.
MIN_VISIBILITY = 0.3
MIN_BOX_PIXELS = 2.0
IGNORE_CLASS = -1  # label of ignore regions while they travel through albumentations with the boxes


def _photometric(cfg: AugmentConfig) -> list:
    return [
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=cfg.brightness_contrast),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=10, p=cfg.hue_saturation),
        A.OneOf([A.MotionBlur(blur_limit=(3, 5)), A.GaussianBlur(blur_limit=(3, 5))], p=cfg.blur),
        A.GaussNoise(std_range=(0.01, 0.04), p=cfg.noise),
    ]


def _crop_window(rng: np.random.Generator, frame: tuple[int, int], view: tuple[int, int],
                 cfg: AugmentConfig, random: bool, place_at_random: bool | None = None):
    """The frame-pixel window an example shows, and its zoom; returns ((x0, y0, x1, y1), zoom).

    `view` (height, width, frame pixels) is what the output shows unzoomed: the whole frame, or a
    training crop at the model's scale. With probability crop_probability the view shrinks by a
    random crop_scale (a zoom once resized), when `random`. Placed at random when place_at_random
    (default: `random`), centred otherwise."""
    height, width = frame
    view_h, view_w = view
    zoom = 1.0
    if random and rng.random() < cfg.crop_probability:
        scale = rng.uniform(*cfg.crop_scale)
        crop_w, crop_h = max(1, int(round(view_w * scale))), max(1, int(round(view_h * scale)))
        zoom = view_w / crop_w
    else:
        crop_w, crop_h = view_w, view_h
    if (crop_w, crop_h) == (width, height):
        return (0, 0, width, height), zoom
    if random if place_at_random is None else place_at_random:
        x0 = int(rng.integers(0, width - crop_w + 1))
        y0 = int(rng.integers(0, height - crop_h + 1))
    else:
        x0, y0 = (width - crop_w) // 2, (height - crop_h) // 2
    return (x0, y0, x0 + crop_w, y0 + crop_h), zoom


def crop_view(frame: tuple[int, int], out_size: tuple[int, int], crop_size: tuple[int, int] | None):
    """Frame pixels that a crop_size output shows at the model's scale (frame -> out_size)."""
    if crop_size is None:
        return frame
    height, width = frame
    if crop_size[0] > out_size[0] or crop_size[1] > out_size[1]:
        raise ValueError(f"crop {tuple(crop_size)} is larger than the model input {tuple(out_size)}")
    return (min(height, int(round(crop_size[0] * height / out_size[0]))),
            min(width, int(round(crop_size[1] * width / out_size[1]))))


def _build(out_size: tuple[int, int], cfg: AugmentConfig, photometric: bool) -> A.Compose:
    """The one Compose a worker thread uses for every example (pipeline/inputs/per_worker.py)."""
    transforms = [per_worker.ExampleCrop(x_min=0, y_min=0, x_max=1, y_max=1),
                  A.Resize(out_size[0], out_size[1], interpolation=cv2.INTER_LINEAR,
                           mask_interpolation=cv2.INTER_NEAREST),
                  per_worker.ExampleFlip(p=1.0)]
    if photometric:
        transforms += _photometric(cfg)
    return A.Compose(
        transforms,
        # No box is filtered here: boxes a crop cuts below MIN_VISIBILITY are already ignore regions
        # (_cut_to_ignore) and tiny boxes become ignore regions below. Dropped, either would be
        # taught as background, while evaluation (on whole frames) scores or ignores them.
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["classes"], clip=True),
    )


def _cut_to_ignore(boxes: np.ndarray, classes: np.ndarray, window: tuple[int, int, int, int],
                   frame: tuple[int, int]):
    """(boxes, classes) with the boxes the window cuts below MIN_VISIBILITY of their in-frame area
    relabelled IGNORE_CLASS, and those it does not show at all removed."""
    height, width = frame
    inside = np.clip(boxes, 0, [width, height, width, height])
    x0, y0, x1, y1 = window
    shown = np.clip(boxes, [x0, y0, x0, y0], [x1, y1, x1, y1])

    def area(b):
        return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)

    visible = area(shown)
    share = visible / np.maximum(area(inside), 1e-6)
    keep = visible > 0
    classes = np.where(share < MIN_VISIBILITY, IGNORE_CLASS, classes)
    return boxes[keep], classes[keep]


def augment(image: np.ndarray, segmentation: np.ndarray, depth: np.ndarray, boxes: np.ndarray,
            classes: np.ndarray, seed: int, out_size: tuple[int, int], cfg: AugmentConfig,
            training: bool, ignore_boxes: np.ndarray | None = None, min_box_height: float = 0.0,
            crop_size: tuple[int, int] | None = None):
    """Returns (image, segmentation, depth, boxes, classes, ignore_boxes) at `out_size` (height,
    width), or at `crop_size`: a crop of the frame as the model sees it at `out_size` (random in
    training, centred otherwise). Boxes shorter than min_box_height (output pixels) are moved to
    ignore_boxes."""
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    out_size = (int(out_size[0]), int(out_size[1]))
    view = crop_view((height, width), out_size, crop_size)
    random_work = training and cfg.enabled
    # Training crops move even with augmentation off: a fixed window would never show the rest.
    window, zoom = _crop_window(rng, (height, width), view, cfg, random_work, place_at_random=training)
    flip = random_work and bool(rng.random() < cfg.hflip)
    target = (int(crop_size[0]), int(crop_size[1])) if crop_size is not None else out_size
    pipeline = per_worker.compose((target, random_work, dataclasses.astuple(cfg)),
                                  lambda: _build(target, cfg, random_work))
    pipeline.set_random_seed(int(seed) % (2**32))  # the photometric draws of this example
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes, np.int32).reshape(-1)
    ignore = np.asarray(ignore_boxes if ignore_boxes is not None else np.zeros((0, 4)), np.float32).reshape(-1, 4)
    # Ignore regions ride along as boxes of class -1, so every geometric step treats both alike.
    all_boxes, all_classes = _cut_to_ignore(
        np.concatenate([boxes, ignore]),
        np.concatenate([classes, np.full(len(ignore), IGNORE_CLASS, np.int32)]), window, (height, width))
    result = pipeline(image=image, mask=segmentation, bboxes=all_boxes, classes=all_classes,
                      crop_window=window if window != (0, 0, width, height) else None, flip=flip)
    out_boxes = np.asarray(result["bboxes"], np.float32).reshape(-1, 4)
    out_classes = np.asarray(result["classes"], np.int32).reshape(-1)
    sizes = out_boxes[:, 2:] - out_boxes[:, :2]
    small = (sizes[:, 1] < max(min_box_height, MIN_BOX_PIXELS)) | (sizes[:, 0] < MIN_BOX_PIXELS)
    regular = (out_classes != IGNORE_CLASS) & ~small
    x0, y0, x1, y1 = window
    out_depth = resize_depth(np.asarray(depth, np.float32)[y0:y1, x0:x1], target) / np.float32(zoom)
    if flip:
        out_depth = out_depth[:, ::-1].copy()
    return (result["image"], result["mask"].astype(np.uint8), out_depth, out_boxes[regular],
            out_classes[regular], out_boxes[~regular])
