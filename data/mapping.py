"""One source's label tables compiled against a class set: what a reader calls to turn a label value
of its files into a class index, and the error when a value has no mapping.

    labels = SourceLabels.build("camvid", classes, overrides)   # overrides: data.sources[].label_map
    mask = labels.segment(raw_mask, label_path, "class index")
    target = labels.detect(kind, f"{label_path}: line 3", "object type")   # index, DROP or IGNORE

Tables and their markers: data/label_maps.py. The config has checked every override (names, keys)
before any of this runs; `build` still refuses a table naming a class the set does not have, so a
reader can never write an index past the heads.
"""
from __future__ import annotations

import numpy as np

from data import label_maps
from data.classes import DEFAULT, ClassSet
from data.errors import UserError
from data.schema import IGNORE, BadExample

DROP = -1  # detection: the object becomes neither a box nor an ignore region


class UnmappedLabel(UserError, BadExample):
    """A label value the source's table does not map. A UserError: the build stops whatever
    data.bad_examples says, since the gap is in the config's mapping, not in one bad frame. Also a
    BadExample, so callers that catch a reader's per-file problems catch it too."""


def _shown(values) -> str:
    values = [repr(v) for v in values]
    return values[0] if len(values) == 1 else f"{values[0]} (and {', '.join(values[1:6])}" + \
        (", ...)" if len(values) > 6 else ")")


class SourceLabels:
    """The tables of one source as class indices: `detection` {value: index | DROP | IGNORE} and a
    256-entry lookup table per segmentation table (value -> index | IGNORE), with which values are
    mapped at all."""

    def __init__(self, source: str, classes: ClassSet, tables: dict[str, dict]):
        self.source, self.classes = source, classes
        self.detection: dict = {}
        self.luts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, values in tables.items():
            task = label_maps.TABLES[source][name][0]
            index = {n: i for i, n in enumerate(classes.names(task))}
            markers = {label_maps.IGNORE: IGNORE, label_maps.DROP: DROP}

            def target(value, key):
                if value in markers and value in label_maps.MARKERS[task]:
                    return markers[value]
                if value not in index:
                    raise UserError(f"{source}: label table '{name}' maps {key!r} to {value!r}, not one of "
                                    f"model.classes.{task} ({', '.join(index)}); give "
                                    f"data.sources[{source}].label_map.{name}")
                return index[value]

            if task == "detection":
                self.detection = {key: target(value, key) for key, value in values.items()}
            else:
                lut, known = np.full(256, IGNORE, np.uint8), np.zeros(256, bool)
                for key, value in values.items():
                    lut[key], known[key] = target(value, key), True
                self.luts[name] = (lut, known)

    @classmethod
    def build(cls, source: str, classes: ClassSet = DEFAULT, overrides: dict | None = None) -> "SourceLabels":
        """The source's tables: the built-in ones, each replaced by the config's when it gives one."""
        overrides = overrides or {}
        return cls(source, classes, {name: label_maps.table(source, name, overrides.get(name))
                                     for name in label_maps.TABLES[source]})

    def _unmapped(self, where: str, noun: str, values, table: str, hint: str = "") -> UnmappedLabel:
        return UnmappedLabel(f"{where}: {noun} {_shown(values)} has no mapping in the {self.source} "
                             f"label table '{table}' (data.sources[].label_map.{table}){hint}")

    def detect(self, value, where: str, noun: str = "label"):
        """A detection label value -> class index, DROP or IGNORE; UnmappedLabel naming `where`."""
        if value not in self.detection:
            raise self._unmapped(where, f"unknown {noun}", [value], "detection")
        return self.detection[value]

    def segment(self, mask: np.ndarray, where: str, noun: str = "value", table: str = "segmentation",
                hint: str = "") -> np.ndarray:
        """A uint8 label mask -> class indices (IGNORE where ignored); UnmappedLabel naming `where`
        and the unmapped values."""
        lut, known = self.luts[table]
        present = np.flatnonzero(np.bincount(mask.reshape(-1), minlength=256))
        missing = [int(v) for v in present if not known[v]]
        if missing:
            raise self._unmapped(where, noun, missing, table, hint)
        return lut[mask]

    def is_identity(self) -> bool:
        """True when every value keeps its index (the synthetic source in the default classes)."""
        lut, known = self.luts.get("segmentation", (None, None))
        ids = np.flatnonzero(known) if known is not None else []
        return (all(self.detection.get(name) == i for i, name in enumerate(DEFAULT.detection))
                and len(self.detection) == len(DEFAULT.detection)
                and all(int(lut[v]) == v for v in ids))

    def remap(self, example: dict, where: str) -> dict:
        """A synthetic example (rendered in the default classes) in this set's classes: boxes whose class
        maps to "ignore" become ignore regions, "drop" ones disappear, pixels go through the table."""
        example = dict(example)
        targets = np.array([self.detect(DEFAULT.detection[c], where, "class") for c in example["classes"]],
                           np.int64).reshape(-1)
        boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
        ignored = targets == IGNORE
        keep = (targets != DROP) & ~ignored
        example["boxes"], example["classes"] = boxes[keep], targets[keep].astype(np.int32)
        example["ignore_boxes"] = np.concatenate(
            [np.asarray(example.get("ignore_boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4), boxes[ignored]])
        example["segmentation"] = self.segment(example["segmentation"], where, "class id")
        return example


def relabelled(load, labels: SourceLabels, key: str) -> dict:
    """load() (a synthetic frame, rendered in the default classes) through labels.remap: a module-level
    function, so functools.partial of it pickles into the data stage's worker processes."""
    return labels.remap(load(), key)
