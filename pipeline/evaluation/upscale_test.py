"""The small-object upscale test: a second pass on the frame upscaled (e.g. 1.5x) supplies the boxes
of small objects, the first pass everything else (README, "The upscale test"); the evaluate stage
uses it under evaluate.upscale_test.

Small people lose most of the missed AP (AP50 by height), and on a larger frame they cover more
cells; large objects get worse when upscaled (they grow past the sizes trained on). So each pass
keeps the boxes of its own range, split at the upper edge of the evaluation's middle height band (36
px at a 192-px input, metrics/detection.height_bands), and a class-wise NMS removes the duplicates of an
object near that edge. Segmentation averages the two passes' class probabilities at the frame's
size (thin poles gain most); depth is the first pass's (an upscaled frame looks nearer). A model
without a detection head gets the segmentation half only.

TF ops on decoded detections (pipeline/trained.decode) and raw segmentation logits, in graph with
the forward passes.
"""
from __future__ import annotations

import tensorflow as tf

from pipeline.evaluation.metrics.detection import height_bands

ENCODER_STRIDE = 32  # the encoder takes multiples of 32 px (models/encoder.py)
NMS_IOU = 0.5  # COCO's match threshold: two boxes this close are one object to the evaluation


def small_height(image_height: int) -> float:
    """Boxes lower than this (input px) come from the upscaled pass: the smaller two height bands."""
    return height_bands(image_height)[1][1]


def upscaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The input size `scale` times (height, width), each rounded to the encoder's multiple of 32;
    ValueError where that rounds back to (height, width) (a second pass identical to the first)."""
    def rounded(side):
        return max(ENCODER_STRIDE, int(round(side * scale / ENCODER_STRIDE)) * ENCODER_STRIDE)

    size = rounded(height), rounded(width)
    if size == (height, width):
        raise ValueError(f"an upscale of {scale:g} leaves a {height}x{width} input at {height}x{width} (sizes are "
                         f"multiples of {ENCODER_STRIDE} px): use a larger factor, e.g. 1.5")
    return size


def merge_small_objects(plain: dict, upscaled: dict, factors, below: float, num_classes: int,
                        top_k: int) -> dict:
    """Decoded detections of the frame ({boxes, scores, classes}, boxes in its px) and of the frame
    upscaled by factors (y, x) -> one list: the upscaled pass's boxes under `below` px high, the
    plain pass's at or above it, class-wise NMS at IoU 0.5, the best top_k by score."""
    factor_y, factor_x = float(factors[0]), float(factors[1])
    small_boxes = upscaled["boxes"] / tf.constant([factor_x, factor_y, factor_x, factor_y], tf.float32)

    def height(boxes):
        return boxes[..., 3] - boxes[..., 1]

    # A box outside its pass's range scores 0, and NMS drops it (score_threshold 0).
    scores = tf.concat([tf.where(height(plain["boxes"]) >= below, plain["scores"], 0.0),
                        tf.where(height(small_boxes) < below, upscaled["scores"], 0.0)], axis=1)
    boxes = tf.concat([plain["boxes"], small_boxes], axis=1)
    classes = tf.concat([plain["classes"], upscaled["classes"]], axis=1)
    # One score column per class, zero elsewhere: combined NMS suppresses within a class only.
    per_class = tf.one_hot(classes, num_classes, dtype=tf.float32) * scores[..., None]
    kept_boxes, kept_scores, kept_classes, _ = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], per_class, max_output_size_per_class=top_k, max_total_size=top_k,
        iou_threshold=NMS_IOU, score_threshold=0.0, pad_per_class=False, clip_boxes=False)
    return {"boxes": kept_boxes, "scores": kept_scores, "classes": tf.cast(kept_classes, tf.int32)}


def merge_segmentation(plain, upscaled):
    """Segmentation logits of the frame [B,h,w,C] and of the upscaled frame [B,h',w',C] -> the log of
    their mean class probabilities at (h, w), the upscaled pass's area-averaged down to that size."""
    plain, upscaled = tf.cast(plain, tf.float32), tf.cast(upscaled, tf.float32)
    shrunk = tf.image.resize(tf.nn.softmax(upscaled), plain.shape[1:3], method="area")
    return tf.math.log((tf.nn.softmax(plain) + shrunk) / 2.0)
