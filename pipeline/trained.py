"""The trained net as every stage sees it: loading a saved .keras file, its tasks and input size,
in-graph decoding of its outputs, and the score thresholds its detections are read with.

The net's outputs are a dict keyed by task (data.vocabulary.TASKS); decoded results are
boxes [B,K,4] x1,y1,x2,y2 in model-input pixels, scores [B,K], classes [B,K] (detection),
segmentation [B,H,W] int32 class ids (argmax of the logits), depth [B,H,W] metres.
"""
from __future__ import annotations

import pathlib
import zipfile

import keras
import tensorflow as tf

import models  # noqa: F401  (registers the custom layers a saved model refers to)
from data.errors import UserError
from data.vocabulary import SCORE_THRESHOLD, TASKS
from models.detection_decode import decode_detections

# Score thresholds. Serving, predict and clip count, list and draw detections at one threshold, the
# config's export.score_threshold (default SCORE_THRESHOLD); the evaluation's frame grid draws at the
# default. Metrics use every detection above a floor:
DISPLAY_SCORE = SCORE_THRESHOLD
METRIC_SCORE_FLOOR = 0.01  # metrics drop slots at or below this: near-zero filler COCO's recall grid cannot resolve


def load(path) -> keras.Model:
    """A .keras model saved by the train stage; UserError for a missing or unreadable file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"no trained model at {path}: run `make train` (python -m pipeline train) first")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a Keras model (.keras file)")
    if path.suffix == ".keras" and not _is_keras_archive(path):
        # Keras itself reports such a file as "File not found".
        raise UserError(f"{path} is not a Keras model: not a .keras archive (truncated, corrupt or "
                        f"another kind of file); train again or pass the right file")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as err:  # noqa: BLE001  (a corrupt or foreign file is the user's, not a bug)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a Keras model this project can load: {reason}") from None


def _is_keras_archive(path: pathlib.Path) -> bool:
    """A .keras file is a zip holding config.json and model.weights.h5, every member intact."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            return {"config.json", "model.weights.h5"} <= names and archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


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
