"""The H.264 writer: browser-playable MP4 (h264, moov before mdat), even sides, a clear error without
an encoder."""
from __future__ import annotations

import numpy as np
import pytest

from data import video_writer
from data.errors import UserError
from support import assert_browser_mp4


def test_writes_h264_with_faststart_and_every_frame(tmp_path):
    writer = video_writer.H264Writer(tmp_path / "a.mp4", 97, 63, 7.5)  # odd sides are cropped to even
    assert (writer.width, writer.height) == (96, 62) and writer.isOpened()
    for i in range(9):
        writer.write(np.full((63, 97, 3), 25 * i, np.uint8))
    writer.release()
    writer.release()  # twice is harmless
    assert not writer.isOpened()
    assert_browser_mp4(tmp_path / "a.mp4", frames=9)


def test_missing_encoder_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(video_writer, "ENCODER", "no_such_encoder")
    with pytest.raises(UserError, match="no no_such_encoder encoder") as caught:
        video_writer.H264Writer(tmp_path / "b.mp4", 64, 48, 10)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "b.mp4").exists()
