"""One predictor interface for every model format: .keras, SavedModel folder, .tflite (LiteRT), .onnx
(ONNX Runtime, pipeline/deploy/onnx_predictor.py).

    predictor = load_predictor("runs/tiny/export/model_int8.tflite", num_threads=2)
    out = predictor.predict(frames)   # uint8 [B,H,W,3] RGB, any H,W (the same within a batch)

`out` holds, for the tasks the model has: boxes float32 [B,K,4] (x1,y1,x2,y2, input pixels), scores
float32 [B,K], classes int32 [B,K], num_detections int32 [B] (scores >= predictor.score_threshold),
segmentation uint8 [B,H,W], depth float32 [B,H,W] metres, all at the input's resolution; plus
"resized": True when the frames were resized to the model's fixed input size.

`predictor.classes` (data/classes.py ClassSet) names the class ids, as the model file says them: the
training config beside a .keras file, a SavedModel's metadata, the model card beside a .tflite file;
None when nothing says them (the caller then uses its config's classes).

`predictor.score_threshold` is the one threshold detections are counted, listed and drawn at: the
caller's (export.score_threshold), except for a SavedModel, whose own (baked into its graph and
metadata at export) wins, so that num_detections and the listed boxes always agree.

Every format shares pipeline/deploy/serving.py's resize/decode/restore definitions, so formats differ only
by what the format itself changes (float16 weights, int8 arithmetic). The predict, export (parity),
clip and bench stages all go through here.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow as tf
import yaml

from data import classes as class_sets
from data.classes import ClassSet
from data.errors import UserError
from data.vocabulary import SCORE_THRESHOLD, STRIDE
from models.detection_decode import NEIGHBOURS, PEAK, REFINE_POWER
from pipeline import classes as model_classes
from pipeline import trained
from pipeline.config import ModelConfig
from pipeline.deploy import serving

FORMATS = ("keras", "saved_model", "tflite-float32", "tflite-float16", "tflite-int8", "onnx", "tflite-detector")
# model_detection.tflite (pipeline/deploy/detector.py): detection only, in the standard 4-output signature
# MediaPipe and LiteRT tooling read; its signature names, in the file's output order:
STANDARD_DETECTION = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")


class Predictor:
    """Base: `name`, `input_size` (H, W) the model sees, `tasks`, `classes`, `path`, `num_threads`,
    `score_threshold`."""

    name: str = ""
    input_size: tuple[int, int] = (0, 0)
    tasks: list[str] = []
    classes: ClassSet | None = None

    def __init__(self, path: pathlib.Path, num_threads: int | None, score_threshold: float | None = None):
        self.path = pathlib.Path(path)
        self.num_threads = num_threads
        self.score_threshold = float(SCORE_THRESHOLD if score_threshold is None else score_threshold)

    def predict(self, images: np.ndarray) -> dict:
        images = _check_frames(images)
        out = self._predict(images)
        out["resized"] = tuple(images.shape[1:3]) != tuple(self.input_size)
        return out

    def _predict(self, images: np.ndarray) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        """Input/output names and dtypes as the format stores them (for parity.json and reports)."""
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.path} input_size={self.input_size} tasks={self.tasks}>"


def _check_frames(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        raise ValueError(f"predict() takes a batch [B,H,W,3]; add a batch axis. Received: shape={images.shape}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or 0 in images.shape:
        raise ValueError(f"predict() takes uint8 RGB frames [B,H,W,3]. Received: shape={images.shape}, "
                         f"dtype={images.dtype}")
    return np.ascontiguousarray(images)


def _numpy(outputs: dict) -> dict:
    return {key: np.asarray(value) for key, value in outputs.items()}


def tasks_from_outputs(names) -> list[str]:
    names = set(names)
    tasks = []
    if "boxes" in names or "box_sizes" in names or STANDARD_DETECTION[0] in names:
        tasks.append("detection")
    if "segmentation" in names:
        tasks.append("segmentation")
    if "depth" in names or "log_depth" in names:
        tasks.append("depth")
    return tasks


def _set_tf_threads(num_threads: int | None) -> None:
    """TF's thread pools can only be sized before the runtime starts; later calls are a no-op."""
    if not num_threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(num_threads))
        tf.config.threading.set_inter_op_parallelism_threads(min(2, int(num_threads)))
    except RuntimeError:
        pass  # TF already initialised: it keeps the thread count it started with


