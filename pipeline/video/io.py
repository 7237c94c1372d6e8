"""Video in and out for the clip stage: a checked reader, the H.264 writer, and the
small thread plumbing (cancellable bounded queues, workers that hand their exception back).

Why threads: decoding and encoding are OpenCV calls and inference is a TensorFlow/LiteRT call; all
three release the GIL, so a reader thread and a writer thread overlap them with inference and the
end-to-end frame rate stays close to the model's own.
"""
from __future__ import annotations

import math
import pathlib
import queue
import threading
import time

import cv2
import numpy as np

from data.errors import UserError
from data.video_writer import CODEC, H264Writer, even_size  # noqa: F401  (even_size: the clip loop's)
from pipeline.console import native_stderr_silenced as quiet_stderr

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
DEFAULT_FPS = 30.0  # for a container that gives no usable rate


class VideoSource:
    """An opened video whose first frame has been read (so "opens but holds no frame" is caught before
    any output is created). `frames()` yields (index, time_s, frame_bgr) from the first frame on and
    stops at the end or at the first frame that cannot be decoded."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        if not self.path.exists():
            raise UserError(f"video not found: {self.path}")
        if not self.path.is_file():
            raise UserError(f"not a video file: {self.path}")
        with quiet_stderr():
            self._capture = cv2.VideoCapture(str(self.path))
            opened = self._capture.isOpened()
            ok, first = self._capture.read() if opened else (False, None)
        if not opened:
            raise UserError(f"{self.path} is not a video OpenCV can open (corrupt or not a video file)")
        if not ok or first is None:
            self._capture.release()
            raise UserError(f"{self.path} holds no frame that can be decoded")
        self.first_frame = first  # BGR, also the first one `frames()` yields
        self._first_time = self._timestamp(0, 0.0)
        self.height, self.width = first.shape[:2]  # the decoded frame's, after any rotation metadata
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps_known = bool(math.isfinite(fps) and 0 < fps <= 1000)
        self.fps = float(fps) if self.fps_known else DEFAULT_FPS
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frames_expected = int(count) if math.isfinite(count) and count > 0 else None
        self.frames_read = 0
        self.decode_seconds = 0.0

    def _timestamp(self, index: int, previous: float) -> float:
        """The container's presentation time when it gives one (variable frame rates stay right), else
        index / fps. A backend without timestamps reports 0 (or repeats), so only a rising value counts."""
        msec = self._capture.get(cv2.CAP_PROP_POS_MSEC)
        if math.isfinite(msec) and msec >= 0 and (index == 0 or msec / 1000.0 > previous):
            return msec / 1000.0
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        return index / (fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS)

    def frames(self):
        time_s, frame, index = self._first_time, self.first_frame, 0
        while frame is not None:
            self.frames_read += 1
            yield index, time_s, frame
            index += 1
            start = time.perf_counter()
            ok, frame = self._capture.read()
            frame = frame if ok else None
            time_s = self._timestamp(index, time_s) if ok else time_s
            self.decode_seconds += time.perf_counter() - start

    @property
    def frames_missing(self) -> int:
        """Frames the container announces but that could not be decoded (truncated or corrupt file)."""
        return max(0, (self.frames_expected or 0) - self.frames_read)

    def release(self) -> None:
        self._capture.release()


# x264's fastest preset for the overlays: at 1280x720 it needs 9 ms of CPU a frame against 36 ms for
# "veryfast" (measured on the highway clip), which the clip loop cannot hide behind a model that runs
# at 40-120 fps on two cores. The same CRF (x264 aims at the same quality), so the file grows
# instead: about 1.8x.
OVERLAY_PRESET = "ultrafast"


def open_writer(path: pathlib.Path, width: int, height: int, fps: float):
    """(writer, codec) for an H.264 .mp4 with faststart at width x height (both even: the encoder
    needs it); data/video_writer.py says why PyAV and not OpenCV."""
    return H264Writer(path, width, height, fps, preset=OVERLAY_PRESET), CODEC


class Cancelled(Exception):
    """Raised inside a worker when the run was stopped elsewhere (error or Ctrl-C)."""


class Pipe:
    """A bounded queue whose put/get give up once `cancel` is set, so no thread blocks forever on a
    partner that died. `None` is the end-of-stream marker."""

    def __init__(self, size: int, cancel: threading.Event):
        self._queue = queue.Queue(maxsize=max(1, size))
        self._cancel = cancel

    def put(self, item) -> None:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                pass
        raise Cancelled()

    def get(self):
        while not self._cancel.is_set():
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        raise Cancelled()


class StageThread(threading.Thread):
    """A thread that keeps its exception for the main thread (`check()`) and cancels the run on failure."""

    def __init__(self, target, cancel: threading.Event, name: str):
        super().__init__(name=name, daemon=True)
        self._target_fn, self._cancel, self.error = target, cancel, None

    def run(self) -> None:
        try:
            self._target_fn()
        except Cancelled:
            pass
        except BaseException as err:  # handed to the main thread, which re-raises it
            self.error = err
            self._cancel.set()

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def to_bgr(image_rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)


def to_rgb(image_bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


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
