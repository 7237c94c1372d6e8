"""models/: the functional net (shapes, subsets, backbones, saving) and the multi-task trainer.

Tiny sizes throughout (64x96 px, widths 8..32, batch 2) so the whole file runs in seconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf

from data.schema import IGNORE
from models.depth import LogDepth, depth_loss
from data.vocabulary import STRIDE
from models.detection import MIN_SIZE, BoxSize, detection_loss
from models.detection_decode import REFINE_POWER, _local_peaks, decode_detections, decode_parts
from models.multitask import TASKS, build_model, rebuild_at
from models.optimizer import make_optimizer
from models.segmentation import segmentation_loss
from models.sharing import CrossStitch, soft_sharing_penalty, task_encoders
from models.trainer import MultiTaskTrainer
from data.errors import UserError
from pipeline.config import ModelConfig, TrainConfig
from support import REPO

SIZE = (64, 96)
BATCH = 2


def tiny_model(**overrides):
    values = dict(widths=(8, 16, 24, 32), neck_width=16, head_width=16, top_k=10)
    values.update(overrides)
    return ModelConfig(**values)


def tiny_train(**overrides):
    values = dict(learning_rate=1e-2, warmup_steps=0, weight_decay=1e-4)
    values.update(overrides)
    return TrainConfig(**values)


def make_batch(batch=BATCH, size=SIZE, seed=0, has=(1.0, 1.0, 1.0), max_boxes=4):
    """(x, y) per the batch contract: one object per example, random masks and depth."""
    rng = np.random.default_rng(seed)
    height, width = size
    h, w = height // STRIDE, width // STRIDE
    heatmap = np.zeros((batch, h, w, 3), np.float32)
    det_size = np.zeros((batch, h, w, 2), np.float32)
    offset = np.zeros((batch, h, w, 2), np.float32)
    mask = np.zeros((batch, h, w), np.float32)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    classes = np.full((batch, max_boxes), -1, np.int32)
    ys, xs = np.mgrid[0:h, 0:w]
    for b in range(batch):
        cls = b % 3
        cx, cy, bw, bh = 10.3 + 4 * b, 7.6, 4.0, 3.0  # grid cells
        heatmap[b, :, :, cls] = np.exp(-((xs - int(cx)) ** 2 + (ys - int(cy)) ** 2) / 2.0)
        det_size[b, int(cy), int(cx)] = (bw, bh)
        offset[b, int(cy), int(cx)] = (cx - int(cx), cy - int(cy))
        mask[b, int(cy), int(cx)] = 1.0
        boxes[b, 0] = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]) * STRIDE
        classes[b, 0] = cls
    segmentation = rng.integers(0, 9, (batch, height, width)).astype(np.int32)
    segmentation[:, :4] = IGNORE
    depth = rng.uniform(2.0, 40.0, (batch, height, width)).astype(np.float32)
    depth[:, ::3] = 0.0
    x = {"image": rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)}
    y = {"det_heatmap": heatmap, "det_size": det_size, "det_size_weight": mask, "det_offset": offset, "det_mask": mask,
         "segmentation": segmentation, "depth": depth, "boxes": boxes, "classes": classes}
    for task, flag in zip(TASKS, has):
        y[f"has_{task}"] = np.full((batch,), flag, np.float32)
    return x, y


@pytest.fixture(scope="module")
def net():
    return build_model(tiny_model(), SIZE)


# --- the functional net ------------------------------------------------------------------------

def test_outputs_follow_the_contract(net):
    x, _ = make_batch()
    out = net(x)
    assert set(out) == set(TASKS)
    assert out["detection"].shape == (BATCH, SIZE[0] // 4, SIZE[1] // 4, 3 + 4)
    assert out["segmentation"].shape == (BATCH, *SIZE, 9)
    assert out["depth"].shape == (BATCH, *SIZE, 1)
    assert all(v.dtype == tf.float32 for v in out.values())
    config = tiny_model()
    assert float(tf.reduce_min(out["depth"])) >= config.min_depth
    assert float(tf.reduce_max(out["depth"])) <= config.max_depth
    det = out["detection"].numpy()
    assert (det[..., 3:5] > 0).all() and (det[..., 5:] >= 0).all() and (det[..., 5:] <= 1).all()
    assert net.inputs[0].name == "image"


@pytest.mark.parametrize("tasks", [["detection"], ["segmentation"], ["depth"], ["detection", "depth"],
                                   ["segmentation", "depth"]])
def test_any_subset_of_tasks_builds(tasks):
    model = build_model(tiny_model(tasks=tasks), SIZE)
    out = model(make_batch()[0])
    assert sorted(out) == sorted(tasks)


@pytest.mark.parametrize("sharing", ["hard", "soft"])
def test_rebuild_at_is_the_same_net_at_another_size(sharing):
    """Under soft sharing each task's encoder takes the shared trunk's map, a quarter of the frame's
    size: its input scales with the frame's."""
    config = tiny_model(sharing=sharing, shared_through="P2" if sharing == "soft" else None)
    net = build_model(config, SIZE)
    big = (2 * SIZE[0], 128)  # 2x the height, 4/3 the width
    reference = build_model(config, big)
    reference.set_weights(net.get_weights())
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, *big, 3)), tf.float32)
    resized = rebuild_at(net, big)
    for task, value in reference({"image": image}, training=False).items():
        np.testing.assert_allclose(resized({"image": image}, training=False)[task].numpy(), value.numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_single_task_ignores_sharing_mode():
    soft = build_model(tiny_model(tasks=["depth"], sharing="soft"), SIZE)
    hard = build_model(tiny_model(tasks=["depth"]), SIZE)
    assert soft.count_params() == hard.count_params()


def test_detection_head_convs_stack_in_both_branches():
    """convs=2: a second separable 3x3 in the heat and in the box branch, each reading the first; the
    first keeps the single-conv head's name; the output is unchanged in shape."""
    one = build_model(tiny_model(tasks=["detection"]), SIZE)
    two = build_model(tiny_model(tasks=["detection"], detection_head_convs=2), SIZE)
    names = {layer.name for layer in two.layers} - {layer.name for layer in one.layers}
    assert names == {"detection_heat_1", "detection_box_1"}
    for branch in ("heat", "box"):
        second = two.get_layer(f"detection_{branch}_1")
        assert second.input is two.get_layer(f"detection_{branch}").output
    added = two.count_params() - one.count_params()
    assert added == 2 * (16 * 9 + 16 * 16 + 16)  # depthwise 3x3, pointwise 16x16, bias
    x = make_batch()[0]
    assert two(x)["detection"].shape == one(x)["detection"].shape
    with pytest.raises(ValueError, match="convs=0"):
        build_model(tiny_model(tasks=["detection"], detection_head_convs=0), SIZE)


def test_detection_head_batch_norm_follows_every_branch_conv():
    """batch_norm: each head conv loses its bias and feeds a BatchNorm, then the ReLU; the convs keep
    the plain head's names, and no other layer is added.
    A training-mode pass moves the head's BatchNorm statistics; an inference pass leaves them."""
    plain = build_model(tiny_model(tasks=["detection"], detection_head_convs=2), SIZE)
    normed = build_model(tiny_model(tasks=["detection"], detection_head_convs=2,
                                    detection_head_batch_norm=True), SIZE)
    names = {layer.name for layer in normed.layers} - {layer.name for layer in plain.layers}
    convs = ("detection_heat", "detection_heat_1", "detection_box", "detection_box_1")
    assert names == {f"{conv}_{part}" for conv in convs for part in ("bn", "relu")}
    for conv in convs:
        layer = normed.get_layer(conv)
        assert layer.use_bias is False and layer.activation is keras.activations.linear
        assert normed.get_layer(f"{conv}_bn").input is layer.output
        assert normed.get_layer(f"{conv}_relu").input is normed.get_layer(f"{conv}_bn").output
    # per conv: the bias (16) goes, BatchNorm's gamma, beta, moving mean and variance (4 x 16) come
    assert normed.count_params() - plain.count_params() == 4 * (4 * 16 - 16)
    x = make_batch()[0]
    assert normed(x)["detection"].shape == plain(x)["detection"].shape
    statistics = [normed.get_layer(f"{conv}_bn").moving_mean for conv in convs]
    before = [keras.ops.convert_to_numpy(mean) for mean in statistics]
    normed(x, training=False)
    assert all(np.array_equal(old, keras.ops.convert_to_numpy(new)) for old, new in zip(before, statistics))
    normed(x, training=True)
    assert not any(np.array_equal(old, keras.ops.convert_to_numpy(new)) for old, new in zip(before, statistics))


def _logit(score):
    return float(np.log(score / (1.0 - score)))


def _head_output(h=16, w=24, classes=3):
    """A detection output with no object: every score ~0, sizes 1 cell, offsets 0."""
    out = np.full((1, h, w, classes + 4), -20.0, np.float32)
    out[..., classes:classes + 2] = 1.0
    out[..., classes + 2:] = 0.0
    return out


def test_decode_recovers_a_hand_made_box():
    out = _head_output()
    out[0, 5, 7, 1] = 10.0  # a peak of class 1 at cell (x=7, y=5)
    out[0, 5, 7, 3:5] = (3.0, 4.0)  # 3 x 4 cells
    out[0, 5, 7, 5:7] = (0.25, 0.5)  # centre (7.25, 5.5) cells
    out[0, 5, 8, 2] = 9.0  # another class's score beside it: not this peak's neighbourhood
    for neighbourhood in (True, False):
        result = decode_detections(out, top_k=5, neighbourhood=neighbourhood)
        assert result["boxes"].shape == (1, 5, 4) and result["classes"].dtype == tf.int32
        cx, cy = 7.25 * STRIDE, 5.5 * STRIDE
        expected = [cx - 1.5 * STRIDE, cy - 2 * STRIDE, cx + 1.5 * STRIDE, cy + 2 * STRIDE]
        np.testing.assert_allclose(result["boxes"][0, 0], expected, atol=1e-4)
        assert int(result["classes"][0, 0]) == 1
        assert float(result["scores"][0, 0]) > 0.99
        assert int(result["classes"][0, 1]) == 2  # the other class's peak is a detection of its own


def test_decode_suppresses_a_weaker_neighbour_and_reads_its_box_estimate():
    """A neighbour of the peak's class is no detection of its own, but its estimate of the centre
    (its cell + its offset) and of the log size count, weighted by score ** REFINE_POWER."""
    out = _head_output()
    out[0, 5, 7, 1], out[0, 5, 8, 1] = _logit(0.8), _logit(0.6)
    out[0, 5, 7, 3:7] = (3.0, 4.0, 0.9, 0.5)  # centre estimate (7.9, 5.5), 3 x 4 cells
    out[0, 5, 8, 3:7] = (2.0, 4.0, 0.1, 0.5)  # centre estimate (8.1, 5.5), 2 x 4 cells
    result = decode_detections(out, top_k=5)
    assert float(result["scores"][0, 1]) < 0.01  # the neighbour is suppressed
    weights = np.array([0.8, 0.6]) ** REFINE_POWER
    weights /= weights.sum()
    cx, cy = (weights @ [7.9, 8.1]) * STRIDE, 5.5 * STRIDE
    half_w, half_h = np.exp(weights @ np.log([3.0, 2.0])) * STRIDE / 2, 2.0 * STRIDE
    np.testing.assert_allclose(result["boxes"][0, 0], [cx - half_w, cy - half_h, cx + half_w, cy + half_h], atol=1e-3)


def test_a_peak_a_cell_off_the_centre_decodes_the_centre_cells_box():
    """The case the neighbourhood is for: the peak lands on the cell beside the object's centre cell,
    whose offset and size were trained; the peak cell's own box is far off, the neighbourhood's fits."""
    truth = np.array([6.2, 3.0, 7.4, 7.0]) * STRIDE  # a person 1.2 x 4 cells, centre (6.8, 5.0)
    out = _head_output()
    out[0, 5, 6, 0], out[0, 5, 7, 0] = _logit(0.7), _logit(0.75)  # the peak one cell right of the centre cell
    out[0, 5, 6, 3:7] = (1.2, 4.0, 0.8, 0.0)  # the centre cell: the trained box
    out[0, 5, 7, 3:7] = (2.0, 4.5, 0.5, 0.0)  # the peak cell: an untrained guess
    own = decode_detections(out, top_k=1, neighbourhood=False)["boxes"][0, 0].numpy()
    refined = decode_detections(out, top_k=1)["boxes"][0, 0].numpy()

    def iou(a, b):
        overlap = np.prod(np.maximum(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0))
        return overlap / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - overlap)
    assert iou(own, truth) < 0.5 < iou(refined, truth)


