"""`export` stage: SavedModel + TFLite float32/float16/int8 of the trained net, with parity checks.

`python -m pipeline export` reads runs/<experiment>/train/model.keras and writes runs/<experiment>/export/:
  saved_model/          signature `serving_default`: images uint8 [B,h,w,3] of any size -> boxes,
                        scores, classes, num_detections, segmentation, depth at the input's resolution
                        (pipeline/serving.py (a)); plus a `metadata` endpoint (input_size, tasks, top_k)
  model_float32.tflite  fixed [1,H,W,3] input at the model size (pipeline/serving.py (b))
  model_float16.tflite  float16 weights (Optimize.DEFAULT + supported_types=[float16])
  model_int8.tflite     full-integer: int8 weights and activations, io per export.int8_io
  parity.json           per format: metrics on validation frames, agreement with Keras, size,
                        latency, io dtypes and a verdict against the export.tolerance_* settings
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
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import time
import warnings

import numpy as np

from pipeline.config import Config
from pipeline.errors import ParityError, UserError
from pipeline.files import replace_dir

TFLITE_FORMATS = ("tflite-float32", "tflite-float16", "tflite-int8")
FORMATS = ("keras", "saved_model", *TFLITE_FORMATS)
FILES = {"saved_model": "saved_model", "tflite-float32": "model_float32.tflite",
         "tflite-float16": "model_float16.tflite", "tflite-int8": "model_int8.tflite"}
WARMUP_RUNS = 5
# Parity metrics and how a drift is measured: metric points (x100) for mAP50 / mIoU, raw AbsRel.
PARITY_METRICS = (("detection", "mAP50"), ("segmentation", "mIoU"), ("depth", "abs_rel"))


# ------------------------------------------------------------------------------------------ writing
def export_dir(config: Config) -> pathlib.Path:
    return config.run_dir / "export"


def model_path(config: Config) -> pathlib.Path:
    return config.run_dir / "train" / "model.keras"


def load_net(path: pathlib.Path):
    if not path.is_file():
        raise UserError(f"no trained model at {path}: run `make train` first")
    import keras

    import models  # noqa: F401  (registers the custom layers the saved model refers to)
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as err:  # noqa: BLE001  (a corrupt file is the user's, not a bug)
        raise UserError(f"cannot load the trained model {path}: {str(err).splitlines()[0] if str(err) else err!r}") \
            from None


def write_saved_model(net, path: pathlib.Path, top_k: int) -> None:
    """serving.py (a) as `serving_default`, plus a `metadata` endpoint runtimes read the input size from."""
    import keras
    import tensorflow as tf

    from pipeline import serving

    archive = keras.export.ExportArchive()
    archive.track(net)
    archive.add_endpoint("serve", serving.serving_function(net, top_k), input_signature=[serving.SERVING_SIGNATURE])
    size, tasks = serving.net_input_size(net), serving.net_tasks(net)

    def metadata():
        return {"input_size": tf.constant(size, tf.int32), "tasks": tf.constant(tasks),
                "top_k": tf.constant(top_k, tf.int32),
                "score_threshold": tf.constant(serving.SCORE_THRESHOLD, tf.float32)}

    archive.add_endpoint("metadata", metadata, input_signature=[])
    archive.write_out(str(path), verbose=False)


def _deterministic(config: Config) -> Config:
    """The config with a deterministic input pipeline: the same frames (and augmentations) every export,
    so int8 calibration ranges and parity numbers are reproducible."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, deterministic=True))


def representative_frames(config: Config) -> list[np.ndarray]:
    """Augmented training frames [1,H,W,3] float32 for int8 calibration (the activations' ranges)."""
    from pipeline import inputs

    dataset = inputs.make_dataset(_deterministic(config), "train", training=True, batch_size=1)
    frames = [x["image"].numpy() for x, _ in dataset.take(config.export.representative_frames)]
    if not frames:
        raise UserError("no training frames for int8 calibration: run `make data` first")
    return frames


