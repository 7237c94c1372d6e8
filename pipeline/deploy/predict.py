"""Annotating image files with any exported model (the predict stage's work).

`python -m pipeline predict --model <saved_model dir | .tflite | .onnx | .keras> --images a.png b.png [--out DIR]
[--focal PX]`

Writes into DIR (default runs/<experiment>/predict/):
  <image stem>_pred.png   the frame with detections (name + score) and a translucent segmentation
                          overlay, the depth colour map beside it
  predictions.json        per image: boxes in pixels, scores, class names, segmentation class pixel
                          shares, depth summary, the model's format; "resized": true and the model's
                          input size when a fixed-size model got a frame of another size; and any
                          conversion done to the file (grey or RGBA -> RGB, 16-bit -> 8-bit); with
                          --focal, focal_px and each image's depth_scale (pipeline/deploy/camera.py)
Listed and drawn detections are those with score >= export.score_threshold (runtimes: predictor.score_threshold) (the model itself returns
all top-K slots).
"""
from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np

from data.classes import DEFAULT, ClassSet
from data.errors import UserError
from pipeline import draw
from pipeline.deploy import camera
from pipeline.deploy import runtimes


def read_image(path: pathlib.Path) -> tuple[np.ndarray, list[str]]:
    """Any image file OpenCV reads -> (uint8 RGB [H,W,3], notes on the conversions made)."""
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as err:
        raise UserError(f"cannot read image {path}: {err.strerror or err}") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise UserError(f"{path} is not an image OpenCV can decode")
    notes = []
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)  # 65535 -> 255
        notes.append("16-bit image scaled to 8-bit")
    elif image.dtype != np.uint8:
        raise UserError(f"{path}: unsupported pixel type {image.dtype} (expected 8- or 16-bit)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        notes.append("grey image converted to RGB")
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        notes.append("RGBA image converted to RGB (alpha dropped)")
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise UserError(f"{path}: unsupported number of channels {image.shape[2]}")
    return np.ascontiguousarray(image), notes


def frame_result(out: dict, i: int, threshold: float, class_set: ClassSet = DEFAULT) -> dict:
    """The JSON record of frame i of a predict() result, classes named by `class_set`."""
    record = {}
    if "boxes" in out:
        keep = out["scores"][i] >= threshold
        record["detections"] = [
            {"class": class_set.detection[int(c)], "score": round(float(s), 4),
             "box": [round(float(v), 1) for v in b]}
            for b, s, c in zip(out["boxes"][i][keep], out["scores"][i][keep], out["classes"][i][keep])]
    if "segmentation" in out:
        counts = np.bincount(out["segmentation"][i].reshape(-1), minlength=len(class_set.segmentation))
        total = max(int(counts.sum()), 1)
        record["class_pixel_shares"] = {name: round(float(counts[k]) / total, 4)
                                        for k, name in enumerate(class_set.segmentation)}
    if "depth" in out:
        depth = out["depth"][i]
        record["depth_m"] = {"min": round(float(depth.min()), 3), "median": round(float(np.median(depth)), 3),
                             "max": round(float(depth.max()), 3)}
    return record


def annotate(image: np.ndarray, out: dict, i: int, threshold: float, max_depth: float,
             class_set: ClassSet = DEFAULT) -> np.ndarray:
    """Frame with segmentation overlay and boxes; the depth colour map beside it (when the model has depth)."""
    left = image
    if "segmentation" in out:
        left = draw.blend(left, draw.colorize_segmentation(out["segmentation"][i], class_set))
    if "boxes" in out:
        keep = out["scores"][i] >= threshold
        thickness = max(1, round(min(image.shape[:2]) / 300))
        left = draw.draw_boxes(left, out["boxes"][i][keep], out["classes"][i][keep], out["scores"][i][keep],
                               thickness=thickness, class_set=class_set)
    panels = [left]
    if "depth" in out:
        panels.append(draw.colorize_depth(out["depth"][i], max_depth))
    if len(panels) == 1:
        return left
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


def _output_names(paths: list[pathlib.Path]) -> list[str]:
    """<stem>_pred.png, made unique when two inputs share a stem (never an input's own name)."""
    names, seen = [], {}
    for path in paths:
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}_pred.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}_pred.png")
    return names


def run_predict(model: str, images: list[str], out_dir: pathlib.Path, max_depth: float = 80.0,
                num_threads: int | None = None, score_threshold: float | None = None,
                class_set: ClassSet = DEFAULT, focal_px: float | None = None) -> dict:
    """Annotates `images` with the model at `model`; returns the predictions.json dict. Classes are
    named as the model file says (runtimes: predictor.classes), else by `class_set`. `focal_px`: the
    images' focal length in pixels, to rescale depth for their camera (pipeline/deploy/camera.py)."""
    paths = [pathlib.Path(p) for p in images]
    frames = [read_image(path) for path in paths]  # every input checked before the slow model load
    predictor = runtimes.load_predictor(model, num_threads=num_threads, score_threshold=score_threshold)
    if focal_px is not None:
        predictor = camera.Rescaled(predictor, focal_px, camera.read_beside(model))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the output folder {out_dir}: {err.strerror or err}") from None
    threshold = predictor.score_threshold  # export.score_threshold (a SavedModel's own: its num_detections')
    class_set = predictor.classes or class_set
    records = []
    for path, name, (image, notes) in zip(paths, _output_names(paths), frames):
        out = predictor.predict(image[None])
        record = {"file": str(path), "annotated": name, "format": predictor.name,
                  "size": [int(image.shape[0]), int(image.shape[1])], "resized": bool(out["resized"])}
        if out["resized"]:
            record["model_input_size"] = list(predictor.input_size)
        if notes:
            record["conversions"] = notes
        if focal_px is not None:
            record["depth_scale"] = round(predictor.scale(image.shape[:2]), 4)
        record.update(frame_result(out, 0, threshold, class_set))
        picture = annotate(image, out, 0, threshold, max_depth, class_set)
        try:
            written = cv2.imwrite(str(out_dir / name), np.ascontiguousarray(picture[..., ::-1]))
        except cv2.error:
            written = False
        if not written:
            raise UserError(f"cannot write {out_dir / name} (is the output folder writable?)")
        records.append(record)
    result = {"model": str(model), "format": predictor.name, "model_input_size": list(predictor.input_size),
              "tasks": list(predictor.tasks), "score_threshold": threshold, "focal_px": focal_px,
              "images": records}
    try:
        (out_dir / "predictions.json").write_text(json.dumps(result, indent=1))
    except OSError as err:
        raise UserError(f"cannot write {out_dir / 'predictions.json'}: {err.strerror or err}") from None
    return result
