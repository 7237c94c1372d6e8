"""Clip stage: overlay geometry and timing, boxes mapped back to the input, stability, bad inputs.

Most tests use FakePredictor (the runtimes' predictor interface, computed from the pixels so the right
answer is known); one end-to-end test runs the real tiny model.
"""
import argparse
import json
import math
import pathlib
import random

import cv2
import numpy as np
import pytest

from data.errors import UserError
from data.synthetic_clip import render_clip
from pipeline.deploy import camera
from pipeline.config import load_config
from pipeline.deploy import runtimes
from pipeline.evaluation.stability import Stability
from pipeline.stages import clip as clip_stage
from pipeline.video import clip
from pipeline.video.clip_metrics import labels_path
from pipeline.video.fitting import LETTERBOX_GREY, Fit
from support import FIXTURES, REPO, assert_browser_mp4, assert_no_partial_output, assert_user_error_exit, run_cli

FIXTURE_CLIP = FIXTURES / "clips" / "highway_cars_8f.mp4"  # 8 frames, 1280x720, 25 fps
SKY, ROAD = 4, 0  # segmentation class ids the fake predictor paints


class FakePredictor:
    """Bright pixels (mean > 128) are "the object": a vehicle box around them (score 0.9) plus a
    pedestrian box of score 0.1 that the display threshold must drop; sky where bright and road
    elsewhere; depth 5 m on the object and 20 m elsewhere. Deterministic in the pixels."""

    name = "fake"

    def __init__(self, input_size=(64, 96), tasks=("detection", "segmentation", "depth")):
        self.input_size, self.tasks = tuple(input_size), list(tasks)
        self.calls = []

    def predict(self, images):
        images = np.asarray(images)
        assert images.dtype == np.uint8 and images.ndim == 4
        assert images.shape[1:3] == self.input_size, "the clip stage feeds frames at the model size"
        self.calls.append(len(images))
        bright = images.mean(-1) > 128
        boxes = np.zeros((len(images), 2, 4), np.float32)
        for i, mask in enumerate(bright):
            ys, xs = np.nonzero(mask)
            if len(xs):
                boxes[i, 0] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        boxes[:, 1] = [2, 2, 10, 10]
        out = {"boxes": boxes, "scores": np.tile(np.float32([0.9, 0.1]), (len(images), 1)),
               "classes": np.tile(np.int32([0, 1]), (len(images), 1)),
               "num_detections": np.full(len(images), 2, np.int32),
               "segmentation": np.where(bright, SKY, ROAD).astype(np.uint8),
               "depth": np.where(bright, 5.0, 20.0).astype(np.float32), "resized": False}
        return {k: v for k, v in out.items() if k in ("resized", "num_detections") or self._has(k)}

    def _has(self, key):
        task = {"boxes": "detection", "scores": "detection", "classes": "detection"}.get(key, key)
        return task in self.tasks


def config_for(tmp_path, *overrides):
    return load_config(REPO / "configs" / "tiny.yaml", [f"run_root={tmp_path / 'runs'}", *overrides])


def write_video(path, frames_rgb, fps=10.0, fourcc="mp4v"):
    height, width = frames_rgb[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened()
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return pathlib.Path(path)


def rectangle_frame(height, width, box):
    """Black frame with a white rectangle at box = x1, y1, x2, y2 (pixels, end exclusive)."""
    frame = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = 255
    return frame


def video_facts(path):
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    facts = {"frames": frames, "width": int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
             "height": int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), "fps": capture.get(cv2.CAP_PROP_FPS)}
    capture.release()
    return facts


def jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


