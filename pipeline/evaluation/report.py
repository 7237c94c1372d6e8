"""report.md of an eval folder: metric tables, targets, plots, training, frames, baselines comparison.

The markdown is rendered from metrics.json (plus the train stage's history.csv and, when it exists,
runs/<experiment>/baselines/summary.json), so `refresh` can rewrite it later (the baselines stage does)
without evaluating again. It links only plots that exist in the folder.
"""
from __future__ import annotations

import csv
import json
import math
import pathlib
import time

from data.vocabulary import TASKS
from pipeline import atomic, classes, layout, trained
from pipeline.config import Config
from pipeline.evaluation import plots, upscale_test
from pipeline.evaluation.metrics import is_absent
from pipeline.evaluation.metrics.detection_errors import FIT_IOU

# Quality goals on the synthetic data (the report's "Targets" table): (task, metric, ">=" or "<=",
# value, label).
QUALITY_GOALS = (
    ("detection", "mAP50", ">=", 0.90, "mAP50"),
    ("detection", "mAP", ">=", 0.60, "mAP@[.5:.95]"),
    ("segmentation", "mIoU", ">=", 0.85, "mIoU"),
    ("depth", "abs_rel", "<=", 0.08, "AbsRel"),
    ("depth", "delta1", ">=", 0.93, "delta1"),
)
LABELS = {"mAP": "mAP", "mAP50": "mAP50", "mAP75": "mAP75", "AR100": "AR100", "mIoU": "mIoU",
          "pixel_accuracy": "pixel acc.", "abs_rel": "AbsRel", "sq_rel": "SqRel", "rmse": "RMSE (m)",
          "rmse_log": "RMSE log", "delta1": "delta1", "delta2": "delta2", "delta3": "delta3"}
DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{float(value):.{digits}f}"


def signed(value, digits: int = 2) -> str:
    return "—" if value is None else f"{float(value):+.{digits}f}"


def count(number, noun: str, plural: str | None = None) -> str:
    return f"{fmt(int(number))} {noun if number == 1 else plural or noun + 's'}"


