"""Where a detector's AP goes: the COCO evaluation re-run with one kind of error fixed.

TIDE (Bolya et al. 2020) splits the AP a detector misses into error types by fixing each and measuring
what AP it would then reach. Three of those fixes answer what limits a CenterNet-style detector:

  classes_fixed   a detection that covers a box of another class (IoU >= CLASS_IOU) but none of its
                  own takes that class: what confusing classes costs (a small pedestrian taken for a
                  cyclist); if a higher-scored detection already found that box, it was a duplicate
                  and is dropped, as TIDE does;
  fitted_sizes    each detection keeps its centre but takes the size of the ground-truth box of its
                  class it overlaps most (IoU >= FIT_IOU, TIDE's background threshold): what the size
                  regression costs;
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


def _ignored(box: np.ndarray, regions) -> bool:
    """COCO's crowd rule at IoU 0.5 (CLASS_IOU): at least half of the detection lies inside one ignore
    region."""
    if regions is None:
        return False
    corners = regions[0]
    inner = np.clip(np.minimum(box[2:], corners[:, 2:]) - np.maximum(box[:2], corners[:, :2]), 0, None)
    area = max(float(np.prod(box[2:] - box[:2])), 1e-12)
    return bool((np.prod(inner, axis=1) / area >= CLASS_IOU).any())


def _fix(ground_truth: list[dict], detections: list[dict], fix_one) -> list[dict]:
    """Detections in score order, each through fix_one(detection, its x1y1x2y2 box, the image's boxes
    [N, 4], their IoU with it [N], their classes [N], which are still free [N]) -> (the detection, or
    None to drop it; the index of the box it takes, or None). One that evaluation ignores stays as is."""
    truth, regions = _by_image(ground_truth, crowd=False), _by_image(ground_truth, crowd=True)
    empty = (np.zeros((0, 4)), np.zeros((0,), int))
    taken = defaultdict(set)
    out = [None] * len(detections)
    for index in sorted(range(len(detections)), key=lambda i: -detections[i]["score"]):
        detection, image = detections[index], detections[index]["image_id"]
        box = _corners(detection["bbox"])[0]
        boxes, classes = truth.get(image, empty)
        iou = box_iou(box[None], boxes)[0]
        own = iou[classes == detection["category_id"]]
        if (own.size == 0 or own.max() < CLASS_IOU) and _ignored(box, regions.get(image)):
            out[index] = detection
            continue
        free = np.ones(len(iou), bool)
        free[list(taken[image])] = False
        out[index], claimed = fix_one(detection, box, boxes, iou, classes, free)
        if claimed is not None:
            taken[image].add(claimed)
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


def fitted(ground_truth: list[dict], detections: list[dict], whole_box: bool) -> list[dict]:
    """The detections, each given the box (whole_box) or the box's size around its own centre of the
    free ground-truth box of its class it overlaps most, IoU >= FIT_IOU (module doc)."""
    def fix_one(detection, box, boxes, iou, classes, free):
        best = _best(iou, (classes == detection["category_id"]) & free, FIT_IOU)
        if best is None:
            return detection, None
        x1, y1, x2, y2 = (float(v) for v in boxes[best])
        w, h = x2 - x1, y2 - y1
        if not whole_box:
            x1, y1 = (box[0] + box[2] - w) / 2, (box[1] + box[3] - h) / 2
        return {**detection, "bbox": [float(x1), float(y1), w, h], "area": w * h}, best
    return _fix(ground_truth, detections, fix_one)


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
