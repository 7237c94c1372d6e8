"""Writing H.264 MP4 that a browser plays: the synthetic clip (data/synthetic_clip.py) and the clip
stage's overlays (pipeline/video/io.py) both use it.

Why PyAV: OpenCV's wheels cannot encode H.264 ('avc1' fails to open), and their fallback, MPEG-4
part 2 ('mp4v'), does not play in browsers. PyAV's wheels ship FFmpeg with libx264. The MP4 is
written with `movflags=+faststart` (the moov atom, the index, before the media data), so a browser
can start playing before the whole file has arrived. Frames are yuv420p, which needs even sides:
`even_size` rounds down and `write` crops a frame to it.

`write` converts BGR to yuv420p with OpenCV (BT.601, the same studio range as FFmpeg's default)
rather than letting PyAV's swscale do it: 2.5 ms instead of 12 ms a frame at 1080p on one core, and
OpenCV averages each 2x2 block for the chroma where swscale samples one pixel (measured on the
highway clip: the round trip back to BGR is off by 1.1 grey levels on average instead of 2.0).
"""
from __future__ import annotations

import fractions
import pathlib
import platform

import cv2
import numpy as np

from data.errors import UserError

CODEC = "h264"
ENCODER = "libx264"
CRF = 20  # visually near-lossless for overlays; 18-23 is x264's usual range
# x264's AVX-512 kernels made the same frames encode to different bytes from run to run (measured on an
# AVX-512 EPYC: 4 different files in 6 runs of one clip; 6 of 6 equal with this), so the data stage's
# clip would not be the same bytes for the same seed. Capped at AVX2 on x86; other CPUs keep x264's own.
X264_DETERMINISTIC = {"x264-params": "asm=AVX2"} if platform.machine().lower() in ("x86_64", "amd64") else {}
PRESET = "veryfast"


def even_size(width: int, height: int) -> tuple[int, int]:
    """4:2:0 encoders need even sides; an odd-sized frame loses its last row/column."""
    return max(2, width - width % 2), max(2, height - height % 2)


class H264Writer:
    """cv2.VideoWriter's interface (write a BGR frame, release) for an H.264 .mp4 with faststart."""

    def __init__(self, path, width: int, height: int, fps: float, preset: str = PRESET):
        try:
            import av  # noqa: PLC0415  (optional native dependency: a clear error when it is missing)
        except ImportError as err:
            raise UserError(f"cannot write video {path}: PyAV is not installed (pip install av)") from err
        self.path = pathlib.Path(path)
        self.width, self.height = even_size(int(width), int(height))
        self._av = av
        try:
            self._container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        except Exception as err:  # noqa: BLE001  (FFmpeg's I/O errors come as several types)
            raise UserError(f"cannot write video {self.path}: {err}") from err
        try:
            rate = fractions.Fraction(float(fps)).limit_denominator(1001)
            self._stream = self._container.add_stream(ENCODER, rate=rate)
        except Exception as err:  # noqa: BLE001  (UnknownCodecError / ValueError by PyAV version)
            self._container.close()
            self.path.unlink(missing_ok=True)
            raise UserError(f"cannot write H.264 video {self.path}: this PyAV/FFmpeg has no {ENCODER} "
                            f"encoder (install PyAV's own wheel: pip install --force-reinstall av)") from err
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(CRF), "preset": preset, **X264_DETERMINISTIC}
        self.frames = 0
        self._open = True

    def isOpened(self) -> bool:  # noqa: N802  (cv2.VideoWriter's name)
        return self._open

    def write(self, frame_bgr: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame_bgr[:self.height, :self.width])
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame {frame.shape[1]}x{frame.shape[0]} is smaller than the video's "
                             f"{self.width}x{self.height}")
        yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)  # planes Y, U, V stacked: [h * 3 / 2, w]
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
            self._container.mux(packet)
        self.frames += 1

    def release(self) -> None:
        """Flushes the encoder and closes the file (faststart moves the index to the front here)."""
        if not self._open:
            return
        self._open = False
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
