"""Training targets for the anchor-free detector, encoded in TF ops inside the input pipeline.

CenterNet-style dense maps at the detector's output stride: a peak per object at its centre cell in
its class's heat map, with a Gaussian about the object's centre around it (elliptical, sized by the
box as in TTFNet, so long thin objects such as pedestrians get thin peaks; _heat_peaks), the
sub-cell offset at the centre cell, and the box size over a small area around it (TTFNet's
regression area, see _size_area); and the box once more at the 8 cells around the centre cell
(_neighbour_boxes; model.detection_neighbour_boxes trains on it). Dense maps (rather than index
lists) keep every shape static for XLA.
"""
from __future__ import annotations

import tensorflow as tf

from data.vocabulary import HEAT_CENTRE, STRIDE

GAUSSIAN_ALPHA = 0.54  # TTFNet: sigma = alpha * side / 6
# The box size is learned over the box scaled by this about its centre (TTFNet's beta), not only at
# the centre cell: several cells per object for the box branch, which underfits (docs/results-history.md, "Where the
# AP goes").
SIZE_AREA_BETA = 0.54
# The box is also learned at the 8 cells around the centre cell (model.detection_neighbour_boxes),
# where a heat-map peak lands when it misses the centre cell and decoding reads the box there:
# weighted exp(-d^2 / 2 sigma^2), d the distance in cells from the object's centre to the cell's.
NEIGHBOUR_SIGMA = 0.5
# The heat map's largest target off a centre cell, below HEAT_CENTRE (the focal loss's centres).
NEAR_MISS_CAP = HEAT_CENTRE - 1e-3


def encode_detection(boxes: tf.Tensor, classes: tf.Tensor, image_size: tuple[int, int],
                     num_classes: int, neighbour_boxes: bool = False) -> dict[str, tf.Tensor]:
    """boxes [N,4] x1,y1,x2,y2 model-input pixels, classes [N] -> dense maps at stride 4.

    neighbour_boxes: also det_near_box and det_near_weight (_neighbour_boxes), which only the
    training objective of model.detection_neighbour_boxes reads.
    """
    out_h, out_w = image_size[0] // STRIDE, image_size[1] // STRIDE
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]) / STRIDE
    classes = tf.reshape(tf.cast(classes, tf.int32), [-1])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    size = boxes[:, 2:] - boxes[:, :2]
    limits = tf.constant([out_w - 1, out_h - 1], tf.float32)
    cell = tf.clip_by_value(tf.floor(centre), 0.0, limits)
    offset = tf.clip_by_value(centre - cell, 0.0, 0.999)

    sigma = tf.maximum(GAUSSIAN_ALPHA * size / 6.0, 0.3)  # [N,2] (x, y)
    xs = tf.range(out_w, dtype=tf.float32)
    ys = tf.range(out_h, dtype=tf.float32)
    # The size area's weights follow a Gaussian about the centre cell (its middle, cell + 0.5); the
    # heat map's, one about the object's own centre (_heat_peaks).
    peaks = _gaussian(cell + 0.5, sigma, xs, ys)
    at_centre = (tf.equal(ys[None, :, None], cell[:, 1, None, None])
                 & tf.equal(xs[None, None, :], cell[:, 0, None, None]))  # [N,H,W]
    one_hot = tf.one_hot(classes, num_classes)  # [N,C]
    heat = _heat_peaks(centre, at_centre, sigma, xs, ys)
    # max over no boxes is -inf: a frame without objects (every CamVid frame) must give zeros.
    heatmap = tf.maximum(tf.reduce_max(heat[..., None] * one_hot[:, None, None, :], axis=0), 0.0)  # [H,W,C]
    heatmap = tf.reshape(heatmap, [out_h, out_w, num_classes])  # static shape even when N = 0

    indices = tf.cast(tf.stack([cell[:, 1], cell[:, 0]], axis=1), tf.int32)
    mask = tf.tensor_scatter_nd_update(tf.zeros([out_h, out_w]), indices, tf.ones_like(classes, tf.float32))
    owner, size_weight = _size_area(peaks, at_centre, centre, size, xs, ys)
    # Size and offset both from the cell's owner: at a centre cell two objects share, the smaller box,
    # so that the box a centre decodes (and, with train.detection_quality, its IoU target) is one
    # object's. (A scatter of the offsets would keep whichever duplicate it wrote last.)
    box = tf.gather(tf.concat([tf.zeros([1, 4]), tf.concat([size, offset], axis=1)], axis=0), owner)
    maps = {
        "det_heatmap": heatmap,
        "det_size": box[..., :2],  # the dummy's cells get 0
        "det_size_weight": size_weight,
        "det_offset": box[..., 2:] * mask[..., None],
        "det_mask": mask,
    }
    if neighbour_boxes:
        maps["det_near_box"], maps["det_near_weight"] = _neighbour_boxes(
            centre, cell, size, mask, owner, size_weight, xs, ys)
    return maps


