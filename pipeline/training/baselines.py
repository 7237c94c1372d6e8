"""Baselines (the baselines stage's work): is one multi-task model better than one model per task, and which weighting wins?

Trains, with the encoder, data and step budget of the configured run:
  single-<task>   one single-task model per configured task (weighting is moot with one task: fixed)
  multi-<w>       the multi-task model under every weighting: fixed (equal weights), uncertainty, dwa, gradnorm
each into runs/<experiment>/baselines/<name>/ with pipeline.training.fit.run_training. The configured weighting
reuses the train stage's model (runs/<experiment>/train/model.keras) when that run's config matches.
A variant already trained with the same config is skipped, so an interrupted stage resumes (a variant
stopped mid-training resumes from its last epoch through run_training's own backup).

Every model is evaluated with pipeline.evaluation.evaluate.evaluate_model on evaluate.split of the first
source; the comparison is Delta_m over pipeline.evaluation.metrics.STANDARD_METRICS. Writes baselines/summary.json and
baselines/baselines.md, then rewrites the eval report(s) so report.md carries the comparison.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil

import keras
import yaml

from data.errors import UserError
from data.vocabulary import WEIGHTINGS
from pipeline import atomic, layout
from pipeline.config import Config, to_dict
from pipeline.evaluation import evaluate, report
from pipeline.evaluation.metrics import (STANDARD_METRICS, delta_m, is_absent, negative_transfer, relative_differences,
                                         task_gains)
from pipeline.training.fit import run_training

# Parts of the config that change what a model learns; two runs with equal parts are the same run.
TRAINING_KEYS = ("seed", "data", "model", "train")
# Headline metrics kept per task in the summary (the full results are in each variant's metrics.json).
KEPT = {"detection": ("mAP", "mAP50", "mAP75", "AR100"), "segmentation": ("mIoU", "pixel_accuracy"),
        "depth": ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1")}


def variants(config: Config) -> dict[str, Config]:
    """name -> config of every model to compare; same budget, data and encoder throughout."""
    tasks = list(config.model.tasks)
    if len(tasks) < 2:
        raise UserError(f"baselines compare a multi-task model with single-task ones, but model.tasks is "
                        f"{tasks}: use a config with two or more tasks")
    out = {}
    for task in tasks:
        out[f"single-{task}"] = dataclasses.replace(
            config, model=dataclasses.replace(config.model, tasks=[task]),
            train=dataclasses.replace(config.train, weighting="fixed", fixed_weights={task: 1.0}))
    for weighting in WEIGHTINGS:
        train = dataclasses.replace(config.train, weighting=weighting)
        if weighting == "fixed":  # the plain baseline: equal weights, whatever the config says
            train = dataclasses.replace(train, fixed_weights={task: 1.0 for task in tasks})
        out[f"multi-{weighting}"] = dataclasses.replace(config, train=train)
    return out


def _training_part(config_dict: dict) -> dict:
    return {key: config_dict.get(key) for key in TRAINING_KEYS}


def same_training(config: Config, folder: pathlib.Path) -> bool:
    """True when folder holds a finished model trained with this config's training part."""
    saved = folder / "config.yaml"
    if not (folder / layout.MODEL_FILE).is_file() or not saved.is_file():
        return False
    try:
        previous = yaml.safe_load(saved.read_text()) or {}
    except yaml.YAMLError:
        return False
    # Round-trip through YAML so tuples and lists compare equal.
    current = yaml.safe_load(yaml.safe_dump(to_dict(config)))
    return _training_part(previous) == _training_part(current)


def train_variant(name: str, variant: Config, config: Config, verbose: int) -> tuple[pathlib.Path, bool]:
    """(model path, reused the train stage's model?), training only when no matching model exists."""
    main_run = layout.train_dir(config)
    if name == f"multi-{config.train.weighting}" and same_training(variant, main_run):
        print(f"baselines: {name}: reusing the train stage's model {layout.trained_model(config)}")
        return layout.trained_model(config), True
    folder = layout.baselines_dir(config) / name
    model_path = folder / layout.MODEL_FILE
    if same_training(variant, folder):
        print(f"baselines: {name}: already trained, skipped ({model_path})")
        return model_path, False
    if model_path.exists():  # trained with another config: stale, train again
        print(f"baselines: {name}: config changed since it was trained; training again")
        shutil.rmtree(folder)
    print(f"baselines: {name}: training ({', '.join(variant.model.tasks)}; weighting={variant.train.weighting})")
    return run_training(variant, folder, verbose=verbose), False


def headline_metrics(metrics: dict, tasks) -> dict:
    """{task: {metric: value}} of the kept metrics, or the absent record."""
    out = {}
    for task in tasks:
        result = metrics.get(task)
        if is_absent(result):
            out[task] = {"absent": True, "reason": (result or {}).get("reason", "not measured")}
        else:
            out[task] = {metric: result.get(metric) for metric in KEPT[task]}
            out[task]["examples"] = result.get("examples")
    return out


