"""Serving graphs around the trained net: raw frames in, decoded results out (no project code needed).

Two wrappers of the functional net (input "image" float32 [B,H,W,3] 0..255 at the model size):

(a) `serving_function` - the SavedModel's `serving_default` (and the Keras predictor's graph):
      images uint8 [B, h, w, 3] RGB 0..255 of ANY size (dtype, rank and channels are checked in the
      graph: anything else fails with "images must be uint8 RGB [batch, height, width, 3]; received ...")
      -> bilinear resize to the model size -> net -> CenterNet decode (top-K, no NMS op)
      -> boxes float32 [B,K,4] x1,y1,x2,y2 in the INPUT's pixels, scores float32 [B,K],
         classes int32 [B,K], num_detections int32 [B] (scores >= export.score_threshold, the threshold
         predict and clip list and draw at; every K slot is returned either way),
         segmentation uint8 [B,h,w] class ids, depth float32 [B,h,w] metres.
    Segmentation is argmax at the model size, then resized NEAREST: the same rule the TFLite
    runtime has to use (its model emits class ids), so every format agrees pixel for pixel, and a
    uint8 map is 9x cheaper to resize than logits. Depth is resized bilinearly.
(b) `fixed_size_model` - a Keras functional model for the TFLite converter: a fixed [1,H,W,3] input
    and outputs boxes, scores, classes, segmentation (class ids), depth at the MODEL size. The
    runtime (pipeline/deploy/runtimes.py) resizes frames in and maps results back with `restore`.
    For full-integer models depth is emitted as `log_depth` instead: int8 quantises a tensor
    linearly, and 256 steps over 0.5..80 m are 0.3 m apart (a 6% error at 5 m), while 256 steps
    of log-depth are 2% apart at every distance. The runtime takes exp().
    Full-integer models also get `int8_friendly`: TFLite lowers softplus (the box-size head) to
    log(1 + exp(x)), whose exp() spans 0..e^x_max; one int8 scale over that range rounds every
    small value to 0 and log() then saturates (measured: all box sizes 0). The same function as
    relu(x) + log(1 + exp(-|x|)) keeps each intermediate in 0..1 / 1..2 / 0..0.7. (The current
    box-size head, models.detection.BoxSize, is exp of a clipped log size and needs no rewrite;
    models trained before it have the softplus head.)
    Full-integer models emit boxes as parts (`box_parts`): `box_cells` int32 (the peak's cell
    index), and over its 3x3 neighbourhood the peak class's score logits `box_logits` [1,K,9],
    `box_offsets` and `box_sizes` [1,K,9,2] in grid cells, each with its own scale; the runtime
    composes boxes with NumPy copies of models.detection_decode.refine and boxes_from_parts
    (pipeline/deploy/runtimes.py). Box arithmetic in int8 (and a uint8 box output, 1 px steps) cost
    10 mAP50 points; the head's own quantisation costs 0.3.

Only the tasks the net was built with appear in the outputs.
"""
from __future__ import annotations

import contextlib
import math

import keras
import tensorflow as tf

from models.detection_decode import NEIGHBOURS, decode_parts
from pipeline import trained

def restore(decoded: dict, model_size, height, width, score_threshold: float) -> dict:
    """Decoded results at the model size -> at the frame's (height, width); adds num_detections.

    TF ops so the SavedModel graph and the Keras/TFLite runtimes share one definition.
    """
    model_h, model_w = model_size
    out = {}
    if "boxes" in decoded:
        scale = tf.stack([tf.cast(width, tf.float32) / model_w, tf.cast(height, tf.float32) / model_h] * 2)
        out["boxes"] = tf.cast(decoded["boxes"], tf.float32) * scale
        out["scores"] = tf.cast(decoded["scores"], tf.float32)
        out["classes"] = tf.cast(decoded["classes"], tf.int32)
        out["num_detections"] = tf.reduce_sum(tf.cast(out["scores"] >= score_threshold, tf.int32), axis=1)
    size = tf.stack([height, width])
    if "segmentation" in decoded:
        seg = tf.image.resize(tf.cast(decoded["segmentation"], tf.int32)[..., None], size, method="nearest")
        out["segmentation"] = tf.cast(seg[..., 0], tf.uint8)
    if "depth" in decoded:
        depth = tf.image.resize(tf.cast(decoded["depth"], tf.float32)[..., None], size, method="bilinear")
        out["depth"] = depth[..., 0]
    return out


