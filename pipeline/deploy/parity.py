"""The parity check: every exported format against the Keras model on the same validation frames.

parity.json per format: metrics (mAP50 / mIoU / AbsRel exactly as the evaluate stage computes them),
element-wise agreement with Keras, size, batch-1 latency, io dtypes and a verdict against the
export.tolerance_* settings. A format beyond tolerance is a ParityError after everything is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import numpy as np
import tensorflow as tf

from data.errors import UserError
from data.vocabulary import SCORE_THRESHOLD
from pipeline import timing
from pipeline.config import Config
from pipeline.deploy import runtimes
from pipeline.evaluation.evaluate import HEADLINE_METRICS, add_batch, new_evaluators  # one definition of the metrics
from pipeline.evaluation.metrics import box_iou
from pipeline.inputs import dataset as inputs

FORMATS = runtimes.FORMATS
WARMUP_RUNS = 5
# Parity metrics (mAP50 / mIoU / AbsRel); a drift is measured in metric points (x100) for mAP50 and
# mIoU, raw for AbsRel.
PARITY_METRICS = tuple(HEADLINE_METRICS.items())


class ParityError(UserError):
    """An export that was written completely but drifts from the Keras model beyond tolerance."""


def deterministic(config: Config) -> Config:
    """The config with a deterministic input pipeline: the same frames (and augmentations) every export,
    so int8 calibration ranges and parity numbers are reproducible."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, deterministic=True))


def size_bytes(path: pathlib.Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def parity_examples(config: Config) -> tuple[list[np.ndarray], list[dict]]:
    """config.export.parity_examples frames of evaluate.split as uint8 batches with their labels."""
    source = config.data.sources[0]
    dataset = inputs.make_dataset(deterministic(config), config.evaluate.split, training=False, sources=[source])
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


def agreement(reference: dict, pred: dict, score_threshold: float = SCORE_THRESHOLD) -> dict:
    """Element-wise agreement with the Keras outputs on the same frames."""
    result = {}
    if "segmentation" in reference and "segmentation" in pred:  # (the detector has detection only)
        result["segmentation_same_class"] = float(np.mean(reference["segmentation"] == pred["segmentation"]))
    if "depth" in reference and "depth" in pred:
        ref = np.maximum(reference["depth"], 1e-6)
        result["depth_median_rel_diff"] = float(np.median(np.abs(pred["depth"] - ref) / ref))
    if "boxes" in reference:
        # Share of the reference's detections (score >= score_threshold) found again: same class, IoU >= 0.5.
        wanted = found = 0
        for i in range(len(reference["boxes"])):
            keep = reference["scores"][i] >= score_threshold
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
    times = timing.timed_ms(lambda: predictor.predict(frame), max(1, runs), warmup=WARMUP_RUNS)
    return {**timing.median_p90(times), "runs": len(times), "warmup_runs": WARMUP_RUNS, "batch_size": 1}


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
    for fmt in (f for f in FORMATS if f in paths):  # the detector only when the net detects
        start = time.perf_counter()
        predictor = runtimes.load_predictor(paths[fmt], num_threads=threads, top_k=config.model.top_k,
                                            score_threshold=config.export.score_threshold)
        pred = run_predictor(predictor, images)
        metrics = metrics_of(config, predictor.tasks, labels, pred)
        entry = {"file": str(paths[fmt].name), "size_bytes": size_bytes(paths[fmt]), "metrics": metrics,
                 "io": predictor.describe(), "input_size": list(predictor.input_size)}
        if fmt == "keras":
            reference_pred, reference_metrics = pred, metrics
            entry.update(agreement=agreement(pred, pred, config.export.score_threshold), drift={}, verdict="reference", failures=[])
        else:
            drift, failures = verdict(config, fmt, metrics, reference_metrics)
            entry.update(agreement=agreement(reference_pred, pred, config.export.score_threshold), drift=drift,
                         verdict="fail" if failures else "pass", failures=failures)
        entry["latency"] = {**latency(predictor, frame, config.export.latency_runs),
                            "num_threads": threads if fmt.startswith("tflite") or fmt == "onnx" else _tf_threads()}
        report["formats"][fmt] = entry
        progress(f"export: checked {fmt:<15} {_summary(entry)} ({time.perf_counter() - start:.1f} s)")
        del predictor
    report["passed"] = all(e["verdict"] != "fail" for e in report["formats"].values())
    return report


def _tf_threads() -> int:
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


def write_report(report: dict, path: pathlib.Path) -> None:
    path.write_text(json.dumps(report, indent=1))


def check_verdict(config: Config, report: dict, out: pathlib.Path) -> None:
    """ParityError naming the first format beyond tolerance (the export itself is kept)."""
    failed = [(fmt, e["failures"], e["drift"]) for fmt, e in report["formats"].items() if e["verdict"] == "fail"]
    if failed:
        fmt, metrics, drift = failed[0]
        allowed = tolerances(config, fmt)
        detail = ", ".join(f"{m} drifts {drift[m]:.3g}{'' if m == 'abs_rel' else ' points'} (allowed {allowed[m]:g})"
                           for m in metrics)
        more = f"; {len(failed) - 1} more format(s) fail too" if len(failed) > 1 else ""
        raise ParityError(f"{fmt} is beyond the parity tolerance vs Keras: {detail}{more}; "
                          f"the export is kept, see {out / 'parity.json'}")
