"""`clip` stage: run a model over dashcam videos -> annotated video, per-frame results, speed, stability.

    python -m pipeline clip [--model M] [--input video-or-folder] [--out DIR]

For each clip, <out>/<clip name>/ gets:
  overlay.mp4        the input at its own size and frame rate: boxes with class names, a translucent
                     segmentation, a depth inset (bottom right, a quarter of the size), the frame's
                     inference latency
  predictions.jsonl  one line per frame: frame, time_s, boxes (input pixels, score >= SCORE_THRESHOLD),
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

Frame fitting (clip.resize): "stretch" resizes the frame to the model size (bilinear, as training
does); "letterbox" keeps the aspect ratio and pads with grey. The stage fits frames itself, in the
reader thread, rather than letting the runtime resize: inference then only runs the model, every
runtime answers at the model size, and one piece of code (Fit) maps boxes and maps back to the
input's pixels. Analysis (stability, shares, distances) uses the model-resolution maps with any
padding cropped off: the model's own pixels, not upsampled ones.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time

import cv2
import numpy as np

from data import schema
from pipeline import draw
from pipeline.errors import UserError
from pipeline.metrics import box_iou
from pipeline.video import (VIDEO_EXTENSIONS, Cancelled, Pipe, VideoSource, Worker, even_size, open_writer,
                            to_bgr, to_rgb)

# Boxes drawn and listed in predictions.jsonl. Override per run with clip.score_threshold if the config
# has it; the evaluation's PR curves ("scores" per recall) help to pick one.
SCORE_THRESHOLD = 0.3
# Label metrics use every slot above this, like pipeline/evaluate.py's SCORE_FLOOR: AP needs the
# low-score tail, and the near-zero filler changes nothing COCO's recall grid can resolve.
METRIC_SCORE_FLOOR = 0.01
PERSISTENCE_IOU = 0.5
LETTERBOX_GREY = 114  # the usual letterbox fill (YOLO's): a mid grey, no edges for the model to find
SEGMENTATION_ALPHA = 0.4
OUTPUTS = ("overlay.mp4", "predictions.jsonl", "maps", "summary.json")  # summary last: it marks "complete"


# --- geometry ----------------------------------------------------------------------------------

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


# --- per-frame analysis ------------------------------------------------------------------------

def _frame_prediction(out: dict, i: int) -> dict:
    return {key: np.asarray(value)[i] for key, value in out.items()
            if key != "resized" and value is not None and np.ndim(value) > 0}


def analyse(pred: dict, fit: Fit, threshold: float) -> dict:
    """One frame's raw prediction (model-input pixels) -> what the JSONL, overlay and metrics need."""
    result = {"segmentation": None, "depth": None, "detections": None, "kept": None}
    for task in ("segmentation", "depth"):
        if task in pred:
            model_map = pred[task]
            if model_map.shape[:2] != (fit.model_h, fit.model_w):  # a runtime that answered at another size
                model_map = cv2.resize(model_map, (fit.model_w, fit.model_h),
                                       interpolation=cv2.INTER_NEAREST if task == "segmentation" else
                                       cv2.INTER_LINEAR)
            result[task] = np.ascontiguousarray(fit.crop(model_map))
    if "boxes" in pred:
        count = int(pred["num_detections"]) if "num_detections" in pred else len(pred["scores"])
        scores = np.asarray(pred["scores"], np.float32).reshape(-1)
        boxes = fit.boxes_to_frame(pred["boxes"])
        classes = np.asarray(pred["classes"], np.int32).reshape(-1)
        # Every slot (not only num_detections) goes to the metrics; boxes that lie wholly in the
        # letterbox padding have no area once clipped to the frame and are dropped.
        real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (classes >= 0)
        real &= classes < len(schema.DETECTION_CLASSES)
        result["detections"] = (boxes[real], scores[real], classes[real])
        keep = real & (scores >= threshold) & (np.arange(len(scores)) < max(count, 0))
        kept_boxes, kept_scores, kept_classes = boxes[keep], scores[keep], classes[keep]
        distances = [box_depth(result["depth"], box, fit) for box in kept_boxes] \
            if result["depth"] is not None else None
        result["kept"] = (kept_boxes, kept_scores, kept_classes, distances)
    return result