def resize_frames(images, model_size):
    """uint8 frames [B,h,w,3] -> float32 [B,H,W,3] 0..255 at the model size (bilinear, no antialias)."""
    images = tf.cast(images, tf.float32)
    return tf.image.resize(images, model_size, method="bilinear")


INPUT_CONTRACT = "images must be uint8 RGB [batch, height, width, 3] (0..255, any height and width)"


def checked_images(images):
    """`images` as uint8 [B,h,w,3], with the contract checked in the graph: a wrong dtype, rank or
    channel count fails with INPUT_CONTRACT and what was received, not with a shape error deep in
    the net. Takes a tensor of any dtype and shape (a traced signature per dtype)."""
    if images.dtype != tf.uint8:
        never = tf.equal(tf.size(images), -1)  # decided at run time: the other dtypes' graphs still trace
        with tf.control_dependencies([tf.debugging.Assert(never, [f"{INPUT_CONTRACT}; received dtype "
                                                                  f"{images.dtype.name}"])]):
            images = tf.cast(images, tf.uint8)
    shape = tf.shape(images)
    dims = tf.concat([shape, tf.ones([4], tf.int32)], 0)[:4]
    channels = tf.concat([[0], shape], 0)[-1]
    checks = [tf.debugging.Assert(tf.equal(tf.rank(images), 4), [f"{INPUT_CONTRACT}; received rank", tf.rank(images)]),
              tf.debugging.Assert(tf.equal(channels, 3), [f"{INPUT_CONTRACT}; received channels", channels])]
    with tf.control_dependencies(checks):
        # + 0 computed from the data: shape inference must not fold the target shape and fail on a
        # bad input before the checks above have run.
        zero = tf.reduce_sum(tf.cast(tf.reshape(images, [-1])[:0], tf.int32))
        return tf.reshape(images, tf.stack([dims[0], dims[1], dims[2], 3]) + zero)


def serving_function(net, top_k: int, score_threshold: float):
    """(a): a Python function images uint8 [B,h,w,3] -> dict, for ExportArchive / tf.function."""
    model_size = trained.input_size(net)

    def serve(images):
        images = checked_images(images)
        shape = tf.shape(images)
        outputs = net({"image": resize_frames(images, model_size)}, training=False)
        return restore(trained.decode(outputs, top_k), model_size, shape[1], shape[2], score_threshold)

    return serve


SERVING_SIGNATURE = tf.TensorSpec(None, tf.uint8, name="images")  # rank and channels: checked_images
# Traced as well, so that a float frame gets the contract's message instead of "no matching function".
CHECKED_DTYPES = (tf.float32,)


# --- (b) the fixed-size model for TFLite -------------------------------------------------------

class DecodeDetections(keras.layers.Layer):
    """[B,h,w,C+4] head output -> boxes, scores, classes (models.detection_decode.decode_detections)."""

    def __init__(self, top_k, box_parts=False, **kwargs):
        super().__init__(**kwargs)
        self.top_k = int(top_k)
        self.box_parts = bool(box_parts)

    def call(self, detection):
        if not isinstance(detection, (list, tuple)):  # the concatenated [B,h,w,C+4] output
            classes = detection.shape[-1] - 4
            detection = (detection[..., :classes], detection[..., classes:classes + 2], detection[..., classes + 2:])
        return decode_parts(*detection, self.top_k, box_parts=self.box_parts)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            batch, height, width, classes = input_shape[0]
        else:
            batch, height, width, channels = input_shape
            classes = channels - 4
        k = min(self.top_k, height * width * classes)
        if self.box_parts:
            n = len(NEIGHBOURS)
            return {"box_cells": (batch, k), "box_logits": (batch, k, n), "box_offsets": (batch, k, n, 2),
                    "box_sizes": (batch, k, n, 2), "scores": (batch, k), "classes": (batch, k)}
        return {"boxes": (batch, k, 4), "scores": (batch, k), "classes": (batch, k)}

    def get_config(self):
        return {**super().get_config(), "top_k": self.top_k, "box_parts": self.box_parts}


