"""The tf.data input pipeline, written out once for training and evaluation.

  read TFDS shards (interleaved) -> decode -> cache (before any random work) -> shuffle -> repeat
  (with data.repeat_factor_threshold: repeat, each frame as often as its rarest class asks, then
  shuffle; repeat_factor.py) -> mix sources at their sampling weights -> parallel map: augment +
  resize (albumentations via tf.numpy_function) -> encode detection targets (TF ops)
  -> batch(drop_remainder) -> prefetch

Evaluation takes the same path with augmentation, shuffling and repetition off.
"""
from __future__ import annotations

import pathlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data import builder as storage
from data import schema
from data.errors import UserError
from data.vocabulary import DEPTH_SCALE
from pipeline.config import Config, SourceConfig
from pipeline.inputs import augment as augment_lib
from pipeline.inputs import detection_targets as targets
from pipeline.inputs import repeat_factor

AUTOTUNE = tf.data.AUTOTUNE


def _prepared_builder(config: Config, source: SourceConfig, split: str, data_dir: pathlib.Path | None):
    """The source's TFDS builder, refused with a one-line error unless its data set and split exist."""
    data_dir = pathlib.Path(data_dir or config.data_dir)
    builder = storage.builder_for(source.name, data_dir)
    if not builder.is_prepared():
        raise UserError(f"no '{source.name}' data set under {data_dir}: run "
                        f"`make data CONFIG=<your config>` (python -m pipeline data) first")
    if split not in builder.info.splits:
        raise UserError(f"source '{source.name}' has no split '{split}'; it has: "
                        f"{', '.join(builder.info.splits)}")
    return builder


def load_source(config: Config, source: SourceConfig, split: str, shuffle_files: bool = False,
                data_dir: pathlib.Path | None = None) -> tf.data.Dataset:
    """Decoded examples of one source and split, in the schema's dtypes (depth still uint16)."""
    builder = _prepared_builder(config, source, split, data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=config.seed, interleave_cycle_length=4)
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)


def _class_factors(config: Config, source: SourceConfig, split: str, data_dir) -> np.ndarray:
    """Repeat factor sampling's per-class factors for one source's split (repeat_factor.py)."""
    shares = repeat_factor.class_shares(_prepared_builder(config, source, split, data_dir), split,
                                        len(config.model.classes.detection), tuple(config.data.image_size),
                                        config.data.min_box_height)
    return repeat_factor.class_factors(shares, config.data.repeat_factor_threshold)


def split_size(config: Config, source: SourceConfig, split: str) -> int:
    builder = storage.builder_for(source.name, config.data_dir)
    return builder.info.splits[split].num_examples


def output_size(config: Config, crop: bool) -> tuple[int, int]:
    """(height, width) of the examples: data.train_crop when cropping to it, else the model input."""
    return tuple(config.data.train_crop) if crop and config.data.train_crop else tuple(config.data.image_size)


def _augment_and_resize(example: dict, seed: tf.Tensor, config: Config, training: bool, crop: bool) -> dict:
    """Wraps augment.augment (NumPy, albumentations) in tf.numpy_function with static out shapes."""
    height, width = output_size(config, crop)
    crop_size = (height, width) if crop and config.data.train_crop else None
    cfg = config.data.augment

    def run(image, segmentation, depth, boxes, classes, ignore_boxes, seed):
        return augment_lib.augment(image, segmentation, depth, boxes, classes, int(seed),
                                   tuple(config.data.image_size), cfg, training, ignore_boxes=ignore_boxes,
                                   min_box_height=config.data.min_box_height, crop_size=crop_size)

    depth = tf.cast(example["depth"][..., 0], tf.float32) / DEPTH_SCALE
    image, segmentation, depth, boxes, classes, ignore_boxes = tf.numpy_function(
        run, [example["image"], example["segmentation"][..., 0], depth, example["boxes"],
              example["classes"], example["ignore_boxes"], seed],
        [tf.uint8, tf.uint8, tf.float32, tf.float32, tf.int32, tf.float32], stateful=False)
    return {
        "image": tf.ensure_shape(image, [height, width, 3]),
        "segmentation": tf.ensure_shape(segmentation, [height, width]),
        "depth": tf.ensure_shape(depth, [height, width]),
        "boxes": tf.ensure_shape(boxes, [None, 4]),
        "classes": tf.ensure_shape(classes, [None]),
        "ignore_boxes": tf.ensure_shape(ignore_boxes, [None, 4]),
    }


