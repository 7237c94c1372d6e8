"""The clip loop: run a model over a dashcam video -> annotated video, per-frame results, speed, stability.

The clip stage (`python -m pipeline clip [--model M] [--input video-or-folder] [--out DIR]`) runs it
over each video.

For each clip, <out>/<clip name>/ gets:
  overlay.mp4        the input at its own size and frame rate: boxes with class names, a translucent
                     segmentation, a depth inset (bottom right, a quarter of the size), the frame's
                     inference latency
  predictions.jsonl  one line per frame: frame, time_s, boxes (input pixels, score >= export.score_threshold),
                     scores, classes (names), distance_m (median predicted depth in each box), nearest_m,
                     segmentation_shares; with clip.full_maps a maps/<frame>.npz per frame (class map
                     and depth at the input's resolution)
  summary.json       frames read / damaged, speeds (fps_model: inference alone; fps_end_to_end: the
                     whole loop), latency percentiles, seconds per stage, label-free temporal stability
                     and, when <video stem>.labels.jsonl lies beside the video, metrics against the labels.
A folder input processes every video in it and writes <out>/index.json.

The loop: a reader thread decodes and fits frames to the model input, the main thread runs inference
on batches of clip.batch_size, a writer thread analyses and draws, an encoder thread encodes (bounded
queues between them, so memory stays flat on long clips). Everything is written into a hidden staging
folder inside the clip folder and moved into place at the end, so a failure never leaves a
half-written overlay.mp4 or summary.json.

Frames are fitted to the model input (pipeline/video/fitting.py) in the reader thread rather than by
the runtime: inference then only runs the model, and every runtime answers at the model size.

What runs per frame at the frame's own size is kept to the few things that must (issue 15: at
1280x720 the loop ran at 0.16x the model's speed, at 1080p it would have been slower still):
decoding, one resize for the model, the overlay's blend and inset (pipeline/video/overlay.py) and
encoding. The frame stays BGR from decoder to encoder (only the small model input is converted to
RGB); analysis, stability and label metrics use the model-resolution maps (clip_metrics.py says how
the label metrics changed).
"""
from __future__ import annotations

import json
import pathlib
import sys
import threading
import time

import cv2
import numpy as np
from tqdm import tqdm

from data.errors import UserError
from pipeline import atomic, classes, timing
from pipeline.deploy import camera
from pipeline.evaluation.evaluate import HEADLINE_METRICS
from pipeline.evaluation.stability import Stability
from pipeline.video.analysis import analyse, frame_prediction, jsonl_record, save_maps
from pipeline.video.clip_metrics import ClipMetrics, labels_path, load_labels
from pipeline.video.fitting import Fit
from pipeline.video.io import (Cancelled, Pipe, StageThread, VideoSource, clip_names, even_size, open_writer,
                               to_rgb)
from pipeline.video.overlay import overlay

OUTPUTS = ("overlay.mp4", "predictions.jsonl", "maps", "summary.json")  # summary last: it marks "complete"


def model_format(predictor) -> str:
    """runtimes' predictor names are the formats (keras, saved_model, tflite-int8, ...)."""
    return str(getattr(predictor, "name", None) or type(predictor).__name__)


def process_clip(predictor, video_path, out_dir, config, progress: bool = True,
                 score_threshold: float | None = None) -> dict:
    """Runs `predictor` over one video into out_dir (overlay.mp4, predictions.jsonl, summary.json);
    returns the summary. Raises UserError for a video that cannot be read or a folder that cannot be
    written, before anything is left in out_dir."""
    video_path, out_dir = pathlib.Path(video_path), pathlib.Path(out_dir)
    source = VideoSource(video_path)
    # The model's classes name its class ids (runtimes: predictor.classes), else the config's.
    class_set = getattr(predictor, "classes", None) or classes.of_config(config)
    try:
        labels = load_labels(video_path, class_set)
        with atomic.staged_outputs(out_dir, OUTPUTS) as staging:
            summary = _run(predictor, source, labels, staging, config, progress, score_threshold, class_set)
            summary["video"] = str(video_path)
            summary["folder"] = str(out_dir)
            (staging / "summary.json").write_text(json.dumps(summary, indent=1))
    finally:
        source.release()
    if not source.fps_known:
        print(f"warning: {video_path} gives no frame rate; the overlay is written at {source.fps:g} fps",
              file=sys.stderr)
    if summary["frames_with_errors"]:
        print(f"warning: {video_path}: decoded {summary['frames_read']} of {summary['frames_expected']} frames; "
              f"{summary['frames_with_errors']} are damaged or missing (truncated or corrupt file), "
              f"kept the frames before the damage", file=sys.stderr)
    return summary