def test_decode_at_the_map_edge_reads_no_cell_beyond_it():
    """A peak on the left edge has no left neighbours: in the flattened map the cell before it is the
    previous row's last one, here another peak, which must not count."""
    out = _head_output(h=4, w=6)
    out[0, 1, 0, 0] = 10.0  # row 1, column 0
    out[0, 1, 0, 3:7] = (2.0, 2.0, 0.5, 0.5)
    out[0, 0, 5, 0] = 10.0  # row 0, last column: one cell before it when flattened
    out[0, 0, 5, 3:7] = (1.0, 1.0, 0.5, 0.5)
    boxes = decode_detections(out, top_k=2)["boxes"][0].numpy()
    np.testing.assert_allclose(sorted(boxes.tolist()), [[0.0, 2.0, 6.0, 10.0], [20.0, 0.0, 24.0, 4.0]], atol=1e-3)


def test_every_peaks_box_is_its_neighbourhoods_weighted_mean():
    """Against a plain loop over each peak's 3x3 cells, on a batch of random maps whose peaks lie
    on every edge: the batch offset, the row and column shifts and the class index all count."""
    rng = np.random.default_rng(0)
    batch, h, w, classes = 3, 5, 7, 3
    out = np.concatenate([rng.normal(0, 2.5, (batch, h, w, classes)), rng.uniform(0.2, 9, (batch, h, w, 2)),
                          rng.uniform(0, 1, (batch, h, w, 2))], -1).astype(np.float32)
    top_k = h * w * classes
    boxes = decode_detections(out, top_k)["boxes"].numpy()
    parts = decode_parts(out[..., :classes], out[..., classes:classes + 2], out[..., classes + 2:], top_k,
                         box_parts=True)
    cells, labels = parts["box_cells"].numpy(), parts["classes"].numpy()
    scores = 1.0 / (1.0 + np.exp(-out[..., :classes].astype(np.float64)))
    on_edge = []
    for b in range(batch):
        for k in np.flatnonzero(parts["scores"].numpy()[b] > 0):
            row, col, c = *divmod(int(cells[b, k]), w), int(labels[b, k])
            on_edge.append(row in (0, h - 1) or col in (0, w - 1))
            total, centre, log_size = 0.0, np.zeros(2), np.zeros(2)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    y, x = row + dy, col + dx
                    if 0 <= y < h and 0 <= x < w:
                        weight = scores[b, y, x, c] ** REFINE_POWER
                        total += weight
                        centre += weight * (np.array([x, y]) + out[b, y, x, classes + 2:])
                        log_size += weight * np.log(out[b, y, x, classes:classes + 2])
            centre, size = centre / total * STRIDE, np.exp(log_size / total) * STRIDE
            expected = np.clip(np.concatenate([centre - size / 2, centre + size / 2]), 0, [w * STRIDE, h * STRIDE] * 2)
            np.testing.assert_allclose(boxes[b, k], expected, atol=1e-3)
    assert 0 < sum(on_edge) < len(on_edge)  # peaks on the map's edges and inside it were both checked


