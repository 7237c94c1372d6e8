"""CamVid reader, SegNet's 11-class version: segmentation only.

Layout (root holds either):
  images/<name>.png + labels/<name>.png                          one flat pair of folders, or
  train/ + trainannot/, val/ + valannot/, test/ + testannot/     SegNet's split folders
Labels are single-channel PNGs of class indices 0..10 with 11 = void (see data.label_maps); a value
its table does not map (any other, with the built-in table) stops the build naming the file.
Keys: "camvid-<name>" (flat) or "camvid-<split>/<name>".
"""
from __future__ import annotations

import pathlib

import numpy as np

from data.mapping import SourceLabels
from data.readers import finish, read_mask, read_rgb, split_key
from data.schema import IGNORE, BadExample, placeholder
from data.errors import UserError

LABELS = {"segmentation"}
SOURCE = "camvid"
LAYOUT = "CamVid (SegNet) layout: images/ + labels/, or train/ + trainannot/, val/ + valannot/, " \
         "test/ + testannot/"
SPLITS = ("train", "val", "test")
_BUILTIN = SourceLabels.build(SOURCE)
_HINT = " (SegNet CamVid labels are 0..11: is this a colour or 32-class label?)"


def _pairs(root: pathlib.Path) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
    """(key prefix, image folder, label folder) for every pair of folders present."""
    root = pathlib.Path(root)
    if (root / "images").is_dir() or (root / "labels").is_dir():
        return [("", root / "images", root / "labels")]
    return [(f"{s}/", root / s, root / f"{s}annot") for s in SPLITS
            if (root / s).is_dir() or (root / f"{s}annot").is_dir()]


def check_layout(root: pathlib.Path) -> None:
    pairs = _pairs(root)
    if not pairs:
        raise UserError(f"{SOURCE}: expected folder {pathlib.Path(root) / 'images'} ({LAYOUT})")
    for _, images, labels in pairs:
        for folder in (images, labels):
            if not folder.is_dir():
                raise UserError(f"{SOURCE}: expected folder {folder} ({LAYOUT})")
    if not any(any(images.glob("*.png")) for _, images, _ in pairs):
        raise UserError(f"{SOURCE}: expected .png images in {pairs[0][1]}, found none")


def list_items(root: pathlib.Path) -> list[str]:
    keys = set()
    for prefix, images, labels in _pairs(root):
        # Labels without an image are listed too, so load_item reports them.
        keys |= {f"{SOURCE}-{prefix}{p.stem}" for p in images.glob("*.png")}
        keys |= {f"{SOURCE}-{prefix}{p.stem}" for p in labels.glob("*.png")}
    return sorted(keys)


def load_item(root: pathlib.Path, key: str, labels: SourceLabels | None = None) -> dict:
    labels = labels or _BUILTIN
    root = pathlib.Path(root)
    rest = split_key(key, SOURCE)
    split, _, name = rest.rpartition("/")
    images, label_dir = (root / split, root / f"{split}annot") if split else \
        (root / "images", root / "labels")
    image_path, label_path = images / f"{name}.png", label_dir / f"{name}.png"
    if not label_path.is_file():
        raise BadExample(f"{image_path}: image without label (expected {label_path})")
    if not image_path.is_file():
        raise BadExample(f"{label_path}: label without image (expected {image_path})")
    image = read_rgb(image_path)
    label = read_mask(label_path, np.uint8, image.shape[:2])
    segmentation = labels.segment(label, label_path, "class index",
                                  hint=_HINT if labels is _BUILTIN else "")
    example = placeholder(*image.shape[:2])
    example.update(image=image, segmentation=segmentation,
                   has_segmentation=bool(np.any(segmentation != IGNORE)))
    return finish(example, f"{key} ({label_path})", classes=labels.classes)
