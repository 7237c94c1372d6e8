"""Segmentation metrics from one streaming confusion matrix (rows = ground truth, columns = prediction).

A confusion matrix is exact under streaming: IoU over the whole split, not a mean of per-image IoUs
(the Cityscapes/PASCAL convention), and it is cheap (np.bincount) and plottable.
"""
from __future__ import annotations

import numpy as np


class SegmentationEvaluator:
    """`add(gt, pred)` with class-id maps ([H, W] or a batch [B, H, W]); take argmax of logits first."""

    def __init__(self, num_classes: int, ignore: int = 255, class_names=None):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1. Received: num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.ignore = ignore
        names = tuple(str(n) for n in class_names) if class_names is not None else \
            tuple(str(i) for i in range(self.num_classes))
        if len(names) != self.num_classes:
            raise ValueError(f"class_names must have num_classes={self.num_classes} entries. Received: {names}")
        self.class_names = names
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.examples = 0

    def add(self, gt, pred) -> None:
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape or gt.ndim not in (2, 3):
            raise ValueError(f"gt and pred must be same-shape [H, W] or [B, H, W] class ids. "
                             f"Received: gt.shape={gt.shape}, pred.shape={pred.shape}")
        self.examples += 1 if gt.ndim == 2 else gt.shape[0]
        gt, pred = gt.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
        keep = gt != self.ignore
        gt, pred = gt[keep], pred[keep]
        k = self.num_classes
        # Out-of-range ids would silently land in another cell of the flattened matrix: refuse them.
        for name, ids in (("gt", gt), ("pred", pred)):
            if ids.size and (ids.min() < 0 or ids.max() >= k):
                raise ValueError(f"{name} class ids must be in [0, {k}) (or {self.ignore} in gt). "
                                 f"Received: min={ids.min()}, max={ids.max()}")
        self.confusion += np.bincount(gt * k + pred, minlength=k * k).reshape(k, k)

    def result(self) -> dict:
        """mIoU over classes with a non-empty union (present in GT or predictions); absent classes -> None."""
        confusion = self.confusion
        pixels = int(confusion.sum())
        counts = {"examples": self.examples, "pixels": pixels, "confusion_matrix": confusion.tolist()}
        if pixels == 0:
            reason = "no images added" if not self.examples else "every ground-truth pixel is ignore"
            return {"mIoU": None, "pixel_accuracy": None, "per_class_IoU": {n: None for n in self.class_names},
                    "absent": True, "reason": reason, **counts}
        true_positive = np.diag(confusion).astype(np.float64)
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        iou = np.divide(true_positive, union, out=np.zeros_like(true_positive), where=union > 0)
        return {
            "mIoU": float(iou[union > 0].mean()),
            "pixel_accuracy": float(true_positive.sum() / pixels),
            "per_class_IoU": {n: (float(iou[i]) if union[i] > 0 else None) for i, n in enumerate(self.class_names)},
            **counts,
        }
