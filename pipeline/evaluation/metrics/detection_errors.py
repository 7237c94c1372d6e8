"""Where a detector's AP goes: the COCO evaluation re-run with one kind of error fixed.

TIDE (Bolya et al. 2020) splits the AP a detector misses into error types by fixing each and measuring
what AP it would then reach. Three of those fixes answer what limits a CenterNet-style detector:

  classes_fixed   a detection that overlaps no box of its own class by IoU >= CLASS_IOU but one of another
                  class does takes that class: what confusing classes costs (a small pedestrian taken
                  for a cyclist);
  fitted_sizes    each detection keeps its centre but takes the size of the ground-truth box of its
                  class it overlaps most (IoU >= FIT_IOU, TIDE's background threshold): what the size
                  regression costs;
  fitted_boxes    ... takes that ground-truth box whole: what localisation (centre and size) costs.

Duplicates stay false positives (two detections fitted to one box match it once), missed objects stay
missed, so fitted_boxes still falls short of 1.0 by what the heat map misses or ranks wrongly.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from pipeline.evaluation.metrics.detection import DetectionEvaluator, box_iou

# TIDE's background threshold: a detection overlapping a box of its class by less is a false positive
# that no box fit explains.
FIT_IOU = 0.1
# TIDE's foreground threshold (at AP50): a detection on another class's box by this much is a confusion.
CLASS_IOU = 0.5


def _corners(xywh) -> np.ndarray:
    xywh = np.asarray(xywh, np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _real_boxes(ground_truth: list[dict]) -> dict:
    """image_id -> (boxes [N, 4] x1y1x2y2, category ids [N]) of the real (non-crowd) ground truth."""
    boxes, classes = defaultdict(list), defaultdict(list)
    for annotation in ground_truth:
        if not annotation["iscrowd"]:
            boxes[annotation["image_id"]].append(annotation["bbox"])
            classes[annotation["image_id"]].append(annotation["category_id"])
    return {image: (_corners(boxes[image]), np.asarray(classes[image])) for image in boxes}


def _overlaps(detection: dict, truth: dict):
    """(IoU with each real box of the detection's image [N], their category ids [N]); empty if none."""
    boxes, classes = truth.get(detection["image_id"], (np.zeros((0, 4)), np.zeros((0,), int)))
    return box_iou(_corners(detection["bbox"]), boxes)[0], classes


def classes_fixed(ground_truth: list[dict], detections: list[dict]) -> list[dict]:
    """The detections, each one that overlaps no box of its class by IoU >= CLASS_IOU but a box of
    another class by that much relabelled to that box's class; the others unchanged."""
    truth, out = _real_boxes(ground_truth), []
    for detection in detections:
        iou, classes = _overlaps(detection, truth)
        own = iou[classes == detection["category_id"]]
        other = np.where(classes != detection["category_id"], iou, -1.0)
        if (own.size == 0 or own.max() < CLASS_IOU) and other.size and other.max() >= CLASS_IOU:
            detection = {**detection, "category_id": int(classes[int(np.argmax(other))])}
        out.append(detection)
    return out


def fitted(ground_truth: list[dict], detections: list[dict], whole_box: bool) -> list[dict]:
    """The detections, each overlapping a real (non-crowd) box of its class by IoU >= FIT_IOU given that
    box (whole_box) or that box's size around its own centre; the others unchanged."""
    truth, out = _real_boxes(ground_truth), []
    for detection in detections:
        iou, classes = _overlaps(detection, truth)
        iou = np.where(classes == detection["category_id"], iou, -1.0)
        if not iou.size or iou.max() < FIT_IOU:
            out.append(detection)
            continue
        x1, y1, x2, y2 = (float(v) for v in truth[detection["image_id"]][0][int(np.argmax(iou))])
        w, h = x2 - x1, y2 - y1
        if not whole_box:
            x1 = detection["bbox"][0] + (detection["bbox"][2] - w) / 2
            y1 = detection["bbox"][1] + (detection["bbox"][3] - h) / 2
        out.append({**detection, "bbox": [x1, y1, w, h], "area": w * h})
    return out


def error_breakdown(evaluator: DetectionEvaluator) -> dict:
    """{fix: {"mAP", "mAP50", "mAP75"}} for each fix in the module doc, over what `evaluator` holds,
    scored by its own COCO run (so exactly as its headline numbers)."""
    truth, found = evaluator.annotations()
    runs = {
        "classes_fixed": classes_fixed(truth, found),
        "fitted_sizes": fitted(truth, found, whole_box=False),
        "fitted_boxes": fitted(truth, found, whole_box=True),
    }
    result = {}
    for fix, detections in runs.items():
        m_ap, m_ap50, m_ap75 = evaluator.coco_ap(truth, detections)
        result[fix] = {"mAP": m_ap, "mAP50": m_ap50, "mAP75": m_ap75}
    return result