def _gaussian(centre, sigma, xs, ys):
    """[N,H,W]: exp(-d^2 / 2 sigma^2) along each axis, d from each centre [N,2] (cells) to each
    cell's middle; sigma [N,2] or one number."""
    sigma = sigma * tf.ones_like(centre)
    gx = tf.exp(-tf.square(xs[None, :] + 0.5 - centre[:, 0:1]) / (2 * tf.square(sigma[:, 0:1])))  # [N,W]
    gy = tf.exp(-tf.square(ys[None, :] + 0.5 - centre[:, 1:2]) / (2 * tf.square(sigma[:, 1:2])))  # [N,H]
    return gy[:, :, None] * gx[:, None, :]


def _heat_peaks(centre, at_centre, sigma, xs, ys):
    """Each object's heat-map target [N,H,W]: exactly 1 at its centre cell (the focal loss's one
    positive), elsewhere its Gaussian about the object's own centre, not the centre cell's corner.

    An object whose centre sits near the edge of its cell is then nearly as much at home in the
    next cell, and a peak there is punished as the near miss it is: up to 0.38 for a 16-px-tall
    person whose centre lies on a row boundary, where a Gaussian about the cell gave 0.02, a full
    negative (DARK's unbiased encoding, Zhang et al. 2020, in CenterNet's focal loss). Other cells
    stay below NEAR_MISS_CAP, so that a very large box centred on a boundary still has one positive.
    """
    return tf.where(at_centre, 1.0, tf.minimum(_gaussian(centre, sigma, xs, ys), NEAR_MISS_CAP))


def _neighbour_boxes(centre, cell, size, mask, area_owner, size_weight, xs, ys):
    """Box targets [h,w,4] (size, and the centre's offset from that cell, in (-1, 2)) and weights
    [h,w] at the 8 cells around each object's centre cell.

    A cell around two centres belongs to the nearer centre; no weight at a centre cell (it keeps its
    own object's box) or where another object's size area lies (one size target per cell).
    """
    near_x = tf.abs(xs[None, :] - cell[:, 0:1]) <= 1.0  # [N,W]
    near_y = tf.abs(ys[None, :] - cell[:, 1:2]) <= 1.0  # [N,H]
    weight = (_gaussian(centre, NEIGHBOUR_SIGMA, xs, ys)
              * tf.cast(near_y[:, :, None] & near_x[:, None, :], tf.float32))  # [N,H,W]
    weight = tf.concat([tf.zeros([1, ys.shape[0], xs.shape[0]]), weight], axis=0)
    owner = tf.argmax(weight, axis=0)  # 0: none
    other_area = (size_weight > 0.0) & tf.not_equal(area_owner, owner)
    keep = (1.0 - mask) * (1.0 - tf.cast(other_area, tf.float32))
    near_weight = tf.reduce_max(weight, axis=0) * keep
    box = tf.gather(tf.concat([tf.zeros([1, 4]), tf.concat([size, centre], axis=1)], axis=0), owner)
    grid = tf.stack(tf.meshgrid(xs, ys), axis=-1)  # [H,W,2] (x, y)
    near_offset = (box[..., 2:] - grid) * tf.cast(owner > 0, tf.float32)[..., None]
    return tf.concat([box[..., :2], near_offset], axis=-1), near_weight


