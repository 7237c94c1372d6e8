"""KITTI object benchmark reader: 2D boxes from label_2, sparse metric depth from the Velodyne scan.

Layout (root is the folder holding `training/`, or the `training/` folder itself):
  training/image_2/<id>.png     left colour camera
  training/label_2/<id>.txt     one object per line: type truncated occluded alpha x1 y1 x2 y2
                                h w l x y z rotation_y [score]   (15 or 16 fields)
  training/calib/<id>.txt       P2 (3x4), R0_rect (3x3), Tr_velo_to_cam (3x4)
  training/velodyne/<id>.bin    float32 x, y, z, reflectance per point (16 bytes each)
  training/depth/<id>.png       optional: KITTI depth PNG (uint16, metres * 256, 0 = none); used
                                instead of the scan when present (e.g. densified or completed depth)
`velodyne` (with `calib`) and `depth` are optional folders: without either, frames have no depth
label (has_depth False). The `testing/` split has no labels and is not read.

Depth is the z of each Velodyne point in the colour camera's frame (x_img = P2 . R0_rect .
Tr_velo_to_cam . X), kept only in front of the camera and inside the image, nearest point per pixel
(the LiDAR sits above the camera and also sees surfaces the camera cannot; the nearest return is the
one the camera sees).
"""
from __future__ import annotations

import pathlib

import numpy as np

from data.mapping import DROP, SourceLabels
from data.readers import (clip_boxes, finish, png_size, read_mask, read_rgb, read_text, require_dir,
                          split_key)
from data.schema import IGNORE, BadExample, placeholder
from data.errors import UserError

LABELS = {"detection", "depth"}
SOURCE = "kitti"
LAYOUT = "KITTI object layout: training/{image_2,label_2,calib,velodyne}"
DEPTH_FOLDER = "depth"
# Older KITTI-style calibration files (raw, tracking) name two of the matrices differently.
_CALIB_ALIASES = {"P2": ("P2",), "R0_rect": ("R0_rect", "R_rect"),
                  "Tr_velo_to_cam": ("Tr_velo_to_cam", "Tr_velo_cam")}
_CALIB_SIZES = {"P2": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}
_BUILTIN = SourceLabels.build(SOURCE)


def _training(root: pathlib.Path) -> pathlib.Path:
    root = pathlib.Path(root)
    return root if (root / "image_2").is_dir() else root / "training"


def check_layout(root: pathlib.Path) -> None:
    training = _training(root)
    require_dir(training / "image_2", SOURCE, LAYOUT)
    require_dir(training / "label_2", SOURCE, LAYOUT)
    if (training / "velodyne").is_dir():
        require_dir(training / "calib", SOURCE, LAYOUT + "; velodyne needs calib")
    if not any((training / "image_2").glob("*.png")):
        raise UserError(f"{SOURCE}: expected <id>.png images in {training / 'image_2'}, found none")


def list_items(root: pathlib.Path) -> list[str]:
    training = _training(root)
    # Labels without an image are listed too, so load_item reports them instead of them vanishing.
    ids = {p.stem for p in (training / "image_2").glob("*.png")}
    ids |= {p.stem for p in (training / "label_2").glob("*.txt")}
    return sorted(f"{SOURCE}-{i}" for i in ids)


def focal_lengths(root: pathlib.Path) -> tuple[list[tuple[float, float, int, int]], list[str]]:
    """(fx, fy, width, height) of camera 2 for every frame with a calibration file (P2's diagonal),
    and one line for each frame whose calibration or image header cannot be read."""
    training = _training(root)
    result, problems = [], []
    for calib in sorted((training / "calib").glob("*.txt")):
        image = training / "image_2" / f"{calib.stem}.png"
        if image.is_file():
            try:
                p2 = read_calib(calib)["P2"]
                result.append((float(p2[0, 0]), float(p2[1, 1]), *png_size(image)))
            except BadExample as err:
                problems.append(str(err))
    return result, problems


def read_labels(path: pathlib.Path) -> list[tuple[str, list[float]]]:
    """(type, 14 numbers) per object line; BadExample naming the file and line for a malformed one."""
    objects = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (15, 16):
            raise BadExample(f"{path}: line {number} has {len(fields)} fields, expected 15 "
                             f"(or 16 with a score)")
        try:
            values = [float(f) for f in fields[1:15]]
        except ValueError:
            raise BadExample(f"{path}: line {number} has a non-numeric field") from None
        objects.append((fields[0], values))
    return objects


