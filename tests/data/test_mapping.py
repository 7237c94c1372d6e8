"""Label tables onto configurable classes (data/label_maps.py, data/mapping.py): readers map a source's
values through them, a value with no mapping stops the build naming the file and the value."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from data import camvid, classes, kitti, synthetic
from data.errors import UserError
from data.mapping import SourceLabels, UnmappedLabel
from data.schema import IGNORE, BadExample
from support import FIXTURES

CAMVID_NAMES = ("Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
                "Pedestrian", "Bicyclist")
CAMVID_IDENTITY = {**{str(i): name for i, name in enumerate(CAMVID_NAMES)}, "11": "ignore"}


def camvid_classes():
    return classes.from_names(segmentation=CAMVID_NAMES)


def test_camvid_identity_table_keeps_its_own_eleven_classes():
    labels = SourceLabels.build("camvid", camvid_classes(), {"segmentation": CAMVID_IDENTITY})
    root = FIXTURES / "camvid"
    for key in camvid.list_items(root):
        raw = cv2.imread(str(root / "labels" / f"{key[7:]}.png"), cv2.IMREAD_UNCHANGED)
        example = camvid.load_item(root, key, labels)
        assert np.array_equal(example["segmentation"], np.where(raw == 11, IGNORE, raw))
        assert len(np.unique(raw)) > 5  # the fixture holds many classes: the identity is really tested


def test_camvid_value_without_mapping_names_file_and_value(tmp_path):
    root = shutil.copytree(FIXTURES / "camvid", tmp_path / "camvid")
    table = {k: v for k, v in CAMVID_IDENTITY.items() if k != "8"}  # Car left out
    labels = SourceLabels.build("camvid", camvid_classes(), {"segmentation": table})
    key = camvid.list_items(root)[0]
    label = root / "labels" / f"{key[7:]}.png"
    with pytest.raises(UnmappedLabel) as error:
        camvid.load_item(root, key, labels)
    message = str(error.value)
    assert str(label) in message and "class index 8 " in message and "\n" not in message
    assert isinstance(error.value, UserError) and isinstance(error.value, BadExample)


def test_kitti_type_without_mapping_names_file_and_type():
    table = {"Car": "car", "Van": "car", "Pedestrian": "person", "DontCare": "ignore"}  # no Truck
    labels = SourceLabels.build("kitti", classes.from_names(detection=("car", "person")), {"detection": table})
    with pytest.raises(UnmappedLabel, match=r"label_2/000001.txt: line \d+: unknown object type 'Truck'"):
        kitti.load_item(FIXTURES / "kitti", "kitti-000001", labels)


def test_kitti_maps_onto_other_detection_classes():
    table = {"Car": "car", "Van": "car", "Truck": "drop", "Tram": "drop", "Pedestrian": "person",
             "Person_sitting": "person", "Cyclist": "person", "Misc": "drop", "DontCare": "ignore"}
    labels = SourceLabels.build("kitti", classes.from_names(detection=("person", "car")), {"detection": table})
    default = kitti.load_item(FIXTURES / "kitti", "kitti-000001")
    mapped = kitti.load_item(FIXTURES / "kitti", "kitti-000001", labels)
    # Default: Truck, Car, Cyclist (vehicle 0, vehicle 0, cyclist 2). Mapped: Truck dropped, car 1, person 0.
    assert default["classes"].tolist() == [0, 0, 2]
    assert mapped["classes"].tolist() == [1, 0]
    np.testing.assert_array_equal(mapped["boxes"], default["boxes"][1:])


def test_a_table_naming_an_unknown_class_is_refused():
    with pytest.raises(UserError, match="maps 0 to 'Skyy', not one of model.classes.segmentation"):
        SourceLabels.build("camvid", camvid_classes(), {"segmentation": {**CAMVID_IDENTITY, "0": "Skyy"}})


def test_builtin_tables_onto_default_classes_are_the_identity_for_synthetic():
    assert SourceLabels.build("synthetic").is_identity()
    assert not SourceLabels.build("synthetic", classes.from_names(detection=("car", "person")),
                                  {"detection": {"vehicle": "car", "pedestrian": "person",
                                                 "cyclist": "drop"}}).is_identity()


def test_synthetic_remap_drops_ignores_and_merges():
    (key, example), = synthetic.generate("train", 1, 64, 96, seed=0)
    assert example["classes"].tolist() == [0, 0, 0, 1, 0]  # four vehicles and a pedestrian
    names = classes.from_names(detection=("person", "car"), segmentation=("flat", "other"))
    seg = {"0": "flat", "1": "flat", **{str(i): "other" for i in range(2, 9)}, "255": "ignore"}
    labels = SourceLabels.build("synthetic", names, {"detection": {"vehicle": "car", "pedestrian": "ignore",
                                                                   "cyclist": "drop"},
                                                     "segmentation": seg})
    mapped = labels.remap(example, key)
    np.testing.assert_array_equal(mapped["boxes"], example["boxes"][example["classes"] == 0])
    assert mapped["classes"].tolist() == [1, 1, 1, 1]
    # The pedestrian's box joins the frame's own ignore regions.
    np.testing.assert_array_equal(mapped["ignore_boxes"], np.concatenate(
        [example["ignore_boxes"], example["boxes"][example["classes"] == 1]]))
    road = np.isin(example["segmentation"], (0, 1))
    assert road.any() and (~road).any()
    assert np.all(mapped["segmentation"][road] == 0) and np.all(mapped["segmentation"][~road] == 1)

    missing = SourceLabels.build("synthetic", names, {"detection": {"vehicle": "car"}, "segmentation": seg})
    with pytest.raises(UnmappedLabel, match=f"{key}: unknown class 'pedestrian' has no mapping"):
        missing.remap(example, key)
