"""Frame fitting (clip.resize): how a video frame is fitted to the model input and how results go back.

"stretch" resizes the frame to the model size (bilinear, as training does); "letterbox" keeps the
aspect ratio and pads with grey. One piece of code (Fit) maps boxes and maps back to the input's
pixels, so every runtime answers at the model size.
"""
from __future__ import annotations

import cv2
import numpy as np

LETTERBOX_GREY = 114  # the usual letterbox fill (YOLO's): a mid grey, no edges for the model to find


class Fit:
    """How a frame of frame_hw is fitted into the model input of model_hw, and how results go back.

    The frame's content lands on the model pixels [top:top+content_h, left:left+content_w]; for
    "stretch" that is the whole input, for "letterbox" a centred, aspect-preserving part of it.
    """

    def __init__(self, frame_hw, model_hw, mode: str):
        if mode not in ("stretch", "letterbox"):
            raise ValueError(f"mode must be 'stretch' or 'letterbox'. Received: mode={mode!r}")
        (self.height, self.width), (self.model_h, self.model_w) = frame_hw, model_hw
        self.mode = mode
        if mode == "letterbox":
            scale = min(self.model_h / self.height, self.model_w / self.width)
            self.content_w = int(min(self.model_w, max(1, round(self.width * scale))))
            self.content_h = int(min(self.model_h, max(1, round(self.height * scale))))
        else:
            self.content_w, self.content_h = self.model_w, self.model_h
        self.left = (self.model_w - self.content_w) // 2
        self.top = (self.model_h - self.content_h) // 2
        # frame pixels per model (content) pixel
        self.scale_x, self.scale_y = self.width / self.content_w, self.height / self.content_h

    def to_model(self, frame: np.ndarray) -> np.ndarray:
        """Frame [h,w,3] uint8 -> model input [H,W,3] uint8. Bilinear, like the training pipeline."""
        content = frame
        if frame.shape[:2] != (self.content_h, self.content_w):
            content = cv2.resize(frame, (self.content_w, self.content_h), interpolation=cv2.INTER_LINEAR)
        if self.mode == "stretch":
            return content
        canvas = np.full((self.model_h, self.model_w, 3), LETTERBOX_GREY, np.uint8)
        canvas[self.top:self.top + self.content_h, self.left:self.left + self.content_w] = content
        return canvas

    def crop(self, model_map: np.ndarray) -> np.ndarray:
        """A model-resolution map without the letterbox padding."""
        return model_map[self.top:self.top + self.content_h, self.left:self.left + self.content_w]

    def boxes_to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Model-input pixels -> frame pixels, clipped to the frame."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        offset = np.array([self.left, self.top, self.left, self.top], np.float32)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], np.float32)
        mapped = (boxes - offset) * scale
        return np.clip(mapped, 0, [self.width, self.height, self.width, self.height]).astype(np.float32)

    def boxes_to_content(self, frame_boxes: np.ndarray) -> np.ndarray:
        """Frame pixels -> pixels of the cropped model-resolution maps."""
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], np.float32)
        return np.asarray(frame_boxes, np.float32).reshape(-1, 4) / scale

    def to_frame(self, content_map: np.ndarray, nearest: bool, size_hw=None) -> np.ndarray:
        """A cropped model-resolution map -> the frame's resolution (or size_hw)."""
        height, width = size_hw or (self.height, self.width)
        if content_map.shape[:2] == (height, width):
            return content_map
        interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.resize(content_map, (width, height), interpolation=interpolation)
