"""The camera a model's depth assumes (pipeline/deploy/camera.py): what each source records, the rescale for
another focal length, and where the record travels (train -> export -> predict, clip, evaluate)."""
import json
import math

import cv2

import numpy as np
import pytest

from data import kitti, synthetic
from data.errors import UserError
from pipeline.deploy import camera
from pipeline.config import SourceConfig
from pipeline.deploy import predict
from support import FIXTURES, REPO, assert_user_error_exit, run_cli, tiny

KITTI_P2 = {"000001": 721.5377, "000002": 721.5377}  # fx = fy, from the fixtures' calib files


def test_kitti_focal_lengths_come_from_p2_and_the_image_header():
    frames, problems = kitti.focal_lengths(FIXTURES / "kitti")
    assert [(fx, fy) for fx, fy, _, _ in frames] == [(f, f) for f in KITTI_P2.values()]
    assert [(w, h) for _, _, w, h in frames] == [(1242, 375), (1242, 375)] and problems == []


def test_an_unreadable_calibration_is_counted_and_named_not_skipped(tmp_path):
    root = tmp_path / "kitti" / "training"
    for folder in ("image_2", "label_2", "calib"):
        (root / folder).mkdir(parents=True)
        for frame in KITTI_P2:
            source = FIXTURES / "kitti" / "training" / folder
            (root / folder / frame).with_suffix(".png" if folder == "image_2" else ".txt").symlink_to(
                next(source.glob(f"{frame}.*")))
    (root / "calib" / "000002.txt").unlink()
    (root / "calib" / "000002.txt").write_text("P2: garbage\n")
    config = tiny(tmp_path, "data.image_size=[128,256]")
    config.data.sources = [SourceConfig(name="kitti", path=str(tmp_path / "kitti"))]
    kitti_camera = camera.record(config)["sources"]["kitti"]
    assert kitti_camera["frames"] == 1 and kitti_camera["unreadable"] == 1
    assert "000002.txt" in kitti_camera["first_unreadable"]
    assert kitti_camera["fx"] == pytest.approx(721.5377 * 256 / 1242)


def test_synthetic_record_is_the_renderer_mean_at_the_model_size(tmp_path):
    config = tiny(tmp_path)  # frames rendered 64 x 96, model input 64 x 96
    record = camera.record(config)
    mean = sum(synthetic.FOCAL_RANGE) / 2
    assert record["model_input"] == [64, 96]
    assert record["training"] == pytest.approx({"fx": mean * 96, "fy": mean * 96})
    resized = camera.record(tiny(tmp_path, "data.image_size=[32,96]"))  # rows halved, columns kept
    assert resized["training"] == pytest.approx({"fx": mean * 96, "fy": mean * 96 / 2})


def test_real_sources_record_their_calibration_or_say_unknown(tmp_path):
    config = tiny(tmp_path, "data.image_size=[128,256]")
    config.data.sources = [SourceConfig(name="kitti", path=str(FIXTURES / "kitti")),
                           SourceConfig(name="camvid", path=str(FIXTURES / "camvid"))]
    record = camera.record(config)
    fx, fy = 721.5377 * 256 / 1242, 721.5377 * 128 / 375
    assert record["sources"]["kitti"]["frames"] == 2
    assert record["sources"]["kitti"]["fx"] == pytest.approx(fx) and record["sources"]["kitti"]["fy"] == pytest.approx(fy)
    assert record["sources"]["camvid"]["fx"] is None and "unknown" in record["sources"]["camvid"]["from"]
    assert record["training"] == pytest.approx({"fx": fx, "fy": fy})  # CamVid: no camera (and no depth)


def test_depth_scale_is_the_focal_ratio_at_the_model_size():
    record = {"model_input": [128, 256], "training": {"fx": 143.36, "fy": 143.36}}
    assert camera.depth_scale(record, 143.36 * 5, (640, 1280)) == pytest.approx(1.0)  # same camera, 5x the pixels
    assert camera.depth_scale(record, 2 * 143.36, (128, 256)) == pytest.approx(2.0)  # twice the focal length
    # KITTI squeezed to 2:1: geometric mean of the horizontal and vertical ratios
    kitti_scale = camera.depth_scale(record, 721.5377, (375, 1242))
    assert kitti_scale == pytest.approx(math.sqrt(721.5377 * 256 / 1242 * 721.5377 * 128 / 375) / 143.36)
    for bad in (-5, 0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="positive, finite focal length"):
            camera.depth_scale(record, bad, (128, 256))
    with pytest.raises(UserError, match="records no training camera"):
        camera.depth_scale({"model_input": [128, 256], "training": None}, 500, (128, 256))
    with pytest.raises(UserError, match="records no training camera"):
        camera.depth_scale(None, 500, (128, 256))


class _FakePredictor:
    name, path, input_size, tasks = "fake", "fake.tflite", (64, 96), ["segmentation", "depth"]

    def predict(self, images):
        return {"depth": np.full(images.shape[:3], 10.0, np.float32), "resized": False}


def test_rescaled_predictor_multiplies_depth_and_passes_the_rest_through():
    record = {"model_input": [64, 96], "training": {"fx": 50.0, "fy": 50.0}}
    wrapped = camera.Rescaled(_FakePredictor(), 75.0, record)
    out = wrapped.predict(np.zeros((2, 64, 96, 3), np.uint8))
    np.testing.assert_allclose(out["depth"], 15.0)
    assert wrapped.name == "fake" and wrapped.input_size == (64, 96)
    without_depth = _FakePredictor()
    without_depth.tasks = ["segmentation"]
    with pytest.raises(UserError, match="no depth output"):
        camera.Rescaled(without_depth, 75.0, record)
    with pytest.raises(UserError, match="recorded for 128x256"):
        camera.Rescaled(_FakePredictor(), 75.0, {"model_input": [128, 256], "training": {"fx": 50.0, "fy": 50.0}})


