"""Builds the functional multi-task net from a ModelConfig: encoder(s) -> neck(s) -> task heads.

Any subset of tasks can be built; a single task gives the single-task baseline with the very same
encoder, neck and head, so multi-task results are compared like for like. The trainer that owns
the multi-task train_step lives in models/trainer.py and is re-exported here.
"""
from __future__ import annotations

import keras

from models.depth import build_depth_head
from models.detection import build_detection_head
from models.encoder import (LEVEL_NAMES, check_backbone, encoder_model, encoder_part,
                            level_builders, prepare_layers, shared_levels)
from models.neck import build_neck
from models.segmentation import build_segmentation_head
from models.sharing import CrossStitch
from data.errors import UserError
from data.vocabulary import SHARING_MODES, TASKS

if keras.backend.backend() == "tensorflow":
    # The trainer (custom train_step, task weighting) is TensorFlow code; the net itself is portable.
    from models.optimizer import make_optimizer
    from models.trainer import MultiTaskTrainer

__all__ = ["TASKS", "build_model", "rebuild_at", "MultiTaskTrainer", "make_optimizer"]


def ordered_tasks(tasks):
    """The configured tasks in the project's canonical order; raises UserError on a bad list."""
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise UserError(f"model.tasks must be a non-empty subset of {', '.join(TASKS)}; "
                        f"Received: tasks={list(tasks)}")
    return tuple(task for task in TASKS if task in tasks)


def rebuild_at(net, image_size):
    """The same net for another input size, holding a copy of its weights as they are now (every
    weight is independent of the size): the train stage's full-frame net after training on crops, the
    evaluation's upscale test.

    Rebuilt from the net's own config with every input layer's height and width scaled as the
    frame's (the encoder is a nested functional model with an input of its own; under soft sharing
    each task's encoder takes the shared trunk's 1/4- or 1/8-size map), so it needs no model config
    and cannot differ from the net it copies.
    """
    height, width = image_size
    old_height, old_width = net.inputs[0].shape[1:3]

    def scaled(side, new, old):
        if side * new % old:
            raise ValueError(f"an input side of {side} px does not scale by {new}/{old} to whole pixels")
        return side * new // old

    def resize_inputs(config):
        if isinstance(config, dict):
            if config.get("class_name") == "InputLayer":
                shape = list(config["config"]["batch_shape"])
                config["config"]["batch_shape"] = [shape[0], scaled(shape[1], height, old_height),
                                                   scaled(shape[2], width, old_width), *shape[3:]]
            for value in config.values():
                resize_inputs(value)
        elif isinstance(config, list):
            for value in config:
                resize_inputs(value)

    config = net.get_config()
    resize_inputs(config)
    resized = net.__class__.from_config(config)
    resized.set_weights(net.get_weights())
    return resized


def built_sharing(tasks, sharing: str) -> str:
    """The sharing mode a net of these tasks is built with: one task is one encoder, whatever the mode."""
    return "hard" if len(tasks) == 1 else sharing


def as_built(model: dict) -> dict:
    """A model config mapping with the keys the built net ignores set as it is built: the sharing
    mode (built_sharing), and no branch point under hard sharing. Two configs that build the same
    net then compare equal (the baselines' reuse of a trained model, a resume)."""
    if built_sharing(model.get("tasks") or [], model.get("sharing")) == "hard":
        return {**model, "sharing": "hard", "shared_through": None}
    return model