# ------------------------------------------------------------------------------------------ geometry
def test_letterbox_fit_arithmetic():
    # portrait 160x96 into 64x96: scale 0.4 -> content 38x64, centred at left=(96-38)//2=29
    fit = Fit((160, 96), (64, 96), "letterbox")
    assert (fit.content_w, fit.content_h, fit.left, fit.top) == (38, 64, 29, 0)
    model = fit.to_model(np.zeros((160, 96, 3), np.uint8))
    assert model.shape == (64, 96, 3)
    assert (model[:, :29] == LETTERBOX_GREY).all() and (model[:, 29:67] == 0).all()
    # wide 48x192 into 64x96: scale 0.5 -> content 96x24 at top=20; model box -> frame box by hand
    fit = Fit((48, 192), (64, 96), "letterbox")
    assert (fit.content_w, fit.content_h, fit.left, fit.top) == (96, 24, 0, 20)
    np.testing.assert_allclose(fit.boxes_to_frame([[24, 24, 72, 40]]), [[48, 8, 144, 40]])
    np.testing.assert_allclose(fit.boxes_to_frame([[0, 0, 96, 64]]), [[0, 0, 192, 48]])  # padding clipped off
    stretch = Fit((48, 192), (64, 96), "stretch")
    np.testing.assert_allclose(stretch.boxes_to_frame([[24, 16, 72, 48]]), [[48, 12, 144, 36]])


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("size, box", [((160, 96), (30, 50, 70, 110)),      # portrait
                                        ((48, 192), (60, 10, 140, 34))])     # wide
def test_boxes_map_back_to_input_pixels(tmp_path, mode, size, box):
    height, width = size
    video = write_video(tmp_path / "rect.mp4", [rectangle_frame(height, width, box)] * 3)
    summary = clip.process_clip(FakePredictor(), video, tmp_path / "out", config_for(tmp_path, f"clip.resize={mode}"),
                                progress=False)
    assert summary["resolution"] == {"width": width, "height": height}
    fit = Fit(size, (64, 96), mode)
    tolerance = 1.5 * max(fit.scale_x, fit.scale_y) + 2  # one model pixel of edge blur, plus the codec's
    for record in jsonl(tmp_path / "out" / "predictions.jsonl"):
        assert record["classes"] == ["vehicle"], "the 0.1 box is under the display threshold"
        np.testing.assert_allclose(record["boxes"][0], box, atol=tolerance)
        assert record["distance_m"] == [5.0] and record["nearest_m"] == 5.0
        assert record["segmentation_shares"]["sky"] == pytest.approx(
            (box[2] - box[0]) * (box[3] - box[1]) / (height * width), abs=0.05)