def test_losses_are_per_example_and_zero_without_labels():
    _, y = make_batch()
    depth_true = y["depth"].copy()
    depth_true[1] = 0.0  # second example: no valid pixel
    pred = np.full((BATCH, *SIZE, 1), 10.0, np.float32)
    loss = depth_loss(depth_true, pred, 80.0).numpy()
    assert loss.shape == (BATCH,) and loss[0] > 0 and loss[1] == 0.0
    # SILog is scale invariant up to (1 - lambda): a perfect prediction scaled by 2 costs little.
    exact = depth_loss(y["depth"], np.where(y["depth"] > 0, y["depth"], 1.0)[..., None] * 2.0, 80.0).numpy()
    assert np.allclose(exact, (1 - 0.85) * np.log(2.0) ** 2, atol=1e-5)
    labels = np.full((BATCH, *SIZE), IGNORE, np.int32)
    labels[0, 0, 0] = 3
    seg = segmentation_loss(labels, np.zeros((BATCH, *SIZE, 9), np.float32)).numpy()
    assert np.allclose(seg, [np.log(9.0), 0.0], atol=1e-5)
    det = detection_loss(y, np.zeros((BATCH, 16, 24, 7), np.float32)).numpy()
    assert det.shape == (BATCH,) and np.isfinite(det).all()


