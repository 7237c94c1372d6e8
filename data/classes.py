"""The classes a model predicts: a name and a colour per detection and per segmentation class.

They are data: the config's `model.classes` says them (pipeline/config.py), the train stage saves them
with the run, and every consumer (heads, losses, metrics, reports, overlays, exports, serving) reads
them from a ClassSet instead of a constant. DEFAULT is the project's unified 3 + 9 classes
(data/schema.py), which every config gets unless it says otherwise.

`from_dict` reads the plain form a config is saved in (config.yaml, model_config.json):
    {"detection": [{"name": "vehicle", "colour": [0, 255, 255]}, ...], "segmentation": [...]}
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from data import schema


class ClassSet(NamedTuple):
    detection: tuple[str, ...]
    segmentation: tuple[str, ...]
    detection_colours: np.ndarray     # uint8 [C_det, 3] RGB
    segmentation_colours: np.ndarray  # uint8 [C_seg, 3] RGB

    def names(self, task: str) -> tuple[str, ...]:
        return self.detection if task == "detection" else self.segmentation

    def same_names(self, other: "ClassSet") -> bool:
        """Colours only change drawings; two sets with the same names describe the same model."""
        return self.detection == other.detection and self.segmentation == other.segmentation


DEFAULT = ClassSet(schema.DETECTION_CLASSES, schema.SEGMENTATION_CLASSES,
                   schema.DETECTION_COLOURS, schema.SEGMENTATION_COLOURS)


def default_dict() -> dict:
    """DEFAULT in the config's plain form (the default of `model.classes`)."""
    def entries(names, colours):
        return [{"name": name, "colour": [int(c) for c in colour]} for name, colour in zip(names, colours)]
    return {"detection": entries(DEFAULT.detection, DEFAULT.detection_colours),
            "segmentation": entries(DEFAULT.segmentation, DEFAULT.segmentation_colours)}


def from_dict(classes: dict | None) -> ClassSet:
    """The plain form (see module doc) -> ClassSet; None or a missing task -> DEFAULT's classes
    (a run saved before classes were configurable was trained on them)."""
    classes = classes or {}

    def part(task, names, colours):
        entries = classes.get(task)
        if not entries:
            return names, colours
        return (tuple(str(e["name"]) for e in entries),
                np.array([[int(c) for c in e["colour"]] for e in entries], np.uint8).reshape(-1, 3))

    detection = part("detection", DEFAULT.detection, DEFAULT.detection_colours)
    segmentation = part("segmentation", DEFAULT.segmentation, DEFAULT.segmentation_colours)
    return ClassSet(detection[0], segmentation[0], detection[1], segmentation[1])


def from_names(detection=None, segmentation=None) -> ClassSet:
    """A set known only by its names (a SavedModel's metadata, a model card): DEFAULT's colour where a
    name is one of DEFAULT's, else a colour from a fixed palette, so drawings stay stable."""
    def part(names, default_names, default_colours):
        if names is None:
            return default_names, default_colours
        names = tuple(str(n) for n in names)
        colours = [default_colours[default_names.index(n)] if n in default_names else _palette(i)
                   for i, n in enumerate(names)]
        return names, np.array(colours, np.uint8).reshape(-1, 3)

    det = part(detection, DEFAULT.detection, DEFAULT.detection_colours)
    seg = part(segmentation, DEFAULT.segmentation, DEFAULT.segmentation_colours)
    return ClassSet(det[0], seg[0], det[1], seg[1])


def _palette(index: int) -> tuple[int, int, int]:
    """Distinct, repeatable colours: hues around the circle by the golden angle."""
    hue = (index * 0.618033988749895) % 1.0
    rgb = np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)
    return tuple(int(v) for v in (55 + 200 * rgb).round())
