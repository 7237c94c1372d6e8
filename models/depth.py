"""Metric depth: positive metres at input resolution, scale-invariant log loss on valid pixels."""
from __future__ import annotations

import keras
from keras import ops

from models.blocks import bounded_log, dense_head

SILOG_LAMBDA = 0.85  # Eigen et al. 2014: 1 = fully scale invariant, 0 = plain log-L2


@keras.saving.register_keras_serializable(package="dashcam")
class LogDepth(keras.layers.Layer):
    """x -> exp(clip(log(mid) + x, log(min), log(max))) metres, mid = sqrt(min * max).

    The raw output is log-depth itself, the space the SILog loss measures errors in, so a pixel at
    60 m learns as fast as one at 6 m (the earlier log-sigmoid output's gradient was 5-20x smaller
    at 40-80 m than at 6 m). The clip bounds the output (no exp overflow after a bad early step)
    and passes the gradient straight through, so a prediction past a bound is still pulled back.
    Starts at the geometric mean of the range (x = 0).
    """

    def __init__(self, min_depth=0.5, max_depth=80.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < min_depth < max_depth:
            raise ValueError(f"depth range needs 0 < min_depth < max_depth; "
                             f"Received: min_depth={min_depth}, max_depth={max_depth}")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)

    def log_depth(self, x):
        """The clipped log-depth (natural log of metres) for raw outputs x."""
        return bounded_log(x, self.min_depth, self.max_depth)

    def call(self, x):
        return ops.exp(self.log_depth(x))

    def get_config(self):
        return {**super().get_config(), "min_depth": self.min_depth, "max_depth": self.max_depth}


def build_depth_head(feature, skip, width, min_depth, max_depth, name="depth"):
    """Stride-4 feature (+ optional stride-2 skip) -> [B, H, W, 1] float32 metres."""
    if width < 1:
        raise ValueError(f"depth head needs a positive width; Received: width={width}")
    raw = dense_head(feature, skip, 1, width, name=f"{name}_head")
    # Interpolate before the activation: bilinear in log-depth, computed in float32.
    return LogDepth(min_depth, max_depth, name=name, dtype="float32")(raw)


def valid_depth(depth_true, max_depth):
    """The pixels depth is trained and scored on: 0 < gt <= max_depth (the model's range).

    Past max_depth the output saturates, so those pixels could never be matched, and through the
    scale-invariant term they would bias every other pixel of the image. The evaluation protocol
    uses the same rule (pipeline's DepthEvaluator is given the model's max_depth).
    """
    return (depth_true > 0.0) & (depth_true <= max_depth)


def depth_loss(depth_true, depth_pred, max_depth):
    """Per-example SILog [B]: mean(d^2) - lambda * mean(d)^2, d = log pred - log true, on the
    valid pixels (valid_depth). Examples without a valid pixel give exactly 0 (and a zero gradient).
    """
    depth_true = ops.cast(depth_true, "float32")
    depth_pred = ops.cast(depth_pred, "float32")
    if len(depth_pred.shape) == 4:
        depth_pred = depth_pred[..., 0]
    valid = valid_depth(depth_true, max_depth)
    # log(0) would be -inf and poison the gradient even where masked: log a safe 1 instead.
    diff = ops.log(depth_pred) - ops.log(ops.where(valid, depth_true, ops.ones_like(depth_true)))
    valid = ops.cast(valid, "float32")
    count = ops.sum(valid, axis=(1, 2))
    denom = ops.maximum(count, 1.0)
    mean = ops.sum(diff * valid, axis=(1, 2)) / denom
    mean_sq = ops.sum(ops.square(diff) * valid, axis=(1, 2)) / denom
    return ops.where(count > 0.0, mean_sq - SILOG_LAMBDA * ops.square(mean), 0.0)
