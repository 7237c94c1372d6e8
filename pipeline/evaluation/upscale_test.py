"""The small-object upscale test: a second pass on the frame upscaled (e.g. 1.5x) supplies the boxes
of small objects, the first pass everything else (docs/results-history.md, "The upscale test"); the evaluate stage
uses it under evaluate.upscale_test.

Small people lose most of the missed AP (AP50 by height), and on a larger frame they cover more
cells; large objects get worse when upscaled (they grow past the sizes trained on). So each pass
keeps the boxes of its own range, split at the upper edge of the evaluation's middle height band (36
px at a 192-px input, metrics/detection.height_bands), and a class-wise NMS removes the duplicates of an
object near that edge. Segmentation averages the two passes' class probabilities at the frame's
size (thin poles gain most); depth is the first pass's (an upscaled frame looks nearer). A model
without a detection head gets the segmentation half only.

The second pass may see a band of rows only (evaluate.upscale_rows): small objects are far away, and
on a level camera far is near the horizon. Inside the band it replaces the first pass's small boxes
and averages segmentation, outside it the first pass stands alone. Near a band edge inside the frame
the first pass keeps its small boxes (EDGE_OVERLAP) and the second drops those the edge cuts, so an
object there is kept by one pass or both (the NMS merges a pair), never by neither.

TF ops on decoded detections (pipeline/trained.decode) and raw segmentation logits, in graph with
the forward passes.
"""
from __future__ import annotations

import math

import tensorflow as tf

from pipeline.evaluation.metrics.detection import height_bands

ENCODER_STRIDE = 32  # the encoder takes multiples of 32 px (models/encoder.py)
NMS_IOU = 0.5  # COCO's match threshold: two boxes this close are one object to the evaluation
# The first pass keeps its small boxes this close (px) to a band edge inside the frame, where the
# second pass may have dropped the same object: two passes' boxes of one object differ by a few px,
# and the NMS merges a pair, where neither pass keeping it would lose the object.
EDGE_OVERLAP = 8.0


def small_height(image_height: int) -> float:
    """Boxes lower than this (input px) come from the upscaled pass: the smaller two height bands."""
    return height_bands(image_height)[1][1]


def _rounded(side: int, scale: float) -> int:
    """side * scale rounded to the encoder's multiple of 32."""
    return max(ENCODER_STRIDE, int(round(side * scale / ENCODER_STRIDE)) * ENCODER_STRIDE)


def upscaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The input size `scale` times (height, width), each rounded to the encoder's multiple of 32;
    ValueError where that rounds back to (height, width) (a second pass identical to the first)."""
    size = _rounded(height, scale), _rounded(width, scale)
    if size == (height, width):
        raise ValueError(f"an upscale of {scale:g} leaves a {height}x{width} input at {height}x{width} (sizes are "
                         f"multiples of {ENCODER_STRIDE} px): use a larger factor, e.g. 1.5")
    return size


def band(height: int, rows) -> tuple[int, int]:
    """Input rows [top, bottom) that evaluate.upscale_rows (shares of the height) ask the second pass
    to see: the shares rounded outwards to whole rows."""
    top, bottom = int(math.floor(rows[0] * height)), int(math.ceil(rows[1] * height))
    if not 0 <= top < bottom <= height:
        raise ValueError(f"rows {list(rows)} of a {height}-px frame leave no band")
    return top, bottom


def band_size(height: int, width: int, scale: float, rows=(0.0, 1.0)) -> tuple[int, int]:
    """The second pass's input size: the band of `rows` (the whole frame by default) upscaled by
    `scale`, each side rounded to the encoder's multiple of 32; ValueError where the frame or the band
    would not grow (upscaled_size)."""
    width_up = upscaled_size(height, width, scale)[1]
    top, bottom = band(height, rows)
    band_up = _rounded(bottom - top, scale)
    if band_up <= bottom - top:
        raise ValueError(f"an upscale of {scale:g} leaves the {bottom - top}-row band at {band_up} rows (sizes are "
                         f"multiples of {ENCODER_STRIDE} px): use a larger factor or band")
    return band_up, width_up


def merge_small_objects(plain: dict, upscaled: dict, factors, below: float, num_classes: int,
                        top_k: int, edges=(None, None)) -> dict:
    """Decoded detections of the frame ({boxes, scores, classes}, boxes in its px) and of its band
    upscaled by factors (y, x) -> one list: the upscaled pass's boxes under `below` px high inside the
    band, the plain pass's at or above it and its small ones the band does not hold, class-wise NMS at
    IoU 0.5, the best top_k by score. edges: the band's (top, bottom) rows in frame px, None for an
    edge that is the frame's own (the whole frame: no band edges)."""
    factor_y, factor_x = float(factors[0]), float(factors[1])
    top, bottom = edges
    offset = float(top or 0.0)
    small_boxes = (upscaled["boxes"] / tf.constant([factor_x, factor_y, factor_x, factor_y], tf.float32)
                   + tf.constant([0.0, offset, 0.0, offset], tf.float32))

    def height(boxes):
        return boxes[..., 3] - boxes[..., 1]

    def held(boxes, margin):  # inside the band, `margin` px clear of its edges inside the frame
        inside = tf.ones_like(boxes[..., 1], tf.bool)
        if top is not None:
            inside &= boxes[..., 1] >= float(top) + margin
        if bottom is not None:
            inside &= boxes[..., 3] <= float(bottom) - margin
        return inside

    # A box outside its pass's range scores 0, and NMS drops it (score_threshold 0).
    plain_keeps = (height(plain["boxes"]) >= below) | ~held(plain["boxes"], EDGE_OVERLAP)
    upscaled_keeps = (height(small_boxes) < below) & held(small_boxes, 1.0)
    scores = tf.concat([tf.where(plain_keeps, plain["scores"], 0.0),
                        tf.where(upscaled_keeps, upscaled["scores"], 0.0)], axis=1)
    boxes = tf.concat([plain["boxes"], small_boxes], axis=1)
    classes = tf.concat([plain["classes"], upscaled["classes"]], axis=1)
    # One score column per class, zero elsewhere: combined NMS suppresses within a class only.
    per_class = tf.one_hot(classes, num_classes, dtype=tf.float32) * scores[..., None]
    kept_boxes, kept_scores, kept_classes, _ = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], per_class, max_output_size_per_class=top_k, max_total_size=top_k,
        iou_threshold=NMS_IOU, score_threshold=0.0, pad_per_class=False, clip_boxes=False)
    return {"boxes": kept_boxes, "scores": kept_scores, "classes": tf.cast(kept_classes, tf.int32)}


def merge_segmentation(plain, upscaled, rows=None):
    """Segmentation logits of the frame [B,h,w,C] and of its band `rows` = (top, bottom) px (the
    whole frame when None) upscaled [B,h',w',C] -> the log of their mean class probabilities in the
    band, the upscaled pass's area-averaged down to the band's size; the frame's own elsewhere."""
    plain, upscaled = tf.cast(plain, tf.float32), tf.cast(upscaled, tf.float32)
    top, bottom = (0, plain.shape[1]) if rows is None else rows
    probabilities = tf.nn.softmax(plain)
    shrunk = tf.image.resize(tf.nn.softmax(upscaled), (bottom - top, plain.shape[2]), method="area")
    averaged = (probabilities[:, top:bottom] + shrunk) / 2.0
    return tf.math.log(tf.concat([probabilities[:, :top], averaged, probabilities[:, bottom:]], axis=1))
