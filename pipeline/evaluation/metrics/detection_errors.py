"""Where a detector's AP goes: the COCO evaluation re-run with one kind of error fixed.

TIDE (Bolya et al. 2020) splits the AP a detector misses into error types by fixing each and measuring
what AP it would then reach. Those fixes answer what limits a CenterNet-style detector:

  classes_fixed   a detection that covers a box of another class (IoU >= CLASS_IOU) but none of its
                  own takes that class: what confusing classes costs (a small pedestrian taken for a
                  cyclist); if a higher-scored detection already found that box, it was a duplicate
                  and is dropped, as TIDE does;
  fitted_sizes    each detection keeps its centre but takes the size of the ground-truth box of its
                  class it overlaps most (IoU >= FIT_IOU, TIDE's background threshold): what the size
                  regression costs;
  fitted_centres  ... keeps its size but takes that box's centre: what the centre (peak cell and
                  offset) costs;
  fitted_boxes    ... takes that ground-truth box whole: what localisation (centre and size) costs.

Like COCO's matching, detections go in score order and each ground-truth box goes to one of them only,
so a fix never turns a found object into a duplicate (two cars side by side keep their own boxes);
a detection that evaluation ignores (inside an ignore region, on no box of its class) is left as it
is. Duplicates that were there stay false positives and missed objects stay missed, so fitted_boxes
still falls short of 1.0 by what the heat map misses or ranks wrongly.
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


def _by_image(ground_truth: list[dict], crowd: bool) -> dict:
    """image_id -> (boxes [N, 4] x1y1x2y2, category ids [N]) of the real (crowd=False) ground truth or
    of the ignore regions (crowd=True)."""
    boxes, classes = defaultdict(list), defaultdict(list)
    for annotation in ground_truth:
        if bool(annotation["iscrowd"]) == crowd:
            boxes[annotation["image_id"]].append(annotation["bbox"])
            classes[annotation["image_id"]].append(annotation["category_id"])
    return {image: (_corners(boxes[image]), np.asarray(classes[image])) for image in boxes}


def _ignored(boxes: np.ndarray, regions) -> np.ndarray:
    """[D] bool: COCO's crowd rule at IoU 0.5 (CLASS_IOU), at least half of the detection inside one
    ignore region; boxes [D, 4] and the regions' x1y1x2y2 corners."""
    if regions is None:
        return np.zeros(len(boxes), bool)
    corners = regions[0]
    lower = np.maximum(boxes[:, None, :2], corners[None, :, :2])
    upper = np.minimum(boxes[:, None, 2:], corners[None, :, 2:])
    inner = np.prod(np.clip(upper - lower, 0, None), axis=2)  # [D, R]
    area = np.maximum(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1), 1e-12)
    return (inner / area[:, None] >= CLASS_IOU).any(axis=1)


def _fix(ground_truth: list[dict], detections: list[dict], fix_one) -> list[dict]:
    """Each image's detections in score order, each through fix_one(detection, its x1y1x2y2 box, the
    image's boxes [N, 4], their IoU with it [N], their classes [N], which are still free [N]) -> (the
    detection, or None to drop it; the index of the box it takes, or None). A detection that evaluation
    ignores, or that overlaps no box by FIT_IOU (the lowest threshold of all the fixes), stays as is."""
    truth, regions = _by_image(ground_truth, crowd=False), _by_image(ground_truth, crowd=True)
    empty = (np.zeros((0, 4)), np.zeros((0,), int))
    per_image = defaultdict(list)
    for index, detection in enumerate(detections):
        per_image[detection["image_id"]].append(index)
    out = list(detections)
    for image, indices in per_image.items():
        indices.sort(key=lambda i: -detections[i]["score"])
        found = _corners([detections[i]["bbox"] for i in indices])
        boxes, classes = truth.get(image, empty)
        ious = box_iou(found, boxes)  # [D, N], once per image
        ignored = _ignored(found, regions.get(image))
        free = np.ones(len(boxes), bool)
        for row, index in enumerate(indices):
            iou, detection = ious[row], detections[index]
            if not (iou >= FIT_IOU).any() or (
                    ignored[row] and _best(iou, classes == detection["category_id"], CLASS_IOU) is None):
                continue
            out[index], claimed = fix_one(detection, found[row], boxes, iou, classes, free)
            if claimed is not None:
                free[claimed] = False
    return [detection for detection in out if detection is not None]


def _best(iou: np.ndarray, usable: np.ndarray, threshold: float):
    """Index of the usable box with the highest IoU if it reaches threshold, else None."""
    iou = np.where(usable, iou, -1.0)
    return int(np.argmax(iou)) if iou.size and iou.max() >= threshold else None


def classes_fixed(ground_truth: list[dict], detections: list[dict]) -> list[dict]:
    """The detections with their class confusions fixed (module doc)."""
    def fix_one(detection, box, boxes, iou, classes, free):
        own = classes == detection["category_id"]
        found = _best(iou, own & free, CLASS_IOU)
        if found is not None or _best(iou, own, CLASS_IOU) is not None:
            return detection, found  # a true positive, or a duplicate of its own class (stays)
        other = _best(iou, ~own, CLASS_IOU)
        if other is None:
            return detection, None
        if not free[other]:
            return None, None  # that box was found already: a duplicate once its class is right
        return {**detection, "category_id": int(classes[other])}, other
    return _fix(ground_truth, detections, fix_one)


def fitted(ground_truth: list[dict], detections: list[dict], size: bool, centre: bool) -> list[dict]:
    """The detections, each given the size and/or the centre of the free ground-truth box of its class
    it overlaps most, IoU >= FIT_IOU (module doc); what is not fitted stays the detection's own."""
    def fix_one(detection, box, boxes, iou, classes, free):
        best = _best(iou, (classes == detection["category_id"]) & free, FIT_IOU)
        if best is None:
            return detection, None
        sized, placed = (boxes[best] if size else box), (boxes[best] if centre else box)
        w, h = (float(v) for v in sized[2:] - sized[:2])
        cx, cy = (float(v) for v in (placed[:2] + placed[2:]) / 2)
        return {**detection, "bbox": [cx - w / 2, cy - h / 2, w, h], "area": w * h}, best
    return _fix(ground_truth, detections, fix_one)


def error_breakdown(evaluator: DetectionEvaluator) -> dict:
    """{fix: {"mAP", "mAP50", "mAP75"}} for each fix in the module doc, over what `evaluator` holds,
    scored by its own COCO run (so exactly as its headline numbers)."""
    truth, found = evaluator.annotations()
    runs = {
        "classes_fixed": classes_fixed(truth, found),
        "fitted_sizes": fitted(truth, found, size=True, centre=False),
        "fitted_centres": fitted(truth, found, size=False, centre=True),
        "fitted_boxes": fitted(truth, found, size=True, centre=True),
    }
    result = {}
    for fix, detections in runs.items():
        m_ap, m_ap50, m_ap75 = evaluator.coco_ap(truth, detections)
        result[fix] = {"mAP": m_ap, "mAP50": m_ap50, "mAP75": m_ap75}
    return result
