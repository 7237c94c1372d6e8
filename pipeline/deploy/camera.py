"""The camera a trained model's metric depth assumes, and depth rescaled for another camera.

A net that reads depth from one image reads it through the pixel size of things: an object h metres
tall at z metres spans f*h/z pixels (f: the focal length in pixels), and the road at z metres lies
f*mount/z rows below the horizon. Through a lens of focal length f' the same scene looks like the
training camera's scene at depth z*f/f', so the net answers z*f/f': its depth scales with the focal
length (the ambiguity Metric3D's canonical camera removes, Yin et al. 2023). KITTI frames (f = 0.58
frame widths, but 3.3:1) squeezed to the model's 2:1 input have a vertical focal length 1.7x the
synthetic camera's, and the default model reads them 1.5-1.75x too near (README, "Cameras").

The train stage records the focal lengths its depth sources imply at the model's input size
(camera.json beside model.keras; the export stage copies it into export/). `--focal F` on predict
and clip gives another camera's focal length in its own frame's pixels, and depth is multiplied by
f_frame / f_training, where each f is the geometric mean of the horizontal and vertical focal
lengths at the model's input size (resizing to the input can stretch the two axes differently).
`evaluate.rescale_depth: true` does the same for each evaluated source, with the mean focal length
of its calibration files.
"""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from data import synthetic
from data.errors import UserError
from data.readers import get as reader
from pipeline import atomic
from pipeline.config import load_config

RECORD = "camera.json"


def _at_model_size(fx: float, fy: float, frame_hw, model_hw) -> tuple[float, float]:
    """Focal lengths in a frame's pixels -> in the pixels of that frame resized to the model's input."""
    return fx * model_hw[1] / frame_hw[1], fy * model_hw[0] / frame_hw[0]


def source_camera(source, config) -> dict:
    """What one configured source says about its camera, at the model's input size."""
    model_hw = tuple(config.data.image_size)
    if source.name == "synthetic":
        frame_hw = (config.data.synthetic.height, config.data.synthetic.width)
        fx, fy = _at_model_size(*synthetic.focal_lengths(*frame_hw), frame_hw, model_hw)
        return {"fx": fx, "fy": fy, "frames": None,
                "from": f"the renderer: focal {synthetic.FOCAL_RANGE[0]}-{synthetic.FOCAL_RANGE[1]} frame "
                        f"widths, the mean of that range"}
    module = reader(source.name)
    if not hasattr(module, "focal_lengths"):
        return {"fx": None, "fy": None, "frames": 0, "from": f"unknown: the {source.name} layout has no calibration"}
    found, problems = module.focal_lengths(source.path)
    # Frames whose calibration cannot be read are counted and the first named, not silently left out
    # (the data stage decides what such a frame means for training: data.bad_examples).
    unreadable = {"unreadable": len(problems), "first_unreadable": problems[0]} if problems else {}
    frames = [_at_model_size(fx, fy, (h, w), model_hw) for fx, fy, w, h in found]
    if not frames:
        return {"fx": None, "fy": None, "frames": 0, "from": "unknown: no readable calibration file", **unreadable}
    return {"fx": sum(f[0] for f in frames) / len(frames), "fy": sum(f[1] for f in frames) / len(frames),
            "frames": len(frames), "from": "calibration files (mean over frames)", **unreadable}


def record(config) -> dict:
    """The camera.json content for a model trained on `config`: each source's camera, and the training
    camera depth is read against (the sampling-weighted mean over sources with depth and a known
    camera; None when there is none)."""
    sources = {source.name: source_camera(source, config) for source in config.data.sources}
    known = [(s, sources[s.name]) for s in config.data.sources
             if sources[s.name]["fx"] is not None and _has_depth(s.name)]
    training = None
    if "depth" in config.model.tasks and known:
        total = sum(s.weight for s, _ in known)
        training = {axis: sum(s.weight * cam[axis] for s, cam in known) / total for axis in ("fx", "fy")}
    return {"model_input": list(config.data.image_size), "units": "pixels of the model's input",
            "training": training, "sources": sources}


def _has_depth(name: str) -> bool:
    return name == "synthetic" or "depth" in reader(name).LABELS


