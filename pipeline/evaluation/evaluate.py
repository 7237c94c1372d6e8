"""Evaluation of a trained model on one split: metrics per source, the report folder's content.

The evaluate stage (`python -m pipeline evaluate [--model X.keras] [--split S]`) writes it.

Each configured source is evaluated on its own (a KITTI frame and a synthetic frame are not the same
test), and a task is scored only on examples whose `has_<task>` flag is set, so a source without
labels for a task reports it absent with a reason, never as zero.

Output folder (one per model and split, so evaluating another split never overwrites the default one):
  runs/<experiment>/eval/                       the run's own model on evaluate.split
  runs/<experiment>/eval-<split>/               the run's own model on another split
  runs/<experiment>/eval-<name>[-<split>]/      --model pointing at any other .keras file; <name> is
                                                its stem, or its folder's name for a "model.keras"
  ...-rescaled/                                 with evaluate.rescale_depth: true (pipeline/deploy/camera.py)
  ...-flip/                                     with evaluate.flip_test: true (pipeline/evaluation/flip_test.py)
  ...-up<x>[-rows<a>-<b>]/                      with evaluate.upscale_test: x > 1 [on evaluate.upscale_rows a-b]
                                                (pipeline/evaluation/upscale_test.py)
It is written into a hidden temporary folder and renamed at the end, so an interrupted evaluation
never leaves a half-written eval folder behind.

Detections: the decoder always returns top_k slots, most of them near-zero filler on a frame with a
few objects. Slots with score <= trained.METRIC_SCORE_FLOOR are dropped before COCO evaluation: they sit at the
bottom of the ranking, so they change AP by less than COCO's 101-point recall grid resolves, and
dropping them keeps the evaluator small. COCO keeps at most 100 detections per image (top_k <= 100).
The detection result also says what its AP would be with one kind of error fixed ("if_fixed":
class confusions, box sizes, box centres or whole boxes fixed; pipeline/evaluation/metrics/detection_errors.py).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data import schema
from data.errors import UserError
from data.vocabulary import TASKS
from models import multitask
from pipeline import atomic, classes, layout, timing, trained
from pipeline.evaluation import upscale_test
from pipeline.evaluation.flip_test import flip_tested
from pipeline.deploy import camera
from pipeline.config import Config, SourceConfig
from pipeline.evaluation import report
from pipeline.evaluation.metrics import (DepthEvaluator, DetectionEvaluator, SegmentationEvaluator, absent,
                                        is_absent)
from pipeline.evaluation.metrics.detection_errors import error_breakdown
from pipeline.inputs import dataset as inputs

SCORE_FLOOR = trained.METRIC_SCORE_FLOOR
LATENCY_RUNS = 20
# The one number per task that summaries quote (parity checks, the clip index).
HEADLINE_METRICS = {"detection": "mAP50", "segmentation": "mIoU", "depth": "abs_rel"}
# The traced predict functions of the last model used (one model at a time: a cache of every model seen
# would keep every baseline model alive, since each function holds its model).
_predict_cache: dict = {"model": None, "functions": {}}


# ------------------------------------------------------------------------------------------- model
def load_trained_model(path: pathlib.Path):
    """Loads a .keras model saved by the train stage (custom layers registered by `import models`)."""
    path = pathlib.Path(path)
    if path.exists() and path.suffix != ".keras":
        raise UserError(f"{path} is not a .keras model file (evaluate takes the train stage's model.keras)")
    return trained.load(path)


def check_model(model, config: Config, path) -> None:
    """Refuses a model that does not answer the configured tasks or input size, naming both sides."""
    tasks = trained.tasks(model)
    if sorted(tasks) != sorted(config.model.tasks):
        raise UserError(f"model {path} predicts tasks {sorted(tasks)} but the config's model.tasks is "
                        f"{sorted(config.model.tasks)}: evaluate with the config it was trained with "
                        f"(e.g. model.tasks=[{','.join(tasks)}])")
    height, width = model.inputs[0].shape[1:3]
    if (height, width) != tuple(config.data.image_size):
        raise UserError(f"model {path} takes {height}x{width} images but data.image_size is "
                        f"{list(config.data.image_size)}: evaluate with the config it was trained with")


def check_classes(model, config: Config, path, doing: str) -> None:
    """Refuses a model whose classes (its run's saved config) are not the config's, or whose heads do
    not have one channel per class: the data set is labelled in the config's classes."""
    model_classes = classes.of_model(path, config)
    classes.check_net(model, model_classes, path)
    classes.check_config(model_classes, config, path, trained.tasks(model), doing)


def _predict_function(model, top_k: int, flip_test: bool = False, upscale: float = 1.0,
                      upscale_rows: tuple = (0.0, 1.0)):
    """One traced tf.function per (model, top_k, flip_test, upscale, upscale_rows): forward pass (two
    with the flip test, twice that with the upscale test) + in-graph decoding, any batch size."""
    if _predict_cache["model"] is not model:
        _predict_cache.update(model=model, functions={})
    cache = _predict_cache["functions"]
    key = (top_k, flip_test, upscale, tuple(upscale_rows))
    if key in cache:
        return cache[key]
    height, width = model.inputs[0].shape[1:3]
    if upscale > 1.0:
        tasks = trained.tasks(model)
        if "detection" not in tasks and "segmentation" not in tasks:
            raise UserError("evaluate.upscale_test re-detects small objects and averages segmentation, and the "
                            f"model has neither head (tasks: {', '.join(tasks)})")
        try:
            big_size = upscale_test.band_size(height, width, upscale, upscale_rows)
            top, bottom = upscale_test.band(height, upscale_rows)
        except ValueError as err:
            raise UserError(f"evaluate.upscale_test: {err}") from None
        edges = (top if top > 0 else None, bottom if bottom < height else None)  # band edges inside the frame
        big = multitask.rebuild_at(model, big_size)

    def forward(net, images):
        return flip_tested(net, images) if flip_test else net({"image": images}, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])
    def predict(images):
        outputs = forward(model, images)
        if upscale > 1.0:
            upscaled = forward(big, tf.image.resize(images[:, top:bottom], big_size, method="bilinear"))
            if "segmentation" in outputs:
                outputs = {**outputs, "segmentation": upscale_test.merge_segmentation(
                    outputs["segmentation"], upscaled["segmentation"], (top, bottom))}
        decoded = trained.decode(outputs, top_k)
        if upscale > 1.0 and "detection" in outputs:
            second = trained.decode({"detection": upscaled["detection"]}, top_k)
            decoded.update(upscale_test.merge_small_objects(
                decoded, second, (big_size[0] / (bottom - top), big_size[1] / width),
                upscale_test.small_height(height), outputs["detection"].shape[-1] - 4, top_k, edges))
        return decoded

    cache[key] = predict
    return predict