def compare(multi: dict, single: dict, lower_is_better: dict = STANDARD_METRICS) -> dict:
    """Relative differences, per-task gains, Delta_m and negative transfer of multi vs single.

    A metric is left out (and listed in "skipped") when either value is missing or the single-task value
    is 0: the relative difference is then undefined (e.g. a barely trained detector with AP 0)."""
    usable, skipped = {}, []
    for task, metrics in lower_is_better.items():
        if is_absent(multi.get(task)) or is_absent(single.get(task)):
            continue
        for metric, lower in metrics.items():
            m, s = multi[task].get(metric), single[task].get(metric)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (m, s)):
                skipped.append(f"{task} {metric} (not measured)")
            elif s == 0:
                skipped.append(f"{task} {metric} (single-task value is 0)")
            else:
                usable.setdefault(task, {})[metric] = lower
    if not usable:
        return {"relative_differences": {}, "task_gains": {}, "delta_m": None, "negative_transfer": [],
                "skipped": skipped}
    return {"relative_differences": relative_differences(multi, single, usable),
            "task_gains": task_gains(multi, single, usable),
            "delta_m": delta_m(multi, single, usable),
            "negative_transfer": negative_transfer(multi, single, usable),
            "skipped": skipped}


def _evaluate(name, path, variant, split, source):
    model = evaluate.load_trained_model(path)
    evaluate.check_model(model, variant, path)
    print(f"baselines: {name}: evaluating on {source}/{split}")
    metrics = evaluate.evaluate_model(variant, model, split, sources=[source])
    inference = evaluate.measure_inference(model, variant.model.top_k)
    del model
    keras.backend.clear_session()  # the next variant builds a fresh graph; free this one
    return metrics, inference


def summarise(config: Config, results: dict) -> dict:
    """summary.json's content from {variant name: {"model", "reused_main_run", "metrics", "inference"}}."""
    split = config.evaluate.split
    source = config.data.sources[0].name
    tasks = list(config.model.tasks)
    # One "single" result holding each task from its own single-task model.
    single = {task: results[f"single-{task}"]["metrics"][task] for task in tasks}
    weightings = {}
    for weighting in WEIGHTINGS:
        entry = results[f"multi-{weighting}"]
        weightings[weighting] = {"model": entry["model"], "reused_main_run": entry["reused_main_run"],
                                 "metrics": headline_metrics(entry["metrics"], tasks),
                                 "comparison": compare(entry["metrics"], single),
                                 "inference": entry["inference"]}
    ranked = [w for w in WEIGHTINGS if weightings[w]["comparison"]["delta_m"] is not None]
    configured = config.train.weighting
    single_cost = {task: results[f"single-{task}"]["inference"] for task in tasks}
    return {
        "experiment": config.experiment, "split": split, "source": source, "tasks": tasks,
        "budget": {"epochs": config.train.epochs, "steps_per_epoch": config.train.steps_per_epoch,
                   "batch_size": config.train.batch_size},
        "lower_is_better": STANDARD_METRICS,
        "single_task": {task: {"model": results[f"single-{task}"]["model"],
                               "metrics": headline_metrics(results[f"single-{task}"]["metrics"], [task])}
                        for task in tasks},
        "multi_task": {"weighting": configured, **weightings[configured]},
        "weightings": weightings,
        "best_weighting": max(ranked, key=lambda w: weightings[w]["comparison"]["delta_m"]) if ranked else None,
        "inference": {"multi_task": weightings[configured]["inference"], "single_task": single_cost,
                      "single_task_sum": {"params": sum(c["params"] for c in single_cost.values()),
                                          "ms_per_frame": sum(c["ms_per_frame"] for c in single_cost.values())}},
    }


def run_baselines(config: Config, verbose: int = 1) -> dict:
    out = layout.baselines_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    split = config.evaluate.split
    source = config.data.sources[0].name
    results = {}
    todo = variants(config)
    for index, (name, variant) in enumerate(todo.items(), 1):
        print(f"baselines: [{index}/{len(todo)}] {name}")
        path, reused = train_variant(name, variant, config, verbose)
        metrics, inference = _evaluate(name, path, variant, split, source)
        results[name] = {"model": str(path), "reused_main_run": reused, "metrics": metrics,
                         "inference": inference}
        if not reused:
            atomic.write_text(path.parent / "metrics.json", json.dumps(metrics, indent=1))

    summary = summarise(config, results)
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=1))
    atomic.write_text(out / "baselines.md", f"# Baselines — {config.experiment}\n\n"
                  + report.baselines_markdown(summary) + "\n")
    comparison = summary["multi_task"]["comparison"]
    print(f"baselines: multi-task ({summary['multi_task']['weighting']}) "
          f"Delta_m = {report.signed(comparison['delta_m'])} %, "
          f"negative transfer: {', '.join(comparison['negative_transfer']) or 'none'}; "
          f"best weighting: {summary['best_weighting']}")
    for path in report.refresh(config):
        print(f"baselines: updated {path}")
    print(f"baselines: wrote {out / 'summary.json'} and {out / 'baselines.md'}")
    return summary
