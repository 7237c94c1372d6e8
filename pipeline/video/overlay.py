"""The annotated overlay frame of a clip: boxes with class names, a translucent segmentation, a depth
inset (bottom right, a quarter of the size) and the frame's inference latency.

It draws on the decoded frame in OpenCV's BGR order, the order the encoder takes, so no full-size
colour conversion happens per frame (two of them cost about 5 ms at 1080p). Everything that is
computed per pixel is computed at the model's resolution and resized once: the class map is coloured
through a lookup table (draw.colorize_segmentation) and the depth map through a colour map, both as
whole-array operations.
"""
from __future__ import annotations

import cv2
import numpy as np

from data.classes import DEFAULT, ClassSet
from pipeline import draw
from pipeline.video.fitting import Fit

SEGMENTATION_ALPHA = 0.4


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., ::-1])  # a model-resolution map: cheap


def overlay(frame_bgr: np.ndarray, analysis: dict, fit: Fit, latency_ms: float, max_depth: float,
            class_set: ClassSet = DEFAULT) -> np.ndarray:
    """The annotated frame (BGR, the frame's size). Draws into `frame_bgr`: at 1080p every full-frame
    copy costs milliseconds, and the frame is not used after this."""
    height, width = frame_bgr.shape[:2]
    image = frame_bgr
    if analysis["segmentation"] is not None:
        colours = fit.to_frame(_bgr(draw.colorize_segmentation(analysis["segmentation"], class_set)), nearest=True)
        cv2.addWeighted(image, 1.0 - SEGMENTATION_ALPHA, colours, SEGMENTATION_ALPHA, 0.0, dst=image)
    if analysis["kept"] is not None and len(analysis["kept"][0]):
        boxes, scores, classes, _ = analysis["kept"]
        draw.draw_boxes(image, boxes, classes, scores, thickness=max(1, round(min(height, width) / 360)),
                        class_set=class_set, in_place=True, bgr=True)
    if analysis["depth"] is not None:
        inset_w, inset_h = max(1, width // 4), max(1, height // 4)
        inset = cv2.resize(_bgr(draw.colorize_depth(analysis["depth"], max_depth)), (inset_w, inset_h),
                           interpolation=cv2.INTER_LINEAR)
        margin = max(2, min(height, width) // 100)
        y, x = height - inset_h - margin, width - inset_w - margin
        if y >= 1 and x >= 1:
            image[y - 1:y + inset_h + 1, x - 1:x + inset_w + 1] = 255  # a thin white frame around it
            image[y:y + inset_h, x:x + inset_w] = inset
    status_line(image, f"{latency_ms:.1f} ms/frame")
    return image


def status_line(image: np.ndarray, text: str) -> None:
    """A small white-on-black line in the bottom-left corner (the depth inset holds the right)."""
    height, width = image.shape[:2]
    scale = max(0.35, min(height, width) / 1000)
    origin = (max(2, width // 100), height - max(4, height // 60))
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