def predict_batch(model, images, top_k: int = 100, flip_test: bool = False, upscale: float = 1.0,
                  upscale_rows: tuple = (0.0, 1.0)) -> dict:
    """images [B,H,W,3] (uint8 or float 0..255) -> NumPy dict with the keys of the model's tasks:
    boxes [B,K,4] x1y1x2y2 px, scores [B,K], classes [B,K] (detection), segmentation [B,H,W] class ids
    (argmax of logits), depth [B,H,W] metres. flip_test: averaged with the mirrored frames' predictions;
    upscale > 1: small objects' boxes from the frames (their upscale_rows band) upscaled by that
    factor, segmentation averaged with theirs (upscale_test.py).

    The traced function is cached per model object: the upscale test's rebuilt net holds a copy of
    the model's weights as they were on the first call (every caller loads a model and only reads it)."""
    images = np.asarray(images, np.float32)
    outputs = _predict_function(model, int(top_k), bool(flip_test), float(upscale), upscale_rows)(images)
    return {key: value.numpy() for key, value in outputs.items()}


def measure_inference(model, top_k: int = 100, runs: int = LATENCY_RUNS, flip_test: bool = False,
                      upscale: float = 1.0, upscale_rows: tuple = (0.0, 1.0)) -> dict:
    """Parameters and median latency of one frame (batch 1): forward pass(es) + detection decoding."""
    height, width = model.inputs[0].shape[1:3]
    band = upscale_test.band(height, upscale_rows)
    frame = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    predict = _predict_function(model, int(top_k), bool(flip_test), float(upscale), upscale_rows)
    # .numpy() waits for the result, not just the dispatch; the 3 warm-up calls trace and allocate.
    times = timing.timed_ms(lambda: [value.numpy() for value in predict(frame).values()], runs, warmup=3)
    latency = timing.median_p90(times)
    return {"params": int(model.count_params()), "ms_per_frame": latency["median_ms"],
            "ms_per_frame_p90": latency["p90_ms"], "batch_size": 1, "runs": runs,
            "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
            "flip_test": bool(flip_test), "upscale_test": float(upscale),
            "upscaled_size": list(upscale_test.band_size(height, width, upscale, upscale_rows))
            if upscale > 1.0 else None,
            "upscale_band_px": list(band) if upscale > 1.0 else None,
            "measures": _passes(flip_test, upscale, band, height)
            + " + in-graph decoding, median of batch-1 runs after warm-up"}


