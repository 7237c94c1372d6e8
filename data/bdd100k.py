"""BDD100K reader: boxes from the det_20 json, segmentation from sem_seg or drivable-area masks.

Layout (root is the folder holding images/ and labels/):
  images/100k/<split>/<name>.jpg
  labels/det_20/det_<split>.json            [{"name": "<name>.jpg", "labels": [{"category": ...,
                                              "box2d": {"x1", "y1", "x2", "y2"}}, ...]}, ...]
  labels/sem_seg/masks/<split>/<name>.png   optional, uint8 Cityscapes train ids (255 = ignore)
  labels/drivable/masks/<split>/<name>.png  optional, uint8 0 direct, 1 alternative, 2 background
Keys are "bdd100k-<split>/<name>". Splits with no label file at all (the test split) are not listed.

A frame missing from its split's det json has has_detection False (BDD leaves some frames out of
det_20); a frame with no label of any kind is a BadExample. sem_seg masks win over drivable masks.
A drivable-area mask labels only the drivable road, so it becomes road (direct and alternative) and
IGNORE everywhere else, never a full segmentation. BDD's sem_seg masks come with the 10k image set;
only those whose name also appears under images/100k are read.
"""
from __future__ import annotations

import functools
import json
import pathlib

import numpy as np

from data.mapping import DROP, SourceLabels
from data.readers import clip_boxes, finish, read_mask, read_rgb, require_dir, split_key
from data.schema import IGNORE, BadExample, placeholder
from data.errors import UserError

LABELS = {"detection", "segmentation"}
SOURCE = "bdd100k"
LAYOUT = ("BDD100K layout: images/100k/<split>/*.jpg and labels/det_20/det_<split>.json "
          "(optionally labels/sem_seg/masks/<split>/, labels/drivable/masks/<split>/)")
# (folder under labels/, label table) in order of preference.
_MASKS = (("sem_seg/masks", "segmentation"), ("drivable/masks", "drivable"))
_BUILTIN = SourceLabels.build(SOURCE)


def _det_json(root: pathlib.Path, split: str) -> pathlib.Path:
    return root / "labels" / "det_20" / f"det_{split}.json"


def _has_labels(root: pathlib.Path, split: str) -> bool:
    return _det_json(root, split).is_file() or any(
        (root / "labels" / folder / split).is_dir() for folder, _ in _MASKS)


def _splits(root: pathlib.Path) -> list[str]:
    images = root / "images" / "100k"
    return sorted(p.name for p in images.iterdir() if p.is_dir() and _has_labels(root, p.name))


def check_layout(root: pathlib.Path) -> None:
    root = pathlib.Path(root)
    require_dir(root / "images" / "100k", SOURCE, LAYOUT)
    require_dir(root / "labels", SOURCE, LAYOUT)
    splits = _splits(root)
    if not splits:
        raise UserError(f"{SOURCE}: expected {_det_json(root, '<split>')} or label masks for a "
                        f"split folder under {root / 'images' / '100k'}, found none ({LAYOUT})")
    if not any(any((root / "images" / "100k" / s).glob("*.jpg")) for s in splits):
        raise UserError(f"{SOURCE}: expected .jpg images under {root / 'images' / '100k'}, found none")


def list_items(root: pathlib.Path) -> list[str]:
    root = pathlib.Path(root)
    keys = []
    for split in _splits(root):
        keys += [f"{SOURCE}-{split}/{p.stem}" for p in (root / "images" / "100k" / split).glob("*.jpg")]
    return sorted(keys)


@functools.lru_cache(maxsize=4)
def _det_index(path: str, modified_ns: int) -> dict:
    """name -> labels for one det json, parsed once per process (the train file is ~70k frames);
    the modification time in the cache key keeps an edited file from being served stale."""
    try:
        frames = json.loads(pathlib.Path(path).read_text())
        return {frame["name"]: frame.get("labels") or [] for frame in frames}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadExample(f"{path}: expected a json list of frames with 'name' and 'labels'") from None


def _detection(json_path: pathlib.Path, name: str, width: int, height: int, mapping: SourceLabels):
    labels = _det_index(str(json_path), json_path.stat().st_mtime_ns).get(name)
    if labels is None:
        return None
    boxes, classes, ignore = [], [], []
    for label in labels:
        if "box2d" not in label:   # lanes and drivable polygons in older label files
            continue
        category = label.get("category")
        target = mapping.detect(category, f"{json_path}: frame {name}", "category")
        try:
            box = [float(label["box2d"][k]) for k in ("x1", "y1", "x2", "y2")]
        except (KeyError, TypeError, ValueError):
            raise BadExample(f"{json_path}: frame {name}: box2d needs numeric x1, y1, x2, y2") from None
        crowd = bool((label.get("attributes") or {}).get("crowd", False))
        if target == IGNORE or (crowd and target != DROP):
            ignore.append(box)
        elif target != DROP:
            boxes.append(box)
            classes.append(target)
    boxes, keep = clip_boxes(np.array(boxes, np.float32), width, height)
    return boxes[keep], np.array(classes, np.int32)[keep], np.array(ignore, np.float32)


def load_item(root: pathlib.Path, key: str, labels: SourceLabels | None = None) -> dict:
    labels = labels or _BUILTIN
    root = pathlib.Path(root)
    split, _, name = split_key(key, SOURCE).rpartition("/")
    image_path = root / "images" / "100k" / split / f"{name}.jpg"
    image = read_rgb(image_path)
    height, width = image.shape[:2]
    example = placeholder(height, width)

    ignore, labelled = None, False
    json_path = _det_json(root, split)
    if json_path.is_file():
        found = _detection(json_path, image_path.name, width, height, labels)
        if found is not None:
            boxes, classes, ignore = found
            example.update(boxes=boxes, classes=classes, has_detection=True)
            labelled = True

    for folder, table in _MASKS:
        mask_path = root / "labels" / folder / split / f"{name}.png"
        if mask_path.is_file():
            raw = read_mask(mask_path, np.uint8, (height, width))
            segmentation = labels.segment(raw, mask_path, f"{folder} class id", table)
            example.update(segmentation=segmentation,
                           has_segmentation=bool(np.any(segmentation != IGNORE)))
            labelled = True
            break

    if not labelled:
        raise BadExample(f"{image_path}: image without label (not in {json_path.name}, "
                         f"no sem_seg or drivable mask)")
    return finish(example, f"{key} ({json_path})", ignore, labels.classes)