class ArgmaxClasses(keras.layers.Layer):
    """Logits [B,H,W,K] -> class ids int32 [B,H,W] (int32: TFLite's ARG_MAX output type)."""

    def call(self, logits):
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


class DepthMap(keras.layers.Layer):
    """[B,H,W,1] -> [B,H,W] metres, or log-metres (`log=True`) from the depth head's pre-activation."""

    def __init__(self, log=False, low=None, high=None, **kwargs):
        super().__init__(**kwargs)
        self.log, self.low, self.high = bool(log), low, high

    def call(self, x):
        # A reshape, not x[..., 0]: TFLite turns the slice into a STRIDED_SLICE that XNNPACK leaves to
        # TFLite's reference kernel, 0.3 ms per frame at 128x256 (measured by bench/op_profile.py).
        x = tf.reshape(tf.cast(x, tf.float32), [-1, *x.shape[1:3]])
        if not self.log:
            return x
        if self.low is not None:  # models.depth.LogDepth's own log-depth, never through exp
            return tf.clip_by_value(x + 0.5 * (self.low + self.high), self.low, self.high)
        return tf.math.log(tf.maximum(x, 1e-3))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


def stable_softplus(x):
    """softplus with bounded intermediates (int8-quantisable): relu(x) + log(1 + exp(-|x|)).

    -|x| is written x - 2 relu(x): TFLite's int8 quantiser leaves NEG in float.
    """
    positive = tf.nn.relu(x)
    return positive + tf.math.log(1.0 + tf.exp(x - 2.0 * positive))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # nested models (encoders, sub-models)
            yield from _all_layers(layer)


@contextlib.contextmanager
def int8_friendly(net):
    """Temporarily swaps softplus activations for stable_softplus (same values); yields the layer names.

    Layers read `self.activation` when called, so a graph traced inside the block (the TFLite
    export) uses the swap; the net itself is restored afterwards.
    """
    swapped = []
    for layer in _all_layers(net):
        activation = getattr(layer, "activation", None)
        if getattr(activation, "__name__", "") == "softplus":
            swapped.append((layer, activation))
            layer.activation = stable_softplus
    try:
        yield [layer.name for layer, _ in swapped]
    finally:
        for layer, activation in swapped:
            layer.activation = activation


def fixed_size_model(net, top_k: int, log_depth: bool = False, box_parts: bool = False) -> keras.Model:
    """(b): {"image": float32 [B,H,W,3] 0..255} -> boxes, scores, classes, segmentation, depth|log_depth."""
    outputs = dict(net.output) if isinstance(net.output, dict) else dict(zip(net.output_names, net.outputs))
    result = {}
    if "detection" in outputs:
        # Decode from the head's three tensors, not their concatenation, so that an int8 export
        # quantises logits, sizes and offsets each with its own scale.
        layer = _output_layer(net, "detection")
        parts = layer.input if isinstance(layer, keras.layers.Concatenate) else outputs["detection"]
        result.update(DecodeDetections(top_k, box_parts, name="decode")(parts))
    if "segmentation" in outputs:
        result["segmentation"] = ArgmaxClasses(name="argmax")(outputs["segmentation"])
    if "depth" in outputs:
        if log_depth:
            layer = _output_layer(net, "depth")
            if hasattr(layer, "min_depth") and hasattr(layer, "max_depth"):
                # models.depth.LogDepth: log d = clip(x + (log(min) + log(max)) / 2, log(min), log(max))
                head = DepthMap(True, math.log(layer.min_depth), math.log(layer.max_depth), name="log_depth_map")
                result["log_depth"] = head(layer.input)
            else:
                result["log_depth"] = DepthMap(True, name="log_depth_map")(outputs["depth"])
        else:
            result["depth"] = DepthMap(name="depth_map")(outputs["depth"])
    return keras.Model(net.input, result, name="fixed_size_inference")


def _output_layer(net, task):
    """The layer producing a task output (named after the task in models/)."""
    try:
        return net.get_layer(task)
    except ValueError:
        return None
