"""Which real-data readers exist, and the few file helpers they share.

Every reader module (data.kitti, data.cityscapes, data.camvid, data.bdd100k) provides
  LABELS                      set of tasks the source labels, e.g. {"detection", "depth"}
  check_layout(root)          raises data.errors.UserError naming the missing file/folder
  list_items(root)            sorted, stable keys ("kitti-000001", "camvid-test/0001TP_008550", ...)
  load_item(root, key, labels=None)
                              one example in the data.schema layout, its labels mapped by `labels`
                              (data.mapping.SourceLabels; None: the built-in tables onto the default
                              classes), or data.schema.BadExample (one line naming the file) for
                              anything wrong with that frame; data.mapping.UnmappedLabel for a label
                              value its table does not map.
Readers whose layout carries the camera calibration (KITTI, Cityscapes) also provide
  focal_lengths(root)         ([(fx, fy, width, height)] in pixels, one per frame that has it;
                              [one line per frame whose calibration cannot be read])
                              (pipeline/deploy/camera.py records them with a trained model).
The builder decides whether a BadExample stops the run or drops the frame and counts it; an
UnmappedLabel always stops it.

Every example also carries "ignore_boxes" float32 [M, 4] (x1, y1, x2, y2 pixels, clipped to the image;
M may be 0): regions such as KITTI DontCare or Cityscapes crowds where a detection is neither right nor
wrong. data.schema.validate drops keys it does not know, so `finish` adds it back after validating; the
builder stores it beside the schema keys.
"""
from __future__ import annotations

import importlib
import pathlib
from types import ModuleType

import cv2
import numpy as np

from data.classes import DEFAULT, ClassSet
from data.schema import BadExample, validate
from data.errors import UserError
from data.vocabulary import REAL_SOURCES


def get(name: str) -> ModuleType:
    """The reader module for a source name. Imported on demand so readers may import this module."""
    if name not in REAL_SOURCES:
        raise UserError(f"unknown data source {name!r}; choose one of {', '.join(REAL_SOURCES)}")
    return importlib.import_module(f"data.{name}")


# --- shared helpers ----------------------------------------------------------------------------------

def require_dir(path: pathlib.Path, source: str, layout: str) -> None:
    if not path.is_dir():
        raise UserError(f"{source}: expected folder {path} ({layout})")


def split_key(key: str, source: str) -> str:
    """'kitti-000001' -> '000001'; a key of another source is a programming error worth one line."""
    prefix = f"{source}-"
    if not key.startswith(prefix) or len(key) == len(prefix):
        raise BadExample(f"{source}: {key!r} is not a {source} key (expected '{prefix}...')")
    return key[len(prefix):]


def _read(path: pathlib.Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise BadExample(f"{path}: file missing")
    data = np.fromfile(path, np.uint8)
    # A cut-off JPEG still decodes (grey bottom rows, a warning on stderr); the end-of-image marker
    # tells a complete file from a truncated download.
    if path.suffix.lower() in (".jpg", ".jpeg") and b"\xff\xd9" not in data[-64:].tobytes():
        raise BadExample(f"{path}: truncated JPEG (no end-of-image marker)")
    array = cv2.imdecode(data, flags) if data.size else None
    if array is None:
        raise BadExample(f"{path}: unreadable or corrupt image")
    return array


def read_text(path: pathlib.Path) -> str:
    """A text file's contents; BadExample for one that is not UTF-8 text (a corrupt download)."""
    if not path.is_file():
        raise BadExample(f"{path}: file missing")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadExample(f"{path}: not a text file (byte {err.start} is not UTF-8; corrupt?)") from None


def read_rgb(path: pathlib.Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB (OpenCV decodes to BGR)."""
    image = _read(path, cv2.IMREAD_COLOR)
    if image.dtype != np.uint8:
        raise BadExample(f"{path}: expected an 8-bit image, got {image.dtype}")
    return np.ascontiguousarray(image[:, :, ::-1])


def read_mask(path: pathlib.Path, dtype: type, shape: tuple[int, int]) -> np.ndarray:
    """A single-channel label/depth PNG of the given dtype and [H, W] shape, exactly as stored."""
    mask = _read(path, cv2.IMREAD_UNCHANGED)
    if mask.ndim != 2 or mask.dtype != dtype:
        raise BadExample(f"{path}: expected a single-channel {np.dtype(dtype).name} PNG, "
                         f"got {mask.dtype} with shape {mask.shape}")
    if mask.shape != tuple(shape):
        raise BadExample(f"{path}: is {mask.shape[1]}x{mask.shape[0]}, "
                         f"the image is {shape[1]}x{shape[0]}")
    return mask


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the frame, and which of them still have an area (the rest lay outside)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, keep


def finish(example: dict, name: str, ignore_boxes=None, classes: ClassSet = DEFAULT) -> dict:
    """Validates against the schema (class ids within `classes`), then adds the extra "ignore_boxes"
    key back (see module doc)."""
    example = validate(example, name, len(classes.detection), len(classes.segmentation))
    height, width = example["image"].shape[:2]
    ignore = np.zeros((0, 4), np.float32) if ignore_boxes is None else ignore_boxes
    ignore, keep = clip_boxes(ignore, width, height)
    example["ignore_boxes"] = ignore[keep]
    return example


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from a PNG's header, without decoding the image."""
    with open(path, "rb") as file:
        header = file.read(24)
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n":
        raise BadExample(f"{path}: not a PNG image")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