def _passes(flip_test: bool, upscale: float, band: tuple, height: int) -> str:
    """What one measured prediction runs, in words (band: the upscaled pass's rows of a `height` frame)."""
    if upscale > 1.0:
        each = "twice (frame and mirror image, the flip test)" if flip_test else "once"
        seen = "it" if tuple(band) == (0, height) else f"its rows {band[0]}-{band[1]}"
        return f"forward passes on the frame and on {seen} upscaled {upscale:g}x, each {each}, merged"
    return "two forward passes (frame and mirror image, the flip test)" if flip_test else "forward pass"


# ------------------------------------------------------------------------------------------ metrics
def _sources(config: Config, sources) -> list[SourceConfig]:
    if sources is None:
        return list(config.data.sources)
    by_name = {source.name: source for source in config.data.sources}
    chosen = []
    for source in sources:
        if isinstance(source, SourceConfig):
            chosen.append(source)
        elif source in by_name:
            chosen.append(by_name[source])
        else:
            raise UserError(f"source '{source}' is not configured; data.sources: {', '.join(by_name)}")
    return chosen


def new_evaluators(config: Config, tasks: list[str]) -> dict:
    """Per task, an evaluator in the config's classes (the classes the data set is labelled in)."""
    names = classes.of_config(config)
    makers = {
        "detection": lambda: DetectionEvaluator(names.detection, image_height=config.data.image_size[0]),
        "segmentation": lambda: SegmentationEvaluator(len(names.segmentation), schema.IGNORE,
                                                      names.segmentation),
        "depth": lambda: DepthEvaluator(max_depth=config.model.max_depth),
    }
    return {task: makers[task]() for task in tasks}


def _real_boxes(boxes: np.ndarray) -> np.ndarray:
    """Drops the zero-size padding rows of a padded [M, 4] box list."""
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def add_batch(evaluators: dict, y: dict, pred: dict, first_id: int, counts: dict) -> None:
    """Feeds one batch to the evaluators, each task only on examples that have its labels; counts[task]
    += the examples added."""
    for task, evaluator in evaluators.items():
        has = y[schema.TASK_FLAGS[task]] > 0.5
        counts[task] = counts.get(task, 0) + int(has.sum())
        if not has.any():
            continue
        if task == "segmentation":
            evaluator.add(y["segmentation"][has], pred["segmentation"][has])
        elif task == "depth":
            evaluator.add(y["depth"][has], pred["depth"][has])
        else:
            for i in np.flatnonzero(has):
                real = y["classes"][i] >= 0
                kept = pred["scores"][i] > SCORE_FLOOR
                evaluator.add(first_id + int(i), y["boxes"][i][real], y["classes"][i][real],
                              pred["boxes"][i][kept], pred["scores"][i][kept], pred["classes"][i][kept],
                              ignore_regions=_real_boxes(y["ignore_boxes"][i]))