def read_calib(path: pathlib.Path) -> dict[str, np.ndarray]:
    """P2 [3,4], and R0_rect and Tr_velo_to_cam as homogeneous [4,4] matrices."""
    if not path.is_file():
        raise BadExample(f"{path}: calibration file missing")
    entries = {}
    for line in read_text(path).splitlines():
        if ":" in line:
            name, values = line.split(":", 1)
            entries[name.strip()] = values.split()
    calib = {}
    for name, aliases in _CALIB_ALIASES.items():
        found = next((entries[a] for a in aliases if a in entries), None)
        if found is None:
            raise BadExample(f"{path}: calibration has no {name} matrix")
        try:
            values = np.array(found, np.float64)
        except ValueError:
            raise BadExample(f"{path}: {name} has a non-numeric value") from None
        if values.size != _CALIB_SIZES[name]:
            raise BadExample(f"{path}: {name} has {values.size} numbers, expected {_CALIB_SIZES[name]}")
        calib[name] = values
    homogeneous = {"R0_rect": (3, 3), "Tr_velo_to_cam": (3, 4)}
    for name, shape in homogeneous.items():
        matrix = np.eye(4)
        matrix[:shape[0], :shape[1]] = calib[name].reshape(shape)
        calib[name] = matrix
    calib["P2"] = calib["P2"].reshape(3, 4)
    return calib


def read_velodyne(path: pathlib.Path) -> np.ndarray:
    """float32 [N, 4]: x, y, z (metres, Velodyne frame), reflectance."""
    if not path.is_file():
        raise BadExample(f"{path}: LiDAR scan missing")
    size = path.stat().st_size
    if size % 16:
        raise BadExample(f"{path}: {size} bytes is not a whole number of 16-byte points "
                         f"(float32 x, y, z, reflectance)")
    return np.fromfile(path, np.float32).reshape(-1, 4)


def lidar_depth(points: np.ndarray, calib: dict, height: int, width: int) -> np.ndarray:
    """Sparse depth map float32 [H, W] in metres (0 = no point) from a Velodyne scan."""
    xyz1 = np.concatenate([points[:, :3].astype(np.float64), np.ones((len(points), 1))], axis=1)
    projected = (calib["P2"] @ calib["R0_rect"] @ calib["Tr_velo_to_cam"] @ xyz1.T).T
    # P2's last row is [0 0 1 t], so the third coordinate is the z of camera 2, the one that took
    # image_2 (a few millimetres from the rectified reference camera's z).
    z = projected[:, 2]
    front = z > 0
    z, projected = z[front], projected[front]
    cols = np.floor(projected[:, 0] / z + 0.5).astype(np.int64)   # pixel centres at integers
    rows = np.floor(projected[:, 1] / z + 0.5).astype(np.int64)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    nearest = np.full(height * width, np.inf)
    np.minimum.at(nearest, rows[inside] * width + cols[inside], z[inside])
    nearest[np.isinf(nearest)] = 0.0
    return nearest.reshape(height, width).astype(np.float32)


def load_item(root: pathlib.Path, key: str, labels: SourceLabels | None = None) -> dict:
    labels = labels or _BUILTIN
    training = _training(root)
    frame = split_key(key, SOURCE)
    image_path = training / "image_2" / f"{frame}.png"
    label_path = training / "label_2" / f"{frame}.txt"
    if not label_path.is_file():
        raise BadExample(f"{image_path}: image without label (expected {label_path})")
    if not image_path.is_file():
        raise BadExample(f"{label_path}: label without image (expected {image_path})")
    image = read_rgb(image_path)
    height, width = image.shape[:2]

    boxes, classes, ignore = [], [], []
    for number, (kind, values) in enumerate(read_labels(label_path), start=1):
        box = values[3:7]
        if box[2] < box[0] or box[3] < box[1]:
            raise BadExample(f"{label_path}: line {number} has a box with x2 < x1 or y2 < y1")
        target = labels.detect(kind, f"{label_path}: line {number}", "object type")
        if target == IGNORE:
            ignore.append(box)
        elif target != DROP:
            boxes.append(box)
            classes.append(target)
    boxes, keep = clip_boxes(np.array(boxes, np.float32), width, height)

    example = placeholder(height, width)
    example.update(image=image, boxes=boxes[keep], classes=np.array(classes, np.int32)[keep],
                   has_detection=True)
    depth = _depth(training, frame, height, width)
    if depth is not None:
        example.update(depth=depth, has_depth=bool(np.any(depth > 0)))
    return finish(example, f"{key} ({label_path})", np.array(ignore, np.float32), labels.classes)


def _depth(training: pathlib.Path, frame: str, height: int, width: int) -> np.ndarray | None:
    depth_png = training / DEPTH_FOLDER / f"{frame}.png"
    if depth_png.is_file():
        return read_mask(depth_png, np.uint16, (height, width)).astype(np.float32) / 256.0
    if (training / "velodyne").is_dir():
        points = read_velodyne(training / "velodyne" / f"{frame}.bin")
        calib = read_calib(training / "calib" / f"{frame}.txt")
        return lidar_depth(points, calib, height, width)
    return None
