"""Resizing depth maps (metres, 0 = no measurement) without interpolation and without losing
measurements: training and evaluation resize their labels with it, and so does the clip stage."""
from __future__ import annotations

import cv2
import numpy as np


def resize_depth(depth: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Depth [H, W] (0 = none) -> out_size without interpolation and without losing measurements.

    Nearest-neighbour alone keeps one source pixel per output cell, so shrinking sparse LiDAR
    depth dropped most points (about two thirds at KITTI's 375 px -> 128 px). Output cells whose
    nearest sample is empty take the nearest surface (smallest depth) among the measurements
    that fall into them; cells that had a value keep it, so dense maps are plain nearest-neighbour.
    Input pixel (y, x) falls into output cell (y * out_h // H, x * out_w // W).
    """
    height, width = depth.shape
    out_h, out_w = out_size
    out = cv2.resize(depth, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    if (out_h, out_w) == (height, width):
        return out
    holes = out <= 0
    if not holes.any():
        return out
    nearest = _cell_minimum(depth, out_h, out_w, holes)
    filled = np.isfinite(nearest)
    out[filled] = nearest[filled]
    return out


def _cell_minimum(depth: np.ndarray, out_h: int, out_w: int, wanted: np.ndarray) -> np.ndarray:
    """The smallest measurement in each wanted output cell ([out_h, out_w], inf elsewhere and where
    a cell has none). Cell r holds the input rows y with y * out_h // H == r, a run of whole rows
    (likewise for columns). An integral image counts each cell's measurements, and only the wanted
    cells that hold some are gathered: at a dense map's edge to the sky that is a few hundred cells,
    so a 1080p map takes a few ms (gathering every measured pixel took 45 ms)."""
    height, width = depth.shape
    # Run boundaries: the first input row of output row r is the smallest y with y * out_h // H >= r.
    rows = (np.arange(out_h + 1) * height + out_h - 1) // out_h
    cols = (np.arange(out_w + 1) * width + out_w - 1) // out_w
    counts = cv2.integral((depth > 0).view(np.uint8))  # [H + 1, W + 1]
    per_cell = (counts[rows[1:]][:, cols[1:]] - counts[rows[:-1]][:, cols[1:]]
                - counts[rows[1:]][:, cols[:-1]] + counts[rows[:-1]][:, cols[:-1]])
    nearest = np.full((out_h, out_w), np.inf, np.float32)
    r, c = np.nonzero(wanted & (per_cell > 0))
    if len(r) == 0:
        return nearest
    # Every chosen cell as a [longest run of rows, longest run of columns] block; the part of the
    # block beyond the cell (cells differ by one row or column) is masked out.
    ys = rows[r][:, None] + np.arange(int(np.diff(rows).max()))
    xs = cols[c][:, None] + np.arange(int(np.diff(cols).max()))
    inside = (ys < rows[r + 1][:, None])[:, :, None] & (xs < cols[c + 1][:, None])[:, None, :]
    values = depth[np.minimum(ys, height - 1)[:, :, None], np.minimum(xs, width - 1)[:, None, :]]
    nearest[r, c] = np.where(inside & (values > 0), values, np.float32(np.inf)).min(axis=(1, 2))
    return nearest
