"""Depth metrics with the monodepth2 / Eigen et al. definitions, accumulated as running sums.

Valid pixels: min_depth < gt <= max_depth (gt 0 = no LiDAR return); predictions are clipped to
[min_depth, max_depth] first, as monodepth2 does. Metric depth: no median scaling (our model predicts
metres). No Eigen/Garg crop either: crop the arrays before `add` if you want it.

Averaging, the one choice that changes numbers:
  default (top-level keys) = POOLED over pixels: the result equals computing each metric once on all
      valid pixels of the split concatenated. Every LiDAR point weighs the same, and it streams exactly.
  "per_image_mean" = the KITTI / monodepth2 convention: each metric computed per image, then averaged
      over images (images with no valid pixel skipped). Quote this one when comparing with papers.
The two differ whenever images have different numbers of valid pixels.
"""
from __future__ import annotations

import numpy as np

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
DISTANCE_BIN_M = 10.0
# Fixed edges so the histogram streams; errors beyond +-1 (a factor e) are counted in the end bins.
LOG_ERROR_EDGES = np.linspace(-1.0, 1.0, 41)


def _sums(gt: np.ndarray, pred: np.ndarray, abs_rel: np.ndarray, sq_err: np.ndarray,
          log_error: np.ndarray) -> np.ndarray:
    """Per-pixel terms summed, in the order of _finish's unpacking (the per-pixel arrays computed once
    by the caller, which reuses them for the distance bins and the histogram)."""
    ratio = np.maximum(gt / pred, pred / gt)
    return np.array([gt.size, np.sum(abs_rel), np.sum(sq_err / gt), np.sum(sq_err), np.sum(log_error ** 2),
                     np.sum(ratio < 1.25), np.sum(ratio < 1.25 ** 2), np.sum(ratio < 1.25 ** 3)], np.float64)


def _finish(sums: np.ndarray) -> dict:
    n, abs_rel, sq_rel, sq_err, sq_log_err, d1, d2, d3 = sums
    return {"abs_rel": abs_rel / n, "sq_rel": sq_rel / n, "rmse": float(np.sqrt(sq_err / n)),
            "rmse_log": float(np.sqrt(sq_log_err / n)), "delta1": d1 / n, "delta2": d2 / n, "delta3": d3 / n}


class DepthEvaluator:
    """`add(gt, pred)` with metres, [H, W] or a batch [B, H, W] (a trailing channel of 1 is dropped)."""

    def __init__(self, max_depth: float = 80.0, min_depth: float = 1e-3):
        if not 0 < min_depth < max_depth:
            raise ValueError(f"Need 0 < min_depth < max_depth. Received: min_depth={min_depth}, "
                             f"max_depth={max_depth}")
        self.max_depth, self.min_depth = float(max_depth), float(min_depth)
        self.examples = 0
        self._sums = np.zeros(8)
        self._image_metrics = np.zeros(len(METRICS))  # sum over images of per-image metrics
        self._images_with_pixels = 0
        self._bin_edges = np.arange(0.0, self.max_depth + DISTANCE_BIN_M, DISTANCE_BIN_M)
        if self._bin_edges[-1] < self.max_depth:
            self._bin_edges = np.append(self._bin_edges, self._bin_edges[-1] + DISTANCE_BIN_M)
        bins = len(self._bin_edges) - 1
        self._bin_pixels, self._bin_abs_rel, self._bin_sq_err = np.zeros(bins), np.zeros(bins), np.zeros(bins)
        self._log_hist = np.zeros(len(LOG_ERROR_EDGES) - 1, np.int64)

    def add(self, gt, pred) -> None:
        gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
        if gt.ndim >= 3 and gt.shape[-1] == 1:
            gt = gt[..., 0]
        if pred.ndim >= 3 and pred.shape[-1] == 1:
            pred = pred[..., 0]
        if gt.shape != pred.shape or gt.ndim not in (2, 3):
            raise ValueError(f"gt and pred must be same-shape [H, W] or [B, H, W] depth maps. "
                             f"Received: gt.shape={gt.shape}, pred.shape={pred.shape}")
        for g, p in zip(*((gt, pred) if gt.ndim == 3 else (gt[None], pred[None]))):
            self._add_image(g, p)

    def _add_image(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.examples += 1
        valid = np.isfinite(gt) & (gt > self.min_depth) & (gt <= self.max_depth)
        gt = gt[valid]
        # A NaN prediction is a model failure, not a missing label: count it as the worst depth it can be.
        pred = np.clip(np.nan_to_num(pred[valid], nan=self.max_depth), self.min_depth, self.max_depth)
        if gt.size == 0:
            return
        diff = gt - pred
        abs_rel, sq_err = np.abs(diff) / gt, diff ** 2
        log_error = np.log(pred) - np.log(gt)
        sums = _sums(gt, pred, abs_rel, sq_err, log_error)
        self._sums += sums
        self._image_metrics += [_finish(sums)[m] for m in METRICS]
        self._images_with_pixels += 1
        # Division, not //: NumPy's float floor-divide took 2.5-3x as long (it is exact to the last bit,
        # which a pixel within 1e-15 m of a bin edge does not need).
        index = np.minimum((gt / DISTANCE_BIN_M).astype(np.int64), len(self._bin_pixels) - 1)
        bins = len(self._bin_pixels)
        self._bin_pixels += np.bincount(index, minlength=bins)
        self._bin_abs_rel += np.bincount(index, abs_rel, minlength=bins)
        self._bin_sq_err += np.bincount(index, sq_err, minlength=bins)
        # Uniform bins as (count, range): NumPy's arithmetic path, the same counts as the edges array
        # (which it checks against) at a fifth of the edges' binary search.
        low, high = LOG_ERROR_EDGES[0], LOG_ERROR_EDGES[-1]
        self._log_hist += np.histogram(np.clip(log_error, low, high), len(LOG_ERROR_EDGES) - 1, (low, high))[0]

    def result(self) -> dict:
        """Pooled metrics at the top level, plus per_image_mean, by_distance and log_error_histogram."""
        pixels = int(self._sums[0])
        counts = {"examples": self.examples, "pixels": pixels, "min_depth": self.min_depth,
                  "max_depth": self.max_depth}
        if pixels == 0:
            reason = "no images added" if not self.examples else "no valid ground-truth depth pixels"
            return {**{m: None for m in METRICS}, "absent": True, "reason": reason, **counts}
        pooled = {m: float(v) for m, v in _finish(self._sums).items()}
        per_image = {m: float(v / self._images_with_pixels) for m, v in zip(METRICS, self._image_metrics)}
        has = self._bin_pixels > 0
        safe = np.where(has, self._bin_pixels, 1)
        return {
            **pooled,
            "averaging": "pooled over valid pixels (see per_image_mean for the KITTI per-image average)",
            "per_image_mean": {**per_image, "images": self._images_with_pixels},
            "by_distance": {  # ground-truth distance bins of 10 m; None where a bin has no pixel
                "bin_edges_m": self._bin_edges.tolist(),
                "abs_rel": [float(v) if h else None for v, h in zip(self._bin_abs_rel / safe, has)],
                "rmse": [float(v) if h else None for v, h in zip(np.sqrt(self._bin_sq_err / safe), has)],
                "pixels": self._bin_pixels.astype(np.int64).tolist(),
            },
            "log_error_histogram": {  # log(pred) - log(gt), natural log, end bins hold the outliers
                "bin_edges": LOG_ERROR_EDGES.tolist(), "counts": self._log_hist.tolist()},
            **counts,
        }
