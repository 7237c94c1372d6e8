"""Detection metrics: COCO-style AP computed by pycocotools' own COCOeval, fed from memory.

Why COCOeval and not our own AP: the numbers must be comparable with published ones, and COCO's
details (101-point interpolation, greedy matching by score, crowd regions) are easy to get subtly wrong.

Conventions:
  boxes are x1, y1, x2, y2 in pixels (the schema's order); COCO wants x, y, w, h, converted here.
  class ids are indices into `class_names`; COCO category id = index + 1 and image/annotation ids
  start at 1, because COCOeval treats a matched id of 0 as "unmatched".
  ignore regions (KITTI DontCare, crowds) become iscrowd=1 ground truth of every class, so a detection
  inside one is neither a true nor a false positive. COCO matches a detection to a crowd region when
  intersection / detection area >= the IoU threshold.
  COCO keeps the 100 highest-scoring detections per image (maxDets=100): AP is "AP@100".
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.eval arrays are indexed [iou T, recall R, class K, area A, maxDets M]; we use area "all"
# (index 0) and maxDets 100 (index 2) throughout.
_AREA_ALL, _MAX_DETS_100 = 0, 2
# Object-height bands (model-input pixels) of the AP50-by-height breakdown: where small objects lose.
# They are given for a 128-px-high input and scale with the input height (height_bands), so that they
# name the same objects at any input size.
HEIGHT_BANDS = ((0.0, 12.0), (12.0, 24.0), (24.0, float("inf")))
BANDS_REFERENCE_HEIGHT = 128


def height_bands(image_height: int | None) -> tuple:
    """HEIGHT_BANDS in pixels of an image `image_height` px high (None: as given)."""
    scale = 1.0 if not image_height else image_height / BANDS_REFERENCE_HEIGHT
    return tuple((low * scale, high * scale) for low, high in HEIGHT_BANDS)


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """IoU matrix [A, B] of x1y1x2y2 boxes; same definition as COCO (no +1 pixel)."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _boxes(value, name: str) -> np.ndarray:
    boxes = np.asarray(value if value is not None else np.zeros((0, 4)), np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.all(np.isfinite(boxes)):
        raise ValueError(f"{name} must be finite [N, 4] x1y1x2y2 boxes. Received: shape={boxes.shape}")
    return boxes


def _vector(value, length: int, name: str, dtype) -> np.ndarray:
    vector = np.asarray(value if value is not None else np.zeros((0,)), dtype).reshape(-1)
    if vector.shape[0] != length:
        raise ValueError(f"{name} must have one entry per box ({length}). Received: shape={vector.shape}")
    return vector


def _xywh(box) -> list:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)]


def _mean_valid(values: np.ndarray):
    """COCO's own averaging: entries of -1 mean "no ground truth there" and are left out."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _at(evaluator: COCOeval, iou: float) -> int:
    """Index of the IoU threshold nearest `iou` in a COCOeval's thresholds."""
    return int(np.argmin(np.abs(evaluator.params.iouThrs - iou)))