# ------------------------------------------------------------------------------------------ outputs
def test_real_clip_fixture_overlay_and_jsonl(tmp_path):
    assert FIXTURE_CLIP.stat().st_size < 1_000_000
    fake = FakePredictor()
    summary = clip.process_clip(fake, FIXTURE_CLIP, tmp_path / "out", config_for(tmp_path), progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["overlay.mp4", "predictions.jsonl", "summary.json"]
    assert video_facts(out / "overlay.mp4") == {"frames": 8, "width": 1280, "height": 720, "fps": 25.0}
    records = jsonl(out / "predictions.jsonl")
    assert [r["frame"] for r in records] == list(range(8))
    np.testing.assert_allclose([r["time_s"] for r in records], np.arange(8) / 25.0, atol=1e-3)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["frames_read"] == 8 and summary["frames_with_errors"] == 0
    assert summary["fps_source"] == 25.0 and summary["codec"] == "h264"
    assert_browser_mp4(out / "overlay.mp4", frames=8)
    assert summary["fps_model"] > 0 and summary["fps_end_to_end"] > 0
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p99"}
    assert set(summary["seconds"]) >= {"decode", "inference", "draw", "encode"}
    assert summary["metrics"] is None and summary["labels"] is None  # no labels beside this clip
    assert fake.calls[1:] == [4, 4]  # warm-up, then batches of clip.batch_size


def test_the_model_gets_rgb_frames_and_the_overlay_keeps_the_colours(tmp_path):
    """The loop keeps frames BGR (as decoded and encoded) and converts only the model's input."""
    red = np.zeros((64, 96, 3), np.uint8)
    red[..., 0] = 255  # RGB red
    video = write_video(tmp_path / "red.avi", [red] * 2, fourcc="MJPG")
    seen = []

    class Recording(FakePredictor):
        def predict(self, images):
            seen.append(np.asarray(images, np.float64).mean(axis=(0, 1, 2)))
            return super().predict(images)

    clip.process_clip(Recording(tasks=("detection",)), video, tmp_path / "out", config_for(tmp_path), progress=False)
    r, g, b = seen[-1]
    assert r > 200 and g < 40 and b < 40
    capture = cv2.VideoCapture(str(tmp_path / "out" / "overlay.mp4"))
    ok, overlay_bgr = capture.read()
    assert ok
    b, g, r = overlay_bgr[10:30, 10:50].reshape(-1, 3).mean(0)  # away from the status line
    assert r > 200 and g < 40 and b < 40


def test_synthetic_clip_with_labels_gets_metrics(tmp_path):
    video = render_clip(tmp_path / "clips", "scene", seed=3, frames=5, height=64, width=96, fps=5)
    video = pathlib.Path(video)
    assert labels_path(video).is_file()
    summary = clip.process_clip(FakePredictor(), video, tmp_path / "out", config_for(tmp_path), progress=False)
    assert video_facts(tmp_path / "out" / "overlay.mp4") == {"frames": 5, "width": 96, "height": 64, "fps": 5.0}
    assert_browser_mp4(video, frames=5)
    assert_browser_mp4(tmp_path / "out" / "overlay.mp4", frames=5)
    assert len(jsonl(tmp_path / "out" / "predictions.jsonl")) == 5
    metrics = summary["metrics"]
    assert metrics["frames"] == 5
    assert {"detection", "segmentation", "depth"} <= set(metrics)
    assert metrics["segmentation"]["examples"] == 5 and "mIoU" in metrics["segmentation"]
    assert metrics["depth"]["max_depth"] == config_for(tmp_path).model.max_depth
    assert "mAP50" in metrics["detection"]


def test_hand_written_labels_for_some_frames(tmp_path):
    box = (20, 16, 60, 40)
    video = write_video(tmp_path / "mine.mp4", [rectangle_frame(64, 96, box)] * 4)
    lines = [{"frame": f, "boxes": [list(box)], "classes": ["vehicle"]} for f in (0, 2)]  # frames 1, 3 unlabelled
    (tmp_path / "mine.labels.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    metrics = clip.process_clip(FakePredictor(), video, tmp_path / "out", config_for(tmp_path),
                                progress=False)["metrics"]
    assert metrics["frames"] == 2
    assert metrics["detection"]["ground_truth_boxes"] == 2 and metrics["detection"]["mAP50"] == 1.0
    assert metrics["segmentation"]["absent"] and metrics["depth"]["absent"]  # no maps in these labels


def test_model_without_a_task_reports_it_absent(tmp_path):
    video = write_video(tmp_path / "rect.mp4", [rectangle_frame(64, 96, (10, 10, 40, 30))] * 2)
    summary = clip.process_clip(FakePredictor(tasks=("segmentation",)), video, tmp_path / "out",
                                config_for(tmp_path), progress=False)
    record = jsonl(tmp_path / "out" / "predictions.jsonl")[0]
    assert record["boxes"] is None and record["distance_m"] is None and record["segmentation_shares"]
    assert summary["detection_persistence"] is None and summary["depth_flicker"] is None
    assert summary["segmentation_flicker"] == 0.0


def test_full_maps_are_saved_at_the_input_resolution(tmp_path):
    video = write_video(tmp_path / "rect.mp4", [rectangle_frame(90, 160, (40, 20, 100, 60))] * 2)
    clip.process_clip(FakePredictor(), video, tmp_path / "out", config_for(tmp_path, "clip.full_maps=true",
                                                                           "clip.resize=letterbox"),
                      progress=False)
    record = jsonl(tmp_path / "out" / "predictions.jsonl")[1]
    maps = np.load(tmp_path / "out" / record["maps"])
    assert maps["segmentation"].shape == (90, 160) and maps["depth"].shape == (90, 160)
    assert maps["segmentation"][40, 70] == SKY and maps["segmentation"][80, 10] == ROAD
    assert maps["depth"][40, 70] == pytest.approx(5.0)


# ------------------------------------------------------------------------------------------ stability
def test_one_frame_repeated_is_perfectly_stable(tmp_path):
    # MJPG codes every frame alone, so identical frames decode to identical pixels
    frame = rectangle_frame(64, 96, (20, 16, 60, 40))
    video = write_video(tmp_path / "still.avi", [frame] * 6, fourcc="MJPG")
    summary = clip.process_clip(FakePredictor(), video, tmp_path / "out", config_for(tmp_path), progress=False)
    assert summary["frame_pairs"] == 5
    assert summary["segmentation_flicker"] == 0.0
    assert summary["depth_flicker"] == 0.0
    assert summary["detection_persistence"] == 1.0


def test_stability_measures_change():
    stability = Stability(num_classes=9)
    seg_a = np.zeros((4, 4), np.uint8)
    seg_b = seg_a.copy()
    seg_b[:, :2] = 4  # class 0 IoU 8/16, class 4 IoU 0/8 -> mean IoU 0.25
    boxes = lambda *b: (np.float32(b).reshape(-1, 4), np.ones(len(b), np.float32), np.zeros(len(b), np.int32))
    first = {"segmentation": seg_a, "depth": np.full((4, 4), 10.0, np.float32), "kept": (*boxes([0, 0, 10, 10]), None)}
    second = {"segmentation": seg_b, "depth": np.full((4, 4), 11.0, np.float32),
              "kept": (*boxes([0, 0, 10, 10], [20, 20, 30, 30]), None)}
    stability.add(first)
    stability.add(second)
    result = stability.result()
    assert result["segmentation_flicker"] == pytest.approx(0.75)
    assert result["depth_flicker"] == pytest.approx(np.log(1.1), rel=0.03)  # histogram resolution
    assert result["detection_persistence"] == 0.5


def test_depth_flicker_bins_count_what_the_edges_say():
    """The per-pixel changes are binned from their logarithm, not searched among the edges: the counts
    are np.histogram's over the published edges, with NaN changes and changes past the last edge in
    the last bin and exact zeros counted apart."""
    rng = np.random.default_rng(5)
    before = rng.uniform(2.0, 80.0, (48, 64)).astype(np.float32)
    after = (before * np.exp(rng.normal(0.0, 0.05, before.shape) * rng.uniform(0, 1, before.shape) ** 8)).astype(np.float32)
    after[0, :3] = before[0, :3]      # no change at all
    after[1, :3] = before[1, :3] * 1e6  # past the last edge
    after[2, 0] = np.nan              # a broken model's pixel
    stability = Stability()
    stability.add({"segmentation": None, "depth": before, "kept": None})
    stability.add({"segmentation": None, "depth": after, "kept": None})
    change = np.abs(np.log(np.maximum(after, 1e-3)) - np.log(np.maximum(before, 1e-3))).ravel()
    change = np.nan_to_num(change, nan=Stability.EDGES[-1])
    zero = change < Stability.EDGES[0]
    expected = np.histogram(np.minimum(change[~zero], Stability.EDGES[-1]), Stability.EDGES)[0]
    assert stability.depth_zeros == int(zero.sum()) >= 3
    assert stability.depth_hist.tolist() == expected.tolist()
    assert expected[-1] >= 4 and (expected[:200] > 0).any()  # the last bin and changes down to 1e-4


# ------------------------------------------------------------------------------------------ bad input
def test_truncated_clip_keeps_the_good_frames(tmp_path, capsys):
    data = FIXTURE_CLIP.read_bytes()
    video = tmp_path / "cut.mp4"
    video.write_bytes(data[: len(data) // 2])
    summary = clip.process_clip(FakePredictor(), video, tmp_path / "out", config_for(tmp_path), progress=False)
    read = summary["frames_read"]
    assert 0 < read < 8
    assert summary["frames_expected"] == 8 and summary["frames_with_errors"] == 8 - read
    assert "warning" in capsys.readouterr().err
    assert video_facts(tmp_path / "out" / "overlay.mp4")["frames"] == read
    assert len(jsonl(tmp_path / "out" / "predictions.jsonl")) == read


def _zero_frame_mp4(path):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    writer.release()
    return path


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "missing.mp4",
    lambda tmp: (tmp / "notes.mp4").write_text("not a video\n") and tmp / "notes.mp4",
    lambda tmp: _zero_frame_mp4(tmp / "empty.mp4"),
], ids=["missing", "text-file", "zero-frames"])
def test_unreadable_video_is_a_user_error_and_leaves_nothing(tmp_path, make):
    video = make(tmp_path)
    with pytest.raises(UserError):
        clip.process_clip(FakePredictor(), video, tmp_path / "out" / "clip", config_for(tmp_path), progress=False)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_a_user_error(tmp_path):
    video = write_video(tmp_path / "ok.mp4", [rectangle_frame(64, 96, (1, 1, 9, 9))] * 2)
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(UserError, match="cannot write"):
        clip.process_clip(FakePredictor(), video, tmp_path / "file" / "clip", config_for(tmp_path), progress=False)


def test_failure_midway_leaves_no_partial_outputs(tmp_path):
    class Broken(FakePredictor):
        def predict(self, images):
            if len(self.calls) >= 2:
                raise RuntimeError("model crashed")
            return super().predict(images)

    video = write_video(tmp_path / "ok.mp4", [rectangle_frame(64, 96, (1, 1, 9, 9))] * 12)
    with pytest.raises(RuntimeError, match="crashed"):
        clip.process_clip(Broken(), video, tmp_path / "out", config_for(tmp_path), progress=False)
    assert not (tmp_path / "out").exists()
    assert_no_partial_output(tmp_path)


def test_cli_text_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("definitely not a video\n")
    out = tmp_path / "out"
    result = run_cli("clip", "--config", "configs/tiny.yaml", f"run_root={tmp_path / 'runs'}", "--input", bad,
                     "--out", out, timeout=120, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert_user_error_exit(result, "notes.mp4")
    assert len(result.stderr.strip().splitlines()) == 1  # nothing else on stderr either
    assert not list(out.rglob("overlay.mp4")) and not list(out.rglob("summary.json"))


def test_missing_default_clip_says_make_data(tmp_path):
    with pytest.raises(UserError, match="make data"):
        clip_stage.main(config_for(tmp_path), argparse.Namespace(model=None, input=None, out=None))


def test_folder_input_writes_an_index(tmp_path, monkeypatch):
    monkeypatch.setattr(runtimes, "load_predictor", lambda path, **options: FakePredictor())
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", [rectangle_frame(64, 96, (1, 1, 20, 20))] * 3)
    write_video(videos / "b.avi", [rectangle_frame(48, 64, (5, 5, 20, 20))] * 2, fourcc="MJPG")
    (videos / "c.mp4").write_text("broken")
    (videos / "readme.txt").write_text("ignored")
    model = tmp_path / "model.keras"
    model.write_bytes(b"stub")  # load_predictor is faked
    out = tmp_path / "out"
    summaries = clip_stage.main(config_for(tmp_path), argparse.Namespace(model=str(model), input=str(videos), out=str(out)))
    assert [s["frames_read"] for s in summaries] == [3, 2]
    index = json.loads((out / "index.json").read_text())
    assert [entry["clip"] for entry in index["clips"]] == ["a", "b", "c"]
    assert "error" in index["clips"][2] and not (out / "c").exists()
    assert video_facts(out / "b" / "overlay.mp4")["frames"] == 2


# ------------------------------------------------------------------------------------------ real model
def test_real_tiny_model_end_to_end(tiny_trained, tmp_path):
    config, model_path = tiny_trained
    predictor = runtimes.load_predictor(model_path)

    # the labelled synthetic clip the data stage rendered: the default input
    summaries = clip_stage.main(config, argparse.Namespace(model=str(model_path), input=None, out=str(tmp_path / "c")))
    summary = summaries[0]
    frames = config.data.synthetic.clip_frames
    facts = video_facts(tmp_path / "c" / "synthetic_clip" / "overlay.mp4")
    assert facts == {"frames": frames, "width": config.data.synthetic.width,
                     "height": config.data.synthetic.height, "fps": float(config.data.synthetic.clip_fps)}
    assert summary["metrics"]["segmentation"]["mIoU"] is not None
    assert summary["model_format"] == "keras"

    # the real 720p dashcam clip, letterboxed
    letterbox = config_for(tmp_path, "clip.resize=letterbox")
    summary = clip.process_clip(predictor, FIXTURE_CLIP, tmp_path / "real", letterbox, progress=False)
    assert video_facts(tmp_path / "real" / "overlay.mp4") == {"frames": 8, "width": 1280, "height": 720,
                                                               "fps": 25.0}
    print(f"\n720p fixture, tiny model: fps_model={summary['fps_model']} fps_end_to_end={summary['fps_end_to_end']} "
          f"seconds={summary['seconds']}")

    # one frame repeated (two full batches): identical predictions, so no flicker
    frame = cv2.cvtColor(cv2.VideoCapture(str(FIXTURE_CLIP)).read()[1], cv2.COLOR_BGR2RGB)
    still = write_video(tmp_path / "still.avi", [cv2.resize(frame, (192, 108))] * 8, fourcc="MJPG")
    summary = clip.process_clip(predictor, still, tmp_path / "still", config, progress=False, score_threshold=0.0)
    assert summary["segmentation_flicker"] == 0.0
    assert summary["depth_flicker"] == 0.0
    assert summary["detection_persistence"] in (None, 1.0)


# --- fuzz: damaged videos end as one line or as a clip with its damaged frames counted ------------

CLIP_DAMAGES = ("empty", "truncated", "bit_flip", "garbage", "head_cut")


def _damaged(data: bytes, how: str, rng: random.Random) -> bytes:
    if how == "empty":
        return b""
    if how == "truncated":
        return data[: rng.randrange(0, len(data))]
    if how == "head_cut":
        return data[rng.randrange(1, len(data)):]
    if how == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
    flipped = bytearray(data)
    for _ in range(rng.randrange(1, 64)):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return bytes(flipped)


CLIP_CASES = [(how, seed) for how in CLIP_DAMAGES for seed in range(1 if how == "empty" else 10)]


@pytest.mark.parametrize("how, seed", CLIP_CASES, ids=[f"{h}-{s}" for h, s in CLIP_CASES])
def test_damaged_video_is_one_line_or_counted_never_a_traceback(tmp_path, how, seed):
    video = tmp_path / "damaged.mp4"
    video.write_bytes(_damaged(FIXTURE_CLIP.read_bytes(), how, random.Random(f"{how}-{seed}")))
    try:
        summary = clip.process_clip(FakePredictor(), video, tmp_path / "out", config_for(tmp_path), progress=False)
    except UserError as err:
        assert "\n" not in str(err) and "damaged.mp4" in str(err), str(err)
        assert not (tmp_path / "out").exists()
        return
    assert summary["frames_read"] >= 1
    assert len(jsonl(tmp_path / "out" / "predictions.jsonl")) == summary["frames_read"]
    assert_no_partial_output(tmp_path)


@pytest.mark.parametrize("mode, content_hw", [("stretch", (64, 96)), ("letterbox", (54, 96))])
def test_focal_rescales_the_clips_depth_and_the_summary_says_so(tmp_path, mode, content_hw):
    # The fake predictor's depth is 5 m on the object; the highway fixture is 1280x720 (16:9) and the
    # model 64x96 (3:2): stretched, the two axes' focal ratios differ (the factor is their geometric
    # mean); letterboxed, the frame fills 54x96 of the input and both axes shrink alike.
    record = {"model_input": [64, 96], "training": {"fx": 50.0, "fy": 50.0}}
    expected = math.sqrt(1000.0 * content_hw[0] / 720 * 1000.0 * content_hw[1] / 1280) / 50.0
    config = config_for(tmp_path, f"clip.resize={mode}")
    summary = clip.process_clip(camera.Rescaled(FakePredictor(), 1000.0, record), FIXTURE_CLIP, tmp_path / "out",
                                config, progress=False)
    assert summary["depth_camera"] == {"focal_px": 1000.0, "depth_scale": round(expected, 4)}
    plain = clip.process_clip(FakePredictor(), FIXTURE_CLIP, tmp_path / "plain", config, progress=False)
    assert plain["depth_camera"] is None
    nearest = [r["nearest_m"] for r in jsonl(tmp_path / "out" / "predictions.jsonl")]
    plain_nearest = [r["nearest_m"] for r in jsonl(tmp_path / "plain" / "predictions.jsonl")]
    assert None not in plain_nearest
    np.testing.assert_allclose(nearest, np.array(plain_nearest) * expected, rtol=1e-3)  # 2-decimal rounding