def _top_k_beside(path: pathlib.Path) -> int:
    """top_k of the training config written next to model.keras by the train stage, if any."""
    config = path.parent / "config.yaml"
    try:
        return int(yaml.safe_load(config.read_text())["model"]["top_k"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return ModelConfig().top_k  # a .keras file without its training config beside it


class KerasPredictor(Predictor):
    """A .keras functional net wrapped in serving.serving_function (the same graph as the SavedModel)."""

    name = "keras"

    def __init__(self, path, num_threads=None, top_k: int | None = None, score_threshold: float | None = None):
        super().__init__(path, num_threads, score_threshold)
        _set_tf_threads(num_threads)
        self.net = trained.load(path)
        self.top_k = int(top_k or _top_k_beside(self.path))
        self.input_size = trained.input_size(self.net)
        self.tasks = trained.tasks(self.net)
        self.classes = model_classes.saved_beside(self.path)
        if self.classes is not None:
            model_classes.check_net(self.net, self.classes, self.path)
        self._serve = tf.function(serving.serving_function(self.net, self.top_k, self.score_threshold),
                                  input_signature=[serving.SERVING_SIGNATURE])

    def _predict(self, images):
        return _numpy(self._serve(images))

    def describe(self):
        def text(tensor):
            return f"{tensor.dtype} {[d if d is not None else 'B' for d in tensor.shape]}"
        inputs = self.net.input if isinstance(self.net.input, dict) else {"image": self.net.inputs[0]}
        outputs = self.net.output if isinstance(self.net.output, dict) else dict(zip(self.net.output_names,
                                                                                     self.net.outputs))
        return {"inputs": {name: text(t) + " 0..255 (uint8 frames are cast and resized in graph)"
                           for name, t in inputs.items()},
                "outputs": {name: text(t) for name, t in outputs.items()}}


class SavedModelPredictor(Predictor):
    """A SavedModel folder written by the export stage: its `serving_default` signature does it all."""

    name = "saved_model"

    def __init__(self, path, num_threads=None, score_threshold: float | None = None):
        super().__init__(path, num_threads, score_threshold)
        _set_tf_threads(num_threads)
        self._loaded = tf.saved_model.load(str(path))
        if "serving_default" not in self._loaded.signatures:
            raise UserError(f"{path} has no 'serving_default' signature; export it with `make export`")
        self._fn = self._loaded.signatures["serving_default"]
        _, kwargs = self._fn.structured_input_signature
        if len(kwargs) != 1:
            raise UserError(f"{path}: expected one image input, found {sorted(kwargs)}")
        (self._input_name, spec), = kwargs.items()
        self._input_dtype = spec.dtype
        self.tasks = tasks_from_outputs(self._fn.structured_outputs)
        self.input_size = (0, 0)
        if hasattr(self._loaded, "metadata"):  # our export's extra endpoint
            meta = self._loaded.metadata()
            self.input_size = tuple(int(v) for v in np.asarray(meta["input_size"]))
            if "score_threshold" in meta:  # the threshold its num_detections was built with
                self.score_threshold = float(np.asarray(meta["score_threshold"]))
            self.classes = _metadata_classes(meta)

    def _predict(self, images):
        outputs = self._fn(**{self._input_name: tf.constant(images, dtype=self._input_dtype)})
        return _numpy(outputs)

    def describe(self):
        _, kwargs = self._fn.structured_input_signature
        return {"inputs": {k: f"{v.dtype.name} {v.shape}" for k, v in kwargs.items()},
                "outputs": {k: f"{v.dtype.name} {v.shape}" for k, v in self._fn.structured_outputs.items()}}


class TFLitePredictor(Predictor):
    """A .tflite file in the LiteRT interpreter: fixed [1,H,W,3] input, results at the model size.

    Frames are resized to the model size (serving.resize_frames), quantised when the input is
    integer, run one at a time (the file has batch 1: static shapes keep TFLite's kernels simple),
    then outputs are dequantised and mapped back to the frame (serving.restore). A `log_depth`
    output (int8 models, see serving.py) is turned back into metres.
    """

    def __init__(self, path, num_threads=None, score_threshold: float | None = None):
        super().__init__(path, num_threads, score_threshold)
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise UserError(f"{path} has no signature; export it with `make export`")
        self._runner = self.interpreter.get_signature_runner(next(iter(signatures)))
        inputs = self._runner.get_input_details()
        if len(inputs) != 1:
            raise UserError(f"{path}: expected one image input, found {sorted(inputs)}")
        (self._input_name, self._input), = inputs.items()
        self._outputs = self._runner.get_output_details()
        shape = self._input["shape"]
        if len(shape) != 4 or shape[-1] != 3:
            raise UserError(f"{path}: input must be [1,H,W,3]; it is {list(shape)}")
        self.input_size = (int(shape[1]), int(shape[2]))
        self.tasks = tasks_from_outputs(self._outputs)
        self.name = "tflite-detector" if STANDARD_DETECTION[0] in self._outputs else "tflite-" + self._precision()
        self.classes = card_classes(self.path.parent / "model_card.json")
        self._depth_table = self._log_depth_table()

    def _log_depth_table(self) -> np.ndarray | None:
        """Metres for each of the 256 codes of an 8-bit quantised `log_depth` output (int8 or uint8
        io), indexed by the code's byte: exp of the dequantised value, computed as _dequantise and
        np.exp compute it. One lookup per pixel instead of a dequantise and an exp (predict() of a
        192x384 frame 6.50 -> 6.21 ms, timed alone)."""
        details = self._outputs.get("log_depth")
        if details is None or np.dtype(details["dtype"]) not in (np.int8, np.uint8) or not details["quantization"][0]:
            return None
        codes = np.arange(256, dtype=np.uint8).view(details["dtype"])  # byte b -> the code it holds
        return np.exp(self._dequantise("log_depth", codes).astype(np.float32))

    def _precision(self) -> str:
        dtypes = {np.dtype(t["dtype"]) for t in self.interpreter.get_tensor_details()}
        if np.dtype(np.int8) in dtypes or np.dtype(self._input["dtype"]) in (np.uint8, np.int8):
            return "int8"
        if np.dtype(np.float16) in dtypes:
            return "float16"
        return "float32"

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._input["dtype"])
        scale, zero = self._input["quantization"]
        if dtype.kind == "f":
            return x.astype(dtype)
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)

    def _model_input(self, frame: np.ndarray, same_size: bool) -> np.ndarray:
        """One uint8 frame [1,H,W,3] as the file's input. An int8 file calibrated on 0..255 pixels takes
        them at scale 1 (zero point 0 for uint8, -128 for int8): the pixels themselves, or with the top
        bit flipped (v - 128 as int8), the same values _quantise computes without a float round trip."""
        dtype = np.dtype(self._input["dtype"])
        scale, zero = self._input["quantization"]
        if same_size and scale == 1.0 and (dtype, zero) in ((np.dtype(np.uint8), 0), (np.dtype(np.int8), -128)):
            return frame if dtype == np.uint8 else (frame ^ np.uint8(0x80)).view(np.int8)
        x = frame.astype(np.float32) if same_size else serving.resize_frames(frame, self.input_size).numpy()
        return self._quantise(x)

    def _dequantise(self, name: str, value: np.ndarray) -> np.ndarray:
        scale, zero = self._outputs[name]["quantization"]
        if scale and np.dtype(value.dtype).kind in "iu" and name not in ("classes", "segmentation", "box_cells"):
            return (value.astype(np.float32) - zero) * np.float32(scale)
        return value

    def _predict(self, images):
        height, width = images.shape[1:3]
        same = (height, width) == self.input_size
        per_frame = []
        for frame in images:
            raw = self._runner(**{self._input_name: self._model_input(frame[None], same)})
            outputs = {name: np.asarray(value) for name, value in raw.items()}
            if self._depth_table is not None:  # 8-bit log-depth codes -> metres, by their byte
                outputs["depth"] = self._depth_table[outputs.pop("log_depth").view(np.uint8)]
            per_frame.append({name: value if name == "depth" else self._dequantise(name, value)
                              for name, value in outputs.items()})
        decoded = {name: np.concatenate([f[name] for f in per_frame]) for name in per_frame[0]}
        if "log_depth" in decoded:
            decoded["depth"] = np.exp(decoded.pop("log_depth").astype(np.float32))
        if "box_cells" in decoded:  # int8 models: boxes as parts
            decoded = boxes_of_parts(decoded, self.input_size)
        if STANDARD_DETECTION[0] in decoded:  # model_detection.tflite (pipeline/deploy/detector.py)
            decoded = _from_standard_detection(decoded, self.input_size)
        return at_frame_size(decoded, self.input_size, height, width, self.score_threshold)

    def describe(self):
        def text(details):
            scale, zero = details["quantization"]
            dtype = np.dtype(details["dtype"]).name
            quantised = f" (scale {scale:.6g}, zero point {zero})" if scale else ""
            return f"{dtype} {[int(v) for v in details['shape']]}{quantised}"
        return {"inputs": {self._input_name: text(self._input)},
                "outputs": {name: text(d) for name, d in self._outputs.items()}}


