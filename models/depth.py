"""Metric depth: positive metres at input resolution, scale-invariant log loss on valid pixels."""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from models.blocks import dense_head

SILOG_LAMBDA = 0.85  # Eigen et al. 2014: 1 = fully scale invariant, 0 = plain log-L2


@keras.saving.register_keras_serializable(package="dashcam")
class LogSigmoidDepth(keras.layers.Layer):
    """x -> exp(log(min) + (log(max) - log(min)) * sigmoid(x)) metres.

    Bounded (no exp overflow from a bad early step, unlike exp(x)) and uniform in log-depth, the
    space the SILog loss measures errors in, so near and far pixels get comparable gradients.
    Starts at the geometric mean of the range (x = 0).
    """

    def __init__(self, min_depth=0.5, max_depth=80.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < min_depth < max_depth:
            raise ValueError(f"depth range needs 0 < min_depth < max_depth; "
                             f"Received: min_depth={min_depth}, max_depth={max_depth}")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)

    def call(self, x):
        low, high = math.log(self.min_depth), math.log(self.max_depth)
        return tf.exp(low + (high - low) * tf.sigmoid(x))

    def get_config(self):
        return {**super().get_config(), "min_depth": self.min_depth, "max_depth": self.max_depth}


def build_depth_head(feature, skip, width, min_depth, max_depth, name="depth"):
    """Stride-4 feature (+ optional stride-2 skip) -> [B, H, W, 1] float32 metres."""
    if width < 1:
        raise ValueError(f"depth head needs a positive width; Received: width={width}")
    raw = dense_head(feature, skip, 1, width, name=f"{name}_head")
    # Interpolate before the activation: bilinear in log-depth, computed in float32.
    return LogSigmoidDepth(min_depth, max_depth, name=name, dtype="float32")(raw)


def depth_loss(depth_true, depth_pred):
    """Per-example SILog [B]: mean(d^2) - lambda * mean(d)^2, d = log pred - log true, on true > 0.

    Examples without a valid pixel give exactly 0 (and a zero gradient).
    """
    depth_true = tf.cast(depth_true, tf.float32)
    depth_pred = tf.cast(depth_pred, tf.float32)
    if depth_pred.shape.rank == 4:
        depth_pred = depth_pred[..., 0]
    valid = depth_true > 0.0
    # log(0) would be -inf and poison the gradient even where masked: log a safe 1 instead.
    diff = tf.math.log(depth_pred) - tf.math.log(tf.where(valid, depth_true, tf.ones_like(depth_true)))
    valid = tf.cast(valid, tf.float32)
    count = tf.reduce_sum(valid, axis=[1, 2])
    denom = tf.maximum(count, 1.0)
    mean = tf.reduce_sum(diff * valid, axis=[1, 2]) / denom
    mean_sq = tf.reduce_sum(tf.square(diff) * valid, axis=[1, 2]) / denom
    return tf.where(count > 0.0, mean_sq - SILOG_LAMBDA * tf.square(mean), 0.0)