def build_model(model_config, image_size):
    """-> keras.Model {"image": float32 [B,H,W,3] 0..255} -> {task: output} (see the contract)."""
    tasks = ordered_tasks(model_config.tasks)
    check_backbone(model_config)
    sharing = model_config.sharing
    if sharing not in SHARING_MODES:
        raise UserError(f"unknown sharing mode '{sharing}'; valid: {', '.join(SHARING_MODES)}")
    sharing = built_sharing(tasks, sharing)
    if sharing == "cross_stitch":  # it stitches between pyramid levels
        level_builders(model_config, "model.sharing=cross_stitch")
    height, width = image_size
    image = keras.Input(shape=(height, width, 3), name="image")

    if sharing == "hard":
        pyramid = encoder_model((height, width), model_config, "encoder")(image)
        feature, _ = build_neck(pyramid, model_config.neck_width, prefix="neck")
        inputs = {task: (feature, pyramid["P1"]) for task in tasks}
    else:
        inputs = _per_task_features(image, tasks, model_config, sharing)
    outputs = {}
    for task in tasks:
        feature, skip = inputs[task]
        # One output channel per configured class (model.classes; data/classes.py).
        if task == "detection":
            outputs[task] = build_detection_head(feature, model_config.head_width,
                                                 num_classes=len(model_config.classes.detection),
                                                 convs=model_config.detection_head_convs,
                                                 batch_norm=model_config.detection_head_batch_norm,
                                                 neighbour_boxes=model_config.detection_neighbour_boxes,
                                                 size_bins=model_config.detection_size_bins,
                                                 largest_box=model_config.detection_largest_box)
        elif task == "segmentation":
            outputs[task] = build_segmentation_head(feature, skip, model_config.head_width,
                                                    num_classes=len(model_config.classes.segmentation))
        else:
            outputs[task] = build_depth_head(feature, skip, model_config.head_width,
                                             model_config.min_depth, model_config.max_depth)
    net = keras.Model({"image": image}, outputs, name="multitask_" + "_".join(tasks))
    if sharing == "cross_stitch":  # its per-task levels are built inline, in this model
        for task in tasks:
            prepare_layers(net.layers, model_config, f"encoder_{task}", _task_levels(model_config))
    return net


def _task_levels(config):
    return tuple(level for level in LEVEL_NAMES if level not in shared_levels(config))


def _per_task_features(image, tasks, config, sharing):
    """task -> (neck feature, P1 skip) with one encoder copy per task above a shared trunk.

    The trunk (shared_levels: through model.shared_through, else the levels model.freeze_through keeps
    frozen; none for the builtin encoder by default) is built once: frozen copies would compute the
    same features, three times the trunk's cost for nothing, and a branch point above the frozen levels
    buys per-task capacity where it is cheap (the low-resolution levels hold most of the weights).
    soft: each task's upper levels are a nested model "encoder_<task>" (the L2 penalty pairs their
    weights); cross_stitch: the upper levels are built inline, a CrossStitch after each level from
    P2 on mixes the task streams (Misra et al. stitch after each stage, not after the stem).
    """
    trunk_levels = shared_levels(config)
    trunk = encoder_part(image.shape[1:], config, "encoder", trunk_levels)(image) if trunk_levels else {}
    x = trunk[trunk_levels[-1]] if trunk_levels else image
    levels = _task_levels(config)
    if sharing == "soft":
        # Without a trunk every backbone works, the keras.applications ones too (whole copies).
        encoders = [encoder_part(x.shape[1:], config, f"encoder_{task}", levels) if trunk
                    else encoder_model(image.shape[1:3], config, f"encoder_{task}") for task in tasks]
        for encoder in encoders[1:]:
            encoder.set_weights(encoders[0].get_weights())  # start identical: penalty starts at 0
        pyramids = [{**trunk, **encoder(x)} for encoder in encoders]
    else:
        builders = level_builders(config)
        streams = [x] * len(tasks)
        pyramids = [dict(trunk) for _ in tasks]
        for level in levels:
            streams = [builders[level](stream, f"encoder_{task}") for stream, task in zip(streams, tasks)]
            if level != "P1":
                streams = CrossStitch(len(tasks), name=f"cross_stitch_{level}")(streams)
            for pyramid, stream in zip(pyramids, streams):
                pyramid[level] = stream
    features = {}
    for task, pyramid in zip(tasks, pyramids):
        feature, _ = build_neck(pyramid, config.neck_width, prefix=f"neck_{task}")
        features[task] = (feature, pyramid["P1"])
    return features
