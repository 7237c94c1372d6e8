"""configs/camvid.yaml end to end on the CamVid fixture frames, with a tiny budget: data -> train ->
evaluate, segmentation only, scored in CamVid's own 11 classes."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline import classes
from pipeline.config import load_config
from pipeline.evaluation import evaluate
from pipeline.inputs import dataset as inputs
from pipeline.inputs import records
from pipeline.training.fit import run_training
from support import FIXTURES, REPO

CAMVID = ("Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist")


def test_camvid_config_trains_and_evaluates_in_its_own_classes(tmp_path):
    config = load_config(REPO / "configs" / "camvid.yaml", [
        f"run_root={tmp_path}", f"data.sources.0.path={FIXTURES / 'camvid'}", "data.image_size=[64,96]",
        "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=1", "train.validation_steps=1",
        "train.jit_compile=false", "train.precision=float32", "evaluate.grid_frames=1"])
    assert classes.of_config(config).segmentation == CAMVID
    records.build_all(config)
    # The fixture's two frames: the first trains, the last validates (data/builder.py split_items).
    # Stored labels are the file's values (the identity table), void (11) ignored.
    example = next(iter(inputs.load_source(config, config.data.sources[0], "train")))
    raw = cv2.imread(str(FIXTURES / "camvid" / "labels" / "0001TP_008550.png"), cv2.IMREAD_UNCHANGED)
    assert example["key"].numpy().decode() == "camvid-0001TP_008550"
    np.testing.assert_array_equal(example["segmentation"].numpy()[..., 0], np.where(raw == 11, 255, raw))

    model_path = run_training(config, verbose=0)
    metrics = evaluate.evaluate_into(config, model_path, config.evaluate.split, tmp_path / "eval")
    assert metrics["split"] == "validation" and metrics["tasks"] == ["segmentation"]
    assert list(metrics["segmentation"]["per_class_IoU"]) == list(CAMVID)
    assert metrics["segmentation"]["mIoU"] is not None
    assert metrics["detection"].get("absent")