class DetectionEvaluator:
    """Streams images in with `add`, then `result()` runs COCOeval once over everything added."""

    def __init__(self, class_names, image_height: int | None = None):
        """image_height: of the images whose pixels the boxes are in (scales the height bands)."""
        self.class_names = tuple(str(name) for name in class_names)
        self.bands = height_bands(image_height)
        if not self.class_names:
            raise ValueError(f"DetectionEvaluator needs at least one class. Received: class_names={class_names!r}")
        self._images = []          # COCO image records
        self._ground_truth = []    # COCO annotations, crowd (ignore) regions included
        self._detections = []
        self._image_ids = {}       # caller's id -> COCO id, to refuse an image added twice

    def add(self, image_id, gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes,
            ignore_regions=None) -> None:
        """One image: its ground truth, its detections and (optionally) its [R, 4] ignore regions."""
        if image_id in self._image_ids:
            raise ValueError(f"Image added twice to DetectionEvaluator. Received: image_id={image_id!r}")
        num_classes = len(self.class_names)
        gt_boxes = _boxes(gt_boxes, "gt_boxes")
        gt_classes = _vector(gt_classes, len(gt_boxes), "gt_classes", np.int64)
        pred_boxes = _boxes(pred_boxes, "pred_boxes")
        pred_scores = _vector(pred_scores, len(pred_boxes), "pred_scores", np.float64)
        pred_classes = _vector(pred_classes, len(pred_boxes), "pred_classes", np.int64)
        ignore_regions = _boxes(ignore_regions, "ignore_regions")
        for name, classes in (("gt_classes", gt_classes), ("pred_classes", pred_classes)):
            if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
                raise ValueError(f"{name} must be in [0, {num_classes}). Received: {sorted(set(classes.tolist()))}")

        coco_id = len(self._images) + 1
        self._image_ids[image_id] = coco_id
        self._images.append({"id": coco_id})
        for box, cls in zip(gt_boxes, gt_classes):
            self._add_ground_truth(coco_id, box, int(cls), crowd=False)
        for box in ignore_regions:  # an ignore region has no class: it shields detections of every class
            for cls in range(num_classes):
                self._add_ground_truth(coco_id, box, cls, crowd=True)
        for box, score, cls in zip(pred_boxes, pred_scores, pred_classes):
            xywh = _xywh(box)
            self._detections.append({"id": len(self._detections) + 1, "image_id": coco_id,
                                     "category_id": int(cls) + 1, "bbox": xywh, "area": xywh[2] * xywh[3],
                                     "score": float(score), "iscrowd": 0})

    def _add_ground_truth(self, coco_id: int, box, cls: int, crowd: bool) -> None:
        xywh = _xywh(box)
        self._ground_truth.append({"id": len(self._ground_truth) + 1, "image_id": coco_id,
                                   "category_id": cls + 1, "bbox": xywh, "area": xywh[2] * xywh[3],
                                   "iscrowd": int(crowd)})

    def _ap50_by_height(self) -> dict:
        """{class: [AP50 per height band (self.bands), None where the band has no ground truth]}.

        COCOeval's area ranges, with each box's "area" set to its height: a band's AP is COCO's size-range
        AP (ground truth outside the band ignored; a detection outside it that matches nothing ignored,
        one inside it a false positive), like KITTI's difficulty levels by box height.
        """
        def by_height(annotations):
            return [{**a, "area": a["bbox"][3]} for a in annotations]

        def bands_at_50(params):
            params.iouThrs = np.array([0.5])
            params.areaRng = [[low, min(high, 1e10)] for low, high in self.bands]  # the bands only
            params.areaRngLbl = [f"{low:g}-{high:g}" for low, high in self.bands]

        evaluator = self._cocoeval(by_height(self._ground_truth), by_height(self._detections),
                                   configure=bands_at_50)
        precision = evaluator.eval["precision"][0, :, :, :, _MAX_DETS_100]  # [R, K, bands]
        return {name: [_mean_valid(precision[:, k, band]) for band in range(len(self.bands))]
                for k, name in enumerate(self.class_names)}

    def annotations(self) -> tuple[list[dict], list[dict]]:
        """(ground truth, detections) as the COCO annotation dicts added so far (ignore regions are the
        ground truth's iscrowd=1 entries)."""
        return self._ground_truth, self._detections

    def coco_ap(self, ground_truth: list[dict], detections: list[dict]) -> tuple:
        """(mAP, mAP50, mAP75) of these annotations on the images added, scored as result() scores: for
        what-if evaluations (pipeline/evaluation/metrics/detection_errors.py)."""
        evaluator = self._cocoeval(ground_truth, detections)
        precision = evaluator.eval["precision"][:, :, :, _AREA_ALL, _MAX_DETS_100]
        at50, at75 = (_at(evaluator, t) for t in (0.5, 0.75))
        return _mean_valid(precision), _mean_valid(precision[at50]), _mean_valid(precision[at75])

    def _cocoeval(self, ground_truth, detections, configure=None) -> COCOeval:
        """COCOeval run over the images added (evaluate + accumulate); configure(params) before it runs."""
        evaluator = COCOeval(self._coco(ground_truth), self._coco(detections), "bbox")
        if configure:
            configure(evaluator.params)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; we report ourselves
            evaluator.evaluate()
            evaluator.accumulate()
        return evaluator

    def _coco(self, annotations) -> COCO:
        coco = COCO()
        coco.dataset = {"images": self._images, "annotations": annotations,
                        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def result(self) -> dict:
        """mAP (AP@[.5:.95]), mAP50, mAP75, AR100, per-class AP, PR curves at IoU 0.5 and counts.

        Classes without ground truth are left out of the per-class dicts (COCO gives -1, which is "not
        measured", not 0). With no ground truth at all the metrics are None, with "absent" and a "reason".
        """
        gt_per_class = {name: 0 for name in self.class_names}
        for annotation in self._ground_truth:
            if not annotation["iscrowd"]:
                gt_per_class[self.class_names[annotation["category_id"] - 1]] += 1
        counts = {"examples": len(self._images), "ground_truth_boxes": sum(gt_per_class.values()),
                  "detections": len(self._detections), "per_class_ground_truth": gt_per_class}
        if counts["ground_truth_boxes"] == 0:
            reason = "no images added" if not self._images else "no ground-truth boxes in the evaluated images"
            return {"mAP": None, "mAP50": None, "mAP75": None, "AR100": None, "per_class_AP": {},
                    "per_class_AP50": {}, "pr_curves": None, "absent": True, "reason": reason, **counts}

        evaluator = self._cocoeval(self._ground_truth, self._detections)
        precision = evaluator.eval["precision"][:, :, :, _AREA_ALL, _MAX_DETS_100]  # [T, R, K]
        recall = evaluator.eval["recall"][:, :, _AREA_ALL, _MAX_DETS_100]           # [T, K]
        scores = evaluator.eval["scores"][:, :, :, _AREA_ALL, _MAX_DETS_100]
        iou_thresholds = evaluator.params.iouThrs
        at50, at75 = _at(evaluator, 0.5), _at(evaluator, 0.75)

        per_class, per_class50, curves, curve_scores = {}, {}, {}, {}
        by_height = self._ap50_by_height()
        for k, name in enumerate(self.class_names):
            ap = _mean_valid(precision[:, :, k])
            if ap is None:  # no ground truth of this class: absent, not 0
                continue
            per_class[name] = ap
            per_class50[name] = _mean_valid(precision[at50, :, k])
            curves[name] = [float(p) for p in precision[at50, :, k]]
            curve_scores[name] = [float(s) for s in scores[at50, :, k]]
        return {
            "mAP": _mean_valid(precision),
            "mAP50": _mean_valid(precision[at50]),
            "mAP75": _mean_valid(precision[at75]),
            "AR100": _mean_valid(recall),
            "per_class_AP": per_class,
            "per_class_AP50": per_class50,
            "AP50_by_height": {"bands_px": [[low, high if high != float("inf") else None]  # JSON has no inf
                                             for low, high in self.bands],
                               "per_class": {name: by_height[name] for name in per_class50}},
            # COCO's interpolated precision at its 101 recall thresholds; "scores" is the detection score
            # reached at each recall, handy for picking a display threshold in the clip stage.
            "pr_curves": {"iou": float(iou_thresholds[at50]),
                          "recall": [float(r) for r in evaluator.params.recThrs],
                          "precision": curves, "scores": curve_scores},
            **counts,
        }
