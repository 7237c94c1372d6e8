"""Labelled synthetic dashcam clips, and the clip-label format users can give for their own videos.

`render_clip` drives the ego car forward through a scene from data/synthetic.py (10-15 m/s): the road
texture and lane dashes slide by, static things come closer by ego_speed / fps each frame, other agents
move with their own velocities, agents that leave the view are removed and new ones appear far ahead.
It writes `<name>.mp4` and, beside it, `<name>.labels.jsonl` plus a `<name>.labels/` folder of PNGs.
Every file is first written under a temporary name and renamed when complete, so an interrupted run never
leaves a clip that looks finished.

Clip label format (`<name>.labels.jsonl`): UTF-8, one JSON object per video frame, in frame order:

    {"frame": 0,
     "boxes": [[x1, y1, x2, y2], ...],        pixels in the video frame, x right, y down, x2 > x1, y2 > y1
     "classes": ["vehicle", "pedestrian"],    one name per box, of the model's detection classes
                                              (default: vehicle | pedestrian | cyclist)
     "segmentation": "clip.labels/000000_seg.png",   optional (null or absent): 8-bit PNG of class ids
                                                      (the model's segmentation classes, default
                                                      data/schema.py SEGMENTATION_CLASSES), 255 = ignore
     "depth": "clip.labels/000000_depth.png"}         optional: 16-bit PNG, metres x 256, 0 = no measurement
                                                      (KITTI's convention)

PNG paths are relative to the folder holding the .jsonl file. "frame" is the 0-based index of the video
frame the line labels; frames must increase, and frames without a line are simply unlabelled. Blank lines
are ignored. `read_clip_labels` reads this format and names the file and line of any mistake.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
from typing import Iterator

import cv2
import numpy as np

from data import schema, synthetic
from data.errors import UserError
from data.mapping import SourceLabels
from data.video_writer import H264Writer
from data.vocabulary import DEPTH_SCALE

_CLIP_STREAM = 7  # keeps clip seeds apart from the frame data set's seed streams (data/synthetic.SPLITS)


# ------------------------------------------------------------------------------------------ simulation
def _is_vehicle(agent) -> bool:
    return agent.kind in ("car", "van", "truck")


def _follow(scene, ego_speed: float) -> None:
    """Crude car following, so vehicles in one lane (or ahead of the ego car) never drive into each other."""
    vehicles = [a for a in scene.agents if _is_vehicle(a) and a.vz != 0]
    for a in vehicles:
        ahead = np.sign(a.vz)
        if ahead > 0 and abs(a.x) < 1.6 and a.z > scene.ego_z and a.z - scene.ego_z < 12 and a.vz < ego_speed:
            a.vz = ego_speed  # the car in front of the ego car keeps its distance
        for b in scene.agents:
            if b is a or not _is_vehicle(b) or abs(b.x - a.x) > 1.6:
                continue
            gap = (b.z - (a.z + a.length)) if ahead > 0 else (a.z - (b.z + b.length))
            if 0 <= gap < 8 and (b.vz - a.vz) * ahead < 0:
                a.vz = b.vz  # do not catch up with the vehicle ahead


def step(scene, rng, ego_speed: float, dt: float, target_agents: int) -> None:
    """Advances the scene by dt seconds: ego car and agents move, leavers go, newcomers appear far ahead."""
    scene.ego_z += ego_speed * dt
    _follow(scene, ego_speed)
    for a in scene.agents:
        a.x += a.vx * dt
        a.z += a.vz * dt
    cam = scene.camera
    kept = []
    for a in scene.agents:
        z = a.z - scene.ego_z
        if z + a.length < synthetic.NEAR or z > 160:
            continue  # passed, or drove away
        if abs(a.x) > 30 or (z > synthetic.NEAR and abs(cam.focal * a.x / z) > 3 * cam.width):
            continue  # walked or rode out of view
        if not _is_vehicle(a) and a.vx and abs(a.x) < 1.6 and z < 8:
            continue  # a crosser right in front of the ego car has (by convention) just reached the far side
        kept.append(a)
    scene.agents = kept
    if len(scene.agents) < target_agents and rng.uniform() < 0.3:
        synthetic.spawn_agent(rng, scene, 45.0, 70.0)
    synthetic.extend_static(rng, scene, scene.ego_z + synthetic.STATIC_AHEAD)
    scene.facades = [f for f in scene.facades if f.z1 > scene.ego_z]
    scene.props = [p for p in scene.props if p.z > scene.ego_z]


def simulate(seed: int, frames: int, height: int, width: int, fps: int) -> Iterator[tuple[dict, dict]]:
    """Yields (example, extras) per frame; extras as synthetic.rasterise, plus "ego_speed" (m/s)."""
    if frames < 1 or fps < 1:
        raise ValueError(f"a clip needs frames >= 1 and fps >= 1. Received: frames={frames}, fps={fps}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CLIP_STREAM]))
    scene = synthetic.sample_scene(rng, height, width, agents=(4, 10))
    scene.look.jpeg = 0  # the video codec compresses already
    ego_speed = rng.uniform(10.0, 15.0)
    target = max(4, len(scene.agents))
    for _ in range(frames):
        with synthetic.single_threaded_cv2():
            example, extras = synthetic.rasterise(scene, rng, return_instances=True)
        extras["ego_speed"] = ego_speed
        yield example, extras
        step(scene, rng, ego_speed, 1.0 / fps, target)


# ---------------------------------------------------------------------------------------------- writing
def _replace(tmp: pathlib.Path, final: pathlib.Path) -> None:
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


def render_clip(out_dir: pathlib.Path, name: str, seed: int, frames: int, height: int, width: int,
                fps: int, mapping: SourceLabels | None = None) -> pathlib.Path:
    """Renders a labelled clip; returns the path of `<out_dir>/<name>.mp4` (labels beside it).
    `mapping`: the synthetic source's tables onto the config's classes (None: the default classes);
    a box mapped to "ignore" or "drop" is left out of the labels."""
    mapping = None if mapping is None or mapping.is_identity() else mapping
    names = mapping.classes.detection if mapping is not None else schema.DETECTION_CLASSES
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video, jsonl = out_dir / f"{name}.mp4", out_dir / f"{name}.labels.jsonl"
    labels = out_dir / f"{name}.labels"
    tmp_video = out_dir / f".{name}.partial.mp4"
    tmp_jsonl, tmp_labels = out_dir / f".{name}.labels.jsonl.partial", out_dir / f".{name}.labels.partial"
    shutil.rmtree(tmp_labels, ignore_errors=True)
    tmp_labels.mkdir()
    try:
        writer = H264Writer(tmp_video, width, height, fps)  # H.264 + faststart: plays in a browser
    except UserError:
        shutil.rmtree(tmp_labels, ignore_errors=True)
        raise
    try:
        with open(tmp_jsonl, "w", encoding="utf-8") as lines:
            for i, (example, _) in enumerate(simulate(seed, frames, height, width, fps)):
                writer.write(example["image"][..., ::-1])
                if mapping is not None:
                    example = mapping.remap(example, f"{name} frame {i}")
                seg, depth = f"{i:06d}_seg.png", f"{i:06d}_depth.png"
                depth_png = np.round(np.clip(example["depth"], 0, 65535 / DEPTH_SCALE) * DEPTH_SCALE)
                if not (cv2.imwrite(str(tmp_labels / seg), example["segmentation"])
                        and cv2.imwrite(str(tmp_labels / depth), depth_png.astype(np.uint16))):
                    raise UserError(f"cannot write label PNGs under {tmp_labels}")
                record = {"frame": i,
                          "boxes": [[round(float(v), 2) for v in box] for box in example["boxes"]],
                          "classes": [names[c] for c in example["classes"]],
                          "segmentation": f"{labels.name}/{seg}", "depth": f"{labels.name}/{depth}"}
                lines.write(json.dumps(record) + "\n")
        writer.release()
        _replace(tmp_labels, labels)
        os.replace(tmp_jsonl, jsonl)
        os.replace(tmp_video, video)  # last: a finished .mp4 means its labels are there too
    except BaseException:
        writer.release()
        for path in (tmp_video, tmp_jsonl):
            path.unlink(missing_ok=True)
        shutil.rmtree(tmp_labels, ignore_errors=True)
        raise
    return video


# ---------------------------------------------------------------------------------------------- reading
def _png(base: pathlib.Path, value, where: str, what: str, dtype) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"{where}: {what} must be a PNG path (relative to the .jsonl folder) or null, "
                        f"got {value!r}")
    path = base / value
    if not path.is_file():
        raise UserError(f"{where}: {what} PNG not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"{where}: cannot read {what} PNG {path}")
    if image.ndim != 2 or image.dtype != dtype:
        kind = "8-bit" if dtype == np.uint8 else "16-bit"
        raise UserError(f"{where}: {what} PNG {path} must be one-channel {kind}, got {image.dtype} "
                        f"with shape {image.shape}")
    return image


def _parse_line(text: str, where: str, base: pathlib.Path, names: tuple[str, ...]) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in ("frame", "boxes", "classes") if key not in record]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(missing)}")
    frame = record["frame"]
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise UserError(f"{where}: frame must be an integer >= 0, got {frame!r}")
    boxes, labelled = record["boxes"], record["classes"]
    if not isinstance(boxes, list) or not isinstance(labelled, list):
        raise UserError(f"{where}: boxes and classes must be lists")
    if len(boxes) != len(labelled):
        raise UserError(f"{where}: {len(boxes)} boxes but {len(labelled)} classes")
    for j, box in enumerate(boxes):
        if not isinstance(box, list) or len(box) != 4:
            count = len(box) if isinstance(box, list) else "not a list of"
            raise UserError(f"{where}: box {j} has {count} numbers, expected 4 (x1, y1, x2, y2)")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            raise UserError(f"{where}: box {j} has a value that is not a finite number: {box}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise UserError(f"{where}: box {j} {box} needs x2 > x1 and y2 > y1")
    for name in record["classes"]:
        if name not in names:
            raise UserError(f"{where}: unknown class name {name!r}; expected one of "
                            f"{', '.join(names)}")
    segmentation = _png(base, record.get("segmentation"), where, "segmentation", np.uint8)
    depth = _png(base, record.get("depth"), where, "depth", np.uint16)
    if segmentation is not None and depth is not None and segmentation.shape != depth.shape:
        raise UserError(f"{where}: segmentation is {segmentation.shape} but depth is {depth.shape}")
    return {
        "frame": frame,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "classes": np.asarray([names.index(n) for n in labelled], np.int32),
        "segmentation": segmentation,
        "depth": None if depth is None else depth.astype(np.float32) / DEPTH_SCALE,
    }


def read_clip_labels(jsonl_path, detection_classes: tuple[str, ...] = schema.DETECTION_CLASSES) -> list[dict]:
    """Reads a clip-label file (format in the module docstring) -> one dict per labelled frame:
    frame int, boxes float32 [N,4], classes int32 [N] (indices into `detection_classes`, the classes
    of the model the clip is run with), segmentation uint8 [H,W] or None, depth float32 [H,W] metres
    or None. Raises UserError naming the file and line of a bad line."""
    path = pathlib.Path(jsonl_path)
    if not path.is_file():
        raise UserError(f"clip labels not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read clip labels ({err})") from None
    frames, last = [], -1
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = _parse_line(line, where, path.parent, tuple(detection_classes))
        if record["frame"] <= last:
            raise UserError(f"{where}: frame {record['frame']} does not come after frame {last}")
        last = record["frame"]
        frames.append(record)
    return frames