def write(config, folder: pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(folder) / RECORD
    atomic.write_text(path, json.dumps(record(config), indent=1))
    return path


def read_beside(model_path) -> dict | None:
    """The camera record of a model file: camera.json beside it (a SavedModel folder: beside the
    folder), else derived from the training config saved beside it, else None."""
    folder = pathlib.Path(model_path).parent
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        pass
    if not (folder / "config.yaml").is_file():
        return None
    try:
        return record(load_config(folder / "config.yaml"))
    except (OSError, UserError):
        return None


def depth_scale(camera: dict | None, focal_px: float, frame_hw, model_path="the model",
                content_hw=None) -> float:
    """The factor on a model's depth for frames of size frame_hw taken with focal length focal_px
    (square pixels): f_frame / f_training at the model's input size (module docstring). content_hw:
    the part of the input the frame fills (a letterboxed clip); default the whole input."""
    if not (math.isfinite(focal_px) and focal_px > 0):
        raise UserError(f"--focal must be a positive, finite focal length in pixels. Received: {focal_px}")
    training = _training_camera(camera, model_path, "--focal")
    fx, fy = _at_model_size(focal_px, focal_px, frame_hw, content_hw or camera["model_input"])
    return _focal_ratio(fx, fy, training)


def _training_camera(camera: dict | None, model_path, option: str) -> dict:
    training = (camera or {}).get("training")
    if not training:
        raise UserError(f"{model_path} records no training camera (no {RECORD} or training config beside "
                        f"it, or no depth source with a known camera): {option} cannot rescale its depth")
    return training


def _focal_ratio(fx: float, fy: float, training: dict) -> float:
    """Both axes' focal lengths over the training camera's, as one factor: their geometric mean."""
    return math.sqrt(fx * fy / (training["fx"] * training["fy"]))


def source_depth_scales(config, model_path) -> dict[str, float]:
    """{source name: depth factor} for evaluating the model at model_path on config's sources, each
    with its own camera (the mean over its calibration files: evaluate.rescale_depth); sources with an
    unknown camera are left out (factor 1)."""
    training = _training_camera(read_beside(model_path), model_path, "evaluate.rescale_depth")
    own = {source.name: source_camera(source, config) for source in config.data.sources}
    return {name: _focal_ratio(cam["fx"], cam["fy"], training) for name, cam in own.items() if cam["fx"] is not None}


class Rescaled:
    """A predictor (pipeline/deploy/runtimes.py) whose depth is rescaled for frames taken with
    focal length `focal_px`; everything else passes through. By default the frames it is given are the
    camera's (the predictor resizes them to its input); a caller that fits frames into the input
    itself (the clip stage) says how with fitted_as()."""

    def __init__(self, predictor, focal_px: float, camera: dict | None, fitted=None):
        self._predictor, self.focal_px, self.camera = predictor, float(focal_px), camera
        self._fitted = fitted  # (frame_hw, content_hw) or None
        self._name = getattr(predictor, "path", "the model")
        if "depth" not in predictor.tasks:
            raise UserError(f"{self._name} has no depth output: --focal has nothing to rescale")
        self.scale((1, 1))  # a bad focal length or a missing record fails now, before any frame
        recorded, size = tuple(camera["model_input"]), tuple(predictor.input_size)
        if min(size) > 0 and size != recorded:  # a SavedModel without metadata says (0, 0): it resizes itself
            raise UserError(f"{self._name} takes {size[0]}x{size[1]} frames but its {RECORD} was recorded for "
                            f"{recorded[0]}x{recorded[1]}: the record belongs to another model")

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def fitted_as(self, frame_hw, content_hw) -> "Rescaled":
        """The same rescale for frames of frame_hw that the caller resized to content_hw (inside the
        model's input) before predict()."""
        return Rescaled(self._predictor, self.focal_px, self.camera, (tuple(frame_hw), tuple(content_hw)))

    def predict(self, images):
        out = self._predictor.predict(images)
        out["depth"] = out["depth"] * np.float32(self.scale(np.shape(images)[1:3]))
        return out

    def scale(self, frame_hw=None) -> float:
        frame_hw, content_hw = self._fitted or (frame_hw, None)
        return depth_scale(self.camera, self.focal_px, frame_hw, self._name, content_hw)