def _texts(tensor) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(tensor).reshape(-1)]


def _metadata_classes(meta: dict) -> ClassSet | None:
    """The class names (and colours, when exported with them) of a SavedModel's metadata endpoint."""
    if "detection_classes" not in meta or "segmentation_classes" not in meta:
        return None
    found = class_sets.from_names(_texts(meta["detection_classes"]), _texts(meta["segmentation_classes"]))
    if "detection_colours" in meta and "segmentation_colours" in meta:
        found = found._replace(detection_colours=np.asarray(meta["detection_colours"], np.uint8).reshape(-1, 3),
                               segmentation_colours=np.asarray(meta["segmentation_colours"], np.uint8).reshape(-1, 3))
    return found


def card_classes(card_path: pathlib.Path) -> ClassSet | None:
    """The classes of the model card the export stage writes beside its .tflite files."""
    try:
        card = json.loads(card_path.read_text())
        names, colours = card["classes"], card.get("class_colours") or {}
        found = class_sets.from_names(names.get("detection"), names.get("segmentation"))
        for task in ("detection", "segmentation"):
            if task in colours and len(colours[task]) == len(found.names(task)):
                found = found._replace(**{f"{task}_colours": np.array(colours[task], np.uint8).reshape(-1, 3)})
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def at_frame_size(decoded: dict, input_size, height: int, width: int, score_threshold: float) -> dict:
    """Decoded NumPy results at the model size -> predict()'s result for (height, width) frames.

    Shared by the fixed-size runtimes (LiteRT here, ONNX Runtime in onnx_predictor.py)."""
    if "segmentation" in decoded:
        decoded["segmentation"] = decoded["segmentation"].astype(np.uint8)
    if (height, width) == tuple(input_size):  # nothing to map back: skip TF's eager ops (they cost
        return _at_model_size(decoded, score_threshold)  # more than a tiny model's invoke)
    return _numpy(serving.restore(decoded, input_size, tf.constant(height), tf.constant(width), score_threshold))


