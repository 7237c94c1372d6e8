"""The multi-task Keras model: shared encoder, neck, detection / segmentation / depth decoders.

Public API:
  models.multitask.build_model(model_config, image_size) -> keras.Model  (input "image", dict outputs)
  models.trainer.MultiTaskTrainer(net, model_config, train_config)     (custom train_step)
  models.optimizer.make_optimizer(train_config, total_steps)            (AdamW, warm-up + cosine)
  models.detection.decode_detections(detection_output, top_k, stride=4)
  models.{detection,segmentation,depth} per-example losses; models.weighting; models.sharing.

Importing the package registers the custom layers (package "dashcam"), so
`keras.saving.load_model(path)` works after `import models`.
"""
from models import batch_norm, depth, sharing, weighting  # noqa: F401  (registers serializable layers)
