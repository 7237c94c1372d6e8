"""Metrics of a clip against labels: the synthetic clip carries them, users may write them for their
own videos as <video stem>.labels.jsonl beside the video (the format is in data/synthetic_clip.py).

The evaluate stage's evaluators, fed frame by frame. Label metrics use every slot above
trained.METRIC_SCORE_FLOOR, like the evaluate stage: AP needs the low-score tail.

Resolution (changed by issue 15): segmentation and depth are scored at the model's resolution (the
cropped content of the model input), with the label maps resized down to it the way the evaluate
stage resizes its labels: nearest neighbour for class ids, depth_maps.resize_depth for depth (no
interpolation, no measurement lost, so sparse LiDAR-like labels keep every point). They used to be
scored at the labels' resolution with the predictions resized up; at 1280x720 that took 70 ms a
frame (1080p: 210 ms), more than the model itself; now 1-2 ms (resizing the depth label included).
The two protocols score the same predictions sampled differently. Measured with the default model
on the labelled synthetic clips (384x192, 1280x720 and 1920x1080, stretch and letterbox): pixel
accuracy within 0.006, AbsRel within 0.008, delta1 within 0.002, RMSE within 0.1 m of 2.7-3.3 m.
mIoU can move more (+0.09 at 720p): it averages over the classes present, and a class that covers
3 of 921,600 label pixels (a sliver of a cyclist) is present at 1280x720 and gone at 256x128; the
per-class IoUs of common classes agree within 0.05. tests/pipeline/video/test_clip_metrics_resolution.py
states and checks the tolerance. Boxes are scored in frame pixels as before.
"""
from __future__ import annotations

import pathlib

import cv2
import numpy as np

from data.classes import DEFAULT, ClassSet
from data.schema import IGNORE
from data.synthetic_clip import read_clip_labels
from data.vocabulary import TASKS
from pipeline import trained
from pipeline.evaluation.metrics import DepthEvaluator, DetectionEvaluator, SegmentationEvaluator, absent
from pipeline.inputs.depth_maps import resize_depth


def labels_path(video: pathlib.Path) -> pathlib.Path:
    return video.parent / f"{video.stem}.labels.jsonl"


def load_labels(video: pathlib.Path, class_set: ClassSet = DEFAULT):
    """The clip's labels, class names read as indices into the model's `class_set`."""
    path = labels_path(video)
    if not path.is_file():
        return None
    return read_clip_labels(path, class_set.detection)  # raises UserError naming the bad line


def label_at(task: str, truth: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A label map resized to size_hw as the evaluate stage resizes labels to the model input."""
    if truth.shape[:2] == tuple(size_hw):
        return truth
    if task == "depth":
        return resize_depth(truth.astype(np.float32, copy=False), tuple(size_hw))
    return cv2.resize(truth, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)


class ClipMetrics:
    """The evaluate stage's evaluators, fed frame by frame at the labels' resolution."""

    def __init__(self, labels: list, max_depth: float, class_set: ClassSet = DEFAULT,
                 frame_height: int | None = None):
        # Lines carry their frame index; frames without a line are unlabelled (data/synthetic_clip.py).
        self.labels = {int(label.get("frame", i)): label for i, label in enumerate(labels)}
        # Boxes are scored in frame pixels, so the AP50-by-height bands scale with the frame's height:
        # the same share of the picture as evaluate's bands at the model input.
        self.detection = DetectionEvaluator(class_set.detection, image_height=frame_height)
        self.segmentation = SegmentationEvaluator(len(class_set.segmentation), IGNORE, class_set.segmentation)
        self.depth = DepthEvaluator(max_depth=max_depth)
        self.frames = 0

    def add(self, index: int, analysis: dict) -> None:
        label = self.labels.get(index)
        if label is None:
            return
        self.frames += 1
        if analysis["detections"] is not None and label.get("boxes") is not None:
            boxes, scores, classes = analysis["detections"]
            floor = scores > trained.METRIC_SCORE_FLOOR
            self.detection.add(index, label["boxes"], label["classes"], boxes[floor], scores[floor], classes[floor])
        for task in ("segmentation", "depth"):
            truth = label.get(task)
            if analysis[task] is not None and truth is not None:
                prediction = analysis[task]
                getattr(self, task).add(label_at(task, np.asarray(truth), prediction.shape[:2]), prediction)

    def result(self, tasks) -> dict:
        results = {"frames": self.frames}
        for task in TASKS:
            evaluator = getattr(self, task)
            results[task] = evaluator.result() if task in tasks else absent(f"the model has no {task} output")
        return results
