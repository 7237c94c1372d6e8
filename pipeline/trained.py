"""The trained net as every stage sees it: loading a saved .keras file, its tasks and input size,
in-graph decoding of its outputs, and the score thresholds its detections are read with.

The net's outputs are a dict keyed by task (data.vocabulary.TASKS); decoded results are
boxes [B,K,4] x1,y1,x2,y2 in model-input pixels, scores [B,K], classes [B,K] (detection),
segmentation [B,H,W] int32 class ids (argmax of the logits), depth [B,H,W] metres.
"""
from __future__ import annotations

import pathlib

import keras
import tensorflow as tf

import models  # noqa: F401  (registers the custom layers a saved model refers to)
from data.errors import UserError
from data.vocabulary import TASKS
from models.detection import decode_detections

# Score thresholds, each a different question about the same top-K detection slots:
COUNT_SCORE = 0.1  # the serving graph's num_detections: "something is there" (every K slot is returned)
DISPLAY_SCORE = 0.3  # detections drawn and listed (predict, clip, the evaluation's frame grid)
METRIC_SCORE_FLOOR = 0.01  # metrics drop slots at or below this: near-zero filler COCO's recall grid cannot resolve


def load(path) -> keras.Model:
    """A .keras model saved by the train stage; UserError for a missing or unreadable file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"no trained model at {path}: run `make train` (python -m pipeline train) first")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as err:  # noqa: BLE001  (a corrupt or foreign file is the user's, not a bug)
        raise UserError(f"could not load the model {path}: {str(err).splitlines()[0] if str(err) else err!r}") \
            from None


def tasks(net) -> list[str]:
    """The tasks a multi-task net outputs, in the project's canonical order."""
    outputs = net.output if isinstance(net.output, dict) else dict(zip(net.output_names, net.outputs))
    return [task for task in TASKS if task in outputs]


def input_size(net) -> tuple[int, int]:
    image = net.input["image"] if isinstance(net.input, dict) else net.inputs[0]
    height, width = image.shape[1:3]
    if height is None or width is None:
        raise ValueError(f"the net needs a fixed input size. Received: input shape={image.shape}")
    return int(height), int(width)


def decode(outputs: dict, top_k: int) -> dict:
    """Net outputs at the model size -> decoded results at the model size (TF ops, in graph)."""
    result = {}
    if "detection" in outputs:
        result.update(decode_detections(tf.cast(outputs["detection"], tf.float32), top_k))
    if "segmentation" in outputs:
        result["segmentation"] = tf.argmax(outputs["segmentation"], axis=-1, output_type=tf.int32)
    if "depth" in outputs:
        result["depth"] = tf.cast(outputs["depth"], tf.float32)[..., 0]
    return result
