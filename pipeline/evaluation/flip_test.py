"""The horizontal flip test (CenterNet's "flip test"): run the net on a frame and on its mirror image
and average the two predictions before decoding. Two passes for better boxes and maps (docs/results-history.md,
"The flip test"); the evaluate stage uses it under evaluate.flip_test.

A road scene is mirror-symmetric in distribution but not frame by frame, so the mirrored pass is a
second opinion on every pixel whose errors partly cancel the first's; averaging the centre offsets
too gave half of the measured mAP75 gain.

TF ops on the net's raw outputs (data.vocabulary.TASKS keys), so the merged outputs decode exactly as
one pass's do (pipeline/trained.decode).
"""
from __future__ import annotations

import tensorflow as tf


def mirror_outputs(outputs: dict) -> dict:
    """Raw outputs of a mirrored frame -> the same predictions in the original frame's coordinates.

    Maps flip along the width. A detection map's offset x (in cells from the cell's left edge)
    becomes 1 - x: a centre at x px read at cell c has offset x / s - c, and its mirror image at W - x
    read at cell w - 1 - c has offset 1 - that (W = w * s, the input width a whole number of cells),
    whether the centre lies in that cell (0..1) or beside it (model.detection_neighbour_boxes).
    Heat-map logits and sizes (w, h) do not change under the flip.
    """
    result = {}
    for task, value in outputs.items():
        value = tf.reverse(tf.cast(value, tf.float32), axis=[2])
        if task == "detection":
            classes = value.shape[-1] - 4
            value = tf.concat([value[..., :classes + 2], 1.0 - value[..., classes + 2:classes + 3],
                               value[..., classes + 3:]], axis=-1)
        result[task] = value
    return result


def merge_outputs(first: dict, second: dict) -> dict:
    """Two raw predictions of one frame -> their average, in the raw outputs' form.

    Heat maps average as probabilities (returned as logits), box sizes geometrically (the loss
    measures log sizes), offsets and depth arithmetically; segmentation averages the class
    probabilities and returns their log, whose argmax is the averaged prediction's class.
    """
    merged = {}
    for task, a in first.items():
        a, b = tf.cast(a, tf.float32), tf.cast(second[task], tf.float32)
        if task == "detection":
            classes = a.shape[-1] - 4
            heat = (tf.sigmoid(a[..., :classes]) + tf.sigmoid(b[..., :classes])) / 2.0
            heat = tf.math.log(heat) - tf.math.log1p(-heat)
            size = tf.sqrt(a[..., classes:classes + 2] * b[..., classes:classes + 2])
            offset = (a[..., classes + 2:] + b[..., classes + 2:]) / 2.0
            merged[task] = tf.concat([heat, size, offset], axis=-1)
        elif task == "segmentation":
            merged[task] = tf.math.log((tf.nn.softmax(a) + tf.nn.softmax(b)) / 2.0)
        else:
            merged[task] = (a + b) / 2.0
    return merged


def flip_tested(net, images) -> dict:
    """The net's raw outputs for `images` [B,H,W,3], averaged with those of their mirror images."""
    plain = net({"image": images}, training=False)
    mirrored = net({"image": tf.reverse(images, axis=[2])}, training=False)
    return merge_outputs(plain, mirror_outputs(mirrored))