def table(header: list, rows: list[list]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def headline(metrics: dict) -> str:
    """One line for the console: the main metric of each task."""
    parts = []
    for task, metric in (("detection", "mAP50"), ("detection", "mAP"), ("segmentation", "mIoU"),
                         ("depth", "abs_rel"), ("depth", "delta1")):
        result = metrics.get(task)
        if not is_absent(result):
            parts.append(f"{task} {LABELS[metric]} {fmt(result.get(metric))}")
    return ", ".join(parts) or "no task could be measured"


# ------------------------------------------------------------------------------------- task tables
def _absent_line(result) -> str:
    reason = (result or {}).get("reason", "not evaluated")
    return f"_Absent: {reason}._"


def detection_section(result: dict) -> str:
    if is_absent(result):
        return _absent_line(result)
    boxes = count(result['ground_truth_boxes'], 'ground-truth box', 'ground-truth boxes')
    counts = (f"{count(result['examples'], 'frame')}, {boxes}, "
              f"{count(result['detections'], 'detection')} kept.")
    main = table(["mAP@[.5:.95]", "mAP50", "mAP75", "AR100"],
                 [[fmt(result.get(m)) for m in ("mAP", "mAP50", "mAP75", "AR100")]])
    truth = result.get("per_class_ground_truth", {})
    per_class = table(["class", "GT boxes", "AP@[.5:.95]", "AP50"],
                      [[name, fmt(truth.get(name, 0)), fmt(result.get("per_class_AP", {}).get(name)),
                        fmt(result.get("per_class_AP50", {}).get(name))] for name in truth])
    return (f"{counts}\n\n{main}\n\n{per_class}{_by_height(result.get('AP50_by_height'))}"
            f"{_if_fixed(result)}")


# The what-if rows of metrics/detection_errors.py, in the order a reader follows them.
_FIXES = (("classes_fixed", "classes fixed (a detection on another class's box takes its class)"),
          ("fitted_sizes", "sizes fitted to the ground truth (own centres)"),
          ("fitted_centres", "centres fitted to the ground truth (own sizes)"),
          ("fitted_boxes", "boxes fitted to the ground truth (centres and sizes)"))


def _if_fixed(result: dict) -> str:
    """What the AP would be with one kind of error fixed (TIDE-style; metrics/detection_errors.py)."""
    fixes = result.get("if_fixed")
    if not fixes:
        return ""
    rows = [["as measured", *(fmt(result.get(m)) for m in ("mAP", "mAP50", "mAP75"))]]
    # A metrics.json from before a fix existed (fitted_centres came later) renders without its row.
    rows += [[label, *(fmt(fixes[fix].get(m)) for m in ("mAP", "mAP50", "mAP75"))]
             for fix, label in _FIXES if fix in fixes]
    return ("\n\nWhere the AP goes: the same evaluation with one kind of error fixed (in score order, a fitted "
            "detection takes the size, the centre or the whole of the free box of its class it overlaps "
            f"most, IoU >= {FIT_IOU:g}; missed objects and duplicates stay errors):\n\n"
            + table(["", "mAP@[.5:.95]", "mAP50", "mAP75"], rows))


def _by_height(by_height) -> str:
    """AP50 per object-height band (metrics/detection.py height_bands), one row per class."""
    if not by_height:
        return ""
    bands = [f"{low:g}-{high:g} px" if high is not None else f">= {low:g} px"
             for low, high in by_height["bands_px"]]
    rows = [[name, *(fmt(value) for value in values)] for name, values in by_height["per_class"].items()]
    return "\n\nAP50 by object height (model-input pixels; objects of other heights ignored):\n\n" + table(
        ["class", *bands], rows)


def segmentation_section(result: dict) -> str:
    if is_absent(result):
        return _absent_line(result)
    main = table(["mIoU", "pixel acc.", "frames", "labelled pixels"],
                 [[fmt(result["mIoU"]), fmt(result["pixel_accuracy"]), fmt(result["examples"]),
                   fmt(result["pixels"])]])
    confusion = result.get("confusion_matrix") or []
    names = list(result["per_class_IoU"])
    rows = []
    for i, name in enumerate(names):
        pixels = sum(confusion[i]) if i < len(confusion) else 0
        rows.append([name, fmt(result["per_class_IoU"][name]), fmt(int(pixels))])
    per_class = table(["class", "IoU", "GT pixels"], rows)
    return (f"{main}\n\n{per_class}\n\nA class with IoU — appears in neither labels nor predictions; "
            f"mIoU averages the others.")


def depth_section(result: dict) -> str:
    if is_absent(result):
        return _absent_line(result)
    header = ["averaging", *[LABELS[m] for m in DEPTH_METRICS], "frames", "valid pixels"]
    rows = [["pooled", *[fmt(result[m]) for m in DEPTH_METRICS], fmt(result["examples"]), fmt(result["pixels"])]]
    per_image = result.get("per_image_mean")
    if per_image:
        rows.append(["per image", *[fmt(per_image[m]) for m in DEPTH_METRICS], fmt(per_image["images"]), ""])
    note = (f"Pooled: every valid pixel weighs the same (ground truth in ({result['min_depth']:g}, "
            f"{result['max_depth']:g}] m, predictions clipped to that range). Per image: the KITTI convention, "
            f"each metric per image then averaged — quote that one against papers. AbsRel, SqRel, RMSE: "
            f"lower is better; delta_i = share of pixels within a factor 1.25^i: higher is better.")
    return f"{table(header, rows)}\n\n{note}"


SECTIONS = {"detection": ("Detection", detection_section), "segmentation": ("Segmentation", segmentation_section),
            "depth": ("Depth", depth_section)}


def _plot_link(out_dir: pathlib.Path, name: str, alt: str) -> str:
    return f"![{alt}]({name})" if (out_dir / name).exists() else ""


def task_section(out_dir: pathlib.Path, task: str, metrics: dict) -> str:
    title, render = SECTIONS[task]
    sources = metrics.get("sources") or {}
    primary = metrics.get("primary_source")
    parts = [f"## {title}"]
    if not sources:
        return "\n\n".join(parts + [render(metrics.get(task))])
    for name, result in sources.items():
        if len(sources) > 1:
            parts.append(f"### source: {name}")
        parts.append(render(result.get(task) or metrics.get(task)))
        files = plots.plot_names(name, name == primary)
        links = {"detection": [_plot_link(out_dir, files["detection"], "precision-recall curves")],
                 "segmentation": [_plot_link(out_dir, files["segmentation"], "confusion matrix")],
                 "depth": [_plot_link(out_dir, files["depth_distance"], "depth error vs distance"),
                           _plot_link(out_dir, files["depth_log_error"], "depth log-error histogram")]}[task]
        links = [link for link in links if link]
        if links:
            parts.append(" ".join(links))
    return "\n\n".join(parts)


def sources_section(metrics: dict) -> str:
    """With several sources: one line per source with each task's main metric (— = not labelled)."""
    sources = metrics.get("sources") or {}
    if len(sources) < 2:
        return ""
    columns = (("detection", "mAP50"), ("detection", "mAP"), ("segmentation", "mIoU"), ("depth", "abs_rel"),
               ("depth", "delta1"))
    rows = [[name, fmt(result.get("examples")),
             *[fmt((result.get(task) or {}).get(metric)) for task, metric in columns]]
            for name, result in sources.items()]
    return ("## By source\n\nEach source evaluated on its own; — = the source has no labels for that task.\n\n"
            + table(["source", "frames", *[LABELS[m] for _, m in columns]], rows))


# ------------------------------------------------------------------------------------ quality goals
def quality_goals_section(metrics: dict) -> str:
    sources = metrics.get("sources") or {}
    if "synthetic" in sources:
        source, results, note = "synthetic", sources["synthetic"], ""
    else:
        source = metrics.get("primary_source", "the evaluated data")
        results = {task: metrics.get(task) for task in TASKS}
        note = ("\n\nThe targets are set for the synthetic scenes; this evaluation has no synthetic source, "
                f"so they are shown against '{source}' for orientation only.")
    rows = []
    for task, metric, direction, target, label in QUALITY_GOALS:
        result = results.get(task)
        if is_absent(result) or result.get(metric) is None:
            reason = (result or {}).get("reason", "not measured")
            rows.append([label, f"{direction} {target:g}", "—", f"not measured ({reason})"])
            continue
        value = float(result[metric])
        short = target - value if direction == ">=" else value - target
        status = "met" if short <= 0 else f"**short by {short:.3f}**"
        rows.append([label, f"{direction} {target:g}", fmt(value), status])
    return f"## Targets ({source})\n\n" + table(["metric", "target", "measured", "status"], rows) + note


# ----------------------------------------------------------------------------------------- training
def _history_rows(history_csv) -> list[dict]:
    if history_csv is None or not pathlib.Path(history_csv).is_file():
        return []
    with pathlib.Path(history_csv).open() as handle:
        return list(csv.DictReader(handle))


def training_section(out_dir: pathlib.Path, history_csv) -> str:
    rows = _history_rows(history_csv)
    if not rows:
        return "## Training\n\n_No history.csv beside the model: training curves not available._"
    last = rows[-1]
    tasks = [t for t in TASKS if f"{t}_loss" in last]
    header = ["task", "final train loss", "final val loss", "final task weight"]
    body = [[t, fmt(_float(last.get(f"{t}_loss")), 4), fmt(_float(last.get(f"val_{t}_loss")), 4),
             fmt(_float(last.get(f"{t}_weight")), 3)] for t in tasks]
    text = (f"## Training\n\n{len(rows)} epochs (history: `{history_csv}`). Task weights are the effective "
            f"multipliers of each task loss at the last epoch (learned for uncertainty/DWA/GradNorm).\n\n"
            + table(header, body))
    conflicts = [name for name in last if name.startswith("cos_")]
    if conflicts:
        pairs = [[name[len("cos_"):].replace("_", " / "), fmt(_float(rows[0].get(name)), 3),
                  fmt(_float(last.get(name)), 3)] for name in conflicts]
        text += ("\n\nGradient conflict: the cosine between two tasks' loss gradients on the shared kernel "
                 "(the last layer all tasks share), epoch mean; below 0 the tasks pull the shared weights "
                 "apart.\n\n" + table(["task pair", "first epoch", "last epoch"], pairs))
    link = _plot_link(out_dir, "training_curves.png", "training curves and task weights")
    return text + (f"\n\n{link}" if link else "")


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------- baselines
def _metric_columns(summary: dict) -> list[tuple[str, str, bool]]:
    return [(task, metric, lower) for task, metrics in summary["lower_is_better"].items()
            if task in summary["tasks"] for metric, lower in metrics.items()]


def baselines_markdown(summary: dict, level: int = 2) -> str:
    """The multi-task vs single-task comparison (used by baselines.md and report.md)."""
    h = "#" * level
    budget = summary["budget"]
    multi = summary["multi_task"]
    columns = _metric_columns(summary)
    parts = [f"{h} Multi-task vs single-task",
             f"Same encoder, data and budget for every model ({count(budget['epochs'], 'epoch')} x "
             f"{count(budget['steps_per_epoch'], 'step')} x batch {budget['batch_size']}), evaluated on split "
             f"`{summary['split']}` (source {summary['source']}). Delta_m = mean over tasks of the mean signed "
             f"relative difference of the metrics below, in %: positive = the one multi-task model beats the "
             f"single-task models."]
    comparison = multi["comparison"]
    transfer = ", ".join(comparison["negative_transfer"]) or "none"
    parts.append(f"**Multi-task model (weighting={multi['weighting']}): Delta_m = "
                 f"{signed(comparison['delta_m'])} %**; negative transfer: {transfer}.")
    rows = []
    for task, metric, lower in columns:
        single = summary["single_task"].get(task, {}).get("metrics", {}).get(task) or {}
        mine = multi["metrics"].get(task) or {}
        diff = comparison["relative_differences"].get(task, {}).get(metric)
        rows.append([task, f"{LABELS.get(metric, metric)} ({'lower' if lower else 'higher'} is better)",
                     fmt(single.get(metric)), fmt(mine.get(metric)), signed(diff)])
    parts.append(table(["task", "metric", "single-task", "multi-task", "difference (%)"], rows))
    if comparison.get("skipped"):
        parts.append("Left out of Delta_m: " + "; ".join(comparison["skipped"]) + ".")

    cost = summary["inference"]
    rows = [[f"multi-task ({multi['weighting']}), one model", fmt(cost["multi_task"]["params"]),
             fmt(cost["multi_task"]["ms_per_frame"], 2)]]
    rows += [[f"single-task {task}", fmt(entry["params"]), fmt(entry["ms_per_frame"], 2)]
             for task, entry in cost["single_task"].items()]
    rows.append([f"sum of the {len(cost['single_task'])} single-task models", fmt(cost["single_task_sum"]["params"]),
                 fmt(cost["single_task_sum"]["ms_per_frame"], 2)])
    ratio_p = cost["multi_task"]["params"] / max(cost["single_task_sum"]["params"], 1)
    ratio_t = cost["multi_task"]["ms_per_frame"] / max(cost["single_task_sum"]["ms_per_frame"], 1e-9)
    parts += [f"{h}# Inference cost (batch 1, {cost['multi_task'].get('device', '?')})",
              table(["model", "parameters", "ms / frame"], rows),
              f"The multi-task model needs {ratio_p:.0%} of the parameters and {ratio_t:.0%} of the time of "
              f"running the single-task models one after another."]

    rows = []
    for name, entry in summary["weightings"].items():
        metric_cells = [fmt((entry["metrics"].get(task) or {}).get(metric)) for task, metric, _ in columns]
        comp = entry["comparison"]
        label = name + (" (configured)" if name == multi["weighting"] else "")
        rows.append([label, *metric_cells, signed(comp["delta_m"]), ", ".join(comp["negative_transfer"]) or "none"])
    header = ["weighting", *[f"{t[:3]}. {LABELS.get(m, m)}" for t, m, _ in columns], "Delta_m (%)",
              "negative transfer"]
    best = summary.get("best_weighting")
    seeds = summary.get("seeds") or [None]
    noise = ("One run each: a difference of a few % between strategies can be seed noise." if len(seeds) == 1
             else f"Metrics are means over {len(seeds)} seeds (std: the seeds table).")
    parts += [f"{h}# Task weighting strategies and sharing modes",
              "Each trained with the same budget; Delta_m against the same single-task baselines. " + noise,
              table(header, rows),
              f"Best by Delta_m: **{best}**." if best else "No weighting could be ranked (Delta_m undefined)."]
    return "\n\n".join(parts)


def _pm(entry, digits: int = 3) -> str:
    if not entry or entry.get("mean") is None:
        return "—"
    return f"{fmt(entry['mean'], digits)} ± {fmt(entry['std'], digits)}"


def seeds_markdown(summary: dict, plot: str | None = None, level: int = 2) -> str:
    """Every variant's metrics and Delta_m as mean ± std over the seeds, and the cost ratios."""
    h = "#" * level
    columns = _metric_columns(summary)
    models = summary["models"]
    header = ["model", *[f"{t[:3]}. {LABELS.get(m, m)}" for t, m, _ in columns], "Delta_m (%)",
              "latency (x)", "parameters (x)"]
    single = models["single_task"]
    rows = [["single-task models", *[_pm(single.get(t, {}).get("metrics", {}).get(t, {}).get(m))
                                      for t, m, _ in columns], "0 (reference)", "1", "1"]]
    for name, entry in models.items():
        if name == "single_task":
            continue
        cells = [_pm((entry["metrics"].get(t) or {}).get(m)) for t, m, _ in columns]
        delta = entry["delta_m"]
        cost = entry.get("cost") or {}  # summaries written before per-model costs have none
        rows.append([f"{name} ({entry['weighting']}, {entry['sharing']})", *cells,
                     "—" if delta["mean"] is None else f"{signed(delta['mean'])} ± {fmt(delta['std'], 2)}",
                     fmt(cost.get("latency_ratio"), 2), fmt(cost.get("params_ratio"), 2)])
    cost = summary["cost"]
    parts = [f"{h} Over seeds {', '.join(str(s) for s in summary['seeds'])}: mean ± std",
             "Delta_m is computed per seed (that seed's multi-task model against that seed's single-task "
             "models), then averaged; std with ddof=1 (0 for one seed). Latency (batch 1) and parameters "
             "are each model's over the single-task models' together, measured at the first seed.",
             table(header, rows)]
    if plot:
        parts.append(f"![Delta_m per variant, mean ± std over seeds]({plot})")
    if summary.get("left_out"):
        parts.append("Not in this study: " + "; ".join(f"{name} ({reason})"
                                                      for name, reason in summary["left_out"].items()) + ".")
    parts.append(f"Cost of the multi-task model ({cost['multi_task']}) relative to running the single-task models: "
                 f"latency x{fmt(cost['latency_ratio'], 2)}, parameters x{fmt(cost['params_ratio'], 2)}, "
                 f"FLOPs x{fmt(cost['flops_ratio'], 2)}.")
    return "\n\n".join(parts)


def baselines_section(config: Config, metrics: dict) -> str:
    """The comparison, for a report on the run's own model only (it is about that model)."""
    path = layout.baselines_summary(config)
    if not path.is_file() or not layout.is_run_model(config, metrics.get("model", "")):
        return ""
    summary = json.loads(path.read_text())
    return (baselines_markdown(summary) + "\n\nDetails: [baselines.md](../baselines/baselines.md), "
            "[summary.json](../baselines/summary.json).")


# ---------------------------------------------------------------------------------------- document
def _frames_section(out_dir: pathlib.Path) -> str:
    link = _plot_link(out_dir, "frames.png", "validation frames")
    if not link:
        return ""
    return ("## Frames\n\nEach frame: predictions (boxes, class overlay, depth) above the ground truth. "
            f"Boxes drawn above score {trained.DISPLAY_SCORE:g}; the metrics use every detection.\n\n{link}")


def render(out_dir: pathlib.Path, metrics: dict, config: Config, history_csv=None) -> str:
    out_dir = pathlib.Path(out_dir)
    inference = metrics.get("inference") or {}
    sources = metrics.get("sources") or {}
    source_line = ", ".join(f"{name} ({count(r.get('examples', 0), 'frame')})" for name, r in sources.items())
    lines = [f"# Evaluation report — {config.experiment}", "",
             f"- model: `{metrics.get('model', '?')}` (tasks: {', '.join(metrics.get('tasks', []))})",
             f"- split: `{metrics.get('split')}`; sources: {source_line or '?'}; model input "
             f"{'x'.join(str(v) for v in metrics.get('image_size', []))} px",
             f"- written {time.strftime('%Y-%m-%d %H:%M')}"]
    if metrics.get("flip_test"):
        lines.append("- flip test: each frame and its mirror image, the two predictions averaged before decoding "
                     "(evaluate.flip_test; twice the inference, and not what the exports and clip run)")
    upscale = metrics.get("upscale_test") or 1.0
    if upscale > 1.0:  # the sizes that ran, as evaluate recorded them with the latency
        height = metrics["image_size"][0]
        size = "x".join(map(str, inference["upscaled_size"]))
        top, bottom = inference["upscale_band_px"]
        seen = "the frame" if (top, bottom) == (0, height) else f"rows {top}-{bottom} of the frame"
        lines.append(f"- upscale test: boxes under {upscale_test.small_height(height):g} px "
                     f"from a second pass on {seen} upscaled {upscale:g}x ({size} px), the rest from the first; segmentation "
                     "averages the two passes there, depth is the first's (evaluate.upscale_test, "
                     "evaluate.upscale_rows; not what the exports and clip run)")
    if inference:
        lines.append(f"- inference: {fmt(inference.get('params'))} parameters, "
                     f"{fmt(inference.get('ms_per_frame'), 2)} ms/frame (batch 1, {inference.get('device', '?')}: "
                     f"{inference.get('measures', '?')}; {inference.get('runs', '?')} runs)")
    parts = ["\n".join(lines), sources_section(metrics), quality_goals_section(metrics)]
    parts += [task_section(out_dir, task, metrics) for task in TASKS]
    parts += [training_section(out_dir, history_csv), _frames_section(out_dir), baselines_section(config, metrics)]
    parts.append(
        "## How these numbers are made\n\n"
        "- Each source is evaluated on its own; a task is scored only on frames labelled for it "
        "(`has_<task>`), and a task without labels is reported absent, never as 0.\n"
        f"- Detection: COCO AP by pycocotools' COCOeval (101-point interpolation, maxDets 100, area all), "
        f"boxes in model-input pixels; decoder top-{metrics.get('top_k')} peaks with score > "
        f"{metrics.get('score_floor')}; ignore regions (e.g. KITTI DontCare) count as crowd regions. Ground "
        f"truth is limited to data.max_boxes boxes per frame.\n"
        "- Segmentation: one confusion matrix over all labelled pixels (ignore = 255 left out); IoU per "
        "class over the split, not averaged per image.\n"
        "- Depth: metres, no median scaling; see the note under the depth table for the two averagings.")
    return "\n\n".join(part for part in parts if part) + "\n"


def write_markdown(out_dir: pathlib.Path, metrics: dict, config: Config, history_csv=None) -> pathlib.Path:
    out_dir = pathlib.Path(out_dir)
    path = out_dir / "report.md"
    atomic.write_text(path, render(out_dir, metrics, config, history_csv))
    return path


def write_report(out_dir: pathlib.Path, metrics: dict, config: Config, frames=None, history_csv=None) -> pathlib.Path:
    """All plots, then report.md, into out_dir."""
    plots.make_plots(out_dir, metrics, config.model.max_depth, frames=frames, history_csv=history_csv,
                     class_set=classes.of_config(config))
    return write_markdown(out_dir, metrics, config, history_csv)


def refresh(config: Config) -> list[pathlib.Path]:
    """Rewrites report.md of every eval folder of the run (e.g. after the baselines stage)."""
    written = []
    if not config.run_dir.is_dir():
        return written
    for folder in sorted(config.run_dir.glob("eval*")):
        metrics_file = folder / "metrics.json"
        if folder.is_dir() and metrics_file.is_file() and (folder / "report.md").exists():
            metrics = json.loads(metrics_file.read_text())
            history = pathlib.Path(metrics.get("model", "")).parent / "history.csv"
            written.append(write_markdown(folder, metrics, config, history if history.is_file() else None))
    return written
