"""An example in the form the data set stores it (PNG bytes and plain arrays), made without TensorFlow.

Handed bytes, TFDS's Image feature stores them as they are; handed an array, it PNG-encodes it with
TensorFlow, a graph run per image that took 15 ms of CPU for one 384x192 frame, more than rendering
the frame (issue 15). Here OpenCV encodes (3 ms), in whichever process loaded the example, so worker
processes (data/parallel.py) do it in parallel and need no TensorFlow. Decoding (tf.io.decode_png in
`as_dataset`) gives the same pixels as before: PNG is lossless. The bytes depend only on the
example, so a data set is the same bytes however many processes built it.

Depth is stored as a 16-bit PNG in KITTI's convention (metres x 256, 0 = no measurement): exact to
4 mm up to 256 m, lossless and a quarter of the size of float32.
"""
from __future__ import annotations

import cv2
import numpy as np

from data.vocabulary import DEPTH_SCALE

MAX_STORED_DEPTH = 65535 / DEPTH_SCALE
# The RGB frame: OpenCV's default (run-length, fastest): 2.8 ms and 8 % larger than TensorFlow's PNG.
# Class and depth maps: zlib level 6 (OpenCV's default strategy there leaves depth 8x larger); the
# same sizes as TensorFlow's PNG at under 2 ms.
IMAGE_PNG: list[int] = []
MAP_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 6]


def png(array: np.ndarray, flags: list[int]) -> bytes:
    """PNG bytes of an [H, W, 3] RGB or [H, W, 1] grey (8 or 16 bit) array."""
    if array.shape[-1] == 3:
        array = array[..., ::-1]  # OpenCV writes BGR arrays as RGB PNGs
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array), flags)
    if not ok:
        raise ValueError(f"could not PNG-encode an array of shape {array.shape} and dtype {array.dtype}")
    return data.tobytes()


def stored(example: dict, key: str) -> dict:
    """Schema example (NumPy) -> the feature dict TFDS stores (data/builder.py's features)."""
    depth = np.clip(example["depth"], 0.0, MAX_STORED_DEPTH)
    return {
        "key": key,
        "image": png(example["image"], IMAGE_PNG),
        "boxes": example["boxes"].astype(np.float32).reshape(-1, 4),
        "classes": example["classes"].astype(np.int32).reshape(-1),
        "ignore_boxes": np.asarray(example.get("ignore_boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4),
        "segmentation": png(example["segmentation"][..., None], MAP_PNG),
        "depth": png(np.round(depth * DEPTH_SCALE).astype(np.uint16)[..., None], MAP_PNG),
        "has_detection": example["has_detection"],
        "has_segmentation": example["has_segmentation"],
        "has_depth": example["has_depth"],
    }