def test_train_and_export_record_the_camera_and_predict_rescales_with_it(tiny_exported, tmp_path):
    config, out, _ = tiny_exported
    trained_record = json.loads((config.run_dir / "train" / camera.RECORD).read_text())
    assert trained_record == json.loads(json.dumps(camera.record(config)))
    assert json.loads((out / camera.RECORD).read_text()) == trained_record
    card = json.loads((out / "model_card.json").read_text())
    assert card["camera"] == trained_record["training"]

    image = FIXTURES / "kitti" / "training" / "image_2" / "000001.png"
    model = str(out / "model_float32.tflite")
    plain = predict.run_predict(model, [str(image)], tmp_path / "plain")
    rescaled = predict.run_predict(model, [str(image)], tmp_path / "rescaled", focal_px=721.5377)
    scale = camera.depth_scale(trained_record, 721.5377, (375, 1242))
    assert rescaled["focal_px"] == 721.5377 and rescaled["images"][0]["depth_scale"] == pytest.approx(scale, abs=1e-4)
    for key in ("min", "median", "max"):
        assert rescaled["images"][0]["depth_m"][key] == pytest.approx(plain["images"][0]["depth_m"][key] * scale,
                                                                      rel=1e-3, abs=2e-3)
    assert rescaled["images"][0]["detections"] == plain["images"][0]["detections"]


def test_evaluate_rescales_each_source_by_its_own_camera(tiny_trained, tmp_path, monkeypatch):
    from pipeline.evaluation import evaluate

    config, model_path = tiny_trained
    rescaled = tiny(config.run_root, "evaluate.rescale_depth=true")
    assert camera.source_depth_scales(rescaled, model_path) == {"synthetic": pytest.approx(1.0)}  # its own camera
    assert evaluate.output_dir(rescaled, "validation").name == "eval-rescaled"
    # A factor of 2 on predictions of 10 m scores as predictions of 20 m
    real_predict = evaluate.predict_batch

    def predict_at(metres):
        def predict(model, images, *options):  # top_k and the evaluate.* test-time options
            out = real_predict(model, images, *options)
            return {**out, "depth": np.full_like(out["depth"], metres)}
        return predict

    monkeypatch.setattr(camera, "source_depth_scales", lambda config, path: {"synthetic": 2.0})
    monkeypatch.setattr(evaluate, "predict_batch", predict_at(10.0))
    metrics = evaluate.evaluate_into(rescaled, model_path, "validation", tmp_path / "rescaled")
    monkeypatch.setattr(evaluate, "predict_batch", predict_at(20.0))
    at_20 = evaluate.evaluate_into(config, model_path, "validation", tmp_path / "plain")
    monkeypatch.setattr(evaluate, "predict_batch", predict_at(10.0))
    at_10 = evaluate.evaluate_into(config, model_path, "validation", tmp_path / "plain10")
    assert metrics["depth_scales"] == {"synthetic": 2.0} and "depth_scales" not in at_20
    for key in ("abs_rel", "rmse", "delta1"):
        assert metrics["depth"][key] == pytest.approx(at_20["depth"][key], rel=1e-6)
    assert metrics["depth"]["rmse"] != pytest.approx(at_10["depth"]["rmse"], rel=1e-3)


def test_a_bad_focal_length_is_one_line(tiny_exported, tmp_path):
    config, out, _ = tiny_exported
    image = FIXTURES / "kitti" / "training" / "image_2" / "000001.png"
    done = run_cli("predict", "--config", REPO / "configs" / "tiny.yaml", f"run_root={tmp_path}",
                   "--model", out / "model_float32.tflite", "--images", image, "--focal", "inf", timeout=120)
    assert_user_error_exit(done, "positive, finite focal length", "inf")


def test_focal_on_a_model_without_a_camera_record_is_one_line(tiny_exported, tmp_path):
    config, out, _ = tiny_exported
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.tflite").write_bytes((out / "model_float32.tflite").read_bytes())
    image = FIXTURES / "kitti" / "training" / "image_2" / "000001.png"
    done = run_cli("predict", "--config", REPO / "configs" / "tiny.yaml", f"run_root={tmp_path}",
                   "--model", lone / "model.tflite", "--images", image, "--focal", "700", timeout=120)
    assert_user_error_exit(done, "records no training camera", "--focal")
    assert not (tmp_path / "tiny" / "predict").exists()


def test_cityscapes_focal_lengths_come_from_its_camera_files(tmp_path):
    from data import cityscapes

    stem = "frankfurt_000000_000294"
    (tmp_path / "leftImg8bit").mkdir()
    (tmp_path / "leftImg8bit" / f"{stem}_leftImg8bit.png").symlink_to(
        FIXTURES / "cityscapes" / "leftImg8bit" / f"{stem}_leftImg8bit.png")
    (tmp_path / "camera").mkdir()
    camera_file = tmp_path / "camera" / f"{stem}_camera.json"
    camera_file.write_text(json.dumps({"intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137},
                                       "extrinsic": {"baseline": 0.209313}}))
    height, width = cv2.imread(str(FIXTURES / "cityscapes" / "leftImg8bit" / f"{stem}_leftImg8bit.png")).shape[:2]
    assert cityscapes.focal_lengths(tmp_path) == ([(2262.52, 2265.30, width, height)], [])
    camera_file.write_text("{}")
    frames, problems = cityscapes.focal_lengths(tmp_path)
    assert frames == [] and len(problems) == 1 and "intrinsic.fx" in problems[0] and str(camera_file) in problems[0]
