"""Metrics of a clip against labels: the synthetic clip carries them, users may write them for their
own videos as <video stem>.labels.jsonl beside the video (the format is in data/synthetic_clip.py).

The evaluate stage's evaluators, fed frame by frame at the labels' resolution. Label metrics use every
slot above trained.METRIC_SCORE_FLOOR, like the evaluate stage: AP needs the low-score tail.
"""
from __future__ import annotations

import pathlib

import numpy as np

from data.classes import DEFAULT, ClassSet
from data.schema import IGNORE
from data.synthetic_clip import read_clip_labels
from data.vocabulary import TASKS
from pipeline import trained
from pipeline.evaluation.metrics import DepthEvaluator, DetectionEvaluator, SegmentationEvaluator, absent
from pipeline.video.fitting import Fit


def labels_path(video: pathlib.Path) -> pathlib.Path:
    return video.parent / f"{video.stem}.labels.jsonl"


def load_labels(video: pathlib.Path, class_set: ClassSet = DEFAULT):
    """The clip's labels, class names read as indices into the model's `class_set`."""
    path = labels_path(video)
    if not path.is_file():
        return None
    return read_clip_labels(path, class_set.detection)  # raises UserError naming the bad line


class ClipMetrics:
    """The evaluate stage's evaluators, fed frame by frame at the labels' resolution."""

    def __init__(self, labels: list, max_depth: float, class_set: ClassSet = DEFAULT):
        # Lines carry their frame index; frames without a line are unlabelled (data/synthetic_clip.py).
        self.labels = {int(label.get("frame", i)): label for i, label in enumerate(labels)}
        self.detection = DetectionEvaluator(class_set.detection)
        self.segmentation = SegmentationEvaluator(len(class_set.segmentation), IGNORE, class_set.segmentation)
        self.depth = DepthEvaluator(max_depth=max_depth)
        self.frames = 0

    def add(self, index: int, analysis: dict, fit: Fit) -> None:
        label = self.labels.get(index)
        if label is None:
            return
        self.frames += 1
        if analysis["detections"] is not None and label.get("boxes") is not None:
            boxes, scores, classes = analysis["detections"]
            floor = scores > trained.METRIC_SCORE_FLOOR
            self.detection.add(index, label["boxes"], label["classes"], boxes[floor], scores[floor], classes[floor])
        for task, nearest in (("segmentation", True), ("depth", False)):
            truth = label.get(task)
            if analysis[task] is not None and truth is not None:
                truth = np.asarray(truth)
                getattr(self, task).add(truth, fit.to_frame(analysis[task], nearest, truth.shape[:2]))

    def result(self, tasks) -> dict:
        results = {"frames": self.frames}
        for task in TASKS:
            evaluator = getattr(self, task)
            results[task] = evaluator.result() if task in tasks else absent(f"the model has no {task} output")
        return results
