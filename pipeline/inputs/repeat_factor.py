"""Repeat factor sampling (Gupta et al. 2019, LVIS; Detectron2's RepeatFactorTrainingSampler).

Frames that hold a class few frames hold are seen more often in training: class c, in a share f_c of
the source's training frames, has the factor r_c = max(1, sqrt(t / f_c)), and each frame repeats
max(1, r_c over the classes it holds) times per pass, rounded up or down at random so that the mean
is that factor (a fresh draw every pass). t = data.repeat_factor_threshold; 0 turns it off.

A class counts in a frame when one of its boxes passes the size protocol at the model's scale
(augment.py's rule: at least data.min_box_height tall and MIN_BOX_PIXELS wide); smaller objects are
ignore regions, neither trained nor scored.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data.errors import UserError
from pipeline.inputs.augment import MIN_BOX_PIXELS

# The frames the class shares are counted on: the first ones of the source's split (its shards in
# order), enough for a share to 0.02: two samples of 2,000 of the default's 8,000 synthetic frames
# gave 0.893 / 0.473 / 0.3735 and 0.876 / 0.477 / 0.368 for vehicles / pedestrians / cyclists.
SHARE_FRAMES = 2000


def png_size(png: tf.Tensor) -> tf.Tensor:
    """[height, width] of a PNG image from its header (IHDR: big-endian uint32 width at bytes 16-19,
    height at 20-23), without decoding it."""
    digits = tf.reshape(tf.cast(tf.io.decode_raw(tf.strings.substr(png, 16, 8), tf.uint8), tf.int64), [2, 4])
    width, height = tf.unstack(tf.reduce_sum(digits * tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64), axis=1))
    return tf.stack([height, width])


def classes_held(boxes: tf.Tensor, classes: tf.Tensor, frame_size: tf.Tensor, num_classes: int,
                 model_size: tuple[int, int], min_box_height: float) -> tf.Tensor:
    """[num_classes] bool: which classes have a box the size protocol keeps at the model's scale
    (frame_size and model_size: [height, width])."""
    scale = tf.cast(model_size, tf.float32) / tf.cast(frame_size, tf.float32)
    height = (boxes[:, 3] - boxes[:, 1]) * scale[0]
    width = (boxes[:, 2] - boxes[:, 0]) * scale[1]
    kept = (height >= max(min_box_height, MIN_BOX_PIXELS)) & (width >= MIN_BOX_PIXELS)
    held = tf.boolean_mask(classes, kept & (classes >= 0) & (classes < num_classes))
    return tf.reduce_any(tf.equal(held[:, None], tf.range(num_classes, dtype=held.dtype)[None, :]), axis=0)


def class_shares(builder, split: str, num_classes: int, model_size: tuple[int, int], min_box_height: float,
                 frames: int = SHARE_FRAMES) -> np.ndarray:
    """[num_classes] share of the split's first `frames` frames that hold each class (images undecoded)."""
    skip = tfds.decode.SkipDecoding()
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={"image": skip, "segmentation": skip, "depth": skip})
    dataset = dataset.take(frames).map(
        lambda ex: classes_held(ex["boxes"], ex["classes"], png_size(ex["image"]), num_classes,
                                model_size, min_box_height),
        num_parallel_calls=tf.data.AUTOTUNE).batch(512)
    batches = list(dataset.as_numpy_iterator())
    if not batches:
        raise UserError(f"data.repeat_factor_threshold: split '{split}' has no frames to count the classes on")
    return np.concatenate(batches).mean(axis=0)


def class_factors(shares: np.ndarray, threshold: float) -> np.ndarray:
    """r_c = max(1, sqrt(threshold / f_c)); a class no counted frame holds gets 1 (nothing to repeat)."""
    shares = np.asarray(shares, np.float64)
    safe = np.where(shares > 0, shares, 1.0)
    return np.where(shares > 0, np.maximum(1.0, np.sqrt(threshold / safe)), 1.0)


def repeated(dataset: tf.data.Dataset, factors: np.ndarray, model_size: tuple[int, int],
             min_box_height: float, seed: int) -> tf.data.Dataset:
    """An endless stream of `dataset`'s passes, each frame repeated by its factor (module doc).

    `dataset` is one pass of decoded examples; the copies of a frame come out side by side, so the
    caller shuffles after this."""
    factors = tf.constant(factors, tf.float32)

    def copies(index, example):
        held = classes_held(example["boxes"], example["classes"], tf.shape(example["image"])[:2],
                            len(factors), model_size, min_box_height)
        factor = tf.reduce_max(tf.where(held, factors, 1.0))
        # The element's place in the endless stream seeds its draw: a new draw every pass, the same
        # draws in every run of one seed.
        draw = tf.random.stateless_uniform([], seed=tf.stack([tf.constant(seed, tf.int64), index]))
        count = tf.cast(tf.floor(factor + draw), tf.int64)
        return tf.data.Dataset.from_tensors(example).repeat(count)

    return dataset.repeat().enumerate().flat_map(copies)
