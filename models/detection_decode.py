"""CenterNet decoding (peak picking + top-k) in plain TensorFlow ops, so it exports to TFLite.

No NMS op: a 3x3 local-maximum test stands in for it (Zhou et al. 2019). TensorFlow code, unlike
the network and its losses (models/detection.py), which are backend-agnostic Keras.

Each peak's box comes from its 3x3 neighbourhood, not from the peak cell alone: every cell there
gives its own estimate of the centre (its position + its offset) and of the log size, weighted by
the peak class's score at that cell squared (`refine`). 26-47 % of objects' peaks land a cell off
the centre cell the offset and size were trained at; their boxes had a median IoU of 0.31 (small
pedestrians) to 0.89 (large vehicles) against 0.70 to 0.92 for those pedestrians' and vehicles'
peaks on the centre cell (validation, the default's seed 1). Where the neighbours score nothing
the box is the peak cell's own.
"""
from __future__ import annotations

import tensorflow as tf

from data.vocabulary import STRIDE

# The neighbours' weight is their score to this power: chosen on validation over 2, 3, 4 and 6
# (four trainings of the default; docs/learning-efficiency.md, "Boxes from the peak's neighbourhood").
REFINE_POWER = 2.0
# The 3x3 neighbourhood in row-major order, (dx, dy) in cells; the peak itself is entry 4.
NEIGHBOURS = tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
PEAK = NEIGHBOURS.index((0, 0))
# Score logit of the cells beyond the map's edge: a score of 1e-13, no weight.
BEYOND_EDGE = -30.0


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


def decode_detections(detection_output, top_k, stride=STRIDE, neighbourhood=True):
    """[B, h, w, C+4] -> {"boxes" [B,K,4] x1,y1,x2,y2 input px, "scores" [B,K], "classes" int32 [B,K]}.

    A 3x3 max-pool keeps only local maxima (CenterNet's NMS substitute); top-k runs over all
    h*w*C scores at once so classes compete for the K slots. K = min(top_k, h*w*C).
    Boxes from each peak's 3x3 neighbourhood (module docstring); neighbourhood=False: from the peak cell.
    """
    output = tf.convert_to_tensor(detection_output, tf.float32)
    classes = output.shape[-1] - 4
    if classes < 1 or top_k < 1:
        raise ValueError(f"decode_detections needs C+4 channels and top_k >= 1; "
                         f"Received: channels={output.shape[-1]}, top_k={top_k}")
    return decode_parts(output[..., :classes], output[..., classes:classes + 2],
                        output[..., classes + 2:], top_k, stride, neighbourhood=neighbourhood)


def decode_parts(heat_logits, size, offset, top_k, stride=STRIDE, box_parts=False, neighbourhood=True):
    """decode_detections on the three head tensors before they are concatenated.

    The int8 export decodes from these: one int8 scale for the concatenated tensor (logits down to
    about -20, sizes up to ~40 cells, offsets in 0..1 or -1..2) rounded offsets to a quarter cell.
    neighbourhood=False: each box from its peak cell alone (CenterNet's decoding); box_parts
    always gives the neighbourhood.
    """
    heat_logits = tf.cast(heat_logits, tf.float32)
    size, offset = tf.cast(size, tf.float32), tf.cast(offset, tf.float32)
    _, height, width, classes = heat_logits.shape
    batch = tf.shape(heat_logits)[0]
    heat = tf.sigmoid(heat_logits)
    peaks = heat * tf.cast(_local_peaks(heat), heat.dtype)
    k = min(int(top_k), height * width * classes)
    scores, index = tf.math.top_k(tf.reshape(peaks, [batch, height * width * classes]), k=k)
    cell = index // classes
    labels = index % classes
    result = {"scores": scores, "classes": tf.cast(labels, tf.int32)}
    logits, offsets, sizes = gather_neighbourhood(heat_logits, size, offset, cell, labels)
    if box_parts:
        # int8 export: the box arithmetic, done in int8, rounds at every step (cell index, x4
        # stride, +-half size, clip) and a uint8 box is 1 px coarse at best: 10 mAP50 points lost,
        # against 0.3 for the head itself; the weighted means would round too. The model returns
        # the exact int32 cell and the gathered logits, offsets and sizes (each with its own
        # scale; logits because the converter left a gather of the scores in float); the runtime
        # composes the boxes (pipeline/deploy/runtimes.py, NumPy copies of refine and
        # boxes_from_parts).
        return {**result, "box_cells": cell, "box_logits": logits, "box_offsets": offsets, "box_sizes": sizes}
    if neighbourhood:
        offset, size = refine(logits, offsets, sizes)
    else:
        offset, size = offsets[:, :, PEAK], sizes[:, :, PEAK]
    return {**result, "boxes": boxes_from_parts(cell, offset, size, height, width, stride)}


