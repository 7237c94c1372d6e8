"""Anchor-free CenterNet detection (Zhou et al. 2019, "Objects as Points") on the stride-4 feature.

Output [B, H/4, W/4, C+4]: C centre heat-map logits, box size (w, h) in grid cells, centre offset
(x, y) from the cell's corner: within the cell (0..1), or with model.detection_neighbour_boxes
-1..2, so that the cells around a centre point at it too. A box centre in input pixels is
(cell + offset) * STRIDE, its size size * STRIDE. Sizes are learned in log space (BoxSize, and an
L1 loss on log sizes): a 4-px-wide pedestrian's 1-px error then costs what a 40-px car's 10-px
error does, where CenterNet's L1 in cells let the large boxes dominate (with it, pedestrian AP
fell from 0.56 at IoU 0.5 to 0.06 at 0.75 on the validation split: the boxes were found but not
fitted). With model.detection_size_bins, each side is instead a distribution over log-size bins
(BinSize; Generalized Focal Loss's distribution focal loss, Li et al. 2020): the output is still
C+4 channels, the bins' logits a training-only output (with_size_bins). The head and its loss are
backend-agnostic Keras (keras.ops); decoding, which the exports need in TensorFlow ops, is
models/detection_decode.py.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from data.schema import DETECTION_CLASSES
from data.vocabulary import HEAT_CENTRE, STRIDE
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
# Size bins (model.detection_size_bins): the bins' layer, and the trainer's extra output, by this name.
SIZE_BINS = "detection_size_bins"
SMALLEST_BIN = 0.5  # cells: 2 px, the smallest box side the data keeps after resizing
# On the distribution focal loss, gradient only (GFL's weight; the L1 on the log size stays).
BIN_LOSS_WEIGHT = 0.25
FOCAL_ALPHA = 2.0
FOCAL_BETA = 4.0


def build_detection_head(feature, width, num_classes=NUM_CLASSES, convs=1, batch_norm=False,
                         neighbour_boxes=False, size_bins=0, largest_box=384, name="detection"):
    """Stride-4 feature -> [B, h, w, C+4] float32 (see module docstring).

    The heat map and the box each read the feature through `convs` separable 3x3 convs of their own:
    each adds 8 px of context at stride 4, which the box needs to find the edges of its object.
    batch_norm: each of those convs is followed by BatchNorm (normalised heads, as FCOS's GroupNorm
    ones; BatchNorm because it folds into the conv for the exports).
    neighbour_boxes: the offset spans (-1, 2) cells (NeighbourOffset), so the 8 cells around a
    centre cell can point at it (the boxes detection_loss's neighbours train).
    size_bins >= 2: each box side is a distribution over this many log sizes from SMALLEST_BIN cells
    to largest_box px (BinSize); its 2 x size_bins logits are the layer SIZE_BINS (with_size_bins).
    0: one log size per side (BoxSize).
    """
    if num_classes < 1 or width < 1 or convs < 1 or size_bins < 0 or size_bins == 1:
        raise ValueError(f"detection head needs positive sizes and 0 or >= 2 size bins; Received: "
                         f"num_classes={num_classes}, width={width}, convs={convs}, size_bins={size_bins}")
    heat = _branch(feature, width, convs, batch_norm, name=f"{name}_heat")
    heat = keras.layers.Conv2D(
        num_classes, 1, name=f"{name}_heat_logits",
        bias_initializer=keras.initializers.Constant(-math.log((1 - HEAT_PRIOR) / HEAT_PRIOR)))(heat)
    box = _branch(feature, width, convs, batch_norm, name=f"{name}_box")
    if size_bins:
        logits = keras.layers.Conv2D(2 * size_bins, 1, name=f"{name}_size_bins")(box)
        size = BinSize(size_bins, largest_box / STRIDE, name=f"{name}_size_cells")(logits)
    else:
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


def _per_side(logits, bins):
    """[.., 2 bins] -> float32 [.., 2, bins]. A reshape, not slices and a concatenation: TFLite keeps
    neither out of XNNPACK."""
    return ops.reshape(ops.cast(logits, "float32"), (*ops.shape(logits)[:-1], 2, bins))


def bin_log_sizes(bins, largest):
    """The bins' log sizes: `bins` evenly spaced from log(SMALLEST_BIN) to log(largest), in cells."""
    return np.linspace(math.log(SMALLEST_BIN), math.log(largest), bins, dtype=np.float32)


@keras.saving.register_keras_serializable(package="dashcam")
class BinSize(keras.layers.Layer):
    """[.., 2 bins] logits -> [.., 2] size in cells: per side, exp of the expected log size under a
    softmax over `bins` log sizes (bin_log_sizes). Expected in log space, as the L1 measures sizes;
    the distribution is what the distribution focal loss (detection_loss) trains."""

    def __init__(self, bins, largest, **kwargs):
        super().__init__(**kwargs)
        self.bins, self.largest = int(bins), float(largest)

    def call(self, x):
        values = ops.convert_to_tensor(bin_log_sizes(self.bins, self.largest))
        return ops.exp(ops.sum(ops.softmax(_per_side(x, self.bins), axis=-1) * values, axis=-1))

    def get_config(self):
        return {**super().get_config(), "bins": self.bins, "largest": self.largest}


def with_size_bins(net):
    """The net with its detection head's size-bin logits as one more output, SIZE_BINS, for the
    distribution focal loss; the net itself when it has none. Same layers and weights: the saved net
    keeps its C+4 detection output, which decoding, the exports and serving read."""
    if SIZE_BINS not in [layer.name for layer in net.layers]:
        return net
    return keras.Model(net.input, {**net.output, SIZE_BINS: net.get_layer(SIZE_BINS).output},
                       name=f"{net.name}_with_size_bins")


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


def _bin_loss(logits, log_true, weight, mask, values):
    """GFL's distribution focal loss as a KL divergence: per side, from the two-hot target (the two
    bins around the true log size, weighted by nearness) to the softmax over the bins, so 0 when the
    distribution is the target. Weighted per cell and averaged over objects and sides as _weighted_l1.
    True sizes outside the bins count as the end bin."""
    bins = values.shape[0]
    position = (ops.clip(log_true, values[0], values[-1]) - values[0]) / float(values[1] - values[0])
    left = ops.minimum(ops.floor(position), bins - 2.0)  # [B, h, w, 2]
    right_share = (position - left)[..., None]
    left_index = ops.cast(left, "int32")
    target = (ops.one_hot(left_index, bins) * (1.0 - right_share)
              + ops.one_hot(left_index + 1, bins) * right_share)  # [B, h, w, 2, bins]
    log_p = ops.log_softmax(_per_side(logits, bins), axis=-1)
    divergence = ops.sum(target * (ops.log(ops.maximum(target, 1e-12)) - log_p), axis=-1)
    total = ops.sum(divergence * weight[..., None], axis=(1, 2, 3))
    return total / ops.maximum(ops.sum(mask, axis=(1, 2)) * 2, 1.0)


def _gradient_only(term, factor):
    """Value 0, gradient factor x term's: shapes the step without moving the loss that uncertainty
    weighting reads (and so the heat map's share of the detection gradient)."""
    return factor * (term - ops.stop_gradient(term))


def detection_loss(y_true, y_pred, quality=False, neighbours=False, size_gradient=1.0, size_bins=None,
                   largest=None):
    """Per-example loss [B]: focal(heat) + 1.0 * L1(log size) over each object's area + 1.0 *
    L1(offset) at centre cells; with neighbours, + both L1 terms at the 8 cells around each centre
    (det_near_box, det_near_weight).

    y_true: the batch dict (det_heatmap, det_size and det_size_weight over each object's area,
    det_offset and det_mask at its centre cell, optional det_ignore);
    y_pred: [B, h, w, C+4]. quality: the heat map's centres learn their box's IoU (focal_loss).
    size_gradient (train.detection_size_gradient): the size terms' gradient is multiplied by this and
    their value is not, so the loss uncertainty weighting reads, and with it the heat map's weight,
    stays what it was (weighing the size up in the value diluted the heat map's gradient instead).
    size_bins [B, h, w, 2n] (the SIZE_BINS output; largest: BinSize's, in cells): adds the
    distribution focal loss at every cell the size L1 weighs, BIN_LOSS_WEIGHT x, gradient only.
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
    size_weight = ops.cast(y_true["det_size_weight"], "float32")
    size = _weighted_l1(log_pred, log_true, size_weight, mask)
    if size_bins is not None:
        values = bin_log_sizes(size_bins.shape[-1] // 2, largest)
        bins = _bin_loss(size_bins, log_true, size_weight, mask, values)
    offset_pred = y_pred[..., classes + 2:]
    offset = _weighted_l1(offset_pred, ops.cast(y_true["det_offset"], "float32"), mask, mask)
    if neighbours:
        # The 8 cells around each centre learn its box too, on top of the centre's (not shared out of
        # it): a peak one cell off the centre then decodes a box of its object.
        near_box = ops.cast(y_true["det_near_box"], "float32")
        near_weight = ops.cast(y_true["det_near_weight"], "float32")
        near_log_true = ops.log(ops.maximum(near_box[..., :2], MIN_SIZE))
        size += _weighted_l1(log_pred, near_log_true, near_weight, mask)
        if size_bins is not None:
            bins += _bin_loss(size_bins, near_log_true, near_weight, mask, values)
        offset += _weighted_l1(offset_pred, near_box[..., 2:], near_weight, mask)
    size = SIZE_WEIGHT * size
    if size_gradient != 1.0:  # value size, gradient size_gradient x size's
        size += _gradient_only(size, size_gradient - 1.0)
    if size_bins is not None:
        size += _gradient_only(bins, BIN_LOSS_WEIGHT)
    return heat + size + OFFSET_WEIGHT * offset
