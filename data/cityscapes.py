"""Cityscapes reader: segmentation from gtFine label ids, boxes from instance ids, depth from disparity.

Layout (root holds leftImg8bit/ and gtFine/; the official nested layout or one flat folder each):
  leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png     or  leftImg8bit/<stem>_leftImg8bit.png
  gtFine/<split>/<city>/<stem>_gtFine_labelIds.png      uint8 label ids (required)
  gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png   uint16, id * 1000 + instance for things
                                                        (optional: without it has_detection False)
  disparity/<split>/<city>/<stem>_disparity.png         optional, uint16, with
  camera/<split>/<city>/<stem>_camera.json              extrinsic.baseline, intrinsic.fx
Keys are "cityscapes-<path under leftImg8bit without the suffix>", so they carry split and city.

Boxes: one per instance of the boxed classes, the tight box of its pixels in pixel-edge coordinates
(x2 = last column + 1). Thing pixels without an instance number ("car group") are crowds: each
connected crowd region becomes an ignore box. Depth: d = (p - 1) / 256 for p > 0,
depth = baseline * fx / d, 0 where d <= 0. gtCoarse is not read. The test split's gtFine images are
unlabelled, which gives has_segmentation False.
"""
from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np

from data.mapping import DROP, SourceLabels
from data.readers import finish, png_size, read_mask, read_rgb, require_dir, split_key
from data.schema import IGNORE, BadExample, placeholder
from data.errors import UserError

LABELS = {"segmentation", "detection", "depth"}
SOURCE = "cityscapes"
LAYOUT = "Cityscapes layout: leftImg8bit/ and gtFine/ (optionally disparity/ and camera/)"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
_BUILTIN = SourceLabels.build(SOURCE)


def check_layout(root: pathlib.Path) -> None:
    root = pathlib.Path(root)
    require_dir(root / "leftImg8bit", SOURCE, LAYOUT)
    require_dir(root / "gtFine", SOURCE, LAYOUT)
    if not any((root / "leftImg8bit").rglob("*" + IMAGE_SUFFIX)):
        raise UserError(f"{SOURCE}: expected *{IMAGE_SUFFIX} images under {root / 'leftImg8bit'}, "
                        f"found none")


def _stems(folder: pathlib.Path, suffix: str) -> set[str]:
    return {p.relative_to(folder).as_posix()[:-len(suffix)] for p in folder.rglob("*" + suffix)}


def list_items(root: pathlib.Path) -> list[str]:
    root = pathlib.Path(root)
    # Labels without an image are listed too, so load_item reports them instead of them vanishing.
    stems = _stems(root / "leftImg8bit", IMAGE_SUFFIX) | _stems(root / "gtFine", LABEL_SUFFIX)
    return sorted(f"{SOURCE}-{s}" for s in stems)


