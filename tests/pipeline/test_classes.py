"""Classes are data: a config with 2 detection and 4 segmentation classes (the synthetic source mapped
onto them) builds, trains, evaluates, exports and predicts in those classes, and a model is described by
the classes it was trained with (pipeline/classes.py)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from data import classes as class_sets
from data.errors import UserError
from models.multitask import build_model
from pipeline import classes, layout
from pipeline.deploy import export, model_card, predict, runtimes
from pipeline.evaluation import evaluate
from pipeline.inputs import dataset as inputs
from pipeline.inputs import records
from pipeline.training.fit import run_training
from pipeline.video import clip
from support import tiny

DETECTION = ("car", "person")
SEGMENTATION = ("flat", "background", "sky", "object")
OVERRIDES = [
    "experiment=classes", "train.epochs=1", "train.steps_per_epoch=2", "train.validation_steps=1",
    "model.classes.detection=[{name: car, colour: [255, 0, 0]}, {name: person, colour: [0, 255, 0]}]",
    "model.classes.segmentation=[{name: flat, colour: [10, 10, 10]}, {name: background, colour: [20, 20, 20]},"
    " {name: sky, colour: [30, 30, 30]}, {name: object, colour: [40, 40, 40]}]",
    # Synthetic scenes are rendered in the default classes (data/label_maps.py SYNTHETIC_*).
    "data.sources.0.label_map={detection: {vehicle: car, pedestrian: person, cyclist: ignore},"
    " segmentation: {0: flat, 1: flat, 2: background, 3: background, 4: sky, 5: background, 6: object,"
    " 7: object, 8: object, 255: ignore}}",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = tiny(tmp_path_factory.mktemp("classes"), *OVERRIDES)
    records.build_all(config)
    return config, run_training(config, verbose=0)


def test_config_classes_and_colours():
    found = classes.of_config(tiny("unused", *OVERRIDES))
    assert found.detection == DETECTION and found.segmentation == SEGMENTATION
    assert found.detection_colours.tolist() == [[255, 0, 0], [0, 255, 0]]
    assert classes.of_config(tiny("unused")).same_names(class_sets.DEFAULT)


@pytest.mark.parametrize("overrides, detection, segmentation", [(OVERRIDES, 2, 4), ([], 3, 9)])
def test_heads_have_one_channel_per_configured_class(overrides, detection, segmentation):
    config = tiny("unused", *overrides)
    net = build_model(config.model, tuple(config.data.image_size))
    assert net.output["detection"].shape[-1] == detection + 4  # heat maps + size + offset
    assert net.output["segmentation"].shape[-1] == segmentation


def test_the_data_set_is_labelled_in_the_configured_classes(trained):
    config, _ = trained
    boxes, pixels = set(), set()
    for example in inputs.load_source(config, config.data.sources[0], "train").take(16):
        boxes |= set(example["classes"].numpy().tolist())
        pixels |= set(np.unique(example["segmentation"].numpy()).tolist())
    assert boxes == {0, 1}  # car, person (cyclists became ignore regions)
    assert pixels == {0, 1, 2, 3}


def test_evaluation_reports_the_configured_class_names(trained, tmp_path):
    config, model_path = trained
    metrics = evaluate.evaluate_into(config, model_path, "validation", tmp_path / "eval")
    assert list(metrics["segmentation"]["per_class_IoU"]) == list(SEGMENTATION)
    assert set(metrics["detection"]["per_class_ground_truth"]) == set(DETECTION)
    assert "| object |" in (tmp_path / "eval" / "report.md").read_text()


def test_a_config_with_other_classes_is_refused(trained, tmp_path):
    _, model_path = trained
    with pytest.raises(UserError, match=r"trained with detection classes \[car, person\] but "
                                        r"model.classes.detection is \[vehicle, pedestrian, cyclist\]"):
        evaluate.evaluate_into(tiny(tmp_path), model_path, "validation", tmp_path / "eval")
    alone = tmp_path / "alone" / "model.keras"  # no training config beside it: the config's classes
    alone.parent.mkdir()
    alone.write_bytes(model_path.read_bytes())
    with pytest.raises(UserError, match="predicts 2 detection classes but its classes are 3"):
        evaluate.evaluate_into(tiny(tmp_path), alone, "validation", tmp_path / "eval")


def test_export_metadata_model_card_and_predictions_name_the_classes(trained, tmp_path):
    config, model_path = trained
    found = classes.of_model(model_path, config)
    assert found.detection == DETECTION and found.segmentation == SEGMENTATION
    net = runtimes.KerasPredictor(model_path).net
    export.write_saved_model(net, tmp_path / "saved_model", config.model.top_k, 0.0, found)
    served = runtimes.load_predictor(tmp_path / "saved_model")
    assert served.classes.detection == DETECTION and served.classes.segmentation == SEGMENTATION
    assert served.classes.segmentation_colours.tolist() == [[10] * 3, [20] * 3, [30] * 3, [40] * 3]

    card = model_card.build(config, {"formats": {}}, found)
    assert card["classes"]["detection"] == list(DETECTION)
    assert card["class_colours"]["segmentation"][3] == [40, 40, 40]

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((64, 96, 3), 120, np.uint8))
    for model in (model_path, tmp_path / "saved_model"):
        result = predict.run_predict(str(model), [str(image)], tmp_path / "predict", score_threshold=0.0)
        record = result["images"][0]
        assert list(record["class_pixel_shares"]) == list(SEGMENTATION)
        assert record["detections"] and {d["class"] for d in record["detections"]} <= set(DETECTION)
    assert json.loads((tmp_path / "predict" / "predictions.json").read_text())["tasks"]


def test_clip_labels_overlay_and_records_use_the_classes(trained, tmp_path):
    config, model_path = trained
    video = layout.synthetic_clip(config)  # rendered by the data stage through the synthetic tables
    labels = [json.loads(line) for line in video.with_name(f"{video.stem}.labels.jsonl").read_text().splitlines()]
    assert {name for line in labels for name in line["classes"]} <= set(DETECTION)
    assert any(line["classes"] for line in labels)
    summary = clip.process_clip(runtimes.load_predictor(model_path, score_threshold=0.0), video,
                                tmp_path / "clip", config, progress=False)
    assert set(summary["metrics"]["detection"]["per_class_ground_truth"]) == set(DETECTION)
    assert list(summary["metrics"]["segmentation"]["per_class_IoU"]) == list(SEGMENTATION)
    record = json.loads((tmp_path / "clip" / "predictions.jsonl").read_text().splitlines()[0])
    assert list(record["segmentation_shares"]) == list(SEGMENTATION)
    assert record["classes"] and set(record["classes"]) <= set(DETECTION)
