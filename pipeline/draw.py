"""Drawing shared by the preview, the evaluation grid, predict and the clip overlays (OpenCV, RGB).

Class names and colours come from a ClassSet (data/classes.py): the model's classes, so a class looks
the same in previews, reports, predictions and clips. The default is the project's 3 + 9 classes."""
from __future__ import annotations

import cv2
import numpy as np

from data.classes import DEFAULT, ClassSet


def colorize_segmentation(segmentation: np.ndarray, class_set: ClassSet = DEFAULT) -> np.ndarray:
    """Class map [H,W] -> RGB in the classes' colours; ignore pixels black."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(class_set.segmentation_colours)] = class_set.segmentation_colours
    return palette[segmentation.astype(np.uint8)]


def colorize_depth(depth: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """Metres [H,W] -> RGB with near = warm; no measurement (0) black. Inverse depth spreads the
    near range, where a driver's attention is."""
    valid = depth > 0
    inverse = np.where(valid, 1.0 / np.maximum(depth, 1e-3), 0.0)
    scaled = np.clip(inverse / (1.0 / 2.0), 0.0, 1.0)  # 2 m and nearer saturate
    scaled = np.where(valid, np.clip(scaled, 1.0 / max_depth * 2.0, 1.0), 0.0)
    coloured = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[..., ::-1]
    return np.where(valid[..., None], coloured, 0).astype(np.uint8)


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    return cv2.addWeighted(image, 1.0 - alpha, overlay, alpha, 0.0)


def draw_boxes(image: np.ndarray, boxes, classes, scores=None, thickness: int = 1,
               label: bool = True, class_set: ClassSet = DEFAULT, in_place: bool = False,
               bgr: bool = False) -> np.ndarray:
    """Boxes x1,y1,x2,y2 (pixels) with class names (and scores); classes < 0 are padding. Draws on a
    copy unless in_place (the clip overlay: a full-HD copy per frame costs milliseconds); bgr: the
    image is BGR (OpenCV's order), so the class colours are reversed."""
    colours, names = class_set.detection_colours, class_set.detection
    out = image if in_place else np.ascontiguousarray(image.copy())
    font_scale = max(0.3, min(out.shape[:2]) / 700)
    for i, (box, cls) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(classes).reshape(-1))):
        if cls < 0:
            continue
        colour = tuple(int(c) for c in colours[int(cls) % len(colours)])
        colour = colour[::-1] if bgr else colour
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        if label:
            text = names[int(cls)]
            if scores is not None:
                text += f" {float(np.asarray(scores).reshape(-1)[i]):.2f}"
            cv2.putText(out, text, (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour,
                        1, cv2.LINE_AA)
    return out


def caption(image: np.ndarray, text: str) -> np.ndarray:
    out = np.ascontiguousarray(image.copy())
    scale = max(0.35, out.shape[1] / 900)
    cv2.putText(out, text, (4, int(14 * scale / 0.45)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (4, int(14 * scale / 0.45)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tiles equally sized RGB images into one picture."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = pad + r * (height + pad), pad + c * (width + pad)
            canvas[y:y + height, x:x + width] = tile
    return canvas


def save_png(path, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(image_rgb[..., ::-1])):
        raise OSError(f"could not write {path}")
