"""A small FPN: fuses the P2..P5 pyramid into one stride-4 feature for the decoders.

Lateral 1x1 convs bring every level to `width` channels; a top-down pass adds the coarser level
(nearest upsampling: cheap, exact for x2 and TFLite-friendly) so the stride-4 map sees context
from stride 32; a separable 3x3 smooths the aliasing of the sum. Only the stride-4 map is
smoothed because it is the only one the heads read.
"""
from __future__ import annotations

import keras

from models.blocks import separable_relu

NECK_LEVELS = ("P2", "P3", "P4", "P5")


def build_neck(pyramid, width, prefix="neck"):
    """pyramid: {"P2".."P5": tensors} -> (fused stride-4 feature, {"P2".."P5": fused levels}).

    The final layer is named f"{prefix}_out": with hard sharing it is the last layer all tasks
    share, which GradNorm needs to find (its pointwise kernel).
    """
    if width < 1:
        raise ValueError(f"neck width must be positive; Received: width={width}")
    fused = {}
    top = None
    for level in reversed(NECK_LEVELS):
        lateral = keras.layers.Conv2D(width, 1, name=f"{prefix}_lateral_{level}")(pyramid[level])
        if top is not None:
            up = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}_up_{level}")(top)
            lateral = keras.layers.Add(name=f"{prefix}_add_{level}")([lateral, up])
        fused[level] = top = lateral
    return separable_relu(fused["P2"], width, name=f"{prefix}_out"), fused


def shared_layer_name(prefix="neck"):
    """Name of the neck's last conv (see build_neck)."""
    return f"{prefix}_out"
