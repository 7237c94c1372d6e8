"""model_card.json + model_card.md in the export folder: what the exported model is, what it was
trained on and how well it does, from the files of the run (no model is loaded):

- classes and tasks: the classes the model was trained with (its run's model.classes, data/classes.py),
  names and RGB colours, and the trained tasks;
- input: size, layout and normalisation (inside the model: callers feed RGB 0..255);
- training data and budget: the training's config.yaml (train/, else the run's) and train/history.csv,
  with the stored example counts of each source (data/.../report.json) when present;
- metrics: eval/metrics.json when the evaluate stage ran, with the command that reproduces them;
- formats: file, size, latency and parity verdict of each exported format (the parity report).
"""
from __future__ import annotations

import csv
import json
import pathlib
import time

import yaml

from data.builder import stored_dir
from data.classes import DEFAULT, ClassSet
from pipeline import atomic, layout
from pipeline.deploy import camera
from pipeline.config import Config
from pipeline.evaluation.metrics import is_absent
from pipeline.evaluation.report import LABELS, fmt, table

# Normalisation happens in the model's first layer (models/encoder.py): the value a pixel becomes.
NORMALISATION = {"builtin": "x / 127.5 - 1 (Rescaling layer in the model)",
                 "efficientnet_lite0": "(x - 127) / 128 (Rescaling layer in the model)"}
HEADLINE = {"detection": ("mAP50", "mAP", "AR100"), "segmentation": ("mIoU", "pixel_accuracy"),
            "depth": ("abs_rel", "rmse", "delta1")}