def box_depth(depth_content: np.ndarray, frame_box, fit: Fit) -> float:
    """Median predicted depth inside a box (at least one pixel, however small the box)."""
    x1, y1, x2, y2 = fit.boxes_to_content(frame_box)[0]
    height, width = depth_content.shape
    left, top = int(np.clip(np.floor(x1), 0, width - 1)), int(np.clip(np.floor(y1), 0, height - 1))
    right, bottom = int(np.clip(np.ceil(x2), left + 1, width)), int(np.clip(np.ceil(y2), top + 1, height))
    return float(np.median(depth_content[top:bottom, left:right]))


def jsonl_record(index: int, time_s: float, latency_ms: float, analysis: dict) -> dict:
    record = {"frame": index, "time_s": round(float(time_s), 4), "latency_ms": round(latency_ms, 2)}
    if analysis["kept"] is not None:
        boxes, scores, classes, distances = analysis["kept"]
        record["boxes"] = [[round(float(v), 1) for v in box] for box in boxes]
        record["scores"] = [round(float(s), 3) for s in scores]
        record["classes"] = [schema.DETECTION_CLASSES[int(c)] for c in classes]
        distances = [round(d, 2) if np.isfinite(d) else None for d in distances] if distances is not None else None
        record["distance_m"] = distances
        record["nearest_m"] = min((d for d in distances if d is not None), default=None) if distances else None
    else:  # a model without detection: say "not predicted", not "nothing there"
        record.update(boxes=None, scores=None, classes=None, distance_m=None, nearest_m=None)
    seg = analysis["segmentation"]
    if seg is not None:
        names = schema.SEGMENTATION_CLASSES
        counts = np.bincount(seg.reshape(-1), minlength=len(names))[:len(names)]
        record["segmentation_shares"] = {n: round(float(c) / seg.size, 4) for n, c in zip(names, counts)}
    else:
        record["segmentation_shares"] = None
    return record


# --- label-free temporal stability --------------------------------------------------------------

