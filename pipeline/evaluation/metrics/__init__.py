"""Metrics shared by the evaluate, clip and export stages: NumPy (+ pycocotools for detection), no TensorFlow.

Each task has a streaming evaluator: `add(...)` per image or batch, `result()` -> a JSON-ready dict of plain
Python numbers. A task a split has no labels for is reported with `absent(reason)`, never as zeros.
"""
from pipeline.evaluation.metrics.absent import absent, is_absent
from pipeline.evaluation.metrics.depth import DepthEvaluator
from pipeline.evaluation.metrics.detection import DetectionEvaluator, box_iou
from pipeline.evaluation.metrics.multitask import (STANDARD_METRICS, delta_m, negative_transfer,
                                                   relative_differences, task_gains)
from pipeline.evaluation.metrics.segmentation import SegmentationEvaluator

__all__ = ["absent", "is_absent", "DepthEvaluator", "DetectionEvaluator", "box_iou", "STANDARD_METRICS",
           "delta_m", "negative_transfer", "relative_differences", "task_gains", "SegmentationEvaluator"]
