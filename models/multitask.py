"""Builds the functional multi-task net from a ModelConfig: encoder(s) -> neck(s) -> task heads.

Any subset of tasks can be built; a single task gives the single-task baseline with the very same
encoder, neck and head, so multi-task results are compared like for like. The trainer that owns
the multi-task train_step lives in models/trainer.py and is re-exported here.
"""
from __future__ import annotations

import keras

from models.depth import build_depth_head
from models.detection import build_detection_head
from models.encoder import builtin_stage, builtin_stem, check_backbone, encoder_model
from models.neck import build_neck
from models.segmentation import build_segmentation_head
from models.sharing import CROSS_STITCH_BACKBONES, CrossStitch
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


def rebuild_at(net, model_config, image_size):
    """The same net and weights for another input size (every weight is independent of it)."""
    resized = build_model(model_config, image_size)
    resized.set_weights(net.get_weights())
    return resized


def build_model(model_config, image_size):
    """-> keras.Model {"image": float32 [B,H,W,3] 0..255} -> {task: output} (see the contract)."""
    tasks = ordered_tasks(model_config.tasks)
    check_backbone(model_config)
    sharing = model_config.sharing
    if sharing not in SHARING_MODES:
        raise UserError(f"unknown sharing mode '{sharing}'; valid: {', '.join(SHARING_MODES)}")
    if len(tasks) == 1:
        sharing = "hard"  # one task: every mode is the same single encoder
    if sharing == "cross_stitch" and model_config.backbone not in CROSS_STITCH_BACKBONES:
        raise UserError("model.sharing=cross_stitch needs the builtin backbone (it stitches after each "
                        f"built-in stage); Received: backbone={model_config.backbone}")
    height, width = image_size
    image = keras.Input(shape=(height, width, 3), name="image")

    if sharing == "hard":
        pyramid = encoder_model((height, width), model_config, "encoder")(image)
        feature, _ = build_neck(pyramid, model_config.neck_width, prefix="neck")
        inputs = {task: (feature, pyramid["P1"]) for task in tasks}
    elif sharing == "soft":
        encoders = [encoder_model((height, width), model_config, f"encoder_{task}") for task in tasks]
        for encoder in encoders[1:]:
            encoder.set_weights(encoders[0].get_weights())  # start identical: penalty starts at 0
        inputs = {}
        for task, encoder in zip(tasks, encoders):
            pyramid = encoder(image)
            feature, _ = build_neck(pyramid, model_config.neck_width, prefix=f"neck_{task}")
            inputs[task] = (feature, pyramid["P1"])
    else:
        inputs = _cross_stitch_features(image, tasks, model_config)

    outputs = {}
    for task in tasks:
        feature, skip = inputs[task]
        # One output channel per configured class (model.classes; data/classes.py).
        if task == "detection":
            outputs[task] = build_detection_head(feature, model_config.head_width,
                                                 num_classes=len(model_config.classes.detection))
        elif task == "segmentation":
            outputs[task] = build_segmentation_head(feature, skip, model_config.head_width,
                                                    num_classes=len(model_config.classes.segmentation))
        else:
            outputs[task] = build_depth_head(feature, skip, model_config.head_width,
                                             model_config.min_depth, model_config.max_depth)
    return keras.Model({"image": image}, outputs, name="multitask_" + "_".join(tasks))


def _cross_stitch_features(image, tasks, config):
    """Per-task built-in encoders stitched after each stage, then a per-task neck."""
    prefixes = [f"encoder_{task}" for task in tasks]
    stems = [builtin_stem(image, config.widths, prefix) for prefix in prefixes]
    streams = stems
    pyramids = [{"P1": stem} for stem in stems]
    for index in range(4):
        streams = [builtin_stage(x, index, config.widths, prefix) for x, prefix in zip(streams, prefixes)]
        streams = CrossStitch(len(tasks), name=f"cross_stitch_P{index + 2}")(streams)
        for pyramid, x in zip(pyramids, streams):
            pyramid[f"P{index + 2}"] = x
    features = {}
    for task, pyramid in zip(tasks, pyramids):
        feature, _ = build_neck(pyramid, config.neck_width, prefix=f"neck_{task}")
        features[task] = (feature, pyramid["P1"])
    return features