def _io_type(name: str):
    import tensorflow as tf
    return {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[name]


def convert_tflite(net, path: pathlib.Path, kind: str, config: Config, frames=None) -> dict:
    """Writes one .tflite through Keras' LiteRT export; returns notes for parity.json."""
    import tensorflow as tf

    from pipeline import serving

    int8 = kind == "tflite-int8"
    height, width = serving.net_input_size(net)
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
                     box_output="box_cells/box_offsets/box_sizes (runtime composes boxes)")
    with (serving.int8_friendly(net) if int8 else contextlib.nullcontext([])) as rewritten, \
            warnings.catch_warnings():
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
    if rewritten:
        notes["softplus_rewritten"] = {"layers": rewritten, "as": "relu(x) + log(1 + exp(-|x|))",
                                       "why": "int8 log(1 + exp(x)) rounds to 0 (see pipeline/serving.py)"}
    if int8:
        notes["float_ops"] = float_ops(path)
    return notes


def float_ops(path: pathlib.Path) -> list[str]:
    """Ops of a .tflite that compute in float (their outputs are float32), CAST/DEQUANTIZE aside."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = interpreter.get_tensor_details()
    found = set()
    for op in interpreter._get_ops_details():  # noqa: SLF001  (the only listing of a model's ops)
        if op["op_name"] in ("CAST", "DEQUANTIZE", "QUANTIZE"):
            continue
        if any(np.dtype(tensors[i]["dtype"]) == np.float32 for i in op["outputs"] if i >= 0):
            found.add(op["op_name"])
    return sorted(found)


def size_bytes(path: pathlib.Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


# ------------------------------------------------------------------------------------------- parity
def parity_examples(config: Config) -> tuple[list[np.ndarray], list[dict]]:
    """config.export.parity_examples validation frames as uint8 batches with their labels."""
    from pipeline import inputs

    source = config.data.sources[0]
    dataset = inputs.make_dataset(_deterministic(config), config.evaluate.split, training=False, sources=[source])
    images, labels, seen = [], [], 0
    for x, y in dataset:
        count = min(int(x["image"].shape[0]), config.export.parity_examples - seen)
        if count <= 0:
            break
        images.append(np.clip(np.round(x["image"].numpy()[:count]), 0, 255).astype(np.uint8))
        labels.append({key: value.numpy()[:count] for key, value in y.items()})
        seen += count
    if not images:
        raise UserError(f"no '{config.evaluate.split}' frames for the parity check: run `make data` first")
    return images, labels


def run_predictor(predictor, images: list[np.ndarray]) -> dict:
    """Predictions over the parity batches, concatenated."""
    outputs = [predictor.predict(batch) for batch in images]
    return {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0] if key != "resized"}


def metrics_of(config: Config, tasks, labels: list[dict], pred: dict) -> dict:
    """mAP50 / mIoU / AbsRel exactly as the evaluate stage computes them (its evaluators and feeding)."""
    from pipeline.evaluate import add_batch, new_evaluators  # one definition of the metrics

    evaluators, counts, start = new_evaluators(config, list(tasks)), {}, 0
    for y in labels:
        count = len(y["key"])
        add_batch(evaluators, y, {k: v[start:start + count] for k, v in pred.items()}, start + 1, counts)
        start += count
    result = {}
    for task, metric in PARITY_METRICS:
        if task in evaluators:
            value = evaluators[task].result().get(metric) if counts.get(task) else None
            result[metric] = None if value is None else float(value)
    return result


def agreement(reference: dict, pred: dict) -> dict:
    """Element-wise agreement with the Keras outputs on the same frames."""
    from pipeline import serving
    from pipeline.metrics import box_iou

    result = {}
    if "segmentation" in reference:
        result["segmentation_same_class"] = float(np.mean(reference["segmentation"] == pred["segmentation"]))
    if "depth" in reference:
        ref = np.maximum(reference["depth"], 1e-6)
        result["depth_median_rel_diff"] = float(np.median(np.abs(pred["depth"] - ref) / ref))
    if "boxes" in reference:
        # Share of the reference's detections (score >= SCORE_THRESHOLD) found again: same class, IoU >= 0.5.
        wanted = found = 0
        for i in range(len(reference["boxes"])):
            keep = reference["scores"][i] >= serving.SCORE_THRESHOLD
            for box, cls in zip(reference["boxes"][i][keep], reference["classes"][i][keep]):
                wanted += 1
                same = pred["classes"][i] == cls
                found += bool(same.any() and box_iou(box[None], pred["boxes"][i][same]).max() >= 0.5)
        result["detections_matched"] = found / wanted if wanted else None
        result["reference_detections"] = wanted
        result["max_score_diff"] = float(np.max(np.abs(np.sort(reference["scores"], axis=1)
                                                       - np.sort(pred["scores"], axis=1))))
    return result


def latency(predictor, frame: np.ndarray, runs: int) -> dict:
    """Batch-1 predict() latency: median and p90 of `runs` timed calls after WARMUP_RUNS."""
    for _ in range(WARMUP_RUNS):
        predictor.predict(frame)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        predictor.predict(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "runs": len(times),
            "warmup_runs": WARMUP_RUNS, "batch_size": 1}


def tolerances(config: Config, fmt: str) -> dict:
    """Allowed |drift| vs Keras: metric points (x100) for mAP50/mIoU, AbsRel in its own units."""
    cfg = config.export
    if fmt == "tflite-int8":
        return {"mAP50": cfg.tolerance_int8, "mIoU": cfg.tolerance_int8, "abs_rel": cfg.tolerance_int8_abs_rel}
    # float formats: tolerance_float points on every metric, AbsRel included (0.5 points = 0.005)
    return {"mAP50": cfg.tolerance_float, "mIoU": cfg.tolerance_float, "abs_rel": cfg.tolerance_float / 100.0}


def verdict(config: Config, fmt: str, metrics: dict, reference: dict) -> tuple[dict, list[str]]:
    """Drift per metric (points for mAP50/mIoU) and the list of metrics beyond tolerance."""
    drift, failures = {}, []
    for metric, allowed in tolerances(config, fmt).items():
        ours, theirs = metrics.get(metric), reference.get(metric)
        if ours is None or theirs is None:
            continue
        value = abs(ours - theirs) * (1.0 if metric == "abs_rel" else 100.0)
        drift[metric] = value
        if value > allowed + 1e-9:
            failures.append(metric)
    return drift, failures


def check_parity(config: Config, paths: dict, progress=print) -> dict:
    """Every format on the same validation frames; the parity.json dict."""
    from pipeline import runtimes

    threads = os.cpu_count() or 1
    images, labels = parity_examples(config)
    frame = images[0][:1]
    report = {"examples": int(sum(len(b) for b in images)), "split": config.evaluate.split,
              "source": config.data.sources[0].name, "num_threads": threads,
              "tolerances": {fmt: tolerances(config, fmt) for fmt in FORMATS if fmt != "keras"},
              "drift_units": "mAP50 and mIoU in points (x100), abs_rel in its own units",
              "latency_measures": "predictor.predict() of one frame at the model size, pre/post-processing "
                                  "included, this machine's CPU", "formats": {}}
    reference_pred = reference_metrics = None
    for fmt in FORMATS:
        start = time.perf_counter()
        predictor = runtimes.load_predictor(paths[fmt], num_threads=threads, top_k=config.model.top_k)
        pred = run_predictor(predictor, images)
        metrics = metrics_of(config, predictor.tasks, labels, pred)
        entry = {"file": str(paths[fmt].name), "size_bytes": size_bytes(paths[fmt]), "metrics": metrics,
                 "io": predictor.describe(), "input_size": list(predictor.input_size)}
        if fmt == "keras":
            reference_pred, reference_metrics = pred, metrics
            entry.update(agreement=agreement(pred, pred), drift={}, verdict="reference", failures=[])
        else:
            drift, failures = verdict(config, fmt, metrics, reference_metrics)
            entry.update(agreement=agreement(reference_pred, pred), drift=drift,
                         verdict="fail" if failures else "pass", failures=failures)
        entry["latency"] = {**latency(predictor, frame, config.export.latency_runs),
                            "num_threads": threads if fmt.startswith("tflite") else _tf_threads()}
        report["formats"][fmt] = entry
        progress(f"export: checked {fmt:<15} {_summary(entry)} ({time.perf_counter() - start:.1f} s)")
        del predictor
    report["passed"] = all(e["verdict"] != "fail" for e in report["formats"].values())
    return report


def _tf_threads() -> int:
    import tensorflow as tf
    return tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1)


def _number(value, scale=1.0, digits=2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _summary(entry: dict) -> str:
    m = entry["metrics"]
    return (f"mAP50 {_number(m.get('mAP50'), 100, 1)}  mIoU {_number(m.get('mIoU'), 100, 1)}  "
            f"AbsRel {_number(m.get('abs_rel'), 1, 3)}  {entry['verdict']}")


def table(report: dict) -> str:
    header = (f"{'format':<15} {'size KB':>9} {'ms p50':>7} {'ms p90':>7} {'mAP50':>6} {'mIoU':>6} "
              f"{'AbsRel':>7} {'seg agree':>9} {'verdict':>9}")
    lines = [header, "-" * len(header)]
    for fmt, e in report["formats"].items():
        m, a = e["metrics"], e["agreement"]
        lines.append(f"{fmt:<15} {e['size_bytes'] / 1024:>9.1f} {e['latency']['median_ms']:>7.2f} "
                     f"{e['latency']['p90_ms']:>7.2f} {_number(m.get('mAP50'), 100, 1):>6} "
                     f"{_number(m.get('mIoU'), 100, 1):>6} {_number(m.get('abs_rel'), 1, 3):>7} "
                     f"{_number(a.get('segmentation_same_class'), 100, 1):>9} {e['verdict']:>9}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- stage
def run_export(config: Config, progress=print) -> tuple[pathlib.Path, dict]:
    """Writes the export folder; returns (folder, parity report). Parity failures are the caller's call."""
    trained = model_path(config)
    net = load_net(trained)
    final = export_dir(config)
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    except OSError as err:
        raise UserError(f"cannot write the export to {final.parent}: {err.strerror or err}") from None
    try:
        paths = {"keras": trained}
        start = time.perf_counter()
        write_saved_model(net, staging / FILES["saved_model"], config.model.top_k)
        paths["saved_model"] = staging / FILES["saved_model"]
        progress(f"export: wrote saved_model/ ({time.perf_counter() - start:.1f} s)")
        frames = representative_frames(config)
        notes = {}
        for kind in TFLITE_FORMATS:
            start = time.perf_counter()
            path = staging / FILES[kind]
            notes[kind] = convert_tflite(net, path, kind, config, frames)
            paths[kind] = path
            progress(f"export: wrote {path.name} ({size_bytes(path) / 1024:.0f} KB, "
                     f"{time.perf_counter() - start:.1f} s)")
        report = check_parity(config, paths, progress)
        report["model"] = str(trained)
        report["conversion"] = notes
        report["num_detections_threshold"] = _score_threshold()
        (staging / "parity.json").write_text(json.dumps(report, indent=1))
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, report


def _score_threshold() -> float:
    from pipeline import serving
    return serving.SCORE_THRESHOLD


def main(config: Config, args=None) -> pathlib.Path:
    out, report = run_export(config)
    print(table(report))
    print(f"export: wrote {out}")
    failed = [(fmt, e["failures"], e["drift"]) for fmt, e in report["formats"].items() if e["verdict"] == "fail"]
    if failed:
        fmt, metrics, drift = failed[0]
        allowed = tolerances(config, fmt)
        detail = ", ".join(f"{m} drifts {drift[m]:.3g}{'' if m == 'abs_rel' else ' points'} (allowed {allowed[m]:g})"
                           for m in metrics)
        more = f"; {len(failed) - 1} more format(s) fail too" if len(failed) > 1 else ""
        raise ParityError(f"{fmt} is beyond the parity tolerance vs Keras: {detail}{more}; "
                        f"the export is kept, see {out / 'parity.json'}")
    return out
