"""Section 6's clips: the labelled synthetic clip at 1280x720, and the same clip at 1920x1080.

The 1080p clip is the 720p one with every frame resized (bilinear) and its labels with it (class and
depth maps nearest neighbour, boxes scaled), so the two rows differ in frame size only, not in scene
or in how much detail the codec has to carry. (Rendered at 1080p, the synthetic sensor noise makes
285 kB a frame at CRF 20, twice a real 1080p dashcam's bitrate, and decoding alone took 36 ms of CPU
a frame on the project's machine: that row would time the noise.)
"""
from __future__ import annotations

import json
import pathlib

import cv2

from data import synthetic_clip
from data.video_writer import H264Writer

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}  # name -> (height, width)


def bench_clips(folder: pathlib.Path, seed: int, frames: int) -> dict[str, pathlib.Path]:
    """name -> video (labels beside it) for each of SIZES."""
    height, width = SIZES["720p"]
    rendered = pathlib.Path(synthetic_clip.render_clip(folder, "bench_720p", seed=seed, frames=frames,
                                                       height=height, width=width, fps=12))
    height, width = SIZES["1080p"]
    return {"720p": rendered, "1080p": resized_clip(rendered, "bench_1080p", width, height)}


def resized_clip(video: pathlib.Path, name: str, width: int, height: int) -> pathlib.Path:
    """`video` and its labels (data/synthetic_clip.py's format) at width x height, beside it as <name>."""
    folder = video.parent
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS)
    source_w, source_h = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = H264Writer(folder / f"{name}.mp4", width, height, fps)
    try:
        while (frame := capture.read())[0]:
            writer.write(cv2.resize(frame[1], (width, height), interpolation=cv2.INTER_LINEAR))
    finally:
        writer.release()
        capture.release()
    (folder / f"{name}.labels").mkdir(exist_ok=True)
    scale = [width / source_w, height / source_h] * 2
    lines = []
    for line in (folder / f"{video.stem}.labels.jsonl").read_text().splitlines():
        record = json.loads(line)
        record["boxes"] = [[round(v * s, 2) for v, s in zip(box, scale)] for box in record["boxes"]]
        for key in ("segmentation", "depth"):
            if record.get(key):  # 8-bit classes, 16-bit depth: nearest neighbour keeps the values
                png = cv2.imread(str(folder / record[key]), cv2.IMREAD_UNCHANGED)
                record[key] = f"{name}.labels/{pathlib.Path(record[key]).name}"
                resized = cv2.resize(png, (width, height), interpolation=cv2.INTER_NEAREST)
                cv2.imwrite(str(folder / record[key]), resized)
        lines.append(json.dumps(record) + "\n")
    (folder / f"{name}.labels.jsonl").write_text("".join(lines))
    return folder / f"{name}.mp4"