def _run(predictor, source: VideoSource, labels, staging: pathlib.Path, config, progress: bool,
         score_threshold, class_set) -> dict:
    clip_config = config.clip
    # The predictor's threshold is export.score_threshold (or a SavedModel's own, which its num_detections use).
    threshold = float(score_threshold if score_threshold is not None else
                      getattr(predictor, "score_threshold", config.export.score_threshold))
    max_depth = float(config.model.max_depth)
    tasks = tuple(getattr(predictor, "tasks", ()))
    model_hw = tuple(int(v) for v in predictor.input_size)
    if min(model_hw) <= 0:  # a SavedModel without our metadata: it resizes frames itself
        model_hw = (source.height, source.width)
    fit = Fit((source.height, source.width), model_hw, clip_config.resize)
    if isinstance(predictor, camera.Rescaled) and min(predictor.input_size) > 0:
        # --focal: the frames reach the model already fitted, so say how (stretched or letterboxed)
        predictor = predictor.fitted_as((source.height, source.width), (fit.content_h, fit.content_w))

    def model_input(frame_bgr):
        # Fitted first, converted to RGB second: resizing treats channels alike, so this equals
        # fitting the RGB frame, and the frame itself stays BGR for the overlay and the encoder.
        return to_rgb(fit.to_model(frame_bgr))

    batch_size = max(1, int(clip_config.batch_size))
    out_w, out_h = even_size(source.width, source.height)
    metrics = ClipMetrics(labels, max_depth, class_set, frame_height=source.height) if labels is not None else None
    stability = Stability(len(class_set.segmentation))
    if clip_config.full_maps:
        (staging / "maps").mkdir()
    seconds = dict.fromkeys(("decode", "preprocess", "inference", "postprocess", "draw", "encode"), 0.0)
    latencies, batch_latencies, detections = [], [], []
    cancel = threading.Event()
    frames_in, frames_out = Pipe(2 * batch_size, cancel), Pipe(2 * batch_size, cancel)
    frames_drawn = Pipe(batch_size, cancel)

    def read():
        for index, time_s, frame in source.frames():
            start = time.perf_counter()
            if frame.shape[:2] != (source.height, source.width):  # a stream that changes size midway
                frame = cv2.resize(frame, (source.width, source.height), interpolation=cv2.INTER_AREA)
            model_image = model_input(frame)
            seconds["preprocess"] += time.perf_counter() - start
            frames_in.put((index, time_s, frame, model_image))
        frames_in.put(None)

    def write():
        with open(staging / "predictions.jsonl", "w") as jsonl:
            while (item := frames_out.get()) is not None:
                index, time_s, frame, pred, latency_ms = item
                start = time.perf_counter()
                analysis = analyse(pred, fit, threshold, class_set)
                stability.add(analysis)
                if metrics is not None:
                    metrics.add(index, analysis)
                record = jsonl_record(index, time_s, latency_ms, analysis, class_set)
                if clip_config.full_maps:
                    record["maps"] = save_maps(staging, index, analysis, fit)
                jsonl.write(json.dumps(record) + "\n")
                if analysis["kept"] is not None:
                    detections.append(len(analysis["kept"][0]))
                drawn = time.perf_counter()
                image = overlay(frame, analysis, fit, latency_ms, max_depth, class_set)
                seconds["postprocess"] += drawn - start
                seconds["draw"] += time.perf_counter() - drawn
                frames_drawn.put(image)
        frames_drawn.put(None)

    def encode():
        while (image := frames_drawn.get()) is not None:
            start = time.perf_counter()
            encoder.write(image[:out_h, :out_w])
            seconds["encode"] += time.perf_counter() - start
            bar.update(1)
        # The encoder holds the last frames (look-ahead, frame threads): flushing them is part of the
        # loop's time, so fps_end_to_end counts until the video is complete.
        start = time.perf_counter()
        encoder.release()
        seconds["encode"] += time.perf_counter() - start

    encoder, fourcc = open_writer(staging / "overlay.mp4", out_w, out_h, source.fps)
    bar = None
    try:
        # Warm-up outside the timing: the first call traces / compiles / allocates.
        start = time.perf_counter()
        predictor.predict(np.stack([model_input(source.first_frame)] * batch_size))
        warmup = time.perf_counter() - start
        bar = tqdm(total=source.frames_expected, unit="frame", desc=source.path.name, disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)

        workers = [StageThread(read, cancel, "clip-reader"), StageThread(write, cancel, "clip-writer"),
                   StageThread(encode, cancel, "clip-encoder")]
        wall_start = time.perf_counter()
        for worker in workers:
            worker.start()
        try:
            _infer(predictor, frames_in, frames_out, batch_size, seconds, latencies, batch_latencies)
            frames_out.put(None)
            workers[-1].join()  # the encoder ends last, after the end marker passed every queue
        except Cancelled:
            pass  # a worker failed: its own exception is raised below
        finally:
            cancel.set()  # stops whichever thread still waits on a queue
            for worker in workers:
                worker.join()
        for worker in workers:
            worker.check()
        wall = time.perf_counter() - wall_start
    finally:
        encoder.release()
        if bar is not None:
            bar.close()
    seconds["decode"] = source.decode_seconds
    seconds.update(warmup=warmup, wall=wall)

    frames = source.frames_read
    return {
        "clip": source.path.stem,
        "frames_read": frames,
        "frames_expected": source.frames_expected,
        "frames_with_errors": source.frames_missing,
        "resolution": {"width": source.width, "height": source.height},
        "overlay_resolution": {"width": out_w, "height": out_h},
        "fps_source": round(source.fps, 3),
        "fps_source_known": source.fps_known,
        "fps_model": round(frames / seconds["inference"], 2) if seconds["inference"] > 0 else None,
        "fps_end_to_end": round(frames / wall, 2) if wall > 0 else None,
        "latency_ms": timing.percentiles(latencies),
        "batch_latency_ms": timing.percentiles(batch_latencies),
        "batch_size": batch_size,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "model": {"name": str(getattr(predictor, "name", "")), "format": model_format(predictor),
                  "input_size": [int(v) for v in predictor.input_size], "tasks": list(tasks)},
        "model_format": model_format(predictor),
        "resize": clip_config.resize,
        "codec": fourcc,
        "score_threshold": threshold,
        "detections_per_frame": round(float(np.mean(detections)), 3) if detections else None,
        **stability.result(),
        "labels": str(labels_path(source.path)) if labels is not None else None,
        "metrics": metrics.result(tasks) if metrics is not None else None,
        "full_maps": bool(clip_config.full_maps),
        # --focal: depth rescaled from the training camera to the clip's (pipeline/deploy/camera.py)
        "depth_camera": ({"focal_px": predictor.focal_px,
                          "depth_scale": round(predictor.scale((source.height, source.width)), 4)}
                         if isinstance(predictor, camera.Rescaled) else None),
    }


