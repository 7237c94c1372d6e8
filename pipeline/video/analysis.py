"""Per-frame analysis of a clip: one frame's raw prediction (model-input pixels) -> what the JSONL
record, the overlay, the stability and the label metrics need; and the optional full-resolution maps.

Analysis (stability, shares, distances) uses the model-resolution maps with any letterbox padding
cropped off: the model's own pixels, not upsampled ones.
"""
from __future__ import annotations

import pathlib

import cv2
import numpy as np

from data.classes import DEFAULT, ClassSet
from pipeline.video.fitting import Fit


def frame_prediction(out: dict, i: int) -> dict:
    return {key: np.asarray(value)[i] for key, value in out.items()
            if key != "resized" and value is not None and np.ndim(value) > 0}


def analyse(pred: dict, fit: Fit, threshold: float, class_set: ClassSet = DEFAULT) -> dict:
    """One frame's raw prediction (model-input pixels) -> what the JSONL, overlay and metrics need."""
    result = {"segmentation": None, "depth": None, "detections": None, "kept": None}
    for task in ("segmentation", "depth"):
        if task in pred:
            model_map = pred[task]
            if model_map.shape[:2] != (fit.model_h, fit.model_w):  # a runtime that answered at another size
                model_map = cv2.resize(model_map, (fit.model_w, fit.model_h),
                                       interpolation=cv2.INTER_NEAREST if task == "segmentation" else
                                       cv2.INTER_LINEAR)
            result[task] = np.ascontiguousarray(fit.crop(model_map))
    if "boxes" in pred:
        count = int(pred["num_detections"]) if "num_detections" in pred else len(pred["scores"])
        scores = np.asarray(pred["scores"], np.float32).reshape(-1)
        boxes = fit.boxes_to_frame(pred["boxes"])
        classes = np.asarray(pred["classes"], np.int32).reshape(-1)
        # Every slot (not only num_detections) goes to the metrics; boxes that lie wholly in the
        # letterbox padding have no area once clipped to the frame and are dropped.
        real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (classes >= 0)
        real &= classes < len(class_set.detection)
        result["detections"] = (boxes[real], scores[real], classes[real])
        keep = real & (scores >= threshold) & (np.arange(len(scores)) < max(count, 0))
        kept_boxes, kept_scores, kept_classes = boxes[keep], scores[keep], classes[keep]
        distances = [box_depth(result["depth"], box, fit) for box in kept_boxes] \
            if result["depth"] is not None else None
        result["kept"] = (kept_boxes, kept_scores, kept_classes, distances)
    return result


def box_depth(depth_content: np.ndarray, frame_box, fit: Fit) -> float:
    """Median predicted depth inside a box (at least one pixel, however small the box)."""
    x1, y1, x2, y2 = fit.boxes_to_content(frame_box)[0]
    height, width = depth_content.shape
    left, top = int(np.clip(np.floor(x1), 0, width - 1)), int(np.clip(np.floor(y1), 0, height - 1))
    right, bottom = int(np.clip(np.ceil(x2), left + 1, width)), int(np.clip(np.ceil(y2), top + 1, height))
    return float(np.median(depth_content[top:bottom, left:right]))


def jsonl_record(index: int, time_s: float, latency_ms: float, analysis: dict,
                 class_set: ClassSet = DEFAULT) -> dict:
    record = {"frame": index, "time_s": round(float(time_s), 4), "latency_ms": round(latency_ms, 2)}
    if analysis["kept"] is not None:
        boxes, scores, classes, distances = analysis["kept"]
        record["boxes"] = [[round(float(v), 1) for v in box] for box in boxes]
        record["scores"] = [round(float(s), 3) for s in scores]
        record["classes"] = [class_set.detection[int(c)] for c in classes]
        distances = [round(d, 2) if np.isfinite(d) else None for d in distances] if distances is not None else None
        record["distance_m"] = distances
        record["nearest_m"] = min((d for d in distances if d is not None), default=None) if distances else None
    else:  # a model without detection: say "not predicted", not "nothing there"
        record.update(boxes=None, scores=None, classes=None, distance_m=None, nearest_m=None)
    seg = analysis["segmentation"]
    if seg is not None:
        names = class_set.segmentation
        counts = np.bincount(seg.reshape(-1), minlength=len(names))[:len(names)]
        record["segmentation_shares"] = {n: round(float(c) / seg.size, 4) for n, c in zip(names, counts)}
    else:
        record["segmentation_shares"] = None
    return record




def save_maps(staging: pathlib.Path, index: int, analysis: dict, fit: Fit) -> str:
    """maps/<frame>.npz with the class map and depth at the frame's resolution."""
    arrays = {}
    if analysis["segmentation"] is not None:
        arrays["segmentation"] = fit.to_frame(analysis["segmentation"], nearest=True).astype(np.uint8)
    if analysis["depth"] is not None:
        arrays["depth"] = fit.to_frame(analysis["depth"], nearest=False).astype(np.float32)
    name = f"maps/{index:06d}.npz"
    np.savez_compressed(staging / name, **arrays)
    return name