class Stability:
    """How much the predictions change between consecutive frames, with no labels needed.

    segmentation_flicker  = 1 - mean over frame pairs of the mean IoU between the two class maps
                            (over classes present in either)
    depth_flicker         = median over pixels and pairs of |log d_t - log d_{t-1}| (0.01 ~ 1%); a
                            streaming histogram (80 bins per decade, ~3% resolution) instead of
                            keeping every pixel; exact zeros are counted apart so a still scene gives 0
    detection_persistence = share of the boxes of frame t that match a box of frame t-1 of the same
                            class at IoU >= 0.5 (one-to-one, greedy by IoU)
    A metric is None when the clip has fewer than two frames or the task is missing.
    """

    EDGES = np.logspace(-6, 1, 7 * 80 + 1)

    def __init__(self, num_classes: int = len(schema.SEGMENTATION_CLASSES)):
        self.num_classes = num_classes
        self.previous = None
        self.seg_iou_sum, self.seg_pairs = 0.0, 0
        self.depth_zeros, self.depth_count = 0, 0
        self.depth_hist = np.zeros(len(self.EDGES) - 1, np.int64)
        self.boxes_total, self.boxes_matched = 0, 0
        self.pairs = 0

    def add(self, analysis: dict) -> None:
        seg, depth = analysis["segmentation"], analysis["depth"]
        boxes = analysis["kept"][:3] if analysis["kept"] is not None else None
        if self.previous is not None:
            self.pairs += 1
            prev_seg, prev_depth, prev_boxes = self.previous
            if seg is not None and prev_seg is not None and seg.shape == prev_seg.shape:
                self.seg_iou_sum += self._mean_iou(prev_seg, seg)
                self.seg_pairs += 1
            if depth is not None and prev_depth is not None and depth.shape == prev_depth.shape:
                self._add_depth(prev_depth, depth)
            if boxes is not None and prev_boxes is not None:
                self.boxes_total += len(boxes[0])
                self.boxes_matched += matched_boxes(prev_boxes, boxes)
        self.previous = (seg, depth, boxes)

    def _mean_iou(self, a: np.ndarray, b: np.ndarray) -> float:
        k = self.num_classes
        a, b = np.minimum(a, k - 1).astype(np.int64).ravel(), np.minimum(b, k - 1).astype(np.int64).ravel()
        confusion = np.bincount(a * k + b, minlength=k * k).reshape(k, k)
        intersection = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - intersection
        present = union > 0
        return float((intersection[present] / union[present]).mean())

    def _add_depth(self, a: np.ndarray, b: np.ndarray) -> None:
        change = np.abs(np.log(np.maximum(b, 1e-3)) - np.log(np.maximum(a, 1e-3))).ravel()
        change = np.nan_to_num(change, nan=self.EDGES[-1])  # a NaN from a broken model counts as a jump
        zero = change < self.EDGES[0]
        self.depth_zeros += int(zero.sum())
        self.depth_count += change.size
        self.depth_hist += np.histogram(np.minimum(change[~zero], self.EDGES[-1]), self.EDGES)[0]

    def _depth_median(self):
        if self.depth_count == 0:
            return None
        rank = (self.depth_count - 1) / 2.0
        if rank < self.depth_zeros:
            return 0.0
        cumulative = self.depth_zeros + np.cumsum(self.depth_hist)
        b = int(np.searchsorted(cumulative, rank, side="right"))
        before = cumulative[b - 1] if b > 0 else self.depth_zeros
        share = (rank - before + 0.5) / max(self.depth_hist[b], 1)
        low, high = self.EDGES[b], self.EDGES[b + 1]
        return float(low * (high / low) ** np.clip(share, 0.0, 1.0))  # bins are log-spaced

    def result(self) -> dict:
        return {
            "segmentation_flicker": round(1.0 - self.seg_iou_sum / self.seg_pairs, 6) if self.seg_pairs else None,
            "depth_flicker": (round(m, 6) if (m := self._depth_median()) is not None else None),
            "detection_persistence": (round(self.boxes_matched / self.boxes_total, 6)
                                      if self.boxes_total else None),
            "frame_pairs": self.pairs,
        }


def matched_boxes(previous, current, iou_threshold: float = PERSISTENCE_IOU) -> int:
    """Boxes of `current` matched one-to-one to a same-class box of `previous` at IoU >= threshold."""
    prev_boxes, _, prev_classes = previous
    boxes, _, classes = current
    if len(boxes) == 0 or len(prev_boxes) == 0:
        return 0
    iou = box_iou(boxes, prev_boxes)
    iou[classes[:, None] != prev_classes[None, :]] = 0.0
    matched = 0
    while True:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[i, j] < iou_threshold:
            return matched
        matched += 1
        iou[i, :], iou[:, j] = 0.0, 0.0


# --- metrics against labels: the synthetic clip carries them, users may write them for their own
# videos (the format is in data/synthetic_clip.py) ------------------------------------------------

def labels_path(video: pathlib.Path) -> pathlib.Path:
    return video.parent / f"{video.stem}.labels.jsonl"


def load_labels(video: pathlib.Path):
    path = labels_path(video)
    if not path.is_file():
        return None
    from data.synthetic_clip import read_clip_labels  # raises UserError naming the bad line
    return read_clip_labels(path)


