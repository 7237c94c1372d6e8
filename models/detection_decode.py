"""CenterNet decoding (peak picking + top-k) in plain TensorFlow ops, so it exports to TFLite.

No NMS op: a 3x3 local-maximum test stands in for it (Zhou et al. 2019). TensorFlow code, unlike
the network and its losses (models/detection.py), which are backend-agnostic Keras.
"""
from __future__ import annotations

import tensorflow as tf

from data.vocabulary import STRIDE


def _local_peaks(heat):
    """True where a score is its 3x3 neighbourhood's maximum, one cell per plateau.

    A plateau of equal scores is rare in float but common once scores are int8 (steps of 1/256):
    every cell of it passed the plain max-pool test and became a duplicate detection, which cost
    the int8 export 12 mAP50 points. Requiring strictly more than the four neighbours that come
    earlier in raster order keeps exactly the first cell of each plateau.
    """
    pooled = tf.nn.max_pool2d(heat, ksize=3, strides=1, padding="SAME")
    padded = tf.pad(heat, [[0, 0], [1, 1], [1, 1], [0, 0]])
    earlier = (padded[:, :-2, :-2], padded[:, :-2, 1:-1], padded[:, :-2, 2:], padded[:, 1:-1, :-2])
    # > each of the four <=> > their maximum: one comparison instead of four (TFLite runs int8
    # comparisons on a reference kernel, 4 x 0.02 ms per frame at 128x256 in the int8 export).
    earlier_max = tf.maximum(tf.maximum(earlier[0], earlier[1]), tf.maximum(earlier[2], earlier[3]))
    return tf.logical_and(tf.equal(heat, pooled), tf.greater(heat, earlier_max))


def decode_detections(detection_output, top_k, stride=STRIDE):
    """[B, h, w, C+4] -> {"boxes" [B,K,4] x1,y1,x2,y2 input px, "scores" [B,K], "classes" int32 [B,K]}.

    A 3x3 max-pool keeps only local maxima (CenterNet's NMS substitute); top-k runs over all
    h*w*C scores at once so classes compete for the K slots. K = min(top_k, h*w*C).
    """
    output = tf.convert_to_tensor(detection_output, tf.float32)
    classes = output.shape[-1] - 4
    if classes < 1 or top_k < 1:
        raise ValueError(f"decode_detections needs C+4 channels and top_k >= 1; "
                         f"Received: channels={output.shape[-1]}, top_k={top_k}")
    return decode_parts(output[..., :classes], output[..., classes:classes + 2],
                        output[..., classes + 2:], top_k, stride)


def decode_parts(heat_logits, size, offset, top_k, stride=STRIDE, box_parts=False):
    """decode_detections on the three head tensors before they are concatenated.

    The int8 export decodes from these: one int8 scale for the concatenated tensor (logits down to
    about -20, sizes up to ~40 cells, offsets in 0..1) rounded offsets to a quarter cell.
    """
    heat_logits = tf.cast(heat_logits, tf.float32)
    size, offset = tf.cast(size, tf.float32), tf.cast(offset, tf.float32)
    _, height, width, classes = heat_logits.shape
    batch = tf.shape(heat_logits)[0]
    heat = tf.sigmoid(heat_logits)
    heat = heat * tf.cast(_local_peaks(heat), heat.dtype)
    k = min(int(top_k), height * width * classes)
    scores, index = tf.math.top_k(tf.reshape(heat, [batch, height * width * classes]), k=k)
    cell = index // classes
    labels = index % classes
    # Plain GATHER on a flattened batch (not gather(batch_dims=1)) keeps the TFLite graph simple.
    flat_cell = tf.reshape(cell + tf.range(batch)[:, None] * (height * width), [-1])
    size = tf.reshape(tf.gather(tf.reshape(size, [-1, 2]), flat_cell), [batch, k, 2])
    offset = tf.reshape(tf.gather(tf.reshape(offset, [-1, 2]), flat_cell), [batch, k, 2])
    result = {"scores": scores, "classes": tf.cast(labels, tf.int32)}
    if box_parts:
        # int8 export: the box arithmetic below, done in int8, rounds at every step (cell index,
        # x4 stride, +-half size, clip) and a uint8 box is 1 px coarse at best: 10 mAP50 points
        # lost, against 0.3 for the head itself. The model returns the exact int32 cell and the
        # gathered offset / size (each with its own scale); the runtime calls boxes_from_parts.
        return {**result, "box_cells": cell, "box_offsets": offset, "box_sizes": size}
    return {**result, "boxes": boxes_from_parts(cell, offset, size, height, width, stride)}


def boxes_from_parts(cell, offset, size, height, width, stride=STRIDE):
    """Cell index [B,K] (row-major on the h x w map), offset and size [B,K,2] -> boxes [B,K,4] px.

    TF ops; the TFLite runtime calls it on an int8 model's `box_cells`/`box_offsets`/`box_sizes`.
    """
    cell = tf.convert_to_tensor(cell, tf.int32)
    offset, size = tf.cast(offset, tf.float32), tf.cast(size, tf.float32)
    cx = (tf.cast(cell % width, tf.float32) + offset[..., 0]) * stride
    cy = (tf.cast(cell // width, tf.float32) + offset[..., 1]) * stride
    half_w, half_h = size[..., 0] * stride / 2.0, size[..., 1] * stride / 2.0
    max_x, max_y = float(width * stride), float(height * stride)
    return tf.stack([tf.clip_by_value(cx - half_w, 0.0, max_x), tf.clip_by_value(cy - half_h, 0.0, max_y),
                     tf.clip_by_value(cx + half_w, 0.0, max_x), tf.clip_by_value(cy + half_h, 0.0, max_y)],
                    axis=-1)
