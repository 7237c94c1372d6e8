"""Label-free temporal stability of a clip's predictions: flicker of the class and depth maps and
persistence of the detections between consecutive frames."""
from __future__ import annotations

import numpy as np

from data import schema
from pipeline.evaluation.metrics import box_iou

PERSISTENCE_IOU = 0.5


class Stability:
    """How much the predictions change between consecutive frames, with no labels needed.

    segmentation_flicker  = 1 - mean over frame pairs of the mean IoU between the two class maps
                            (over classes present in either)
    depth_flicker         = median over pixels and pairs of |log d_t - log d_{t-1}| (0.01 ~ 1%); a
                            streaming histogram (80 bins per decade, ~3% resolution) instead of
                            keeping every pixel; exact zeros are counted apart so a still scene gives 0
    detection_persistence = share of the boxes of frame t that match a box of frame t-1 of the same
                            class at IoU >= 0.5 (one-to-one, greedy by IoU)
    A metric is None when the clip has fewer than two frames or the task is missing.
    """

    # Log-spaced bins of the per-pixel log-depth change: 80 a decade from 1e-6 to 10.
    DECADES, BINS_PER_DECADE = (-6, 1), 80
    EDGES = np.logspace(*DECADES, (DECADES[1] - DECADES[0]) * BINS_PER_DECADE + 1)

    def __init__(self, num_classes: int = len(schema.SEGMENTATION_CLASSES)):
        self.num_classes = num_classes
        self.previous = None
        self.seg_iou_sum, self.seg_pairs = 0.0, 0
        self.depth_zeros, self.depth_count = 0, 0
        self.depth_hist = np.zeros(len(self.EDGES) - 1, np.int64)
        self.boxes_total, self.boxes_matched = 0, 0
        self.pairs = 0

    def add(self, analysis: dict) -> None:
        seg, depth = analysis["segmentation"], analysis["depth"]
        boxes = analysis["kept"][:3] if analysis["kept"] is not None else None
        if self.previous is not None:
            self.pairs += 1
            prev_seg, prev_depth, prev_boxes = self.previous
            if seg is not None and prev_seg is not None and seg.shape == prev_seg.shape:
                self.seg_iou_sum += self._mean_iou(prev_seg, seg)
                self.seg_pairs += 1
            if depth is not None and prev_depth is not None and depth.shape == prev_depth.shape:
                self._add_depth(prev_depth, depth)
            if boxes is not None and prev_boxes is not None:
                self.boxes_total += len(boxes[0])
                self.boxes_matched += matched_boxes(prev_boxes, boxes)
        self.previous = (seg, depth, boxes)

    def _mean_iou(self, a: np.ndarray, b: np.ndarray) -> float:
        k = self.num_classes
        a, b = np.minimum(a, k - 1).astype(np.int64).ravel(), np.minimum(b, k - 1).astype(np.int64).ravel()
        confusion = np.bincount(a * k + b, minlength=k * k).reshape(k, k)
        intersection = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - intersection
        present = union > 0
        return float((intersection[present] / union[present]).mean())

    def _add_depth(self, a: np.ndarray, b: np.ndarray) -> None:
        change = np.abs(np.log(np.maximum(b, 1e-3)) - np.log(np.maximum(a, 1e-3))).ravel()
        change = np.nan_to_num(change, nan=self.EDGES[-1])  # a NaN from a broken model counts as a jump
        zero = change < self.EDGES[0]
        self.depth_zeros += int(zero.sum())
        self.depth_count += change.size
        # The bin index straight from the logarithm (a value within rounding of an edge may land on
        # either side): np.histogram's binary search over the 561 edges took 4.6 ms of a 192x384
        # frame pair, most of the clip stage's per-frame analysis.
        moved = np.log10(np.minimum(change[~zero], self.EDGES[-1]))
        index = ((moved - self.DECADES[0]) * self.BINS_PER_DECADE).astype(np.int64)
        bins = len(self.depth_hist)
        self.depth_hist += np.bincount(np.clip(index, 0, bins - 1), minlength=bins)

    def _depth_median(self):
        if self.depth_count == 0:
            return None
        rank = (self.depth_count - 1) / 2.0
        if rank < self.depth_zeros:
            return 0.0
        cumulative = self.depth_zeros + np.cumsum(self.depth_hist)
        b = int(np.searchsorted(cumulative, rank, side="right"))
        before = cumulative[b - 1] if b > 0 else self.depth_zeros
        share = (rank - before + 0.5) / max(self.depth_hist[b], 1)
        low, high = self.EDGES[b], self.EDGES[b + 1]
        return float(low * (high / low) ** np.clip(share, 0.0, 1.0))  # bins are log-spaced

    def result(self) -> dict:
        return {
            "segmentation_flicker": round(1.0 - self.seg_iou_sum / self.seg_pairs, 6) if self.seg_pairs else None,
            "depth_flicker": (round(m, 6) if (m := self._depth_median()) is not None else None),
            "detection_persistence": (round(self.boxes_matched / self.boxes_total, 6)
                                      if self.boxes_total else None),
            "frame_pairs": self.pairs,
        }


def matched_boxes(previous, current, iou_threshold: float = PERSISTENCE_IOU) -> int:
    """Boxes of `current` matched one-to-one to a same-class box of `previous` at IoU >= threshold."""
    prev_boxes, _, prev_classes = previous
    boxes, _, classes = current
    if len(boxes) == 0 or len(prev_boxes) == 0:
        return 0
    iou = box_iou(boxes, prev_boxes)
    iou[classes[:, None] != prev_classes[None, :]] = 0.0
    matched = 0
    while True:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[i, j] < iou_threshold:
            return matched
        matched += 1
        iou[i, :], iou[:, j] = 0.0, 0.0