def _to_model_io(example: dict, resized: dict, config: Config, training: bool, image_size: tuple[int, int]):
    """(x, y) of the batch contract: image for the model, targets and flags for the losses."""
    # A heat map per class; the boxes around each centre only where the training objective reads them.
    det = targets.encode_detection(resized["boxes"], resized["classes"], image_size,
                                   len(config.model.classes.detection),
                                   neighbour_boxes=training and config.model.detection_neighbour_boxes)
    y = {**det,
         "det_ignore": targets.encode_ignore(resized["ignore_boxes"], image_size),
         "segmentation": tf.cast(resized["segmentation"], tf.int32),
         "depth": resized["depth"]}
    for flag in schema.TASK_FLAGS.values():
        y[flag] = tf.cast(example[flag], tf.float32)
    if training:
        # Fixed-size box lists keep the training batch static (XLA); the losses use the maps above.
        y["boxes"], y["classes"] = targets.pad_boxes(resized["boxes"], resized["classes"],
                                                     config.data.max_boxes)
    else:
        # Evaluation keeps every box and ignore region (padded per batch, see make_dataset), and
        # the example's name.
        y["boxes"], y["classes"] = resized["boxes"], resized["classes"]
        y["ignore_boxes"] = resized["ignore_boxes"]
        y["key"] = example["key"]
    x = {"image": tf.cast(resized["image"], tf.float32)}
    return x, y


def _options(config: Config) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = config.data.deterministic
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    # Few shards per source: shard multi-worker input by element, not by file.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _alternate_tasks(batch_index, x, y, tasks: list[str]):
    """`alternating` schedule: step k trains only task k mod T by switching the other flags off."""
    active = tf.math.floormod(batch_index, len(tasks))
    y = dict(y)
    for i, task in enumerate(tasks):
        flag = schema.TASK_FLAGS[task]
        y[flag] = y[flag] * tf.cast(tf.equal(active, i), tf.float32)
    return x, y


def _zero(spec: tf.TensorSpec) -> tf.Tensor:
    return tf.constant("" if spec.dtype == tf.string else 0, spec.dtype)


def make_dataset(config: Config, split: str, training: bool, batch_size: int | None = None,
                 sources: list[SourceConfig] | None = None,
                 data_dir: pathlib.Path | None = None, crop: bool | None = None) -> tf.data.Dataset:
    """Batched (x, y) for the model. Training: shuffled, augmented, infinite, mixed by weight.

    With data.train_crop set, `crop` (default: `training`) gives crops of that size at the model's
    scale (random in training, centred otherwise) instead of whole frames at data.image_size."""
    crop = training if crop is None else crop
    sources = sources or config.data.sources
    batch_size = batch_size or config.train.batch_size
    per_source = []
    for source in sources:
        ds = load_source(config, source, split, shuffle_files=training, data_dir=data_dir)
        if config.data.cache:
            ds = ds.cache()  # decoded frames; all random work comes after
        if training and config.data.repeat_factor_threshold > 0:
            # Frames of rare classes come back more often; their copies leave side by side, so the
            # shuffle comes after.
            ds = repeat_factor.repeated(ds, _class_factors(config, source, split, data_dir),
                                        tuple(config.data.image_size), config.data.min_box_height, config.seed)
            ds = ds.shuffle(config.data.shuffle_buffer, seed=config.seed)
        elif training:
            ds = ds.shuffle(config.data.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
            ds = ds.repeat()
        per_source.append(ds)
    if len(per_source) == 1:
        ds = per_source[0]
    elif training:
        weights = np.array([s.weight for s in sources], np.float64)
        ds = tf.data.Dataset.sample_from_datasets(per_source, weights=list(weights / weights.sum()),
                                                  seed=config.seed)
    else:
        ds = per_source[0]
        for other in per_source[1:]:
            ds = ds.concatenate(other)

    # A per-element seed (from the element's position) makes augmentation reproducible when the
    # pipeline runs deterministically, whatever thread handles the element.
    ds = ds.enumerate()

    def prepare(index, example):
        seed = tf.cast(index, tf.int64) + tf.constant(config.seed * 1_000_003, tf.int64)
        resized = _augment_and_resize(example, seed, config, training, crop)
        return _to_model_io(example, resized, config, training, output_size(config, crop))

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=config.data.deterministic or None)
    if training:
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        # Box lists padded to the batch's longest (class -1 marks padding): a frame with more
        # objects than data.max_boxes is scored on all of them.
        x_spec, y_spec = ds.element_spec
        padding = ({key: _zero(spec) for key, spec in x_spec.items()},
                   {key: tf.constant(-1, spec.dtype) if key == "classes" else _zero(spec)
                    for key, spec in y_spec.items()})
        ds = ds.padded_batch(batch_size, padding_values=padding)
    if training and config.data.schedule == "alternating":
        ds = ds.enumerate().map(lambda i, xy: _alternate_tasks(i, xy[0], xy[1], config.model.tasks))
    return ds.prefetch(AUTOTUNE).with_options(_options(config))
