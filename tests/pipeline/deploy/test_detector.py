"""model_detection.tflite: the standard 4-output detection signature in the file's own output order,
the Keras model's detections, TFLite metadata with the class names, and the runtimes/predict accept it.

Uses the session's one tiny export (tests/conftest.py, tiny_exported). MediaPipe itself loads the file
in `make check-mediapipe` (its own virtual environment: it needs opencv-contrib).
"""
import json

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from data import schema
from detection_match import assert_same_detections, keras_heat
from pipeline.deploy import detector, parity, predict, runtimes, tflite_metadata


@pytest.fixture(scope="module")
def detector_path(tiny_exported):
    _, out, _ = tiny_exported
    return out / "model_detection.tflite"


def test_outputs_are_the_standard_four_in_order(tiny_exported, detector_path):
    config, _, _ = tiny_exported
    interpreter = Interpreter(model_path=str(detector_path))
    (image,) = interpreter.get_input_details()
    assert list(image["shape"]) == [1, *config.data.image_size, 3] and np.dtype(image["dtype"]) == np.float32
    outputs = interpreter.get_output_details()  # the subgraph's order: what MediaPipe reads by position
    k = outputs[0]["shape"][1]
    assert [list(o["shape"]) for o in outputs] == [[1, k, 4], [1, k], [1, k], [1]]
    assert all(np.dtype(o["dtype"]) == np.float32 for o in outputs)
    assert k == config.model.top_k
    # and the signature names map onto that order
    runner = interpreter.get_signature_runner()
    by_index = {d["index"]: name for name, d in runner.get_output_details().items()}
    assert [by_index[o["index"]] for o in outputs] == list(detector.OUTPUTS)


def test_values_are_the_keras_detections(tiny_exported, detector_path):
    config, _, _ = tiny_exported
    height, width = config.data.image_size
    frames = parity.parity_examples(config)[0][0][:2]
    keras = runtimes.load_predictor(config.run_dir / "train" / "model.keras")
    reference = keras.predict(frames)
    runner = Interpreter(model_path=str(detector_path)).get_signature_runner()
    lite = {"boxes": [], "scores": [], "classes": []}
    for frame in frames:
        raw = runner(image=frame[None].astype(np.float32))
        locations, classes, scores, count = (raw[name][0] if name != "num_detections" else raw[name]
                                             for name in detector.OUTPUTS)
        assert np.all((locations >= 0) & (locations <= 1))
        assert np.all(locations[:, 0] <= locations[:, 2]) and np.all(locations[:, 1] <= locations[:, 3])
        assert np.all(np.diff(scores) <= 1e-6), "best first"
        assert np.array_equal(classes, np.round(classes))  # class ids, as float32
        assert count.tolist() == [float(np.sum(scores > 0))]  # every peak: the reader thresholds
        lite["boxes"].append(locations[:, [1, 0, 3, 2]] * [width, height, width, height])
        lite["scores"].append(scores)
        lite["classes"].append(classes.astype(np.int32))
    # the Keras detections, slot for slot up to the ties float32 rounding decides
    assert_same_detections(lite, reference, keras_heat(keras.net, [frames]))


def test_metadata_and_label_file_are_in_the_file(detector_path):
    metadata, files = tflite_metadata.read(detector_path)
    assert metadata is not None and metadata[4:8] == tflite_metadata.FILE_IDENTIFIER
    assert files == {"labels.txt": "".join(f"{c}\n" for c in schema.DETECTION_CLASSES).encode()}
    # the tensor names MediaPipe looks the outputs up by, in the outputs' order
    at = [metadata.index(name.encode()) for name in tflite_metadata.OUTPUT_NAMES]
    assert len(set(at)) == 4
    # the file is still a plain .tflite for LiteRT (the zip sits after the flatbuffer)
    assert Interpreter(model_path=str(detector_path)).get_signature_list()


def test_parity_and_predict_accept_the_detector(tiny_exported, detector_path, tmp_path):
    config, out, _ = tiny_exported
    entry = json.loads((out / "parity.json").read_text())["formats"]["tflite-detector"]
    assert entry["verdict"] == "pass" and entry["drift"]["mAP50"] <= config.export.tolerance_float
    assert entry["agreement"]["detections_matched"] in (None, 1.0)
    predictor = runtimes.load_predictor(detector_path)
    assert predictor.name == "tflite-detector" and predictor.tasks == ["detection"]
    frame = tmp_path / "frame.png"
    import cv2

    assert cv2.imwrite(str(frame), np.full((90, 150, 3), 100, np.uint8))
    result = predict.run_predict(str(detector_path), [str(frame)], tmp_path / "pred")
    record = result["images"][0]
    assert result["format"] == "tflite-detector" and "detections" in record
    assert "class_pixel_shares" not in record and "depth_m" not in record


def test_metadata_flatbuffer_is_deterministic_and_holds_the_settings():
    first = tflite_metadata.detector_metadata(name="d", description="x", version="1", input_size=(64, 96),
                                              mean=[0.0] * 3, std=[1.0] * 3, score_threshold=0.3)
    again = tflite_metadata.detector_metadata(name="d", description="x", version="1", input_size=(64, 96),
                                              mean=[0.0] * 3, std=[1.0] * 3, score_threshold=0.3)
    other = tflite_metadata.detector_metadata(name="d", description="x", version="1", input_size=(64, 96),
                                              mean=[0.0] * 3, std=[1.0] * 3, score_threshold=0.5)
    assert first == again and first != other
    assert np.float32(0.5).tobytes() in other and np.float32(0.3).tobytes() in first
    assert tflite_metadata.MIN_PARSER_VERSION.encode() in first
