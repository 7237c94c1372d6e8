"""Anchor-free CenterNet detection (Zhou et al. 2019, "Objects as Points") on the stride-4 feature.

Output [B, H/4, W/4, C+4]: C centre heat-map logits, box size (w, h) in grid cells, centre offset
(x, y) from the cell's corner: within the cell (0..1), or with model.detection_neighbour_boxes
-1..2, so that the cells around a centre point at it too. A box centre in input pixels is
(cell + offset) * STRIDE, its size size * STRIDE. Sizes are learned in log space (BoxSize, and an
L1 loss on log sizes): a 4-px-wide pedestrian's 1-px error then costs what a 40-px car's 10-px
error does, where CenterNet's L1 in cells let the large boxes dominate (with it, pedestrian AP
fell from 0.56 at IoU 0.5 to 0.06 at 0.75 on the validation split: the boxes were found but not
fitted). The head and its loss are backend-agnostic Keras (keras.ops); decoding, which the exports
need in TensorFlow ops, is models/detection_decode.py.
"""
from __future__ import annotations

import math

import keras
from keras import ops

from data.schema import DETECTION_CLASSES
from data.vocabulary import HEAT_CENTRE
from models.blocks import bounded_log, separable_bn_relu, separable_relu

NUM_CLASSES = len(DETECTION_CLASSES)
# Focal-loss prior (Lin et al. 2017): start every pixel at p=0.01 so the ~all-negative heat map
# does not swamp the first steps with a huge loss.
HEAT_PRIOR = 0.01
SIZE_WEIGHT = 1.0  # on L1 of log sizes (CenterNet's 0.1 was on L1 in cells)
# Box sizes in grid cells: 0.1 cell (0.4 px) to 256 cells (1,024 px) at stride 4.
MIN_SIZE = 0.1
MAX_SIZE = 256.0
OFFSET_WEIGHT = 1.0
FOCAL_ALPHA = 2.0
FOCAL_BETA = 4.0


def build_detection_head(feature, width, num_classes=NUM_CLASSES, convs=1, batch_norm=False,
                         neighbour_boxes=False, name="detection"):
    """Stride-4 feature -> [B, h, w, C+4] float32 (see module docstring).

    The heat map and the box each read the feature through `convs` separable 3x3 convs of their own:
    each adds 8 px of context at stride 4, which the box needs to find the edges of its object.
    batch_norm: each of those convs is followed by BatchNorm (normalised heads, as FCOS's GroupNorm
    ones; BatchNorm because it folds into the conv for the exports).
    neighbour_boxes: the offset spans (-1, 2) cells (NeighbourOffset), so the 8 cells around a
    centre cell can point at it (the boxes detection_loss's neighbours train).
    """
    if num_classes < 1 or width < 1 or convs < 1:
        raise ValueError(f"detection head needs positive sizes; Received: num_classes={num_classes}, "
                         f"width={width}, convs={convs}")
    heat = _branch(feature, width, convs, batch_norm, name=f"{name}_heat")
    heat = keras.layers.Conv2D(
        num_classes, 1, name=f"{name}_heat_logits",
        bias_initializer=keras.initializers.Constant(-math.log((1 - HEAT_PRIOR) / HEAT_PRIOR)))(heat)
    box = _branch(feature, width, convs, batch_norm, name=f"{name}_box")
    size = BoxSize(name=f"{name}_size_cells")(keras.layers.Conv2D(2, 1, name=f"{name}_size")(box))
    if neighbour_boxes:
        offset = keras.layers.Conv2D(2, 1, name=f"{name}_offset")(box)
        offset = NeighbourOffset(name=f"{name}_offset_cells")(offset)
    else:
        offset = keras.layers.Conv2D(2, 1, activation="sigmoid", name=f"{name}_offset")(box)
    # float32 output: losses and decoding stay exact under mixed precision.
    return keras.layers.Concatenate(name=name, dtype="float32")([heat, size, offset])


def _branch(x, width, convs, batch_norm, name):
    """`convs` separable 3x3 (+ BatchNorm) + ReLU; the first is named `name` (the single-conv head's
    layer name)."""
    conv = separable_bn_relu if batch_norm else separable_relu
    for index in range(convs):
        x = conv(x, width, name=name if index == 0 else f"{name}_{index}")
    return x


@keras.saving.register_keras_serializable(package="dashcam")
class BoxSize(keras.layers.Layer):
    """x -> exp(bounded_log(x, MIN_SIZE, MAX_SIZE)) grid cells (5 cells, 20 px, at x = 0): the raw
    output is the log size the loss measures (models.blocks.bounded_log)."""

    def call(self, x):
        return ops.exp(bounded_log(x, MIN_SIZE, MAX_SIZE))


@keras.saving.register_keras_serializable(package="dashcam")
class NeighbourOffset(keras.layers.Layer):
    """x -> 3 sigmoid(x) - 1: the object's centre from up to one cell before this one to one after
    (0.5, the cell's middle, at x = 0, as the sigmoid offset)."""

    def call(self, x):
        return 3.0 * ops.sigmoid(x) - 1.0