def instance_boxes(instances: np.ndarray, labels: SourceLabels | None = None,
                   where: str = "instance ids") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [N,4], classes [N], ignore boxes [M,4]) from a gtFine_instanceIds array: crowds of the
    classes the table boxes or ignores, and instances of a class it maps to "ignore"."""
    labels = labels or _BUILTIN
    boxes, classes, ignored = [], [], []
    rows, cols = np.nonzero(instances >= 1000)
    values = instances[rows, cols]
    for value in np.unique(values):
        target = labels.detect(int(value) // 1000, where, "instance class id")
        if target == DROP:
            continue
        mine = values == value
        r, c = rows[mine], cols[mine]
        box = (c.min(), r.min(), c.max() + 1, r.max() + 1)
        if target == IGNORE:
            ignored.append(box)
        else:
            boxes.append(box)
            classes.append(target)
    kept = [label_id for label_id, target in labels.detection.items() if target != DROP]
    crowd = np.isin(instances, kept).astype(np.uint8)   # only values < 1000 equal an id
    count, _, stats, _ = cv2.connectedComponentsWithStats(crowd, connectivity=8)
    x, y, w, h = (stats[1:, i] for i in range(4))   # component 0 is the background
    ignore = np.stack([x, y, x + w, y + h], axis=1) if count > 1 else np.zeros((0, 4))
    ignore = np.concatenate([np.array(ignored, np.float32).reshape(-1, 4), ignore]) if ignored else ignore
    return (np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int32),
            ignore.astype(np.float32))


def focal_lengths(root: pathlib.Path) -> tuple[list[tuple[float, float, int, int]], list[str]]:
    """(fx, fy, width, height) for every frame with a camera json, and one line for each frame whose
    camera json or image header cannot be read."""
    root = pathlib.Path(root)
    result, problems = [], []
    for camera_path in sorted((root / "camera").rglob("*_camera.json")):
        stem = camera_path.relative_to(root / "camera").as_posix()[:-len("_camera.json")]
        image = root / "leftImg8bit" / (stem + IMAGE_SUFFIX)
        if not image.is_file():
            continue
        try:
            intrinsic = json.loads(camera_path.read_text())["intrinsic"]
            fx, fy = float(intrinsic["fx"]), float(intrinsic["fy"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"{camera_path}: expected json with intrinsic.fx and intrinsic.fy")
            continue
        try:
            result.append((fx, fy, *png_size(image)))
        except BadExample as err:
            problems.append(str(err))
    return result, problems


def disparity_depth(disparity_path: pathlib.Path, camera_path: pathlib.Path,
                    shape: tuple[int, int]) -> np.ndarray:
    """Metric depth float32 [H, W] (0 = invalid) from a Cityscapes disparity PNG and camera json."""
    raw = read_mask(disparity_path, np.uint16, shape).astype(np.float32)
    if not camera_path.is_file():
        raise BadExample(f"{disparity_path}: disparity without camera file (expected {camera_path})")
    try:
        camera = json.loads(camera_path.read_text())
        baseline = float(camera["extrinsic"]["baseline"])
        fx = float(camera["intrinsic"]["fx"])
    except (ValueError, KeyError, TypeError):
        raise BadExample(f"{camera_path}: expected json with extrinsic.baseline and intrinsic.fx") \
            from None
    disparity = np.where(raw > 0, (raw - 1.0) / 256.0, 0.0)
    depth = np.zeros(shape, np.float32)
    valid = disparity > 0
    depth[valid] = baseline * fx / disparity[valid]
    return depth


def load_item(root: pathlib.Path, key: str, labels: SourceLabels | None = None) -> dict:
    labels = labels or _BUILTIN
    root = pathlib.Path(root)
    stem = split_key(key, SOURCE)
    image_path = root / "leftImg8bit" / (stem + IMAGE_SUFFIX)
    label_path = root / "gtFine" / (stem + LABEL_SUFFIX)
    if not label_path.is_file():
        raise BadExample(f"{image_path}: image without label (expected {label_path})")
    if not image_path.is_file():
        raise BadExample(f"{label_path}: label without image (expected {image_path})")
    image = read_rgb(image_path)
    shape = image.shape[:2]
    example = placeholder(*shape)
    segmentation = labels.segment(read_mask(label_path, np.uint8, shape), label_path, "label id")
    example.update(image=image, segmentation=segmentation,
                   has_segmentation=bool(np.any(segmentation != IGNORE)))

    ignore = None
    instance_path = root / "gtFine" / (stem + INSTANCE_SUFFIX)
    if instance_path.is_file():
        boxes, classes, ignore = instance_boxes(read_mask(instance_path, np.uint16, shape), labels,
                                                str(instance_path))
        example.update(boxes=boxes, classes=classes, has_detection=True)

    disparity_path = root / "disparity" / (stem + "_disparity.png")
    if disparity_path.is_file():
        depth = disparity_depth(disparity_path, root / "camera" / (stem + "_camera.json"), shape)
        example.update(depth=depth, has_depth=bool(np.any(depth > 0)))
    return finish(example, f"{key} ({label_path})", ignore, labels.classes)
