"""The multi-task Keras model: shared encoder, neck, detection / segmentation / depth decoders.

Public API:
  models.multitask.build_model(model_config, image_size) -> keras.Model  (input "image", dict outputs)
  models.trainer.MultiTaskTrainer(net, model_config, train_config)     (custom train_step)
  models.optimizer.make_optimizer(train_config, total_steps)            (AdamW, warm-up + cosine)
  models.detection_decode.decode_detections(detection_output, top_k, stride=4, neighbourhood=True)
  models.{detection,segmentation,depth} per-example losses; models.weighting; models.sharing.

Importing the package registers the custom layers (package "dashcam"), so
`keras.saving.load_model(path)` works after `import models`.

The network and its losses are backend-agnostic Keras (keras.ops): `KERAS_BACKEND=jax` builds and
trains the same graph (tests/models/test_backend.py). The trainer, task weighting, optimizer and
detection decoding are TensorFlow code and load only on the TensorFlow backend.
"""
import keras

from models import batch_norm, depth, detection, sharing  # noqa: F401  (registers serializable layers)

if keras.backend.backend() == "tensorflow":
    from models import weighting  # noqa: F401  (registers the trainer's task-weighting layers)
