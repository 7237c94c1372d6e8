"""The export writers: SavedModel, TFLite float32/float16/int8, ONNX and a standard TFLite detector of the
trained net, with parity checks.

The export stage reads runs/<experiment>/train/model.keras and writes runs/<experiment>/export/:
  saved_model/          signature `serving_default`: images uint8 [B,h,w,3] of any size -> boxes,
                        scores, classes, num_detections, segmentation, depth at the input's resolution
                        (pipeline/deploy/serving.py (a)); plus a `metadata` endpoint (input_size, tasks, top_k,
                        score_threshold, detection_classes, segmentation_classes and their RGB
                        colours: the classes the model was trained with); README, "Serving contract"
  model_float32.tflite  fixed [1,H,W,3] input at the model size (pipeline/deploy/serving.py (b))
  model_float16.tflite  float16 weights (Optimize.DEFAULT + supported_types=[float16])
  model_int8.tflite     full-integer: int8 weights and activations, io per export.int8_io
  model.onnx            serving.py (b) with a dynamic batch, for ONNX Runtime (pipeline/deploy/onnx_export.py)
  model_detection.tflite  encoder + detection head + decoding in the standard 4-output detection
                        signature with TFLite metadata, for MediaPipe's ObjectDetector and LiteRT
                        tooling (pipeline/deploy/detector.py; `make check-mediapipe` proves it)
  parity.json           per format: metrics on validation frames, agreement with Keras, size,
                        latency, io dtypes and a verdict against the export.tolerance_* settings
                        (pipeline/deploy/parity.py)
  model_card.json/.md   classes, input, training data and budget, camera, metrics, formats
                        (pipeline/deploy/model_card.py)
  camera.json           the camera the model's depth assumes (pipeline/deploy/camera.py; --focal reads it)
Everything is written into a hidden temporary folder that replaces export/ only when complete, so a
failed export never leaves a half-written folder behind.

Why these APIs (Keras 3.15):
- SavedModel: keras.export.ExportArchive with a custom `serve` endpoint (Keras writes it as
  `serving_default`). `model.export(format="tf_saved_model")` can only serve the net's own input
  (float32 at the model size); the archive keeps Keras' variable tracking and export code while
  the endpoint takes uint8 frames of any size and resizes/decodes in graph. tf.saved_model.save
  was not needed.
- TFLite: `model.export(path, format="litert", **converter_options)` on the fixed-size Keras model.
  Keras 3.15 runs the TFLite converter on its own ExportArchive and passes converter attributes
  through, which is all we need (optimizations, target_spec, representative_dataset,
  inference_input/output_type). We set supported_ops ourselves: Keras' default adds SELECT_TF_OPS
  (Flex), which the LiteRT interpreter does not ship; builtins only keeps every file runnable.
- int8: TFLITE_BUILTINS_INT8 only. The whole graph, decoding included (sigmoid, 3x3 max-pool peak
  picking, TOPK_V2, GATHER, ARG_MAX), converts to int8 kernels; should a future model need a float
  op, the conversion retries with TFLITE_BUILTINS as fallback and parity.json lists the float ops.
  Depth leaves the int8 model as log-depth (see serving.py); the runtime exponentiates.
- Every TFLite file computes the decoders' concat -> 1x1 conv as a sum of 1x1 convs
  (pipeline/deploy/split_concat.py): int8 CONCATENATION shares one scale between a 0..6 feature and a
  +-30 skip: 40 % of the int8 depth drift (AbsRel 0.119 -> 0.110 against Keras' 0.097). The skip's
  own term is folded into the encoder's projection conv, so the decoders read the block's 0..6
  feature instead of the rounded +-30 tensor: the rest of the drift (lr 6e-3 model, 64 test
  frames: int8 AbsRel 0.124 -> 0.095 against Keras' 0.095).
- int8 io is int8 (export.int8_io): uint8 io adds QUANTIZE ops at both ends that XNNPACK leaves to
  TFLite's own kernels. Where the int8 file's time goes: `make bench`, section 4.
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from data.classes import DEFAULT, ClassSet
from data.errors import UserError
from pipeline import atomic, classes, layout, trained
from pipeline.config import Config
from pipeline.deploy import camera, detector, model_card, onnx_export, parity, serving, split_concat
from pipeline.inputs import dataset as inputs

TFLITE_FORMATS = ("tflite-float32", "tflite-float16", "tflite-int8")
FILES = {"saved_model": "saved_model", "tflite-float32": "model_float32.tflite",
         "tflite-float16": "model_float16.tflite", "tflite-int8": "model_int8.tflite", "onnx": "model.onnx",
         "tflite-detector": "model_detection.tflite"}


def write_saved_model(net, path: pathlib.Path, top_k: int, score_threshold: float,
                      class_set: ClassSet = DEFAULT) -> None:
    """serving.py (a) as `serving_default` (README, "Serving contract"), plus a `metadata` endpoint:
    input size, tasks, top_k, the score threshold and the class names and colours of `class_set`
    (the model's: its class ids index them)."""
    archive = keras.export.ExportArchive()
    archive.track(net)
    serve = tf.function(serving.serving_function(net, top_k, score_threshold))
    serve.get_concrete_function(serving.SERVING_SIGNATURE)  # the first traced: serving_default
    for dtype in serving.CHECKED_DTYPES:
        serve.get_concrete_function(tf.TensorSpec(None, dtype, name="images"))
    archive.add_endpoint("serve", serve)
    size, tasks = trained.input_size(net), trained.tasks(net)

    def metadata():
        return {"input_size": tf.constant(size, tf.int32), "tasks": tf.constant(tasks),
                "top_k": tf.constant(top_k, tf.int32),
                "score_threshold": tf.constant(score_threshold, tf.float32),
                "detection_classes": tf.constant(class_set.detection),
                "segmentation_classes": tf.constant(class_set.segmentation),
                "detection_colours": tf.constant(class_set.detection_colours, tf.uint8),
                "segmentation_colours": tf.constant(class_set.segmentation_colours, tf.uint8)}

    archive.add_endpoint("metadata", metadata, input_signature=[])
    archive.write_out(str(path), verbose=False)


def representative_frames(config: Config) -> list[np.ndarray]:
    """Augmented training frames [1,H,W,3] float32 for int8 calibration (the activations' ranges)."""
    dataset = inputs.make_dataset(parity.deterministic(config), "train", training=True, batch_size=1,
                                 crop=False)  # whole frames: what the exported model takes
    frames = [x["image"].numpy() for x, _ in dataset.take(config.export.representative_frames)]
    if not frames:
        raise UserError("no training frames for int8 calibration: run `make data` first")
    return frames


def _io_type(name: str):
    return {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[name]


def convert_tflite(net, path: pathlib.Path, kind: str, config: Config, frames=None) -> dict:
    """Writes one .tflite through Keras' LiteRT export; returns notes for parity.json."""
    int8 = kind == "tflite-int8"
    height, width = trained.input_size(net)
    signature = [{"image": tf.TensorSpec([1, height, width, 3], tf.float32, name="image")}]
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    options = {"target_spec": {"supported_ops": [builtins]}}
    notes = {"converter": "keras model.export(format='litert') -> tf.lite.TFLiteConverter"}
    if kind == "tflite-float16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "target_spec": {"supported_ops": [builtins], "supported_types": [tf.float16]}}
    elif int8:
        def representative():
            for frame in frames:
                yield {"image": frame}
        io_type = _io_type(config.export.int8_io)
        options = {"optimizations": [tf.lite.Optimize.DEFAULT], "representative_dataset": representative,
                   "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                   "inference_input_type": io_type, "inference_output_type": io_type}
        notes.update(representative_frames=len(frames), int8_io=config.export.int8_io,
                     supported_ops=["TFLITE_BUILTINS_INT8"], depth_output="log_depth (runtime takes exp)",
                     box_output="box_cells, and box_logits/box_offsets/box_sizes over each peak's "
                                "3x3 neighbourhood (runtime composes boxes)")
    with (serving.int8_friendly(net) if int8 else contextlib.nullcontext([])) as rewritten, \
            split_concat.split_concat_convs(net) as split, warnings.catch_warnings():
        # int8 calibration runs TF's own deprecated tf.lite.Interpreter internally; not ours to fix.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        model = serving.fixed_size_model(net, config.model.top_k, log_depth=int8, box_parts=int8)
        try:
            model.export(str(path), format="litert", input_signature=signature, verbose=False, **options)
        except Exception as err:  # noqa: BLE001  (the converter raises several types)
            if not int8:
                raise
            # An op without an int8 kernel: keep it float (TFLITE_BUILTINS) and say so.
            options["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, builtins]
            model.export(str(path), format="litert", input_signature=signature, verbose=False, **options)
            notes.update(supported_ops=["TFLITE_BUILTINS_INT8", "TFLITE_BUILTINS"],
                         fallback_reason=str(err).strip().splitlines()[-1][:300])
    if split:
        notes["concat_conv_split"] = {"convs": split, "as": "sum of 1x1 convs over the concatenated parts; "
                                            "a part that is a 1x1 projection + BatchNorm folded into one conv",
                                      "why": "int8 CONCATENATION forces one scale on all parts "
                                             "(see pipeline/deploy/split_concat.py)"}
    if rewritten:
        notes["softplus_rewritten"] = {"layers": rewritten, "as": "relu(x) + log(1 + exp(-|x|))",
                                       "why": "int8 log(1 + exp(x)) rounds to 0 (see pipeline/deploy/serving.py)"}
    if int8:
        notes["float_ops"] = float_ops(path)
    return notes


def float_ops(path: pathlib.Path) -> list[str]:
    """Ops of a .tflite that compute in float (their outputs are float32), CAST/DEQUANTIZE aside."""
    interpreter = Interpreter(model_path=str(path))
    tensors = interpreter.get_tensor_details()
    found = set()
    for op in interpreter._get_ops_details():  # noqa: SLF001  (the only listing of a model's ops)
        if op["op_name"] in ("CAST", "DEQUANTIZE", "QUANTIZE"):
            continue
        if any(np.dtype(tensors[i]["dtype"]) == np.float32 for i in op["outputs"] if i >= 0):
            found.add(op["op_name"])
    return sorted(found)


def run_export(config: Config, progress=print) -> tuple[pathlib.Path, dict]:
    """Writes the export folder; returns (folder, parity report). Parity failures are the caller's call."""
    model_path = layout.trained_model(config)
    net = trained.load(model_path)
    # The classes the model was trained with (its run's config); parity scores it on the config's
    # data set, so the config must name the same classes.
    class_set = classes.of_model(model_path, config)
    classes.check_net(net, class_set, model_path)
    classes.check_config(class_set, config, model_path, trained.tasks(net), "export")
    final = layout.export_dir(config)
    with atomic.staging_dir(final, "the export") as staging:
        paths = {"keras": model_path}
        start = time.perf_counter()
        write_saved_model(net, staging / FILES["saved_model"], config.model.top_k, config.export.score_threshold,
                          class_set)
        paths["saved_model"] = staging / FILES["saved_model"]
        progress(f"export: wrote saved_model/ ({time.perf_counter() - start:.1f} s)")
        frames = representative_frames(config)
        notes = {}
        for kind in TFLITE_FORMATS:
            start = time.perf_counter()
            path = staging / FILES[kind]
            notes[kind] = convert_tflite(net, path, kind, config, frames)
            paths[kind] = path
            progress(f"export: wrote {path.name} ({parity.size_bytes(path) / 1024:.0f} KB, "
                     f"{time.perf_counter() - start:.1f} s)")
        writers = {"onnx": lambda path: onnx_export.write_onnx(net, path, config.model.top_k)}
        if "detection" in trained.tasks(net):  # a net without a detection head has no detector
            writers["tflite-detector"] = lambda path: detector.write_detector(
                net, path, config.model.top_k, config.export.score_threshold, class_set.names("detection"))
        for kind, write in writers.items():
            start, path = time.perf_counter(), staging / FILES[kind]
            notes[kind] = write(path)
            paths[kind] = path
            progress(f"export: wrote {path.name} ({parity.size_bytes(path) / 1024:.0f} KB, "
                     f"{time.perf_counter() - start:.1f} s)")
        report = parity.check_parity(config, paths, progress)
        report["model"] = str(model_path)
        report["conversion"] = notes
        report["num_detections_threshold"] = config.export.score_threshold
        parity.write_report(report, staging / "parity.json")
        model_card.write(staging, config, report, class_set)
        camera_record = camera.read_beside(model_path)
        if camera_record:  # beside every exported file, for --focal (pipeline/deploy/camera.py)
            atomic.write_text(staging / camera.RECORD, json.dumps(camera_record, indent=1))
    return final, report