class ClipMetrics:
    """The evaluate stage's evaluators, fed frame by frame at the labels' resolution."""

    def __init__(self, labels: list, max_depth: float):
        from pipeline.metrics import DepthEvaluator, DetectionEvaluator, SegmentationEvaluator
        # Lines carry their frame index; frames without a line are unlabelled (data/synthetic_clip.py).
        self.labels = {int(label.get("frame", i)): label for i, label in enumerate(labels)}
        self.detection = DetectionEvaluator(schema.DETECTION_CLASSES)
        self.segmentation = SegmentationEvaluator(len(schema.SEGMENTATION_CLASSES), schema.IGNORE,
                                                  schema.SEGMENTATION_CLASSES)
        self.depth = DepthEvaluator(max_depth=max_depth)
        self.frames = 0

    def add(self, index: int, analysis: dict, fit: Fit) -> None:
        label = self.labels.get(index)
        if label is None:
            return
        self.frames += 1
        if analysis["detections"] is not None and label.get("boxes") is not None:
            boxes, scores, classes = analysis["detections"]
            floor = scores > METRIC_SCORE_FLOOR
            self.detection.add(index, label["boxes"], label["classes"], boxes[floor], scores[floor], classes[floor])
        for task, nearest in (("segmentation", True), ("depth", False)):
            truth = label.get(task)
            if analysis[task] is not None and truth is not None:
                truth = np.asarray(truth)
                getattr(self, task).add(truth, fit.to_frame(analysis[task], nearest, truth.shape[:2]))

    def result(self, tasks) -> dict:
        from pipeline.metrics import absent
        results = {"frames": self.frames}
        for task in ("detection", "segmentation", "depth"):
            evaluator = getattr(self, task)
            results[task] = evaluator.result() if task in tasks else absent(f"the model has no {task} output")
        return results


# --- overlay -----------------------------------------------------------------------------------

