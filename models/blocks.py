"""Small functional building blocks shared by the encoder, neck and heads.

Speed notes (measured on the 2-core CPU this project must train on): memory traffic, not
multiply-adds, dominates, so high-resolution maps are kept few and thin. ReLU (not swish): cheaper
and quantises cleanly for the int8 TFLite export. The neck and the dense heads use no BatchNorm (as
in CenterNet): one tensor less per layer at stride 4 and above; the detection head may
(model.detection_head_batch_norm). Every layer gets an explicit name so that weights,
the GradNorm shared layer and the soft-sharing penalty can find corresponding layers.
"""
from __future__ import annotations

import math

import keras
from keras import ops

from models.batch_norm import FusedBatchNorm

# Keras' default 0.99 averages the statistics over ~100 steps; our schedules are ~1-2k steps with
# weights moving fast, so the moving statistics lagged the weights and inference-mode losses were
# 2-4x the training-mode ones on the same batch (measured). 0.9 tracks them.
BN_MOMENTUM = 0.9


def depth_scaled(repeats, depth):
    """A stage's block count at depth coefficient `depth` (EfficientNet's: ceil(depth x repeats),
    at least 1; Tan & Le 2019). The first blocks are kept: each stage's first block changes stride
    or width, the later ones are residual refinements at the same shape."""
    if not depth > 0:
        raise ValueError(f"encoder depth must be > 0; Received: depth={depth}")
    return max(1, math.ceil(round(depth * repeats, 6)))


def conv_bn_act(x, filters, kernel_size, strides=1, name="conv", activation="relu"):
    """Conv -> BatchNorm -> activation (no conv bias: BatchNorm's beta replaces it)."""
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = FusedBatchNorm(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if activation:
        x = keras.layers.Activation(activation, name=f"{name}_act")(x)
    return x


def fused_block(x, filters, strides, name):
    """EfficientNetV2's Fused-MBConv with expansion 1: 3x3 conv -> BN -> ReLU (+ skip).

    Used at high resolution, where a dense 3x3 conv over few channels is faster on CPU (and far
    faster under XLA) than expand + depthwise + project, which writes 3 wide tensors.
    """
    shortcut = x
    x = conv_bn_act(x, filters, 3, strides=strides, name=name)
    if strides == 1 and shortcut.shape[-1] == filters:
        x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def inverted_residual(x, filters, strides, expansion, name):
    """MobileNetV2 block: 1x1 expand -> depthwise 3x3 -> linear 1x1 project (+ skip).

    Used at low resolution, where channels are many and a depthwise conv saves most compute.
    The projection is linear (no ReLU) so the narrow residual stream keeps its information.
    """
    in_channels = x.shape[-1]
    shortcut = x
    hidden = conv_bn_act(x, in_channels * expansion, 1, name=f"{name}_expand")
    hidden = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                          name=f"{name}_dw")(hidden)
    hidden = FusedBatchNorm(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(hidden)
    hidden = keras.layers.Activation("relu", name=f"{name}_dw_act")(hidden)
    hidden = conv_bn_act(hidden, filters, 1, name=f"{name}_project", activation=None)
    if strides == 1 and in_channels == filters:
        hidden = keras.layers.Add(name=f"{name}_add")([shortcut, hidden])
    return hidden


def separable_relu(x, filters, name):
    """SeparableConv2D 3x3 (+ bias) + ReLU, no BatchNorm: the light head / neck conv."""
    return keras.layers.SeparableConv2D(filters, 3, padding="same", activation="relu", name=name)(x)


def separable_bn_relu(x, filters, name):
    """SeparableConv2D 3x3 (no bias) -> BatchNorm -> ReLU; the conv keeps separable_relu's name, so
    the two are interchangeable by name. The normalised head conv (model.detection_head_batch_norm)."""
    x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    x = FusedBatchNorm(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def dense_head(feature, skip, out_channels, width, name):
    """Stride-4 feature (+ stride-2 skip) -> [B, H, W, out_channels] raw outputs at input size.

    The work happens at stride 4 (a separable 3x3 at `width`); the result is squeezed to a few
    channels before going up, fused with the stride-2 skip by a 1x1 conv (restores edges of thin
    objects such as poles and pedestrians, as in DeepLabv3+'s decoder) and only the `out_channels`
    outputs are upsampled bilinearly to full resolution. Nothing wide is ever written at stride 2
    or 1, which is what keeps the full-resolution tasks affordable on a CPU.
    """
    x = separable_relu(feature, width, name=f"{name}_s4")
    if skip is not None:
        x = keras.layers.Conv2D(max(8, width // 4), 1, activation="relu", name=f"{name}_squeeze")(x)
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up2")(x)
        x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = keras.layers.Conv2D(out_channels, 1, name=f"{name}_logits")(x)
        return keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up1")(x)
    x = keras.layers.Conv2D(out_channels, 1, name=f"{name}_logits")(x)
    return keras.layers.UpSampling2D(4, interpolation="bilinear", name=f"{name}_up1")(x)


def bounded_log(x, minimum, maximum):
    """Raw outputs x -> a log value in [log(minimum), log(maximum)], log(sqrt(minimum * maximum)) at
    x = 0, computed in float32. The clip is straight-through: clipped forward (exp of it never
    overflows after a bad early step), identity backward, so a prediction past a bound is still
    pulled back by its loss. The depth and box-size heads' output (LogDepth, BoxSize)."""
    low, high = math.log(minimum), math.log(maximum)
    raw = ops.cast(x, "float32") + 0.5 * (low + high)
    return raw + ops.stop_gradient(ops.clip(raw, low, high) - raw)