def _size_loss(y, sizes):
    """detection_loss with a fixed heat map: its change is the size term alone."""
    y = {**y, "det_size": np.asarray(y["det_size"], np.float32)}
    out = np.zeros((BATCH, 16, 24, 7), np.float32)
    out[..., 3:5] = sizes
    return detection_loss(y, out).numpy()


def test_box_sizes_are_learned_as_relative_errors():
    _, y = make_batch()
    mask = y["det_mask"].astype(bool)
    small, large = y.copy(), y.copy()
    small["det_size"] = np.where(mask[..., None], 1.0, 0.0)   # a 4-px box
    large["det_size"] = np.where(mask[..., None], 20.0, 0.0)  # an 80-px box
    exact_small = _size_loss(small, np.where(mask[..., None], 1.0, 1.0))
    exact_large = _size_loss(large, np.where(mask[..., None], 20.0, 1.0))
    # Both 10 % too wide and tall: the same loss increase for a 4-px box as for an 80-px one.
    off_small = _size_loss(small, np.where(mask[..., None], 1.1, 1.0)) - exact_small
    off_large = _size_loss(large, np.where(mask[..., None], 22.0, 1.0)) - exact_large
    np.testing.assert_allclose(off_small, np.log(1.1), rtol=1e-4)
    np.testing.assert_allclose(off_large, off_small, rtol=1e-4)