def overlay(frame: np.ndarray, analysis: dict, fit: Fit, latency_ms: float, max_depth: float) -> np.ndarray:
    """The annotated frame (RGB, the frame's size). Draws into `frame` where it can: at 1080p every
    full-frame copy costs milliseconds, and the frame is not used after this."""
    height, width = frame.shape[:2]
    image = frame
    if analysis["segmentation"] is not None:
        colours = fit.to_frame(draw.colorize_segmentation(analysis["segmentation"]), nearest=True)
        cv2.addWeighted(image, 1.0 - SEGMENTATION_ALPHA, colours, SEGMENTATION_ALPHA, 0.0, dst=image)
    if analysis["kept"] is not None and len(analysis["kept"][0]):  # (draw_boxes copies the frame)
        boxes, scores, classes, _ = analysis["kept"]
        image = draw.draw_boxes(image, boxes, classes, scores, thickness=max(1, round(min(height, width) / 360)))
    if analysis["depth"] is not None:
        inset_w, inset_h = max(1, width // 4), max(1, height // 4)
        inset = cv2.resize(draw.colorize_depth(analysis["depth"], max_depth), (inset_w, inset_h),
                           interpolation=cv2.INTER_LINEAR)
        margin = max(2, min(height, width) // 100)
        y, x = height - inset_h - margin, width - inset_w - margin
        if y >= 1 and x >= 1:
            image[y - 1:y + inset_h + 1, x - 1:x + inset_w + 1] = 255  # a thin white frame around it
            image[y:y + inset_h, x:x + inset_w] = inset
    status_line(image, f"{latency_ms:.1f} ms/frame")
    return image


def status_line(image: np.ndarray, text: str) -> None:
    """A small white-on-black line in the bottom-left corner (the depth inset holds the right)."""
    height, width = image.shape[:2]
    scale = max(0.35, min(height, width) / 1000)
    origin = (max(2, width // 100), height - max(4, height // 60))
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


# --- the loop ----------------------------------------------------------------------------------

def _percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    values = np.asarray(values, np.float64)
    return {"p50": round(float(np.percentile(values, 50)), 3), "p90": round(float(np.percentile(values, 90)), 3),
            "p99": round(float(np.percentile(values, 99)), 3), "mean": round(float(values.mean()), 3)}


def model_format(predictor) -> str:
    """runtimes' predictor names are the formats (keras, saved_model, tflite-int8, ...)."""
    return str(getattr(predictor, "format", None) or getattr(predictor, "name", None) or type(predictor).__name__)


@contextlib.contextmanager
def staging_folder(out_dir: pathlib.Path):
    """A hidden folder inside out_dir to write into; its files replace out_dir's only on success, and a
    failure removes it (and the folders it had to create)."""
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=".partial-", dir=out_dir))
    except OSError as err:
        raise UserError(f"cannot write to the output folder {out_dir}: {err.strerror or err}") from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; stops at the first one that holds something else
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    for name in OUTPUTS:
        source, target = staging / name, out_dir / name
        if target.is_dir():
            shutil.rmtree(target)  # stale maps of an earlier run with clip.full_maps
        if source.exists():
            os.replace(source, target)
    shutil.rmtree(staging, ignore_errors=True)


def process_clip(predictor, video_path, out_dir, config, progress: bool = True,
                 score_threshold: float | None = None) -> dict:
    """Runs `predictor` over one video into out_dir (overlay.mp4, predictions.jsonl, summary.json);
    returns the summary. Raises UserError for a video that cannot be read or a folder that cannot be
    written, before anything is left in out_dir."""
    video_path, out_dir = pathlib.Path(video_path), pathlib.Path(out_dir)
    source = VideoSource(video_path)
    try:
        labels = load_labels(video_path)
        with staging_folder(out_dir) as staging:
            summary = _run(predictor, source, labels, staging, config, progress, score_threshold)
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
         score_threshold) -> dict:
    from tqdm import tqdm

    clip_config = config.clip
    threshold = float(score_threshold if score_threshold is not None else
                      getattr(clip_config, "score_threshold", SCORE_THRESHOLD))
    max_depth = float(config.evaluate.max_depth)
    tasks = tuple(getattr(predictor, "tasks", ()))
    model_hw = tuple(int(v) for v in predictor.input_size)
    if min(model_hw) <= 0:  # a SavedModel without our metadata: it resizes frames itself
        model_hw = (source.height, source.width)
    fit = Fit((source.height, source.width), model_hw, clip_config.resize)
    batch_size = max(1, int(clip_config.batch_size))
    out_w, out_h = even_size(source.width, source.height)
    metrics = ClipMetrics(labels, max_depth) if labels is not None else None
    stability = Stability()
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
            rgb = to_rgb(frame)
            model_image = fit.to_model(rgb)
            seconds["preprocess"] += time.perf_counter() - start
            frames_in.put((index, time_s, rgb, model_image))
        frames_in.put(None)

    def write():
        with open(staging / "predictions.jsonl", "w") as jsonl:
            while (item := frames_out.get()) is not None:
                index, time_s, frame, pred, latency_ms = item
                start = time.perf_counter()
                analysis = analyse(pred, fit, threshold)
                stability.add(analysis)
                if metrics is not None:
                    metrics.add(index, analysis, fit)
                record = jsonl_record(index, time_s, latency_ms, analysis)
                if clip_config.full_maps:
                    record["maps"] = save_maps(staging, index, analysis, fit)
                jsonl.write(json.dumps(record) + "\n")
                if analysis["kept"] is not None:
                    detections.append(len(analysis["kept"][0]))
                drawn = time.perf_counter()
                image = overlay(frame, analysis, fit, latency_ms, max_depth)
                seconds["postprocess"] += drawn - start
                seconds["draw"] += time.perf_counter() - drawn
                frames_drawn.put(image)
        frames_drawn.put(None)

    def encode():
        while (image := frames_drawn.get()) is not None:
            start = time.perf_counter()
            encoder.write(to_bgr(image[:out_h, :out_w]))
            seconds["encode"] += time.perf_counter() - start
            bar.update(1)

    encoder, fourcc = open_writer(staging / "overlay.mp4", out_w, out_h, source.fps)
    bar = None
    try:
        # Warm-up outside the timing: the first call traces / compiles / allocates.
        start = time.perf_counter()
        predictor.predict(np.stack([fit.to_model(to_rgb(source.first_frame))] * batch_size))
        warmup = time.perf_counter() - start
        bar = tqdm(total=source.frames_expected, unit="frame", desc=source.path.name, disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)

        workers = [Worker(read, cancel, "clip-reader"), Worker(write, cancel, "clip-writer"),
                   Worker(encode, cancel, "clip-encoder")]
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
        "latency_ms": _percentiles(latencies),
        "batch_latency_ms": _percentiles(batch_latencies),
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
            frames_out.put((index, time_s, frame, _frame_prediction(out, i), per_frame_ms))
        batch = []


def save_maps(staging: pathlib.Path, index: int, analysis: dict, fit: Fit) -> str:
    """maps/<frame>.npz with the class map and depth at the frame's resolution."""
    arrays = {}
    if analysis["segmentation"] is not None:
        arrays["segmentation"] = fit.to_frame(analysis["segmentation"], nearest=True).astype(np.uint8)
    if analysis["depth"] is not None:
        arrays["depth"] = fit.to_frame(analysis["depth"], nearest=False).astype(np.float32)
    name = f"maps/{index:06d}.npz"
    np.savez_compressed(staging / name, **arrays)
    return name


# --- the stage ---------------------------------------------------------------------------------

def list_videos(path: pathlib.Path) -> list[pathlib.Path]:
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_file():
        return [path]
    videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise UserError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in the folder {path}")
    return videos


def clip_names(videos: list[pathlib.Path]) -> list[str]:
    """Output folder per video: its stem, or stem_ext when two videos share a stem."""
    stems = [v.stem for v in videos]
    return [v.stem if stems.count(v.stem) == 1 else f"{v.stem}_{v.suffix.lstrip('.').lower()}" for v in videos]


def default_clip(config) -> pathlib.Path:
    from pipeline.prepare import CLIP_NAME  # (imported here: it pulls in TensorFlow Datasets)
    return config.data_dir / "clips" / f"{CLIP_NAME}.mp4"


def main(config, args=None) -> list[dict]:
    given_input, given_model = getattr(args, "input", None), getattr(args, "model", None)
    source = pathlib.Path(given_input) if given_input else default_clip(config)
    if not given_input and not source.exists():
        raise UserError(f"no clip at {source}: run `make data` first (it renders the labelled synthetic "
                        f"clip), or pass --input VIDEO_OR_FOLDER")
    videos = list_videos(source)
    if len(videos) == 1 and source.is_file():
        VideoSource(videos[0]).release()  # a bad video fails now, before the model is loaded
    model = pathlib.Path(given_model) if given_model else config.run_dir / "train" / "model.keras"
    if not model.exists():
        raise UserError(f"model not found: {model}; run `make train` first or pass --model")
    out = pathlib.Path(getattr(args, "out", None) or config.run_dir / "clips")

    if source.is_dir():  # one unwritable folder must not read as "every video is bad"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot write to the output folder {out}: {err.strerror or err}") from None

    from pipeline import runtimes
    predictor = runtimes.load_predictor(model)
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
        partial = out / ".index.json.partial"
        partial.write_text(json.dumps({"input": str(source), "model": str(model), "clips": index}, indent=1))
        os.replace(partial, out / "index.json")
    return summaries


def _headline(metrics):
    """The one number per task for the index (the full blocks are in each summary.json)."""
    if not metrics:
        return None
    keys = {"detection": "mAP50", "segmentation": "mIoU", "depth": "abs_rel"}
    return {task: metrics[task].get(key) for task, key in keys.items() if isinstance(metrics.get(task), dict)}