def frames_for_grid(x: dict, y: dict, pred: dict, wanted: int) -> list[dict]:
    """The first frames of a batch with their labels and predictions, for the report's grid."""
    frames = []
    for i in range(min(wanted, len(x["image"]))):
        frame = {"image": np.clip(x["image"][i], 0, 255).astype(np.uint8), "key": _text(y["key"][i])}
        real = y["classes"][i] >= 0
        frame["gt"] = {"boxes": y["boxes"][i][real], "classes": y["classes"][i][real],
                       "segmentation": y["segmentation"][i], "depth": y["depth"][i],
                       **{flag: bool(y[flag][i] > 0.5) for flag in schema.TASK_FLAGS.values()}}
        frame["pred"] = {key: value[i] for key, value in pred.items()}
        frames.append(frame)
    return frames


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def task_result(task: str, evaluator, examples: int, source: str, split: str) -> dict:
    if examples == 0:
        return {**absent(f"source '{source}' has no {task} labels in split '{split}'"), "examples": 0}
    result = evaluator.result()
    if task == "detection" and not is_absent(result):
        result["if_fixed"] = error_breakdown(evaluator)
    return result


def evaluate_source(config: Config, model, split: str, source: SourceConfig, max_examples=None,
                    grid_frames: int = 0, progress: bool = True, depth_scale: float = 1.0) -> tuple[dict, list[dict]]:
    """({task: result, "examples": n}, first grid frames) for one source and split; predicted depth is
    multiplied by depth_scale (evaluate.rescale_depth, pipeline/deploy/camera.py)."""
    tasks = trained.tasks(model)
    evaluators = new_evaluators(config, tasks)
    dataset = inputs.make_dataset(config, split, training=False, sources=[source])
    total = inputs.split_size(config, source, split)
    if max_examples:
        total = min(total, int(max_examples))
    seen, frames, counts = 0, [], {}
    with tqdm(total=total, unit="frame", desc=f"evaluate {source.name}/{split}", disable=not progress,
              leave=False) as bar:
        for x, y in dataset:
            count = min(int(x["image"].shape[0]), total - seen)
            if count <= 0:
                break
            x = {key: value.numpy()[:count] for key, value in x.items()}
            y = {key: value.numpy()[:count] for key, value in y.items()}
            pred = predict_batch(model, x["image"], config.model.top_k, config.evaluate.flip_test,
                                 config.evaluate.upscale_test, config.evaluate.upscale_rows)
            if "depth" in pred and depth_scale != 1.0:
                pred["depth"] = pred["depth"] * np.float32(depth_scale)
            add_batch(evaluators, y, pred, seen + 1, counts)
            if len(frames) < grid_frames:
                frames += frames_for_grid(x, y, pred, grid_frames - len(frames))
            seen += count
            bar.update(count)
    result = {"examples": seen}
    for task in tasks:
        result[task] = task_result(task, evaluators[task], counts.get(task, 0), source.name, split)
    return result, frames


def _evaluate(config: Config, model, split: str, sources=None, max_examples=None, grid_frames: int = 0,
              progress: bool = True, depth_scales: dict | None = None) -> tuple[dict, list[dict]]:
    sources = _sources(config, sources)
    max_examples = config.evaluate.max_examples if max_examples is None else max_examples
    tasks = trained.tasks(model)
    per_source, frames = {}, []
    for source in sources:
        result, source_frames = evaluate_source(config, model, split, source, max_examples,
                                                grid_frames if not frames else 0, progress,
                                                (depth_scales or {}).get(source.name, 1.0))
        per_source[source.name] = result
        frames = frames or source_frames
    primary = sources[0].name
    metrics = {"split": split, "image_size": list(config.data.image_size), "tasks": tasks,
               "top_k": config.model.top_k, "flip_test": config.evaluate.flip_test,
               "upscale_test": config.evaluate.upscale_test, "upscale_rows": list(config.evaluate.upscale_rows),
               "score_floor": SCORE_FLOOR,
               "max_depth": config.model.max_depth,
               "max_examples": max_examples, "primary_source": primary, "sources": per_source}
    if depth_scales is not None:
        metrics["depth_scales"] = {name: round(value, 4) for name, value in depth_scales.items()}
    # Top level = the first (or only) source, so single-source consumers read metrics[task] directly.
    for task in TASKS:
        metrics[task] = per_source[primary].get(task) or absent(
            f"the model has no {task} head (model.tasks={tasks})")
    return metrics, frames


