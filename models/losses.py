"""The per-task losses under partial labels, in backend-agnostic Keras ops.

Both trainers use them: MultiTaskTrainer (models/trainer.py, TensorFlow) and PortableMultiTask
(models/portable_trainer.py, any Keras backend).
"""
from __future__ import annotations

from keras import ops

from models.depth import depth_loss
from models.detection import SIZE_BINS, STRIDE, detection_loss
from models.segmentation import segmentation_loss


def per_example_losses(model_config, train_config=None):
    """{task: (batch targets y, the net's outputs {name: tensor}) -> per-example loss [B]}.

    With train_config, the training objective (train.segmentation_ohem, train.detection_quality,
    train.detection_size_gradient, and with model.detection_size_bins the distribution focal loss on
    the SIZE_BINS output, models.detection.with_size_bins); without, the plain losses that validation
    reports, so that validation losses compare across training objectives.
    """
    hard_pixels = bool(train_config is not None and train_config.segmentation_ohem)
    balance = 0.0 if train_config is None else float(train_config.segmentation_class_balance)
    quality = bool(train_config is not None and train_config.detection_quality)
    neighbours = bool(train_config is not None and model_config.detection_neighbour_boxes)
    size_gradient = 1.0 if train_config is None else float(train_config.detection_size_gradient)
    bins = train_config is not None and model_config.detection_size_bins > 0
    largest = model_config.detection_largest_box / STRIDE
    return {
        "detection": lambda y, outputs: detection_loss(
            y, outputs["detection"], quality, neighbours, size_gradient,
            outputs[SIZE_BINS] if bins else None, largest),
        "segmentation": lambda y, outputs: segmentation_loss(y["segmentation"], outputs["segmentation"],
                                                             hard_pixels, balance),
        # Depth is scored on the range the model can output (the evaluation protocol's too).
        "depth": lambda y, outputs: depth_loss(y["depth"], outputs["depth"], model_config.max_depth),
    }


def masked_task_loss(per_example, has_label):
    """sum(flag * L) / max(1, sum(flag)) and whether any example had the label (float 0/1).

    A batch without the task's labels gives exactly zero loss and zero gradient for it.
    """
    flag = ops.cast(has_label, "float32")
    count = ops.sum(flag)
    loss = ops.sum(flag * ops.cast(per_example, "float32")) / ops.maximum(count, 1.0)
    return loss, ops.cast(count > 0.0, "float32")