def focal_loss(heat_true, logits, ignore=None, quality=None):
    """CenterNet's penalty-reduced pixel-wise focal loss, per example [B], / max(1, #centres).

    ignore [B, h, w] (1 = ignore region: KITTI DontCare, crowds, objects below the size protocol)
    removes the negative term there, as evaluation ignores detections there; a labelled centre
    inside an ignore region stays positive.

    quality [B, h, w] (train.detection_quality): each centre's target is this, the IoU of the box
    decoded there, instead of 1: Generalized Focal Loss's quality focal loss (Li et al. 2020),
    -|q - p|^2 (q log p + (1 - q) log(1 - p)), which at q = 1 is CenterNet's positive term. The score
    then ranks a well-fitted box above a loose one, which is what AP at IoU 0.5-0.95 rewards.
    """
    positive = ops.cast(heat_true >= HEAT_CENTRE, "float32")  # centre cells are exactly 1
    target = positive if quality is None else positive * ops.cast(quality, "float32")[..., None]
    prob = ops.sigmoid(logits)
    negative = 1.0 - positive
    if ignore is not None:
        negative *= 1.0 - ops.cast(ignore, "float32")[..., None]
    # log_sigmoid keeps log(p) and log(1-p) finite for large logits.
    log_p, log_not_p = ops.log_sigmoid(logits), ops.log_sigmoid(-logits)
    pos_term = (-ops.power(ops.abs(target - prob), FOCAL_ALPHA) * positive
                * (target * log_p + (1.0 - target) * log_not_p))
    neg_term = (-ops.power(prob, FOCAL_ALPHA) * log_not_p
                * ops.power(1.0 - heat_true, FOCAL_BETA) * negative)
    count = ops.sum(positive, axis=(1, 2, 3))
    return ops.sum(pos_term + neg_term, axis=(1, 2, 3)) / ops.maximum(count, 1.0)


def box_iou_at_cells(box_pred, size_true, offset_true):
    """[B, h, w]: IoU of the box each cell decodes (size in cells, offset from the cell's corner:
    box_pred [..., 4]) with the box its targets give there (det_size, det_offset). Both centres are
    measured from the same cell's corner, so the cell's position cancels; meaningful at centre cells,
    where both targets are set."""
    size_pred, offset_pred = box_pred[..., :2], box_pred[..., 2:]
    size_true, offset_true = ops.cast(size_true, "float32"), ops.cast(offset_true, "float32")
    low = ops.maximum(offset_pred - size_pred / 2.0, offset_true - size_true / 2.0)
    high = ops.minimum(offset_pred + size_pred / 2.0, offset_true + size_true / 2.0)
    overlap = ops.prod(ops.maximum(high - low, 0.0), axis=-1)
    union = ops.prod(size_pred, axis=-1) + ops.prod(size_true, axis=-1) - overlap
    return overlap / ops.maximum(union, 1e-6)


def _weighted_l1(pred, true, weight, mask):
    """L1 weighted per cell, averaged over objects (the centre cells in `mask`) and coordinates:
    CenterNet's normalisation, the sum over both coordinates divided by 2 x objects. With weights
    that sum to 1 per object, each object counts once wherever its weight lies."""
    count = ops.sum(mask, axis=(1, 2)) * pred.shape[-1]
    total = ops.sum(ops.abs(pred - true) * weight[..., None], axis=(1, 2, 3))
    return total / ops.maximum(count, 1.0)


def detection_loss(y_true, y_pred, quality=False, neighbours=False, size_gradient=1.0):
    """Per-example loss [B]: focal(heat) + 1.0 * L1(log size) over each object's area + 1.0 *
    L1(offset) at centre cells; with neighbours, + both L1 terms at the 8 cells around each centre
    (det_near_box, det_near_weight).

    y_true: the batch dict (det_heatmap, det_size and det_size_weight over each object's area,
    det_offset and det_mask at its centre cell, optional det_ignore);
    y_pred: [B, h, w, C+4]. quality: the heat map's centres learn their box's IoU (focal_loss).
    size_gradient (train.detection_size_gradient): the size terms' gradient is multiplied by this and
    their value is not, so the loss uncertainty weighting reads, and with it the heat map's weight,
    stays what it was (weighing the size up in the value diluted the heat map's gradient instead).
    """
    y_pred = ops.cast(y_pred, "float32")
    classes = y_pred.shape[-1] - 4
    mask = ops.cast(y_true["det_mask"], "float32")
    iou = None
    if quality:
        # No gradient through the target: the score learns how good the box is; the box is not
        # shrunk or moved to make its score easier to learn (as in GFL).
        iou = ops.stop_gradient(box_iou_at_cells(y_pred[..., classes:], y_true["det_size"],
                                                 y_true["det_offset"]))
    heat = focal_loss(ops.cast(y_true["det_heatmap"], "float32"), y_pred[..., :classes],
                      y_true.get("det_ignore"), iou)
    # Log sizes: relative errors, whatever the box size. BoxSize never goes below MIN_SIZE; the
    # prediction's floor only keeps log(0) out, far below it, so the gradient is never cut.
    log_pred = ops.log(ops.maximum(y_pred[..., classes:classes + 2], 1e-6))
    log_true = ops.log(ops.maximum(ops.cast(y_true["det_size"], "float32"), MIN_SIZE))
    size = _weighted_l1(log_pred, log_true, ops.cast(y_true["det_size_weight"], "float32"), mask)
    offset_pred = y_pred[..., classes + 2:]
    offset = _weighted_l1(offset_pred, ops.cast(y_true["det_offset"], "float32"), mask, mask)
    if neighbours:
        # The 8 cells around each centre learn its box too, on top of the centre's (not shared out of
        # it): a peak one cell off the centre then decodes a box of its object.
        near_box = ops.cast(y_true["det_near_box"], "float32")
        near_weight = ops.cast(y_true["det_near_weight"], "float32")
        near_log_true = ops.log(ops.maximum(near_box[..., :2], MIN_SIZE))
        size += _weighted_l1(log_pred, near_log_true, near_weight, mask)
        offset += _weighted_l1(offset_pred, near_box[..., 2:], near_weight, mask)
    size = SIZE_WEIGHT * size
    if size_gradient != 1.0:  # value size, gradient size_gradient x size's
        size += (size_gradient - 1.0) * (size - ops.stop_gradient(size))
    return heat + size + OFFSET_WEIGHT * offset
