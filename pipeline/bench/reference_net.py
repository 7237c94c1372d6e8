"""The bench's int8 yardstick: a standard MobileNetV2 as float32 and full-integer int8 TFLite files.

How much int8 gains over float32 depends on the CPU (VNNI or not) and on the runtime's kernels as
much as on our model, so section 4 times this reference in the same run, on the same runtime and
thread count: our int8/float32 ratio is read against what the runtime reaches on a standard
int8-friendly net. Random weights are enough (speed does not depend on them) and keep the bench
offline; the int8 file is calibrated on random images, full-integer (TFLITE_BUILTINS_INT8, int8 in and
out), as the TFLite converter's documentation does it.
"""
from __future__ import annotations

import pathlib

import numpy as np

NAME = "mobilenet_v2"


def build(size: int = 224, alpha: float = 1.0):
    """keras.applications.MobileNetV2 (with its 1000-class top) at size x size, random weights."""
    import keras
    return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None)


def export(folder: pathlib.Path, size: int = 224, alpha: float = 1.0, calibration: int = 8,
           seed: int = 0, model=None) -> dict[str, pathlib.Path]:
    """Writes <folder>/mobilenet_v2_float32.tflite and _int8.tflite; returns {"float32": path, "int8": path}.

    `model` (a Keras model taking [1, size, size, 3] in [-1, 1]) replaces MobileNetV2, for tests."""
    import tensorflow as tf

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build(size, alpha) if model is None else model
    signature = [tf.TensorSpec([1, size, size, 3], tf.float32)]
    paths = {"float32": folder / f"{NAME}_float32.tflite", "int8": folder / f"{NAME}_int8.tflite"}
    builtins = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
    model.export(str(paths["float32"]), format="litert", input_signature=signature, verbose=False,
                 target_spec=builtins)
    rng = np.random.default_rng(seed)

    def representative():  # MobileNetV2's own input range, [-1, 1]
        for _ in range(calibration):
            yield [rng.uniform(-1.0, 1.0, (1, size, size, 3)).astype(np.float32)]

    model.export(str(paths["int8"]), format="litert", input_signature=signature, verbose=False,
                 optimizations=[tf.lite.Optimize.DEFAULT], representative_dataset=representative,
                 target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                 inference_input_type=tf.int8, inference_output_type=tf.int8)
    return paths


def describe(size: int, alpha: float) -> str:
    return (f"keras.applications.MobileNetV2 (alpha {alpha:g}, {size}x{size}, random weights), float32 and "
            f"full-integer int8 (int8 in/out, calibrated on random images)")