def _from_standard_detection(decoded: dict, input_size) -> dict:
    """The standard detection signature (normalised ymin, xmin, ymax, xmax; float classes) -> ours."""
    height, width = input_size
    locations, classes, scores, _ = (decoded.pop(name) for name in STANDARD_DETECTION)
    # num_detections (the last) is recounted at the caller's threshold, as for every format
    scale = np.array([width, height, width, height], np.float32)
    return {**decoded, "boxes": locations.astype(np.float32)[..., [1, 0, 3, 2]] * scale,
            "classes": np.round(classes).astype(np.int32), "scores": scores.astype(np.float32)}


def boxes_of_parts(decoded: dict, input_size) -> dict:
    """An int8 model's outputs with its box parts (box_cells, box_offsets, box_sizes and, since the
    neighbourhood decoding, box_logits) replaced by `boxes` [B,K,4] px."""
    decoded = dict(decoded)
    cells, offsets, sizes = (decoded.pop(name) for name in ("box_cells", "box_offsets", "box_sizes"))
    if "box_logits" in decoded:  # each peak's 3x3 neighbourhood (models.detection_decode.refine)
        offsets, sizes = refined_parts(decoded.pop("box_logits"), offsets, sizes)
    # else a file exported before: the peak cell's own offset and size [B,K,2]
    decoded["boxes"] = _boxes_from_parts(cells, offsets, sizes, input_size)
    return decoded


