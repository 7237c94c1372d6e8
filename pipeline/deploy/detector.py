"""model_detection.tflite: the detector alone, in the standard 4-output detection signature.

Existing detector tooling (MediaPipe's ObjectDetector task, LiteRT's Task Library and Android
examples) reads SSD-style post-processed outputs, not this project's multi-task ones:

  input    image            float32 [1,H,W,3] RGB 0..255 at the model size (metadata: mean 0, std 1)
  output 0 location         float32 [1,K,4] ymin, xmin, ymax, xmax as fractions of the input
  output 1 category         float32 [1,K]   class index (a line of the label file)
  output 2 score            float32 [1,K]   0..1, best first
  output 3 number of dets.  float32 [1]     how many slots hold a detection (a peak: score > 0)

Encoder + detection head + the project's own decoding (CenterNet peaks, top-K; no NMS op: the graph
stays builtin-ops-only), with TFLite metadata (pipeline/deploy/tflite_metadata.py): the input
normalisation, the class names as labels.txt, the box layout and the default score threshold.
Readers take the outputs by position, so the file's output order is set explicitly below: Keras'
LiteRT export put num_detections first (measured with Keras 3.15.1, TF 2.21).
"""
from __future__ import annotations

import pathlib
import tempfile

import keras
import tensorflow as tf

from pipeline import trained
from pipeline.deploy import runtimes, serving, tflite_metadata

# Signature names (those of TF's detection API), in the order _set_output_order gives the outputs.
OUTPUTS = runtimes.STANDARD_DETECTION
MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # the net takes 0..255 pixels as they are


class StandardDetections(keras.layers.Layer):
    """Detection head tensors -> the four standard outputs (boxes normalised, classes as float)."""

    def __init__(self, top_k, input_size, **kwargs):
        super().__init__(**kwargs)
        self.top_k = int(top_k)
        self.input_size = tuple(int(v) for v in input_size)
        self.decode = serving.DecodeDetections(self.top_k)

    def call(self, parts):
        decoded = self.decode(parts)  # boxes x1,y1,x2,y2 in model pixels
        height, width = self.input_size
        x1, y1, x2, y2 = tf.unstack(decoded["boxes"], axis=-1)
        locations = tf.clip_by_value(tf.stack([y1 / height, x1 / width, y2 / height, x2 / width], -1), 0.0, 1.0)
        scores = decoded["scores"]
        # Every peak counts, as an SSD post-processing op counts its boxes: the reader applies its own
        # score threshold (default: the metadata's, export.score_threshold), which can then go lower.
        count = tf.reduce_sum(tf.cast(scores > 0.0, tf.float32), axis=1)
        return {OUTPUTS[0]: locations, OUTPUTS[1]: tf.cast(decoded["classes"], tf.float32),
                OUTPUTS[2]: scores, OUTPUTS[3]: count}

    def compute_output_shape(self, input_shape):
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
        batch, height, width, channels = shapes[0]
        classes = channels if len(shapes) > 1 else channels - 4
        k = min(self.top_k, height * width * classes)
        return {OUTPUTS[0]: (batch, k, 4), OUTPUTS[1]: (batch, k), OUTPUTS[2]: (batch, k), OUTPUTS[3]: (batch,)}


def detector_model(net, top_k: int) -> keras.Model:
    """{"image": float32 [B,H,W,3] 0..255} -> the four standard outputs."""
    if "detection" not in trained.tasks(net):
        raise ValueError("the net has no detection head: nothing to export as a detector")
    layer = net.get_layer("detection")
    outputs = dict(net.output) if isinstance(net.output, dict) else dict(zip(net.output_names, net.outputs))
    # the head's three tensors before their concatenation, as the other TFLite files decode them
    parts = layer.input if isinstance(layer, keras.layers.Concatenate) else outputs["detection"]
    head = StandardDetections(top_k, trained.input_size(net), name="standard_detections")
    return keras.Model(net.input, head(parts), name="detector")


def _set_output_order(model: bytes) -> bytes:
    """The subgraph's outputs in OUTPUTS order (readers take them by position)."""
    from tensorflow.lite.tools import flatbuffer_utils

    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    (signature,) = tree.signatureDefs
    by_name = {(o.name.decode() if isinstance(o.name, bytes) else o.name): o.tensorIndex for o in signature.outputs}
    tree.subgraphs[0].outputs = [by_name[name] for name in OUTPUTS]
    return flatbuffer_utils.convert_object_to_bytearray(tree)


def write_detector(net, path: pathlib.Path, top_k: int, score_threshold: float, class_names) -> dict:
    """Writes model_detection.tflite (float32, builtin ops, metadata + labels.txt with `class_names`, the
    model's detection classes in head order); notes for parity.json."""
    height, width = trained.input_size(net)
    model = detector_model(net, top_k)
    signature = [{"image": tf.TensorSpec([1, height, width, 3], tf.float32, name="image")}]
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    with tempfile.TemporaryDirectory() as folder:
        plain = pathlib.Path(folder) / "detector.tflite"
        model.export(str(plain), format="litert", input_signature=signature, verbose=False, **options)
        converted = plain.read_bytes()
    metadata = tflite_metadata.detector_metadata(
        name="dashcam detector", version="1",
        description=f"Detects {', '.join(class_names)} in a dashcam frame (CenterNet, top-{top_k}).",
        input_size=(height, width), mean=MEAN, std=STD, score_threshold=score_threshold)
    labels = "".join(f"{name}\n" for name in class_names).encode()
    path.write_bytes(tflite_metadata.populate(_set_output_order(converted), metadata,
                                              {tflite_metadata.LABELS_FILE: labels}))
    return {"converter": "keras model.export(format='litert'); outputs reordered; metadata by "
                         "pipeline/deploy/tflite_metadata.py",
            "outputs": list(tflite_metadata.OUTPUT_NAMES), "signature_outputs": list(OUTPUTS),
            "input": f"float32 [1,{height},{width},3] RGB 0..255 (normalisation mean {MEAN}, std {STD})",
            "labels": list(class_names), "score_threshold": score_threshold, "top_k": top_k}