def _infer(predictor, frames_in: Pipe, frames_out: Pipe, batch_size: int, seconds: dict, latencies: list,
           batch_latencies: list) -> None:
    """The main thread's part: batches of frames in, per-frame predictions out."""
    batch, finished = [], False
    while not finished:
        item = frames_in.get()
        finished = item is None
        if item is not None:
            batch.append(item)
        if not batch or (len(batch) < batch_size and not finished):
            continue
        # The last batch may be short: the runtimes' graphs take any batch size without retracing.
        images = np.stack([entry[3] for entry in batch])
        start = time.perf_counter()
        out = predictor.predict(images)
        elapsed = time.perf_counter() - start
        seconds["inference"] += elapsed
        batch_latencies.append(elapsed * 1000.0)
        per_frame_ms = elapsed * 1000.0 / len(batch)
        for i, (index, time_s, frame, _) in enumerate(batch):
            latencies.append(per_frame_ms)
            frames_out.put((index, time_s, frame, frame_prediction(out, i), per_frame_ms))
        batch = []


def process_videos(predictor, source: pathlib.Path, videos: list[pathlib.Path], out: pathlib.Path, config,
                   model: pathlib.Path) -> list[dict]:
    """Every video into out/<clip name>/; for a folder input, an unreadable video is skipped with a
    warning and out/index.json lists them all. Returns the summaries."""
    summaries, index = [], []
    for video, name in zip(videos, clip_names(videos)):
        try:
            summary = process_clip(predictor, video, out / name, config)
        except UserError as err:
            if source.is_file():
                raise
            print(f"warning: skipped {video}: {err}", file=sys.stderr)
            index.append({"clip": name, "video": str(video), "error": str(err)})
            continue
        summaries.append(summary)
        index.append({key: summary.get(key) for key in (
            "clip", "video", "folder", "frames_read", "frames_with_errors", "resolution", "fps_source",
            "fps_model", "fps_end_to_end", "latency_ms", "segmentation_flicker", "depth_flicker",
            "detection_persistence")} | {"clip": name, "metrics": _headline(summary.get("metrics"))})
        print(f"clip: {name}: {summary['frames_read']} frames {summary['resolution']['width']}x"
              f"{summary['resolution']['height']}, {summary['fps_model']} fps model, "
              f"{summary['fps_end_to_end']} fps end to end -> {out / name}")
    if not summaries:
        raise UserError(f"no video in {source} could be read")
    if source.is_dir():
        atomic.write_text(out / "index.json",
                          json.dumps({"input": str(source), "model": str(model), "clips": index}, indent=1))
    return summaries


def _headline(metrics):
    """The one number per task for the index (the full blocks are in each summary.json)."""
    if not metrics:
        return None
    return {task: metrics[task].get(key) for task, key in HEADLINE_METRICS.items()
            if isinstance(metrics.get(task), dict)}
