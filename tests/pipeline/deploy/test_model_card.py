"""model_card.json + .md from hand-made run files (config.yaml, history.csv, metrics.json, parity)."""
from __future__ import annotations

import json

from pipeline import layout
from pipeline.config import save_config
from pipeline.deploy import model_card
from support import tiny

HISTORY = ("epoch,detection_loss,depth_loss,loss,segmentation_loss,val_detection_loss,val_loss,val_task_loss_sum\n"
           "0,5.0,1.0,7.0,2.0,4.0,6.0,7.5\n1,3.0,0.7,4.5,1.2,2.9,4.0,4.6\n1,2.0,0.5,3.5,1.0,2.0,3.0,3.6\n")
PARITY = {"formats": {
    "keras": {"file": "model.keras", "size_bytes": 554343, "input_size": [64, 96], "verdict": "reference",
              "latency": {"median_ms": 6.1, "p90_ms": 6.3, "batch_size": 1, "num_threads": 2},
              "metrics": {"mAP50": 0.5}},
    "tflite-int8": {"file": "model_int8.tflite", "size_bytes": 144000, "input_size": [64, 96], "verdict": "pass",
                    "latency": {"median_ms": 1.3, "p90_ms": 1.5, "batch_size": 1, "num_threads": 2},
                    "metrics": {"mAP50": 0.49}}}}
METRICS = {"model": "runs/tiny/train/model.keras", "split": "validation",
           "detection": {"mAP50": 0.812, "mAP": 0.456, "AR100": 0.6},
           "segmentation": {"absent": True, "reason": "no labels"},
           "depth": {"abs_rel": 0.071, "rmse": 3.2, "delta1": 0.95}}


def make_run(root, metrics=True):
    config = tiny(root, "train.epochs=5", "train.steps_per_epoch=10", "train.batch_size=4")
    train = layout.train_dir(config)
    save_config(config, train / "config.yaml")
    (train / "history.csv").write_text(HISTORY)
    if metrics:
        evaluation = layout.eval_dir(config, "eval")
        evaluation.mkdir(parents=True)
        (evaluation / "metrics.json").write_text(json.dumps(METRICS))
    return config


def test_model_card_from_hand_made_run(tmp_path):
    config = make_run(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    model_card.write(out, config, PARITY)
    card = json.loads((out / "model_card.json").read_text())
    assert card["classes"]["detection"] == ["vehicle", "pedestrian", "cyclist"]
    assert "road" in card["classes"]["segmentation"] and "metres" in card["classes"]["depth"]
    assert card["input"]["size"] == [64, 96] and "127.5" in card["input"]["normalisation"]
    training = card["training"]
    assert training["config"] == str(layout.train_dir(config) / "config.yaml")
    assert training["data"]["sources"][0]["name"] == "synthetic"
    assert training["data"]["sources"][0]["examples"] == {"train": 16, "validation": 8}
    budget = training["budget"]
    assert (budget["epochs_configured"], budget["epochs_run"], budget["examples_seen"]) == (5, 3, 3 * 10 * 4)
    assert training["final_losses"]["val_task_loss_sum"] == 3.6
    metrics = card["metrics"]
    assert metrics["available"] and metrics["split"] == "validation"
    assert metrics["command"] == f"python -m pipeline evaluate --config {layout.config_file(config)} --split validation"
    assert metrics["values"] == {"detection": {"mAP50": 0.812, "mAP": 0.456, "AR100": 0.6},
                                 "depth": {"abs_rel": 0.071, "rmse": 3.2, "delta1": 0.95}}  # absent task left out
    assert [(f["format"], f["size_bytes"], f["latency_ms"]["p50"]) for f in card["formats"]] == [
        ("keras", 554343, 6.1), ("tflite-int8", 144000, 1.3)]
    text = (out / "model_card.md").read_text()
    for fragment in ("## Tasks and classes", "vehicle, pedestrian, cyclist", "## Input", "64 x 96",
                     "| 3 | 10 | 4 | 120 | uncertainty |", "| detection | mAP50 | 0.812 |", metrics["command"],
                     "| tflite-int8 | `model_int8.tflite` | 140.6 | 1.30 | 1.50 | pass |"):
        assert fragment in text, fragment


def test_model_card_counts_the_steps_trained_when_the_last_epoch_was_partial(tmp_path):
    # A time budget stopped the third epoch after 4 of its 10 steps: speed.json has the steps trained.
    config = make_run(tmp_path)
    (layout.train_dir(config) / "speed.json").write_text(json.dumps({"epochs": 3, "steps": 24}))
    out = tmp_path / "export"
    out.mkdir()
    model_card.write(out, config, PARITY)
    budget = json.loads((out / "model_card.json").read_text())["training"]["budget"]
    assert (budget["epochs_run"], budget["examples_seen"]) == (3, 24 * 4)


def test_model_card_without_evaluation_says_so(tmp_path):
    config = make_run(tmp_path, metrics=False)
    card = model_card.write(tmp_path, config, {"formats": {}})
    assert card["metrics"]["available"] is False and "evaluate" in card["metrics"]["reason"]
    assert "_Not measured:" in (tmp_path / "model_card.md").read_text()
    assert card["input"]["size"] == list(config.data.image_size)  # from the config when parity has none
