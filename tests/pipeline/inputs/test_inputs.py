"""The tf.data pipeline: shapes and dtypes the model takes, determinism, source mixing."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from data import builder as storage
from data import schema
from pipeline.config import load_config
from pipeline.inputs import dataset as inputs
from pipeline.inputs import detection_targets as targets
from support import REPO, tiny


def fake_example(seed, has_detection, has_segmentation):
    example = schema.placeholder(48, 64)
    rng = np.random.default_rng(seed)
    example["image"] = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    if has_detection:
        example["boxes"] = np.array([[8, 8, 24, 40]], np.float32)
        example["classes"] = np.array([0], np.int32)
        example["depth"][:] = 20.0
        example["has_detection"] = example["has_depth"] = True
    if has_segmentation:
        example["segmentation"][:] = 4
        example["has_segmentation"] = True
    return example


def build_fake_source(config, name, count, **labels):
    items = {split: [(f"{name}-{split}-{i}", lambda i=i: fake_example(i, **labels)) for i in range(count)]
             for split in ("train", "validation")}
    storage.builder_for(name, config.data_dir, items=items, on_bad=None).download_and_prepare()


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    config = tiny(root, "data.sources=[{name: kitti, path: x, weight: 3}, {name: camvid, path: y, weight: 1}]",
                  "data.image_size=[32,64]", "train.batch_size=8")
    build_fake_source(config, "kitti", 6, has_detection=True, has_segmentation=False)
    build_fake_source(config, "camvid", 6, has_detection=False, has_segmentation=True)
    return config


def test_only_training_batches_carry_the_boxes_around_each_centre(tiny_config):
    # the tiny config, as the default, trains them (model.detection_neighbour_boxes); validation
    # and evaluation report the plain loss, which does not read them
    assert tiny_config.model.detection_neighbour_boxes
    _, y = next(iter(inputs.make_dataset(tiny_config, "train", training=True)))
    b, (h, w) = tiny_config.train.batch_size, tiny_config.data.image_size
    assert y["det_near_box"].shape == (b, h // 4, w // 4, 4) and y["det_near_weight"].shape == (b, h // 4, w // 4)
    _, y = next(iter(inputs.make_dataset(tiny_config, "validation", training=False)))
    assert "det_near_box" not in y and "det_near_weight" not in y


def test_batches_have_the_contract_shapes(tiny_config):
    x, y = next(iter(inputs.make_dataset(tiny_config, "train", training=True)))
    b, (h, w) = tiny_config.train.batch_size, tiny_config.data.image_size
    assert x["image"].shape == (b, h, w, 3) and x["image"].dtype == tf.float32
    assert y["det_heatmap"].shape == (b, h // 4, w // 4, 3)
    assert y["det_size"].shape == y["det_offset"].shape == (b, h // 4, w // 4, 2)
    assert y["det_size_weight"].shape == y["det_mask"].shape == (b, h // 4, w // 4)
    assert y["det_size_weight"].dtype == tf.float32
    assert y["segmentation"].shape == (b, h, w) and y["segmentation"].dtype == tf.int32
    assert y["depth"].shape == (b, h, w) and y["depth"].dtype == tf.float32
    assert y["boxes"].shape == (b, tiny_config.data.max_boxes, 4)
    for flag in ("has_detection", "has_segmentation", "has_depth"):
        assert y[flag].shape == (b,)
    # every real box has its centre marked, and heat-map peaks are exactly 1 there
    n_boxes = int(tf.reduce_sum(tf.cast(y["classes"] >= 0, tf.int32)))
    assert 0 < int(tf.reduce_sum(y["det_mask"])) <= n_boxes
    assert float(tf.reduce_max(y["det_heatmap"])) == pytest.approx(1.0)


def test_the_default_pipeline_repeats_exactly(tiny_config):
    # The default, so that a seed repeats a training (a free-ordered parallel map did not).
    assert tiny_config.data.deterministic and load_config(REPO / "configs" / "default.yaml").data.deterministic
    first = [b for b in inputs.make_dataset(tiny_config, "train", training=True).take(3)]
    second = [b for b in inputs.make_dataset(tiny_config, "train", training=True).take(3)]
    for (xa, ya), (xb, yb) in zip(first, second):
        np.testing.assert_array_equal(xa["image"], xb["image"])
        np.testing.assert_array_equal(ya["det_heatmap"], yb["det_heatmap"])


def test_evaluation_pass_covers_the_split_once(tiny_config):
    keys = [k for _, y in inputs.make_dataset(tiny_config, "validation", training=False) for k in y["key"].numpy()]
    assert len(keys) == len(set(keys)) == tiny_config.data.synthetic.validation_frames


def test_sources_are_mixed_at_their_weights(two_sources):
    ds = inputs.make_dataset(two_sources, "train", training=True).take(50)
    seg = np.concatenate([y["has_segmentation"].numpy() for _, y in ds])
    assert len(seg) == 400
    assert seg.mean() == pytest.approx(0.25, abs=0.06)  # camvid has weight 1 of 4


def test_partial_labels_keep_their_flags(two_sources):
    _, y = next(iter(inputs.make_dataset(two_sources, "train", training=True)))
    det, seg = y["has_detection"].numpy(), y["has_segmentation"].numpy()
    np.testing.assert_array_equal(det + seg, 1)  # each example labels exactly one of the two
    assert np.all(y["segmentation"].numpy()[det == 1] == schema.IGNORE)


def test_alternating_schedule_cycles_tasks(two_sources):
    config = dataclasses.replace(two_sources, data=dataclasses.replace(two_sources.data, schedule="alternating"))
    for step, (_, y) in enumerate(inputs.make_dataset(config, "train", training=True).take(6)):
        active = [t for t in config.model.tasks if y[schema.TASK_FLAGS[t]].numpy().any()]
        assert set(active) <= {config.model.tasks[step % 3]}


def test_a_frame_without_objects_gets_an_all_zero_heat_map():
    maps = targets.encode_detection(tf.zeros([0, 4]), tf.zeros([0], tf.int32), (32, 64), 3)
    assert float(tf.reduce_min(maps["det_heatmap"])) == 0.0 and float(tf.reduce_max(maps["det_heatmap"])) == 0.0


def test_repeat_factor_sampling_shows_the_rare_class_more_often_and_repeats_by_seed(tmp_path):
    """Six frames, one holding the rare class 1 (share 1/6, factor sqrt(6) at t = 1): a sixth of the
    training examples without the option, 2.45 / 7.45 = 0.33 of them with it, the same batches for
    the same seed."""
    config = tiny(tmp_path, "data.sources=[{name: kitti, path: x}]", "data.image_size=[32,64]",
                  "train.batch_size=8", "data.min_box_height=0")

    def example(i):
        frame = fake_example(i, has_detection=True, has_segmentation=False)
        if i == 5:
            frame["boxes"] = np.array([[8, 8, 24, 40], [30, 8, 40, 40]], np.float32)
            frame["classes"] = np.array([0, 1], np.int32)
        return frame

    items = {split: [(f"kitti-{split}-{i}", lambda i=i: example(i)) for i in range(6)]
             for split in ("train", "validation")}
    storage.builder_for("kitti", config.data_dir, items=items, on_bad=None).download_and_prepare()

    def rare_share(cfg):
        batches = list(inputs.make_dataset(cfg, "train", training=True).take(60))
        held = np.concatenate([(y["classes"].numpy() == 1).any(axis=1) for _, y in batches])
        return held.mean(), batches

    plain, _ = rare_share(config)
    sampled_config = dataclasses.replace(config, data=dataclasses.replace(config.data, repeat_factor_threshold=1.0))
    sampled, first = rare_share(sampled_config)
    assert plain == pytest.approx(1 / 6, abs=0.03)
    assert sampled == pytest.approx(6 ** 0.5 / (5 + 6 ** 0.5), abs=0.05)
    _, second = rare_share(sampled_config)
    for (xa, _), (xb, _) in zip(first[:3], second[:3]):
        np.testing.assert_array_equal(xa["image"], xb["image"])
