"""The evaluation protocol, applied as training applies it: every box scored, ignore regions
neither taught as background nor counted as false positives."""
import numpy as np
import pytest
import tensorflow as tf

from data import builder as storage
from data import schema
from data.schema import DETECTION_CLASSES
from models.detection import focal_loss
from pipeline.evaluation.evaluate import add_batch
from pipeline.evaluation.metrics import DetectionEvaluator
from pipeline.inputs import dataset as inputs
from pipeline.inputs import detection_targets as targets
from support import tiny

GRID_ROWS, GRID_COLS, SPACING, SIDE = 6, 10, 16, 10  # 60 objects, 10 px squares


def crowded_example():
    example = schema.placeholder(96, 160)
    example["image"][:] = 128
    boxes = [[c * SPACING + 3, r * SPACING + 3, c * SPACING + 3 + SIDE, r * SPACING + 3 + SIDE]
             for r in range(GRID_ROWS) for c in range(GRID_COLS)]
    example["boxes"] = np.array(boxes, np.float32)
    example["classes"] = (np.arange(len(boxes)) % len(DETECTION_CLASSES)).astype(np.int32)
    example["has_detection"] = True
    return example


@pytest.fixture(scope="module")
def crowded_config(tmp_path_factory):
    config = tiny(tmp_path_factory.mktemp("crowd"), "data.sources=[{name: kitti, path: x}]",
                  "data.image_size=[96,160]", "data.max_boxes=16")
    items = {split: [(f"kitti-{split}-0", crowded_example)] for split in ("train", "validation")}
    storage.builder_for("kitti", config.data_dir, items=items, on_bad=None).download_and_prepare()
    return config


def test_a_perfect_detector_scores_1_on_a_frame_with_more_objects_than_max_boxes(crowded_config):
    x, y = next(iter(inputs.make_dataset(crowded_config, "validation", training=False)))
    y = {key: value.numpy() for key, value in y.items()}
    real = y["classes"][0] >= 0
    assert real.sum() == GRID_ROWS * GRID_COLS > crowded_config.data.max_boxes
    evaluator = {"detection": DetectionEvaluator(DETECTION_CLASSES)}
    perfect = {"boxes": y["boxes"][:, real], "classes": y["classes"][:, real],
               "scores": np.ones((1, int(real.sum())), np.float32)}
    add_batch(evaluator, y, perfect, 1, {})
    result = evaluator["detection"].result()
    assert result["ground_truth_boxes"] == 60
    assert result["mAP50"] == pytest.approx(1.0) and result["mAP"] == pytest.approx(1.0)


def test_training_batches_keep_a_static_box_list(crowded_config):
    _, y = next(iter(inputs.make_dataset(crowded_config, "train", training=True, batch_size=2)))
    assert y["boxes"].shape == (2, crowded_config.data.max_boxes, 4)
    assert y["det_ignore"].shape == (2, 96 // 4, 160 // 4)


def test_ignore_map_marks_the_cells_a_region_overlaps():
    ignore = targets.encode_ignore(tf.constant([[8.0, 4.0, 17.0, 8.0], [1.0, 1.0, 2.0, 2.0]]), (32, 32))
    marked = np.argwhere(ignore.numpy() > 0).tolist()
    # x 8..17 px -> cells 2..4, y 4..8 px -> cell 1; the 1-px region lands in cell (0, 0).
    assert marked == [[0, 0], [1, 2], [1, 3], [1, 4]]
    assert float(tf.reduce_sum(targets.encode_ignore(tf.zeros([0, 4]), (32, 32)))) == 0.0


def test_confident_detections_inside_an_ignore_region_cost_nothing():
    heat = np.zeros((1, 8, 8, 3), np.float32)
    logits = np.full((1, 8, 8, 3), -8.0, np.float32)
    logits[0, 2:4, 2:4] = 6.0  # a confident detection of an object too small to be labelled
    ignore = np.zeros((1, 8, 8), np.float32)
    background = float(focal_loss(heat, logits)[0])
    ignore[0, 2:4, 2:4] = 1.0
    ignored = float(focal_loss(heat, logits, ignore)[0])
    assert background > 1.0 and ignored < 1e-6


def test_depth_is_trained_and_scored_on_the_same_pixels():
    from models.depth import depth_loss, valid_depth
    from pipeline.config import ModelConfig
    from pipeline.evaluation.evaluate import new_evaluators

    config = tiny("/tmp/unused-run-root")
    assert config.model.max_depth == ModelConfig().max_depth
    gt = np.array([[[0.0, 0.004, 5.0, 79.9, 80.0, 80.1, 120.0, 250.0]]], np.float32)
    evaluator = new_evaluators(config, ["depth"])["depth"]
    evaluator.add(gt, np.full_like(gt, 10.0))
    trained = int(np.sum(valid_depth(gt, config.model.max_depth)))
    assert evaluator.result()["pixels"] == trained == 4  # 0.004, 5, 79.9 and 80 m
    # Pixels past the range do not move the loss: a far pixel cannot bias the others.
    near = gt.copy()
    near[gt > config.model.max_depth] = 0.0
    pred = np.full(gt.shape + (1,), 12.0, np.float32)
    np.testing.assert_allclose(depth_loss(gt, pred, config.model.max_depth),
                               depth_loss(near, pred, config.model.max_depth), rtol=1e-6)


def test_far_depth_learns_as_fast_as_near_depth():
    from models.depth import LogDepth

    layer = LogDepth(0.5, 80.0)
    for metres in (6.0, 60.0, 200.0):
        raw = tf.Variable([[np.log(metres) - 0.5 * (np.log(0.5) + np.log(80.0))]], dtype=tf.float32)
        with tf.GradientTape() as tape:
            log_depth = tf.math.log(layer(raw))
        # d log(depth) / d raw = 1 at any distance (straight through the clip past the range).
        assert tape.gradient(log_depth, raw).numpy().item() == pytest.approx(1.0, rel=1e-5), metres
    assert layer(tf.constant([[50.0]])).numpy().item() == pytest.approx(80.0, rel=1e-5)
