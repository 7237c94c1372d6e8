"""PNG plots of the evaluation report (matplotlib, Agg backend: no display needed).

Every plot reads the JSON-ready metric dicts of pipeline/evaluation/metrics, so a report can be re-plotted from
metrics.json alone; only the frame grid needs the frames themselves. A plot whose data is missing
(task absent, no pixels in a bin) is skipped, not drawn empty.
"""
from __future__ import annotations

import csv
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data import schema  # noqa: E402
from data.classes import DEFAULT, ClassSet  # noqa: E402
from data.vocabulary import TASKS  # noqa: E402
from pipeline import draw, trained  # noqa: E402
from pipeline.evaluation.metrics import is_absent  # noqa: E402

DPI = 110
DELTA1_LOG = math.log(1.25)


def _rgb(colour) -> tuple:
    return tuple(float(c) / 255.0 for c in colour)


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def pr_curves(detection: dict, path: pathlib.Path, title: str = "",
              class_set: ClassSet = DEFAULT) -> pathlib.Path | None:
    """Precision-recall curve per class at IoU 0.5 (COCO's interpolated precision), in the classes'
    colours."""
    curves = (detection or {}).get("pr_curves")
    if is_absent(detection) or not curves or not curves.get("precision"):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    recall = np.asarray(curves["recall"])
    for name, precision in curves["precision"].items():
        ap50 = detection.get("per_class_AP50", {}).get(name)
        gt = detection.get("per_class_ground_truth", {}).get(name, "?")
        colour = _rgb(class_set.detection_colours[class_set.detection.index(name)]) \
            if name in class_set.detection else None
        label = f"{name}: AP50 {ap50:.3f} ({gt} boxes)" if ap50 is not None else name
        # Pure yellow/cyan vanish on white: darken the line colour a little.
        ax.plot(recall, np.clip(precision, 0, 1), label=label, lw=2,
                color=None if colour is None else tuple(0.8 * c for c in colour))
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"precision-recall at IoU {curves.get('iou', 0.5):.2f}{title}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def confusion_matrix(segmentation: dict, path: pathlib.Path, title: str = "") -> pathlib.Path | None:
    """Row-normalised confusion matrix: row = ground truth class, what share went to each prediction."""
    if is_absent(segmentation) or not segmentation.get("confusion_matrix"):
        return None
    names = list(segmentation.get("per_class_IoU") or [str(i) for i in range(len(segmentation["confusion_matrix"]))])
    counts = np.asarray(segmentation["confusion_matrix"], np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    fig, ax = plt.subplots(figsize=(0.62 * len(names) + 2.4, 0.55 * len(names) + 1.8))
    image = ax.imshow(np.nan_to_num(share, nan=0.0), cmap="Blues", vmin=0, vmax=1)
    for r in range(len(names)):
        for c in range(len(names)):
            if np.isnan(share[r, c]) or share[r, c] < 0.005:
                continue
            ax.text(c, r, f"{share[r, c]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if share[r, c] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), [f"{n} ({int(t)} px)" if t else f"{n} (none)"
                                      for n, t in zip(names, totals[:, 0])], fontsize=8)
    ax.set(xlabel="predicted class", ylabel="ground-truth class",
           title=f"segmentation confusion (row-normalised){title}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def depth_by_distance(depth: dict, path: pathlib.Path, title: str = "") -> pathlib.Path | None:
    """AbsRel and RMSE per 10 m ground-truth distance bin, with the pixel count of each bin."""
    bins = (depth or {}).get("by_distance")
    if is_absent(depth) or not bins:
        return None
    edges = np.asarray(bins["bin_edges_m"])
    centres = (edges[:-1] + edges[1:]) / 2
    has = np.asarray([v is not None for v in bins["abs_rel"]])
    if not has.any():
        return None
    abs_rel = np.asarray([v if v is not None else np.nan for v in bins["abs_rel"]])
    rmse = np.asarray([v if v is not None else np.nan for v in bins["rmse"]])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(centres[has], abs_rel[has], "o-", color="tab:blue", label="AbsRel")
    ax.set(xlabel="ground-truth distance (m)", ylabel="AbsRel", title=f"depth error vs distance{title}")
    # Headroom above the highest point keeps the legend off the curves.
    ax.set_ylim(0, np.nanmax(abs_rel[has]) * 1.35 or 1)
    twin = ax.twinx()
    twin.plot(centres[has], rmse[has], "s--", color="tab:red", label="RMSE (m)")
    twin.set_ylabel("RMSE (m)")
    twin.set_ylim(0, np.nanmax(rmse[has]) * 1.35 or 1)
    for x, pixels in zip(centres[has], np.asarray(bins["pixels"])[has]):
        ax.annotate(f"{_short(pixels)} px", (x, 0), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=7, color="gray")
    ax.set_xticks(edges)
    ax.grid(alpha=0.3)
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
    return _save(fig, path)


def _short(number) -> str:
    number = float(number)
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if number >= size:
            return f"{number / size:.1f}{unit}"
    return str(int(number))


def depth_log_error(depth: dict, path: pathlib.Path, title: str = "") -> pathlib.Path | None:
    """Histogram of log(pred) - log(gt); the dotted lines are the delta1 band (ratio < 1.25)."""
    histogram = (depth or {}).get("log_error_histogram")
    if is_absent(depth) or not histogram or not sum(histogram["counts"]):
        return None
    edges = np.asarray(histogram["bin_edges"])
    counts = np.asarray(histogram["counts"], np.float64)
    share = counts / counts.sum()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", color="tab:purple", alpha=0.8)
    for x in (-DELTA1_LOG, DELTA1_LOG):
        ax.axvline(x, ls=":", color="black")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set(xlabel="log(predicted) - log(true)   (< 0: too near, > 0: too far; end bins hold outliers)",
           ylabel="share of valid pixels", title=f"depth log-error{title}")
    ax.text(DELTA1_LOG, ax.get_ylim()[1] * 0.95, " delta1 band", fontsize=8, va="top")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def training_curves(history_csv: pathlib.Path, path: pathlib.Path) -> pathlib.Path | None:
    """From the train stage's history.csv, per epoch: the unweighted task losses (one colour per task,
    train solid, validation dashed; log axis), the weighted total that the optimiser minimises (its own
    linear panel: with uncertainty weighting the s/2 terms make it negative), the effective task
    weights, the gradient conflict (cosine of each task pair's gradients on the shared kernel,
    cos_<a>_<b>, when logged) and the learning rate."""
    if history_csv is None or not pathlib.Path(history_csv).is_file():
        return None
    with pathlib.Path(history_csv).open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None

    def number(value):  # "" (an epoch without validation), Keras' "NA" or no column: no point
        try:
            return float(value)
        except (TypeError, ValueError):
            return np.nan

    def column(name):
        return np.asarray([number(row.get(name)) for row in rows])

    def positive(values):  # a log axis cannot show <= 0
        return np.where(values > 0, values, np.nan)

    def validated(values):  # the epochs that validated (train.validate_every), so the line joins them
        keep = np.isfinite(values)
        return epochs[keep], values[keep]

    epochs = column("epoch") + 1
    tasks = [task for task in TASKS if f"{task}_loss" in rows[0]]
    has_lr = "learning_rate" in rows[0]
    conflicts = [name for name in rows[0] if name.startswith("cos_")]
    fig, grid = plt.subplots(2, 3, figsize=(15, 7.4))
    unweighted, weighted, weights, conflict, rate, spare = grid.ravel()
    spare.set_axis_off()
    for index, task in enumerate(tasks):
        colour = f"C{index}"
        unweighted.plot(epochs, positive(column(f"{task}_loss")), "-o", ms=3, color=colour, label=f"{task} train")
        if f"val_{task}_loss" in rows[0]:
            unweighted.plot(*validated(positive(column(f"val_{task}_loss"))), "--", color=colour, label=f"{task} val")
        if f"{task}_weight" in rows[0]:
            weights.plot(epochs, column(f"{task}_weight"), "-o", ms=3, color=colour, label=task)
    if "val_task_loss_sum" in rows[0]:
        unweighted.plot(*validated(positive(column("val_task_loss_sum"))), ":", color="black",
                        label="sum of task losses, val (checkpoint metric)")
    unweighted.set(title="task losses (unweighted)", xlabel="epoch", yscale="log")
    for name, style, label in (("loss", "-o", "train"), ("val_loss", "--", "val")):
        if name in rows[0]:
            weighted.plot(*validated(column(name)), style, ms=3, color="gray", label=label)
    weighted.axhline(0, color="black", lw=0.6)
    weighted.set(title="weighted total loss (the objective; may be < 0)", xlabel="epoch")
    weights.set(title="effective task weights", xlabel="epoch")
    if has_lr:
        rate.plot(epochs, column("learning_rate"), "-", color="gray")
        rate.set(title="learning rate (end of epoch)", xlabel="epoch")
        rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    else:
        rate.set_axis_off()
    if conflicts:
        for index, name in enumerate(conflicts):
            pair = name[len("cos_"):].replace("_", " / ", 1) if name.count("_") == 2 else name[len("cos_"):]
            conflict.plot(epochs, column(name), "-o", ms=3, color=f"C{index + 3}", label=pair)
        conflict.axhline(0.0, color="gray", lw=0.8)
        conflict.set(title="gradient conflict (cosine, shared kernel)", xlabel="epoch", ylim=(-1.05, 1.05))
    else:
        conflict.set_axis_off()
    for ax in grid.ravel():
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def baselines_delta_m(summary: dict, path: pathlib.Path) -> pathlib.Path | None:
    """Delta_m of every multi-task variant (mean ± std over seeds), from baselines/summary.json."""
    entries = [(name, entry["delta_m"]) for name, entry in summary.get("models", {}).items()
               if name != "single_task" and entry["delta_m"].get("mean") is not None]
    if not entries:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(entries) + 1.4))
    names = [name for name, _ in entries]
    means = [delta["mean"] for _, delta in entries]
    stds = [delta["std"] or 0.0 for _, delta in entries]
    ax.barh(range(len(entries)), means, xerr=stds, capsize=3,
            color=["C2" if m >= 0 else "C3" for m in means])
    ax.set_yticks(range(len(entries)), names)
    ax.invert_yaxis()
    ax.axvline(0.0, color="gray", lw=0.8)
    seeds = summary.get("seeds") or []
    ax.set(xlabel="Delta_m vs single-task models (%)", title=f"multi-task variants, {len(seeds)} seed(s)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ frames
def _scale(frame_size, target_width: int = 288) -> int:
    return max(1, int(math.ceil(target_width / frame_size[1])))


def _up(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _blank(shape, factor) -> np.ndarray:
    return np.full((shape[0] * factor, shape[1] * factor, 3), 200, np.uint8)


def _boxes_tile(image, boxes, classes, scores, factor, class_set):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * factor
    return draw.draw_boxes(_up(image, factor), boxes, classes, scores, thickness=2, class_set=class_set)


def _classes_tile(image, segmentation, factor, class_set):
    labelled = segmentation != schema.IGNORE
    overlay = draw.blend(image, draw.colorize_segmentation(segmentation, class_set), alpha=0.7)
    return _up(np.where(labelled[..., None], overlay, image), factor)


def frame_tiles(frame: dict, max_depth: float, class_set: ClassSet = DEFAULT) -> tuple[list, list]:
    """([pred boxes, pred classes, pred depth], [GT boxes, GT classes, GT depth]) as (RGB, caption)."""
    image, gt, pred = frame["image"], frame["gt"], frame["pred"]
    factor = _scale(image.shape)
    top, bottom = [], []
    if "scores" in pred:
        keep = pred["scores"] > trained.DISPLAY_SCORE
        top.append((_boxes_tile(image, pred["boxes"][keep], pred["classes"][keep], pred["scores"][keep], factor,
                                class_set),
                    f"predicted boxes (score > {trained.DISPLAY_SCORE})"))
    else:
        top.append((_blank(image.shape, factor), "no detection head"))
    if "segmentation" in pred:
        top.append((_classes_tile(image, pred["segmentation"], factor, class_set), "predicted classes"))
    else:
        top.append((_blank(image.shape, factor), "no segmentation head"))
    if "depth" in pred:
        top.append((_up(draw.colorize_depth(pred["depth"], max_depth), factor), "predicted depth"))
    else:
        top.append((_blank(image.shape, factor), "no depth head"))

    if gt["has_detection"]:
        bottom.append((_boxes_tile(image, gt["boxes"], gt["classes"], None, factor, class_set), "true boxes"))
    else:
        bottom.append((_up(image, factor), "true boxes: not labelled"))
    if gt["has_segmentation"]:
        bottom.append((_classes_tile(image, gt["segmentation"], factor, class_set), "true classes (ignore: as is)"))
    else:
        bottom.append((_up(image, factor), "true classes: not labelled"))
    if gt["has_depth"]:
        bottom.append((_up(draw.colorize_depth(gt["depth"], max_depth), factor),
                       "true depth (black: no measurement)"))
    else:
        bottom.append((_blank(image.shape, factor), "true depth: not labelled"))
    return top, bottom


def frame_grid(frames: list[dict], path: pathlib.Path, max_depth: float,
               class_set: ClassSet = DEFAULT) -> pathlib.Path | None:
    """Per frame: predictions above ground truth, then one legend of the class colours."""
    if not frames:
        return None
    rows = []
    for frame in frames:
        rows += list(frame_tiles(frame, max_depth, class_set))
    tile_h, tile_w = rows[0][0][0].shape[:2]
    width = 3 * 3.4
    row_h = width / 3 * tile_h / tile_w + 0.3
    legend_h = 0.5  # inches kept free under the tiles for the colour legend
    fig, axes = plt.subplots(len(rows), 3, figsize=(width, row_h * len(rows) + legend_h), squeeze=False)
    for r, row in enumerate(rows):
        for c, (tile, text) in enumerate(row):
            ax = axes[r][c]
            ax.imshow(tile)
            ax.set_title(text, fontsize=8, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
        if r % 2 == 0:
            key = frames[r // 2]["key"][-90:]
            lines = "\n".join(key[i:i + 30] for i in range(0, len(key), 30))  # long keys wrap
            axes[r][0].set_ylabel(f"frame {r // 2 + 1}\n{lines}", fontsize=7)
    # The legend lists the classes of the tasks the frames show (a segmentation-only model: no boxes).
    pixels = any("segmentation" in f["pred"] or f["gt"]["has_segmentation"] for f in frames)
    boxes = any("scores" in f["pred"] or f["gt"]["has_detection"] for f in frames)
    handles = [matplotlib.patches.Patch(color=_rgb(colour), label=name)
               for name, colour in zip(class_set.segmentation, class_set.segmentation_colours) if pixels]
    handles += [matplotlib.lines.Line2D([], [], color=tuple(0.8 * c for c in _rgb(colour)), lw=2,
                                        label=f"box: {name}")
                for name, colour in zip(class_set.detection, class_set.detection_colours) if boxes]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (row_h * len(rows) + legend_h), 1, 1))
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- all
def plot_names(source: str, primary: bool) -> dict:
    """File names of one source's plots; the primary source's have no suffix."""
    suffix = "" if primary else f"-{source}"
    return {"detection": f"pr_curves{suffix}.png", "segmentation": f"confusion_matrix{suffix}.png",
            "depth_distance": f"depth_error_vs_distance{suffix}.png",
            "depth_log_error": f"depth_log_error{suffix}.png"}


def make_plots(out_dir: pathlib.Path, metrics: dict, max_depth: float, frames=None,
               history_csv=None, class_set: ClassSet = DEFAULT) -> list[pathlib.Path]:
    """Every PNG of the report into out_dir, drawn in `class_set`'s colours; returns those written."""
    out_dir = pathlib.Path(out_dir)
    written = []
    sources = metrics.get("sources") or {metrics.get("primary_source", "data"): metrics}
    primary = metrics.get("primary_source", next(iter(sources)))
    for name, result in sources.items():
        files = plot_names(name, name == primary)
        title = f" ({name})" if len(sources) > 1 else ""
        written += [pr_curves(result.get("detection"), out_dir / files["detection"], title, class_set),
                    confusion_matrix(result.get("segmentation"), out_dir / files["segmentation"], title),
                    depth_by_distance(result.get("depth"), out_dir / files["depth_distance"], title),
                    depth_log_error(result.get("depth"), out_dir / files["depth_log_error"], title)]
    written.append(training_curves(history_csv, out_dir / "training_curves.png"))
    if frames:
        written.append(frame_grid(frames, out_dir / "frames.png", max_depth, class_set))
    return [path for path in written if path is not None]