def one_pass(config: Config) -> Config:
    """The config with the test-time options off (evaluate.flip_test, evaluate.upscale_test): what the
    baselines and the ablation study score, since they compare models as they run exported and time
    one pass each."""
    return dataclasses.replace(config, evaluate=dataclasses.replace(config.evaluate, flip_test=False,
                                                                    upscale_test=1.0))


def evaluate_model(config: Config, model, split: str, sources=None, max_examples=None) -> dict:
    """The metrics dict (see module doc) of `model` on `split`, every configured source separately."""
    metrics, _ = _evaluate(config, model, split, sources, max_examples)
    return metrics


# --------------------------------------------------------------------------------------------- stage
def output_dir(config: Config, split: str, model_path: pathlib.Path | None = None) -> pathlib.Path:
    """eval/, eval-<split>/ or eval-<model stem>[-<split>]/, each with -rescaled under
    evaluate.rescale_depth, -flip under evaluate.flip_test and -up<x>[-rows<a>-<b>] under
    evaluate.upscale_test [and evaluate.upscale_rows] (see module doc)."""
    name = "eval"
    if model_path is not None and not layout.is_run_model(config, model_path):
        model_path = pathlib.Path(model_path)
        # Every stage saves "model.keras": then the folder (e.g. baselines/single-depth) names the model.
        name += f"-{model_path.parent.name if model_path.stem == 'model' else model_path.stem}"
    if split != config.evaluate.split:
        name += f"-{split}"
    if config.evaluate.rescale_depth:  # depth rescaled to each source's camera: not the same numbers
        name += "-rescaled"
    if config.evaluate.flip_test:  # two passes averaged: not the numbers of the model as exported
        name += "-flip"
    if config.evaluate.upscale_test > 1.0:
        name += f"-up{config.evaluate.upscale_test:g}"
        if tuple(config.evaluate.upscale_rows) != (0.0, 1.0):
            name += "-rows{:g}-{:g}".format(*config.evaluate.upscale_rows)
    return layout.eval_dir(config, name)


def evaluate_into(config: Config, model_path: pathlib.Path, split: str, out: pathlib.Path) -> dict:
    """The evaluate stage's work: metrics.json, report.md and plots of the model at model_path in `out`,
    written all or nothing; returns the metrics."""
    model = load_trained_model(model_path)
    check_model(model, config, model_path)
    check_classes(model, config, model_path, "evaluate")
    if config.evaluate.rescale_depth and "depth" not in trained.tasks(model):
        raise UserError(f"{model_path} has no depth output: evaluate.rescale_depth has nothing to rescale")
    scales = camera.source_depth_scales(config, model_path) if config.evaluate.rescale_depth else None
    metrics, frames = _evaluate(config, model, split, grid_frames=config.evaluate.grid_frames, depth_scales=scales)
    metrics = {"model": str(model_path), **metrics,
               "inference": measure_inference(model, config.model.top_k, flip_test=config.evaluate.flip_test,
                                              upscale=config.evaluate.upscale_test,
                                              upscale_rows=config.evaluate.upscale_rows)}
    with atomic.staging_dir(out, "the evaluation") as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1))
        report.write_report(staging, metrics, config, frames=frames, history_csv=model_path.parent / "history.csv")
    return metrics
