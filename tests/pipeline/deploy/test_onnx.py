"""model.onnx: written by the export stage, within the float tolerances of Keras through ONNX Runtime,
runnable without the project, one run per batch, and accepted by predict and clip.

Uses the session's one tiny export (tests/conftest.py, tiny_exported).
"""
import argparse
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

from data.errors import UserError
from detection_match import assert_same_detections, keras_heat
from pipeline.deploy import parity, predict, runtimes
from pipeline.stages import clip as clip_stage


@pytest.fixture(scope="module")
def onnx_path(tiny_exported):
    _, out, _ = tiny_exported
    return out / "model.onnx"


def test_parity_json_checks_onnx_with_the_float_rules(tiny_exported):
    config, out, report = tiny_exported
    entry = json.loads((out / "parity.json").read_text())["formats"]["onnx"]
    assert entry["file"] == "model.onnx" and entry["size_bytes"] == (out / "model.onnx").stat().st_size
    assert parity.tolerances(config, "onnx") == parity.tolerances(config, "tflite-float32")
    assert entry["verdict"] == "pass", (entry["failures"], entry["drift"])
    assert set(entry["drift"]) == {"mAP50", "mIoU", "abs_rel"}
    for metric, drift in entry["drift"].items():
        assert drift <= parity.tolerances(config, "onnx")[metric] + 1e-9
    # float32 in another runtime: the same answers, not just the same metrics
    assert entry["agreement"]["segmentation_same_class"] > 0.999
    assert entry["agreement"]["depth_median_rel_diff"] < 1e-3
    assert entry["agreement"]["max_score_diff"] < 1e-3
    assert entry["latency"]["num_threads"] == report["num_threads"]
    assert report["conversion"]["onnx"]["opset"] >= 13


def test_onnx_matches_keras_frame_by_frame(tiny_exported, onnx_path):
    config, _, _ = tiny_exported
    images = parity.parity_examples(config)[0]
    keras = runtimes.load_predictor(config.run_dir / "train" / "model.keras")
    keras_out = parity.run_predictor(keras, images)
    predictor = runtimes.load_predictor(onnx_path, num_threads=1)
    assert predictor.name == "onnx" and predictor.tasks == ["detection", "segmentation", "depth"]
    assert predictor.input_size == tuple(config.data.image_size)
    onnx_out = parity.run_predictor(predictor, images)
    assert_same_detections(onnx_out, keras_out, keras_heat(keras.net, images))
    np.testing.assert_array_equal(onnx_out["num_detections"], keras_out["num_detections"])
    assert np.mean(onnx_out["segmentation"] == keras_out["segmentation"]) > 0.999
    np.testing.assert_allclose(onnx_out["depth"], keras_out["depth"], rtol=1e-3)


def test_a_batch_is_one_run_with_the_same_answers(tiny_exported, onnx_path):
    config, _, _ = tiny_exported
    predictor = runtimes.load_predictor(onnx_path)
    frames = parity.parity_examples(config)[0][0][:3]
    calls = []
    run = predictor.session.run
    predictor.session = type("Spy", (), {"run": lambda self, names, feed: calls.append(len(feed["image"]))
                                         or run(names, feed)})()
    together = predictor.predict(frames)
    alone = [predictor.predict(frames[i:i + 1]) for i in range(3)]
    assert calls == [3, 1, 1, 1]  # the file's batch axis is dynamic: no per-frame loop
    for key in ("boxes", "scores", "segmentation", "depth"):
        np.testing.assert_allclose(together[key], np.concatenate([a[key] for a in alone]), atol=1e-4, err_msg=key)


def test_idle_onnx_threads_sleep_instead_of_spinning(onnx_path):
    """ONNX Runtime's threads spin after each run by default, taking the cores from whatever runs next
    (the clip stage's other threads, another model): the predictor turns that off, with or without
    its own thread count."""
    for threads in (None, 2):
        options = runtimes.load_predictor(onnx_path, num_threads=threads).session.get_session_options()
        for pool in ("intra_op", "inter_op"):
            assert options.get_session_config_entry(f"session.{pool}.allow_spinning") == "0"


def test_onnx_runs_with_onnxruntime_alone(onnx_path, tmp_path):
    """The file needs ONNX Runtime and NumPy only: no TensorFlow, no project code (-I -S: no
    PYTHONPATH, no .pth files; only the installed libraries' folder goes back on the path)."""
    script = (
        "import json, sys\n"
        "sys.path.append(sys.argv[2])\n"
        "import numpy as np, onnxruntime\n"
        "assert 'tensorflow' not in sys.modules\n"
        "session = onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "(image,) = session.get_inputs()\n"
        "frames = np.full([2, image.shape[1], image.shape[2], 3], 128, np.float32)\n"
        "names = [o.name for o in session.get_outputs()]\n"
        "out = dict(zip(names, session.run(names, {image.name: frames})))\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('RESULT' + json.dumps({'input': [image.name, image.type, image.shape[1:]],\n"
        "    'outputs': {k: [list(v.shape), str(v.dtype)] for k, v in out.items()}}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(onnx_path), sysconfig.get_paths()["purelib"]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["input"] == ["image", "tensor(float)", [64, 96, 3]]
    outputs = result["outputs"]
    k = outputs["scores"][0][1]
    assert outputs == {"boxes": [[2, k, 4], "float32"], "scores": [[2, k], "float32"], "classes": [[2, k], "int32"],
                       "segmentation": [[2, 64, 96], "int32"], "depth": [[2, 64, 96], "float32"]}


def test_predict_and_clip_accept_onnx(tiny_exported, onnx_path, tmp_path):
    config, _, _ = tiny_exported
    frame = tmp_path / "frame.png"
    import cv2

    assert cv2.imwrite(str(frame), np.full((90, 150, 3), 100, np.uint8))
    result = predict.run_predict(str(onnx_path), [str(frame)], tmp_path / "pred")
    assert result["format"] == "onnx" and result["images"][0]["resized"]
    summaries = clip_stage.main(config, argparse.Namespace(model=str(onnx_path), input=None, out=str(tmp_path / "c")))
    assert summaries[0]["model_format"] == "onnx"
    assert summaries[0]["metrics"]["segmentation"]["mIoU"] is not None
    assert (tmp_path / "c" / "synthetic_clip" / "overlay.mp4").stat().st_size > 0


def test_a_broken_onnx_file_is_a_user_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match=r"cannot load onnx model .*model.onnx"):
        runtimes.load_predictor(path)