def _size_area(peaks, at_centre, centre, size, xs, ys):
    """Each cell's owner [h,w] (0: none, i: object i-1) and the box size's weight [h,w] over each
    object's area (TTFNet).

    The area: cells whose centre lies in the box scaled by SIZE_AREA_BETA about its centre, and
    always the centre cell. Weights follow the object's Gaussian and sum to 1 per object, so each
    object counts once, as it did at its centre alone, and the centre cell, which decoding reads,
    weighs most. A cell in two areas belongs to the object whose Gaussian is higher there: the
    nearer one, or the smaller one, whose peak is sharper; a centre cell two objects share, to the
    smaller box.
    """
    half = SIZE_AREA_BETA * size / 2.0  # [N,2]
    in_x = tf.abs(xs[None, :] + 0.5 - centre[:, 0:1]) <= half[:, 0:1]  # [N,W]
    in_y = tf.abs(ys[None, :] + 0.5 - centre[:, 1:2]) <= half[:, 1:2]  # [N,H]
    weight = peaks * tf.cast((in_y[:, :, None] & in_x[:, None, :]) | at_centre, tf.float32)
    # A leading all-zero "object" keeps argmax defined without objects; the cells it wins weigh 0.
    weight = tf.concat([tf.zeros([1, ys.shape[0], xs.shape[0]]), weight], axis=0)
    # Two objects centred in one cell both peak at exactly 1 there: the smaller box takes it. The
    # factor breaks ties (within 0.01 %) by log area, which float32 resolves at any box size, and
    # keeps zero weights at zero.
    log_area = tf.math.log1p(tf.concat([tf.zeros([1]), size[:, 0] * size[:, 1]], axis=0))
    owner = tf.argmax(weight * (1.0 + 1e-4 / (1.0 + log_area))[:, None, None], axis=0)
    owned = weight * tf.one_hot(owner, tf.shape(weight)[0], axis=0)
    owned /= tf.maximum(tf.reduce_sum(owned, axis=(1, 2), keepdims=True), 1e-12)
    return owner, tf.reduce_sum(owned, axis=0)


def encode_ignore(ignore_boxes: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """ignore_boxes [R,4] model-input pixels -> [h, w] float 1 where a stride-4 cell overlaps one.

    The detection loss takes no negative term there (models.detection.focal_loss), just as
    evaluation counts no false positive there.
    """
    out_h, out_w = image_size[0] // STRIDE, image_size[1] // STRIDE
    boxes = tf.reshape(tf.cast(ignore_boxes, tf.float32), [-1, 4]) / STRIDE
    xs = tf.range(out_w, dtype=tf.float32)
    ys = tf.range(out_h, dtype=tf.float32)
    in_x = (boxes[:, 0:1] < xs[None, :] + 1.0) & (boxes[:, 2:3] > xs[None, :])  # [R, W]
    in_y = (boxes[:, 1:2] < ys[None, :] + 1.0) & (boxes[:, 3:4] > ys[None, :])  # [R, H]
    inside = tf.cast(in_y[:, :, None] & in_x[:, None, :], tf.float32)  # [R, H, W]
    # max over no regions is -inf: a frame without ignore regions must give zeros.
    return tf.reshape(tf.maximum(tf.reduce_max(inside, axis=0), 0.0), [out_h, out_w])


def pad_boxes(boxes: tf.Tensor, classes: tf.Tensor, max_boxes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Fixed-size box lists for batching: first `max_boxes` boxes, padded with class -1."""
    boxes = tf.reshape(boxes, [-1, 4])[:max_boxes]
    classes = tf.reshape(classes, [-1])[:max_boxes]
    pad = max_boxes - tf.shape(classes)[0]
    boxes = tf.pad(boxes, [[0, pad], [0, 0]])
    classes = tf.pad(classes, [[0, pad]], constant_values=-1)
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(classes, [max_boxes])