def _read_yaml(path: pathlib.Path) -> dict | None:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _history(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _float(value):
    try:
        return round(float(value), 5)
    except (TypeError, ValueError):
        return None


def training_facts(config: Config) -> dict:
    """Data and budget of the training, from the train stage's own config.yaml, history.csv and speed.json."""
    config_file = layout.train_dir(config) / "config.yaml"
    trained = _read_yaml(config_file) or _read_yaml(layout.config_file(config)) or {}
    used = config_file if config_file.is_file() else layout.config_file(config)
    train, data, model = trained.get("train", {}), trained.get("data", {}), trained.get("model", {})
    sources = []
    for source in data.get("sources", []):
        entry = {"name": source.get("name"), "weight": source.get("weight"), "path": source.get("path")}
        report = stored_dir(source.get("name", ""), config.data_dir) / "report.json"
        if report.is_file():
            entry["examples"] = json.loads(report.read_text()).get("examples")
        elif source.get("name") == "synthetic":
            synthetic = data.get("synthetic", {})
            entry["examples"] = {"train": synthetic.get("train_frames"), "validation": synthetic.get("validation_frames")}
        sources.append(entry)
    rows = _history(layout.train_dir(config) / "history.csv")
    last = rows[-1] if rows else {}
    steps, batch = train.get("steps_per_epoch"), train.get("batch_size")
    speed = layout.train_dir(config) / "speed.json"
    # The steps trained, from speed.json where it has them: a time budget's last epoch may be partial.
    trained_steps = json.loads(speed.read_text()).get("steps") if speed.is_file() else None
    trained_steps = trained_steps or (len(rows) * steps if rows and steps else None)
    return {
        "config": str(used) if trained else None,
        "data": {"sources": sources, "image_size": data.get("image_size"), "schedule": data.get("schedule")},
        "model": {key: model.get(key) for key in ("backbone", "weights", "sharing", "tasks") if key in model},
        "budget": {"epochs_configured": train.get("epochs"), "epochs_run": len(rows) or None,
                   "steps_per_epoch": steps, "batch_size": batch,
                   "examples_seen": trained_steps * batch if trained_steps and batch else None,
                   "weighting": train.get("weighting"), "learning_rate": train.get("learning_rate"),
                   "precision": train.get("precision")},
        "final_losses": {key: _float(value) for key, value in last.items()
                         if key.endswith("_loss") or key in ("loss", "val_task_loss_sum")},
    }


def metrics_facts(config: Config) -> dict:
    path = layout.eval_dir(config, "eval") / "metrics.json"
    if not path.is_file():
        return {"available": False, "reason": f"no {path}: run `python -m pipeline evaluate` first"}
    metrics = json.loads(path.read_text())
    split = metrics.get("split", config.evaluate.split)
    values = {task: {m: metrics[task].get(m) for m in names if metrics[task].get(m) is not None}
              for task, names in HEADLINE.items() if not is_absent(metrics.get(task))}
    return {"available": True, "file": str(path), "split": split, "model": metrics.get("model"),
            "command": f"python -m pipeline evaluate --config {layout.config_file(config)} --split {split}",
            "values": values}


def format_facts(parity: dict) -> list[dict]:
    formats = []
    for name, entry in (parity.get("formats") or {}).items():
        latency = entry.get("latency") or {}
        formats.append({"format": name, "file": entry.get("file"), "size_bytes": entry.get("size_bytes"),
                        "latency_ms": {"p50": latency.get("median_ms"), "p90": latency.get("p90_ms"),
                                       "batch_size": latency.get("batch_size"), "threads": latency.get("num_threads")},
                        "parity_verdict": entry.get("verdict"), "metrics": entry.get("metrics")})
    return formats


def build(config: Config, parity: dict, class_set: ClassSet = DEFAULT) -> dict:
    training = training_facts(config)
    tasks = training["model"].get("tasks") or list(config.model.tasks)
    backbone = training["model"].get("backbone") or config.model.backbone
    height, width = (next((e.get("input_size") for e in (parity.get("formats") or {}).values()
                           if e.get("input_size")), None) or training["data"]["image_size"]
                     or config.data.image_size)
    classes = {"detection": list(class_set.detection), "segmentation": list(class_set.segmentation),
               "depth": f"metres per pixel, up to model.max_depth = {config.model.max_depth} m"}
    colours = {"detection": class_set.detection_colours.tolist(),
               "segmentation": class_set.segmentation_colours.tolist()}
    return {
        "name": f"dashcam multi-task perception — {config.experiment}",
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tasks": tasks,
        "classes": {task: classes[task] for task in tasks if task in classes},
        "class_colours": {task: colours[task] for task in tasks if task in colours},
        "input": {"size": [int(height), int(width)], "layout": "NHWC, RGB",
                  "range": "0..255 (uint8, or float32 holding 0..255)",
                  "normalisation": NORMALISATION.get(backbone, f"the {backbone} backbone's own preprocessing, "
                                                               "inside the model"),
                  "other_sizes": ("the SavedModel resizes any frame in graph; the TFLite and ONNX files take exactly "
                                  "this size (the ONNX file any batch; model_detection.tflite: float32, metadata "
                                  "mean 0, std 1)")},
        "training": training,
        # The camera its depth assumes; another camera: --focal on predict and clip (pipeline/deploy/camera.py)
        "camera": (camera.read_beside(layout.trained_model(config)) or {}).get("training"),
        "metrics": metrics_facts(config),
        "formats": format_facts(parity),
        "limitations": ("Metrics are measured on the evaluated split of the configured sources only; the "
                        "synthetic scenes are not real roads, so quote real-data numbers for real use."),
    }


def markdown(card: dict) -> str:
    training, budget, metrics = card["training"], card["training"]["budget"], card["metrics"]
    lines = [f"# Model card: {card['name']}", "", f"Written {card['written']} by the export stage.", "",
             "## Tasks and classes", ""]
    for task, classes in card["classes"].items():
        lines.append(f"- **{task}**: " + (", ".join(classes) if isinstance(classes, list) else classes))
    i = card["input"]
    lines += ["", "## Input", "", f"- size {i['size'][0]} x {i['size'][1]} (height x width), {i['layout']}, "
              f"{i['range']}", f"- normalisation: {i['normalisation']}", f"- {i['other_sizes']}", "",
              "## Training", "", f"Config: `{training['config']}`.", ""]
    sources = [[s["name"], fmt(s.get("weight"), 2), ", ".join(f"{k} {v}" for k, v in (s.get("examples") or {}).items())]
               for s in training["data"]["sources"]]
    if sources:
        lines += [table(["source", "weight", "examples"], sources), ""]
    lines += [table(["epochs run", "steps/epoch", "batch", "examples seen", "weighting", "learning rate"],
                    [[fmt(budget["epochs_run"]), fmt(budget["steps_per_epoch"]), fmt(budget["batch_size"]),
                      fmt(budget["examples_seen"]), budget["weighting"] or "—", fmt(budget["learning_rate"], 4)]]), ""]
    if card.get("camera"):
        lines += [f"Depth assumes the training camera's focal length: {card['camera']['fx']:.1f} px (horizontal) x "
                  f"{card['camera']['fy']:.1f} px (vertical) at the input size; for another camera pass its focal "
                  f"length with `--focal` (predict, clip), which rescales depth by the ratio.", ""]
    lines += ["## Metrics", ""]
    if metrics["available"]:
        lines += [f"On split `{metrics['split']}` (`{metrics['file']}`), reproduced by `{metrics['command']}`.", ""]
        rows = [[task, LABELS.get(name, name), fmt(value)] for task, values in metrics["values"].items()
                for name, value in values.items()]
        lines += [table(["task", "metric", "value"], rows) if rows else "_No task could be measured._", ""]
    else:
        lines += [f"_Not measured: {metrics['reason']}._", ""]
    lines += ["## Formats", ""]
    rows = [[f["format"], f"`{f['file']}`", fmt((f["size_bytes"] or 0) / 1024, 1), fmt(f["latency_ms"]["p50"], 2),
             fmt(f["latency_ms"]["p90"], 2), f["parity_verdict"] or "—"] for f in card["formats"]]
    lines += [table(["format", "file", "size KB", "ms p50", "ms p90", "parity"], rows) if rows else "_None._", ""]
    lines += ["## Limitations", "", card["limitations"], ""]
    return "\n".join(lines)


def write(out_dir: pathlib.Path, config: Config, parity: dict, class_set: ClassSet = DEFAULT) -> dict:
    """Writes model_card.json and model_card.md into out_dir (the export's staging folder)."""
    card = build(config, parity, class_set)
    atomic.write_text(pathlib.Path(out_dir) / "model_card.json", json.dumps(card, indent=1))
    atomic.write_text(pathlib.Path(out_dir) / "model_card.md", markdown(card))
    return card