def gather_neighbourhood(heat_logits, size, offset, cell, labels):
    """Score logits [B,h,w,C], size and offset [B,h,w,2], peak cells and classes [B,K] -> over each
    peak's 3x3 neighbourhood (NEIGHBOURS order): the peak class's logits [B,K,9], offsets and sizes
    [B,K,9,2] (cells). Cells beyond the map's edge get logit BEYOND_EDGE (score ~0), size 0, offset 0."""
    batch = tf.shape(heat_logits)[0]
    _, height, width, classes = heat_logits.shape
    border = [[0, 0], [1, 1], [1, 1], [0, 0]]
    heat_logits = tf.pad(heat_logits, border, constant_values=BEYOND_EDGE)
    size, offset = (tf.pad(t, border) for t in (size, offset))
    row, col = cell // width + 1, cell % width + 1
    start = tf.range(batch)[:, None, None] * ((height + 2) * (width + 2))
    shifts = tf.constant([dy * (width + 2) + dx for dx, dy in NEIGHBOURS], tf.int32)
    index = start + (row * (width + 2) + col)[..., None] + shifts  # [B,K,9] on the padded maps
    # Plain GATHER on the flattened batch (not gather(batch_dims=1)) keeps the TFLite graph simple.
    logits = tf.gather(tf.reshape(heat_logits, [-1]), index * classes + labels[..., None])
    offsets = tf.gather(tf.reshape(offset, [-1, 2]), index)
    sizes = tf.gather(tf.reshape(size, [-1, 2]), index)
    return logits, offsets, sizes


def refine(logits, offsets, sizes):
    """gather_neighbourhood's [B,K,9] logits and [B,K,9,2] offsets and sizes -> each peak's offset
    from its cell and size [B,K,2]: the means of the neighbours' centres (their dx, dy + offset) and
    log sizes, weighted by score ** REFINE_POWER. A tiny weight on the peak itself keeps its own box
    where every weight underflows."""
    weights = tf.pow(tf.sigmoid(tf.cast(logits, tf.float32)), REFINE_POWER) + 1e-12 * tf.one_hot(PEAK, len(NEIGHBOURS))
    weights = (weights / tf.reduce_sum(weights, axis=-1, keepdims=True))[..., None]
    centres = tf.cast(offsets, tf.float32) + tf.constant(NEIGHBOURS, tf.float32)
    log_sizes = tf.math.log(tf.maximum(tf.cast(sizes, tf.float32), 1e-6))  # size 0 beyond the edge, weight 0
    return tf.reduce_sum(weights * centres, axis=-2), tf.exp(tf.reduce_sum(weights * log_sizes, axis=-2))


def boxes_from_parts(cell, offset, size, height, width, stride=STRIDE):
    """Cell index [B,K] (row-major on the h x w map), offset and size [B,K,2] -> boxes [B,K,4] px.

    TF ops; the TFLite runtime has a NumPy copy (pipeline/deploy/runtimes.py) for an int8 model's
    `box_cells` and refined_parts' offsets and sizes (or, from a file exported before the
    neighbourhood, its own [1,K,2] `box_offsets`/`box_sizes`).
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