def test_box_sizes_are_learned_wherever_the_size_weight_lies():
    _, y = make_batch()
    centre = y["det_mask"].astype(bool)
    # each object's weight split between its centre and the cell to its right, which has the same size
    right = np.roll(centre, 1, axis=2)
    area = {**y, "det_size": y["det_size"] + np.roll(y["det_size"], 1, axis=2),
            "det_size_weight": 0.5 * (centre | right)}
    exact = np.where((centre | right)[..., None], area["det_size"], 1.0)
    wide = np.where(right[..., None], exact * [1.1, 1.0], exact)  # 10 % too wide right of the centre
    # log(1.1) on one of two coordinates at half the object's weight; the focal term of about 200
    # that both losses carry leaves float32 differences of about 1e-5
    np.testing.assert_allclose(_size_loss(area, wide) - _size_loss(area, exact), 0.5 * np.log(1.1) / 2,
                               atol=2e-5)


def test_box_size_output_is_bounded_and_passes_gradients_past_its_bounds():
    x = tf.constant([[-50.0, 0.0, 3.0, 50.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        size = BoxSize()(x)
        log_size = tf.reduce_sum(tf.math.log(size))
    assert np.all(size.numpy() >= MIN_SIZE * (1 - 1e-6)) and np.all(size.numpy() <= 256.0 * (1 + 1e-6))
    np.testing.assert_allclose(tape.gradient(log_size, x).numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("sharing", ["hard", "soft", "cross_stitch"])
def test_net_saves_and_loads_as_keras(sharing, tmp_path):
    net = build_model(tiny_model(sharing=sharing), SIZE)
    path = tmp_path / "net.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    x, _ = make_batch(seed=3)
    for task, value in net(x).items():
        np.testing.assert_allclose(loaded(x)[task], value, atol=1e-5)


def test_unknown_backbone_lists_valid_choices():
    with pytest.raises(UserError, match="mobilenet_v3_small"):
        build_model(tiny_model(backbone="resnet9000"), SIZE)


@pytest.mark.parametrize("depth, blocks", [(0.5, (1, 1, 2, 1)), (1.0, (2, 2, 3, 2)), (1.6, (4, 4, 5, 4))])
def test_encoder_depth_scales_each_builtin_stage(depth, blocks):
    from models.encoder import encoder_model

    encoder = encoder_model(SIZE, tiny_model(encoder_depth=depth))
    names = {layer.name for layer in encoder.layers}
    for stage, count in enumerate(blocks, 1):  # ceil(depth x (2, 2, 3, 2)), the first blocks kept
        assert any(name.startswith(f"encoder_s{stage}b{count}_") for name in names), stage
        assert not any(name.startswith(f"encoder_s{stage}b{count + 1}_") for name in names), stage
    shapes = {level: tuple(f.shape) for level, f in encoder(np.zeros((1, *SIZE, 3), np.float32)).items()}
    assert shapes == {f"P{level}": (1, SIZE[0] >> level, SIZE[1] >> level, channels)
                      for level, channels in zip(range(1, 6), (8, 8, 16, 24, 32))}


def test_encoder_depth_is_checked():
    with pytest.raises(UserError, match="encoder_depth"):
        build_model(tiny_model(backbone="mobilenet_v3_small", encoder_depth=0.5), SIZE)
    with pytest.raises(UserError, match="encoder_depth"):
        build_model(tiny_model(backbone="efficientnet_lite0", encoder_depth=1.5), SIZE)


def test_mobilenet_v3_small_builds_without_weights():
    model = build_model(tiny_model(backbone="mobilenet_v3_small", tasks=["detection", "segmentation"]),
                        SIZE)
    out = model(make_batch()[0])
    assert out["detection"].shape == (BATCH, 16, 24, 7)
    assert out["segmentation"].shape == (BATCH, *SIZE, 9)


def test_offline_imagenet_weights_give_one_line_user_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    with pytest.raises(UserError, match="could not download ImageNet weights") as info:
        build_model(tiny_model(backbone="mobilenet_v3_small", weights="imagenet",
                               tasks=["depth"]), SIZE)
    assert "\n" not in str(info.value)


def test_custom_layers_round_trip_config_and_reject_bad_args():
    for layer in (CrossStitch(3, diagonal=0.8, name="stitch"), LogDepth(1.0, 50.0, name="d")):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="Received: num_tasks=0"):
        CrossStitch(0)
    with pytest.raises(ValueError, match="Received: min_depth=5"):
        LogDepth(5.0, 1.0)


# --- sharing modes -----------------------------------------------------------------------------

def test_soft_sharing_penalty_is_zero_for_equal_encoders_and_grows_when_they_differ():
    model = build_model(tiny_model(sharing="soft"), SIZE)
    encoders = task_encoders(model, TASKS)
    assert len(encoders) == 3
    assert float(soft_sharing_penalty(encoders)) == 0.0
    kernel = encoders[1].trainable_weights[0]
    kernel.assign(kernel + 0.1)
    assert float(soft_sharing_penalty(encoders)) > 0.0
    assert float(soft_sharing_penalty(encoders, beta=2.0)) == pytest.approx(
        2.0 * float(soft_sharing_penalty(encoders)))


def test_cross_stitch_starts_near_identity():
    model = build_model(tiny_model(sharing="cross_stitch"), SIZE)
    stitches = [layer for layer in model.layers if isinstance(layer, CrossStitch)]
    assert len(stitches) == 4
    alpha = stitches[0].alpha.numpy()
    np.testing.assert_allclose(np.diag(alpha), 0.9)
    np.testing.assert_allclose(alpha.sum(axis=1), 1.0, atol=1e-6)
    assert set(model(make_batch()[0])) == set(TASKS)


# --- the trainer -------------------------------------------------------------------------------

def _gradients(trainer, x, y):
    with tf.GradientTape() as tape:
        outputs = trainer.net(x, training=True)
        total, _, _ = trainer.compute_losses(y, outputs)
    variables = trainer.trainable_variables
    return dict(zip([v.path for v in variables], tape.gradient(total, variables)))


def test_gradients_reach_every_trainable_weight(net):
    trainer = MultiTaskTrainer(net, tiny_model(), tiny_train(weighting="uncertainty"))
    # An odd number of objects: the log-size L1 gives each object's size bias a gradient of exactly
    # +-1 (times equal weights), so with two objects of opposite errors the sum is exactly 0, though
    # the gradient does reach the bias. Three objects cannot cancel.
    grads = _gradients(trainer, *make_batch(batch=3))
    assert any("log_var" in path for path in grads)
    missing = [path for path, grad in grads.items() if grad is None or not np.any(grad.numpy())]
    assert not missing, f"no gradient for {missing}"


def test_task_without_labels_in_batch_gets_exactly_zero_gradient(net):
    trainer = MultiTaskTrainer(net, tiny_model(), tiny_train(weighting="uncertainty"))
    grads = _gradients(trainer, *make_batch(has=(1.0, 0.0, 1.0)))
    head = {p: g for p, g in grads.items() if p.startswith("segmentation")}
    assert head, "segmentation head variables not found"
    for path, grad in head.items():
        assert grad is None or not np.any(grad.numpy()), path
    log_var = trainer.weighting.log_var
    assert grads[log_var.path].numpy()[TASKS.index("segmentation")] == 0.0


def test_partially_labelled_batch_averages_only_labelled_examples(net):
    trainer = MultiTaskTrainer(net, tiny_model(), tiny_train(weighting="fixed"))
    x, y = make_batch()
    y["has_depth"] = np.array([1.0, 0.0], np.float32)
    _, losses, present = trainer.compute_losses(y, net(x))
    only_first = depth_loss(y["depth"][:1], net(x)["depth"][:1], 80.0)[0]
    assert float(losses["depth"]) == pytest.approx(float(only_first), rel=1e-5)
    assert float(present["depth"]) == 1.0


def _fit(trainer, batch, steps, jit=False, eager=True):
    # Eager by default: tracing the train step costs ~15 s per model, running it eagerly < 1 s.
    # test_tiny_model_trains_and_lowers_the_loss covers graph mode, the slow tests XLA.
    trainer.compile(optimizer=make_optimizer(tiny_train(), steps), jit_compile=jit, run_eagerly=eager)
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    return trainer.fit(dataset, epochs=steps, steps_per_epoch=1, verbose=0).history


def test_tiny_model_trains_and_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = build_model(tiny_model(), SIZE)
    trainer = MultiTaskTrainer(model, tiny_model(), tiny_train(weighting="fixed"))
    history = _fit(trainer, make_batch(), 12, eager=False)
    assert {"loss", "detection_loss", "segmentation_loss", "depth_loss", "depth_weight"} <= set(history)
    assert np.mean(history["loss"][-3:]) < history["loss"][0]
    # Traced: gradient conflict measured on every conflict_every-th step (10) only, one step per epoch.
    for name in ("cos_detection_segmentation", "cos_detection_depth", "cos_segmentation_depth"):
        assert [epoch for epoch, cosine in enumerate(history[name]) if cosine != 0.0] == [0, 10], history[name]


@pytest.mark.parametrize("weighting,sharing", [("uncertainty", "soft"), ("gradnorm", "cross_stitch"),
                                               ("dwa", "hard"), ("gradnorm", "hard"), ("famo", "hard"),
                                               ("pcgrad", "hard"), ("pcgrad", "soft"), ("famo", "cross_stitch")])
def test_every_weighting_and_sharing_mode_trains(weighting, sharing):
    model = build_model(tiny_model(sharing=sharing), SIZE)
    trainer = MultiTaskTrainer(model, tiny_model(sharing=sharing), tiny_train(weighting=weighting, conflict_every=1))
    batch = make_batch(has=(1.0, 0.0, 1.0))
    history = _fit(trainer, batch, 3)
    assert np.isfinite(history["loss"]).all()
    logs = trainer.evaluate(tf.data.Dataset.from_tensors(batch), verbose=0, return_dict=True)
    conflicts = {name for name in history if name.startswith("cos_")}
    assert set(logs) == set(history) - conflicts and np.isfinite(logs["loss"])
    # Gradient conflict on the shared kernel, for the pairs labelled in the batch (no shared kernel: soft).
    if sharing == "soft":
        assert not conflicts
    else:
        assert conflicts == {"cos_detection_segmentation", "cos_detection_depth", "cos_segmentation_depth"}
        assert -1.0 <= history["cos_detection_depth"][-1] <= 1.0 and history["cos_detection_depth"][-1] != 0.0
        assert history["cos_detection_segmentation"][-1] == 0.0  # segmentation never labelled: not measured
    weights = [history[f"{task}_weight"][-1] for task in TASKS]
    if weighting == "gradnorm":
        assert sum(weights) == pytest.approx(3.0, rel=1e-4)
    if weighting == "uncertainty":
        assert history["segmentation_log_var"][-1] == 0.0  # never labelled: never moved
    if weighting == "famo":  # effective weights z_t / (c L_t) over the labelled tasks sum to 1
        assert sum(weights) == pytest.approx(1.0, rel=1e-4) and history["segmentation_weight"][-1] == 0.0
    if weighting == "dwa":  # 1 for two epochs, then set by the loss ratios (the fit callback)
        assert all(history[f"{task}_weight"][1] == 1.0 for task in TASKS)
        assert history["detection_weight"][2] != 1.0


def test_mixed_float16_trains_with_loss_scaling():
    policy = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(tiny_model(), SIZE)
        trainer = MultiTaskTrainer(model, tiny_model(), tiny_train(weighting="gradnorm"))
        history = _fit(trainer, make_batch(), 2)
        assert type(trainer.optimizer).__name__ == "LossScaleOptimizer"
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert np.isfinite(history["loss"]).all()
    assert all(v.dtype == tf.float32 for v in model(make_batch()[0]).values())


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm", "famo", "pcgrad"])
def test_train_step_compiles_with_xla(weighting):
    model = build_model(tiny_model(), SIZE)
    trainer = MultiTaskTrainer(model, tiny_model(), tiny_train(weighting=weighting))
    history = _fit(trainer, make_batch(has=(1.0, 0.0, 1.0)), 2, jit=True, eager=False)
    assert np.isfinite(history["loss"]).all()


_MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path[:0] = ["tests/models", "tests"]
import numpy as np
from models.multitask import build_model, MultiTaskTrainer
from test_models import make_batch, tiny_model, tiny_train, SIZE, _fit
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    trainer = MultiTaskTrainer(build_model(tiny_model(), SIZE), tiny_model(), tiny_train(weighting="gradnorm"))
    history = _fit(trainer, make_batch(batch=4, has=(1.0, 0.0, 1.0)), 2, eager=False)
assert np.isfinite(history["loss"]).all(), history
print("ok")
"""


@pytest.mark.slow
def test_trains_under_mirrored_strategy():
    # Logical devices must be set before TensorFlow starts, hence a fresh interpreter.
    result = subprocess.run([sys.executable, "-c", _MIRRORED], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_gradnorm_needs_a_shared_layer():
    model = build_model(tiny_model(sharing="soft"), SIZE)
    with pytest.raises(UserError, match="shared"):
        MultiTaskTrainer(model, tiny_model(sharing="soft"), tiny_train(weighting="gradnorm"))


def test_trainer_weights_round_trip(tmp_path):
    config = tiny_model(tasks=["segmentation", "depth"])
    trainer = MultiTaskTrainer(build_model(config, SIZE), config, tiny_train(weighting="uncertainty"))
    _fit(trainer, make_batch(), 2)
    path = tmp_path / "trainer.weights.h5"
    trainer.save_weights(path)
    fresh = MultiTaskTrainer(build_model(config, SIZE), config, tiny_train(weighting="uncertainty"))
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.weighting.log_var.numpy(), trainer.weighting.log_var.numpy())
    assert np.any(trainer.weighting.log_var.numpy() != 0)
    x, _ = make_batch(seed=5)
    for task, value in trainer(x).items():
        np.testing.assert_allclose(fresh(x)[task], value, atol=1e-6)


def test_optimizer_warms_up_and_skips_decay_for_log_vars_and_biases():
    train = tiny_train(learning_rate=0.1, warmup_steps=4, weight_decay=0.5)
    optimizer = make_optimizer(train, total_steps=20)

    def rate_at(step):
        optimizer.iterations.assign(step)
        return float(optimizer.learning_rate)

    assert rate_at(0) == 0.0
    assert rate_at(2) == pytest.approx(0.05)
    assert rate_at(4) == pytest.approx(0.1)
    assert rate_at(20) == pytest.approx(0.0, abs=1e-6)
    optimizer = make_optimizer(tiny_train(learning_rate=0.1, warmup_steps=0, weight_decay=0.5), 20)
    variables = [keras.Variable(np.ones(3, np.float32), name=name) for name in ("kernel", "log_var", "bias")]
    optimizer.apply([tf.fill([3], 0.5)] * 3, variables)
    kernel, log_var, bias = (v.numpy() for v in variables)
    # The same Adam step (lr 0.1) for all three; only the kernel is also decayed (by lr * wd * w).
    np.testing.assert_allclose(log_var, 0.9, rtol=1e-5)
    np.testing.assert_array_equal(bias, log_var)
    np.testing.assert_allclose(kernel, 0.9 - 0.1 * 0.5, rtol=1e-5)


def test_models_package_import_registers_layers():
    """`import models` alone (what a loader does) registers every custom layer a saved model names."""
    assert keras.saving.get_registered_object("dashcam>CrossStitch") is CrossStitch
    names = ["dashcam>CrossStitch", "dashcam>LogDepth", "dashcam>BoxSize", "dashcam>FusedBatchNorm", "dashcam>FixedWeighting",
             "dashcam>UncertaintyWeighting", "dashcam>DWAWeighting", "dashcam>GradNormWeighting"]
    code = ("import sys, keras, models; "
            "print([n for n in sys.argv[1:] if keras.saving.get_registered_object(n) is None])")
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"  # none missing


def test_local_peaks_is_the_four_earlier_neighbours_rule():
    """_local_peaks compares with the maximum of the four earlier neighbours: the same cells as four
    comparisons (NumPy reference), on coarse scores full of ties."""
    heat = np.random.default_rng(0).integers(0, 6, (2, 9, 11, 3)).astype(np.float32) / 8.0
    padded = np.pad(heat, [(0, 0), (1, 1), (1, 1), (0, 0)])
    windows = np.stack([padded[:, i:i + 9, j:j + 11] for i in range(3) for j in range(3)])
    expected = heat == windows.max(0)  # 3x3 max (the zero padding never wins: scores are >= 0)
    for i, j in ((0, 0), (0, 1), (0, 2), (1, 0)):
        expected &= heat > padded[:, i:i + 9, j:j + 11]
    np.testing.assert_array_equal(_local_peaks(tf.constant(heat)).numpy(), expected)


def test_a_plateau_of_equal_scores_gives_one_detection():
    """int8 scores come in steps of 1/256, so equal neighbours are common; each plateau is one peak."""
    heat = np.zeros((1, 6, 6, 1), np.float32)
    heat[0, 2:4, 2:4, 0] = 0.8
    heat[0, 0, 5, 0] = 0.5
    peaks = np.argwhere(_local_peaks(tf.constant(heat)).numpy()[0, ..., 0])
    np.testing.assert_array_equal(peaks, [[0, 5], [2, 2]])