def refined_parts(logits, offsets, sizes) -> tuple[np.ndarray, np.ndarray]:
    """models.detection_decode.refine in NumPy: [B,K,9] logits, [B,K,9,2] offsets and sizes -> each
    peak's offset and size [B,K,2]."""
    weights = (0.5 + 0.5 * np.tanh(0.5 * logits.astype(np.float32))) ** REFINE_POWER  # sigmoid, no overflow
    weights[..., PEAK] += 1e-12
    weights = (weights / weights.sum(axis=-1, keepdims=True))[..., None]
    centres = offsets.astype(np.float32) + np.asarray(NEIGHBOURS, np.float32)
    log_sizes = np.log(np.maximum(sizes.astype(np.float32), 1e-6))
    return (weights * centres).sum(axis=-2), np.exp((weights * log_sizes).sum(axis=-2))


def _boxes_from_parts(cells, offsets, sizes, input_size) -> np.ndarray:
    """models.detection_decode.boxes_from_parts in NumPy (TF's eager ops cost more than the invoke)."""
    height, width = input_size[0] // STRIDE, input_size[1] // STRIDE
    offsets, sizes = offsets.astype(np.float32), sizes.astype(np.float32)
    cx = ((cells % width).astype(np.float32) + offsets[..., 0]) * STRIDE
    cy = ((cells // width).astype(np.float32) + offsets[..., 1]) * STRIDE
    half_w, half_h = sizes[..., 0] * STRIDE / 2.0, sizes[..., 1] * STRIDE / 2.0
    max_x, max_y = float(width * STRIDE), float(height * STRIDE)
    return np.stack([np.clip(cx - half_w, 0.0, max_x), np.clip(cy - half_h, 0.0, max_y),
                     np.clip(cx + half_w, 0.0, max_x), np.clip(cy + half_h, 0.0, max_y)], axis=-1)


def _at_model_size(decoded: dict, score_threshold: float) -> dict:
    """serving.restore's result when the frame already has the model size, in NumPy."""
    out = {}
    if "boxes" in decoded:
        out["boxes"] = decoded["boxes"].astype(np.float32)
        out["scores"] = decoded["scores"].astype(np.float32)
        out["classes"] = decoded["classes"].astype(np.int32)
        out["num_detections"] = np.sum(out["scores"] >= score_threshold, axis=1).astype(np.int32)
    if "segmentation" in decoded:
        out["segmentation"] = decoded["segmentation"].astype(np.uint8)
    if "depth" in decoded:
        out["depth"] = decoded["depth"].astype(np.float32)
    return out


def _sniff(path: pathlib.Path) -> str | None:
    """The format of a file by its first bytes: TFLite flatbuffers say 'TFL3' at 4..8, .keras is a zip."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:2] == b"PK":
        return "keras"
    return None


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def load_predictor(path, num_threads: int | None = None, top_k: int | None = None,
                   score_threshold: float | None = None) -> Predictor:
    """A Predictor for a .keras file, a SavedModel folder, a .tflite or an .onnx file; UserError on a bad one.

    `top_k` matters for .keras only (the other formats have it baked in); default: the training
    config beside the file, else ModelConfig's default. `score_threshold`: export.score_threshold
    (a SavedModel keeps its own, see above).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"model not found: {path}")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise UserError(f"{path} is a folder but not a SavedModel (no saved_model.pb in it)")
        kind = "saved_model"
    elif path.suffix == ".tflite":
        kind = "tflite"
    elif path.suffix == ".keras":
        kind = "keras"
    elif path.suffix == ".onnx":
        kind = "onnx"
    else:
        kind = _sniff(path)
        if kind is None:
            raise UserError(f"unknown model format: {path} (expected a .keras file, a SavedModel folder, "
                            f"a .tflite or an .onnx file)")
    try:
        if kind == "saved_model":
            return SavedModelPredictor(path, num_threads, score_threshold)
        if kind == "tflite":
            return TFLitePredictor(path, num_threads, score_threshold)
        if kind == "onnx":
            from pipeline.deploy.onnx_predictor import OnnxPredictor  # here: it imports this module

            return OnnxPredictor(path, num_threads, score_threshold)
        return KerasPredictor(path, num_threads, top_k, score_threshold)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  (any loader failure on a user's file is a bad file)
        raise UserError(f"cannot load {kind} model {path}: {_one_line(err)}") from None
