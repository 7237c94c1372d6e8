"""Real-data readers on real frames (tests/fixtures, see its NOTICE) and a synthetic BDD100K layout."""
from __future__ import annotations

import json
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from data import bdd100k, camvid, cityscapes, kitti, readers
from data.schema import DETECTION_CLASSES, IGNORE, SEGMENTATION_CLASSES, BadExample
from data.errors import UserError
from data.vocabulary import REAL_SOURCES, TASKS
from support import FIXTURES

KITTI = FIXTURES / "kitti"
DET = {name: i for i, name in enumerate(DETECTION_CLASSES)}
SEG = {name: i for i, name in enumerate(SEGMENTATION_CLASSES)}


def label_lines(frame: str) -> list[list[str]]:
    text = (KITTI / "training" / "label_2" / f"{frame}.txt").read_text()
    return [line.split() for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def kitti_examples():
    return {key: kitti.load_item(KITTI, key) for key in kitti.list_items(KITTI)}


# --- registry and schema ------------------------------------------------------------------------------

def test_registry_names_every_reader_and_rejects_unknown():
    for name in REAL_SOURCES:
        module = readers.get(name)
        assert callable(module.check_layout) and callable(module.list_items)
        assert callable(module.load_item) and module.LABELS <= set(TASKS)
    with pytest.raises(UserError, match="unknown data source 'nuscenes'"):
        readers.get("nuscenes")


def test_every_fixture_example_has_schema_keys_and_ignore_boxes(kitti_examples):
    examples = list(kitti_examples.values())
    examples += [cityscapes.load_item(FIXTURES / "cityscapes", k)
                 for k in cityscapes.list_items(FIXTURES / "cityscapes")]
    examples += [camvid.load_item(FIXTURES / "camvid", k) for k in camvid.list_items(FIXTURES / "camvid")]
    assert len(examples) == 5
    for example in examples:
        assert example["image"].dtype == np.uint8 and example["image"].ndim == 3
        assert example["ignore_boxes"].dtype == np.float32 and example["ignore_boxes"].shape[1:] == (4,)


# --- KITTI -----------------------------------------------------------------------------------------------

def test_kitti_keys_and_training_folder_as_root(kitti_examples):
    kitti.check_layout(KITTI)
    kitti.check_layout(KITTI / "training")
    assert kitti.list_items(KITTI) == ["kitti-000001", "kitti-000002"]
    assert kitti.list_items(KITTI / "training") == kitti.list_items(KITTI)
    again = kitti.load_item(KITTI / "training", "kitti-000001")
    np.testing.assert_array_equal(again["boxes"], kitti_examples["kitti-000001"]["boxes"])


def test_kitti_boxes_are_the_numbers_of_the_label_file(kitti_examples):
    example = kitti_examples["kitti-000001"]
    expected_class = {"Car": "vehicle", "Van": "vehicle", "Truck": "vehicle", "Tram": "vehicle",
                      "Pedestrian": "pedestrian", "Person_sitting": "pedestrian", "Cyclist": "cyclist"}
    lines = [f for f in label_lines("000001") if f[0] in expected_class]
    assert len(lines) == 3   # Truck, Car, Cyclist
    expected = np.array([[float(v) for v in f[4:8]] for f in lines], np.float32)
    np.testing.assert_array_equal(example["boxes"], expected)
    np.testing.assert_array_equal(example["classes"], [DET[expected_class[f[0]]] for f in lines])
    assert example["has_detection"] and not example["has_segmentation"]
    assert np.all(example["segmentation"] == IGNORE)


def test_kitti_dontcare_becomes_ignore_boxes_not_boxes(kitti_examples):
    example = kitti_examples["kitti-000001"]
    dontcare = np.array([[float(v) for v in f[4:8]] for f in label_lines("000001")
                         if f[0] == "DontCare"], np.float32)
    assert len(dontcare) == 4
    np.testing.assert_array_equal(example["ignore_boxes"], dontcare)
    for box in dontcare:
        assert not np.any(np.all(example["boxes"] == box, axis=1))


def test_kitti_misc_is_neither_box_nor_ignore(kitti_examples):
    example = kitti_examples["kitti-000002"]
    misc = [f for f in label_lines("000002") if f[0] == "Misc"]
    assert misc
    np.testing.assert_array_equal(example["classes"], [DET["vehicle"]])   # only the Car
    assert len(example["ignore_boxes"]) == 0


def test_kitti_lidar_depth_is_sparse_positive_and_in_the_thousands(kitti_examples):
    for example in kitti_examples.values():
        depth = example["depth"]
        assert example["has_depth"]
        assert depth.shape == example["image"].shape[:2] and depth.dtype == np.float32
        valid = depth > 0
        assert 5_000 < valid.sum() < 100_000
        assert np.all(depth >= 0) and depth[valid].max() < 130   # HDL-64E range is ~120 m


def test_kitti_median_lidar_depth_in_unoccluded_vehicle_boxes_matches_label_distance(kitti_examples):
    # Fields: type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y. z (index 13) is the
    # box centre; LiDAR sees the surface facing the camera, half the box's extent along z nearer.
    # So the median must lie between that face and the centre (0.5 m slack each side).
    checked = 0
    for key, example in kitti_examples.items():
        for f in label_lines(key.split("-")[1]):
            if f[0] not in ("Car", "Van", "Truck") or int(f[2]) != 0 or float(f[1]) >= 0.3:
                continue
            x1, y1, x2, y2 = (float(v) for v in f[4:8])
            width, length, z, ry = float(f[9]), float(f[10]), float(f[13]), float(f[14])
            inside = example["depth"][int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))]
            median = float(np.median(inside[inside > 0]))
            near_face = z - (length / 2 * abs(np.sin(ry)) + width / 2 * abs(np.cos(ry)))
            assert near_face - 0.5 <= median <= z + 0.5, (key, f[0], median, z, near_face)
            checked += 1
    assert checked >= 3   # the Truck and Car of 000001, the Car of 000002


def test_lidar_depth_drops_points_behind_the_camera():
    training = KITTI / "training"
    points = kitti.read_velodyne(training / "velodyne" / "000001.bin")
    calib = kitti.read_calib(training / "calib" / "000001.txt")
    behind = points[points[:, 0] < 0]
    # Without the z > 0 test these points would land inside the image, mirrored.
    xyz1 = np.c_[behind[:, :3], np.ones(len(behind))]
    uvw = (calib["P2"] @ calib["R0_rect"] @ calib["Tr_velo_to_cam"] @ xyz1.T).T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    assert np.sum((u >= 0) & (u < 1242) & (v >= 0) & (v < 375)) > 100
    assert not np.any(kitti.lidar_depth(behind, calib, 375, 1242))


def test_lidar_depth_keeps_the_nearest_point_per_pixel():
    # Camera = Velodyne frame, f = 100, principal point (20, 10): points on one ray share a pixel.
    calib = {"P2": np.array([[100.0, 0, 20, 0], [0, 100, 10, 0], [0, 0, 1, 0]]),
             "R0_rect": np.eye(4), "Tr_velo_to_cam": np.eye(4)}
    points = np.array([[2, 1, 20, 0], [1, 0.5, 10, 0], [3, 1.5, 30, 0], [0, 0, -5, 0],
                       [50, 0, 1, 0]], np.float32)
    depth = kitti.lidar_depth(points, calib, 20, 40)
    assert depth[15, 30] == 10 and np.count_nonzero(depth) == 1


def test_kitti_depth_png_is_used_instead_of_lidar(tmp_path):
    root = shutil.copytree(KITTI, tmp_path / "kitti")
    (root / "training" / "depth").mkdir()
    png = np.zeros((375, 1242), np.uint16)
    png[200, 600] = 2560   # 10 m
    cv2.imwrite(str(root / "training" / "depth" / "000001.png"), png)
    depth = kitti.load_item(root, "kitti-000001")["depth"]
    assert depth[200, 600] == 10.0 and np.count_nonzero(depth) == 1


def _break_label(training):
    path = training / "label_2" / "000001.txt"
    path.write_text(path.read_text() + "Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87\n")


def _break_calib(training):
    path = training / "calib" / "000001.txt"
    path.write_text("".join(l for l in path.read_text().splitlines(True) if not l.startswith("P2:")))


def _append_bytes(training):
    with open(training / "velodyne" / "000001.bin", "ab") as f:
        f.write(b"\0" * 6)


def _truncate_image(training):
    path = training / "image_2" / "000001.png"
    path.write_bytes(path.read_bytes()[:5000])


@pytest.mark.parametrize("breaker, file, message", [
    (_break_label, "label_2/000001.txt", "line 8 has 10 fields, expected 15"),
    (_break_calib, "calib/000001.txt", "no P2 matrix"),
    (lambda t: (t / "label_2" / "000001.txt").unlink(), "image_2/000001.png", "image without label"),
    (lambda t: (t / "image_2" / "000001.png").unlink(), "label_2/000001.txt", "label without image"),
    (_append_bytes, "velodyne/000001.bin", "not a whole number of 16-byte points"),
    (lambda t: (t / "velodyne" / "000001.bin").unlink(), "velodyne/000001.bin", "LiDAR scan missing"),
    (_truncate_image, "image_2/000001.png", "corrupt image"),
])
def test_kitti_bad_frame_names_the_file(tmp_path, breaker, file, message):
    root = shutil.copytree(KITTI, tmp_path / "kitti")
    breaker(root / "training")
    assert "kitti-000001" in kitti.list_items(root)
    with pytest.raises(BadExample, match=message) as error:
        kitti.load_item(root, "kitti-000001")
    assert str(root / "training" / file) in str(error.value)
    kitti.load_item(root, "kitti-000002")   # the other frame is still fine


def test_kitti_missing_folder_is_a_user_error(tmp_path):
    (tmp_path / "training" / "label_2").mkdir(parents=True)
    with pytest.raises(UserError, match=f"expected folder {tmp_path / 'training' / 'image_2'}"):
        kitti.check_layout(tmp_path)
    root = shutil.copytree(KITTI, tmp_path / "k2")
    shutil.rmtree(root / "training" / "calib")
    with pytest.raises(UserError, match="training/calib"):
        kitti.check_layout(root)


# --- Cityscapes ------------------------------------------------------------------------------------

def _raw_cityscapes(name: str) -> np.ndarray:
    path = FIXTURES / "cityscapes" / "gtFine" / f"frankfurt_000000_000294_gtFine_{name}.png"
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_cityscapes_label_ids_map_to_project_classes():
    root = FIXTURES / "cityscapes"
    cityscapes.check_layout(root)
    assert cityscapes.list_items(root) == ["cityscapes-frankfurt_000000_000294"]
    example = cityscapes.load_item(root, "cityscapes-frankfurt_000000_000294")
    raw = _raw_cityscapes("labelIds")
    expected = {7: "road", 8: "sidewalk", 11: "building", 17: "pole", 20: "pole", 21: "vegetation",
                23: "sky", 24: "pedestrian", 26: "vehicle", 1: None, 4: None, 13: "building"}
    for label_id, name in expected.items():
        pixels = example["segmentation"][raw == label_id]
        assert pixels.size, label_id
        assert np.all(pixels == (IGNORE if name is None else SEG[name])), label_id
    assert example["has_segmentation"] and example["has_detection"] and not example["has_depth"]


def test_cityscapes_boxes_enclose_their_instances_exactly():
    example = cityscapes.load_item(FIXTURES / "cityscapes", "cityscapes-frankfurt_000000_000294")
    instances = _raw_cityscapes("instanceIds")
    ids = [v for v in np.unique(instances) if v >= 1000]
    assert len(ids) == len(example["boxes"]) == 7   # 4 persons, 3 cars
    for box, cls in zip(example["boxes"], example["classes"]):
        matches = []
        for value in ids:
            rows, cols = np.nonzero(instances == value)
            if np.array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]):
                matches.append(value)
        assert len(matches) == 1
        assert cls == DET["pedestrian" if matches[0] // 1000 == 24 else "vehicle"]


def test_cityscapes_nested_layout_crowds_and_disparity_depth(tmp_path):
    stem = "frankfurt_000000_000294"
    for folder, suffix in [("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds"),
                           ("gtFine", "gtFine_instanceIds")]:
        target = tmp_path / folder / "val" / "frankfurt" / f"{stem}_{suffix}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURES / "cityscapes" / folder / f"{stem}_{suffix}.png", target)
    # A "car group" crowd (label id 26 without an instance number) in an empty corner.
    instance_path = tmp_path / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_instanceIds.png"
    instances = cv2.imread(str(instance_path), cv2.IMREAD_UNCHANGED)
    instances[100:110, 10:30] = 26
    cv2.imwrite(str(instance_path), instances)
    disparity = np.zeros((128, 256), np.uint16)
    disparity[5, 6], disparity[7, 8] = 1 + 256 * 20, 1   # 20 px; p = 1 means d = 0: invalid
    for folder in ("disparity", "camera"):
        (tmp_path / folder / "val" / "frankfurt").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "disparity" / "val" / "frankfurt" / f"{stem}_disparity.png"), disparity)
    camera = tmp_path / "camera" / "val" / "frankfurt" / f"{stem}_camera.json"
    camera.write_text(json.dumps({"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 2000.0}}))

    key = f"cityscapes-val/frankfurt/{stem}"
    assert cityscapes.list_items(tmp_path) == [key]
    example = cityscapes.load_item(tmp_path, key)
    np.testing.assert_array_equal(example["ignore_boxes"], [[10, 100, 30, 110]])
    assert len(example["boxes"]) == 7
    assert example["has_depth"] and example["depth"][5, 6] == pytest.approx(0.2 * 2000 / 20)
    assert np.count_nonzero(example["depth"]) == 1

    camera.unlink()
    with pytest.raises(BadExample, match="disparity without camera file"):
        cityscapes.load_item(tmp_path, key)


def test_cityscapes_image_without_label_and_bad_layout(tmp_path):
    root = shutil.copytree(FIXTURES / "cityscapes", tmp_path / "cs")
    label = root / "gtFine" / "frankfurt_000000_000294_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(BadExample, match="image without label") as error:
        cityscapes.load_item(root, "cityscapes-frankfurt_000000_000294")
    assert str(label) in str(error.value)
    shutil.rmtree(root / "gtFine")
    with pytest.raises(UserError, match=f"expected folder {root / 'gtFine'}"):
        cityscapes.check_layout(root)


# --- CamVid ----------------------------------------------------------------------------------------

def test_camvid_void_is_ignore_and_car_is_vehicle():
    root = FIXTURES / "camvid"
    camvid.check_layout(root)
    keys = camvid.list_items(root)
    assert keys == ["camvid-0001TP_008550", "camvid-0001TP_009420"]
    for key in keys:
        example = camvid.load_item(root, key)
        raw = cv2.imread(str(root / "labels" / f"{key[7:]}.png"), cv2.IMREAD_UNCHANGED)
        assert (raw == 11).any() and (raw == 8).any()
        assert np.all(example["segmentation"][raw == 11] == IGNORE)
        assert np.all(example["segmentation"][raw == 8] == SEG["vehicle"])
        assert np.all(example["segmentation"][raw == 3] == SEG["road"])
        assert example["has_segmentation"] and not example["has_detection"] and not example["has_depth"]


def test_camvid_split_layout_and_bad_labels(tmp_path):
    for folder in ("test", "testannot"):
        shutil.copytree(FIXTURES / "camvid" / ("images" if folder == "test" else "labels"),
                        tmp_path / folder)
    camvid.check_layout(tmp_path)
    assert camvid.list_items(tmp_path) == ["camvid-test/0001TP_008550", "camvid-test/0001TP_009420"]
    assert camvid.load_item(tmp_path, "camvid-test/0001TP_008550")["has_segmentation"]

    label = tmp_path / "testannot" / "0001TP_009420.png"
    cv2.imwrite(str(label), np.full((360, 480), 20, np.uint8))
    with pytest.raises(BadExample, match="class index 20"):
        camvid.load_item(tmp_path, "camvid-test/0001TP_009420")
    cv2.imwrite(str(label), np.zeros((360, 480, 3), np.uint8))
    with pytest.raises(BadExample, match="single-channel"):
        camvid.load_item(tmp_path, "camvid-test/0001TP_009420")
    shutil.rmtree(tmp_path / "testannot")
    with pytest.raises(UserError, match="testannot"):
        camvid.check_layout(tmp_path)


# --- BDD100K (synthetic layout: no real sample exists) ----------------------------------------------

def _bdd(tmp_path) -> pathlib.Path:
    root = tmp_path / "bdd100k"
    images = root / "images" / "100k"
    for split, name in [("val", "a"), ("val", "b"), ("val", "c"), ("test", "t")]:
        (images / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / split / f"{name}.jpg"), np.full((48, 64, 3), 100, np.uint8))
    labels = [
        {"category": "car", "box2d": {"x1": 1.5, "y1": 2, "x2": 20, "y2": 30}},
        {"category": "pedestrian", "box2d": {"x1": 30, "y1": 5, "x2": 36, "y2": 25}},
        {"category": "rider", "box2d": {"x1": 40, "y1": 10, "x2": 70, "y2": 50}},   # clipped
        {"category": "bicycle", "box2d": {"x1": 40, "y1": 20, "x2": 50, "y2": 40}},
        {"category": "traffic sign", "box2d": {"x1": 5, "y1": 5, "x2": 9, "y2": 9}},
        {"category": "other vehicle", "box2d": {"x1": 0, "y1": 40, "x2": 10, "y2": 47}},
        {"category": "lane", "poly2d": []},
    ]
    det = root / "labels" / "det_20"
    det.mkdir(parents=True)
    (det / "det_val.json").write_text(json.dumps([{"name": "a.jpg", "labels": labels},
                                                  {"name": "c.jpg", "labels": None}]))
    semseg = np.full((48, 64), 255, np.uint8)
    semseg[:10], semseg[10:20], semseg[20:30, :32], semseg[20:30, 32:] = 10, 2, 13, 18
    (root / "labels" / "sem_seg" / "masks" / "val").mkdir(parents=True)
    cv2.imwrite(str(root / "labels" / "sem_seg" / "masks" / "val" / "a.png"), semseg)
    drivable = np.full((48, 64), 2, np.uint8)
    drivable[30:, :20], drivable[30:, 20:40] = 0, 1
    (root / "labels" / "drivable" / "masks" / "val").mkdir(parents=True)
    cv2.imwrite(str(root / "labels" / "drivable" / "masks" / "val" / "b.png"), drivable)
    return root


def test_bdd100k_boxes_and_segmentation(tmp_path):
    root = _bdd(tmp_path)
    bdd100k.check_layout(root)
    # The test split has no label file: not listed.
    assert bdd100k.list_items(root) == ["bdd100k-val/a", "bdd100k-val/b", "bdd100k-val/c"]

    a = bdd100k.load_item(root, "bdd100k-val/a")
    np.testing.assert_array_equal(a["boxes"], [[1.5, 2, 20, 30], [30, 5, 36, 25], [40, 10, 64, 48]])
    np.testing.assert_array_equal(a["classes"], [DET["vehicle"], DET["pedestrian"], DET["cyclist"]])
    np.testing.assert_array_equal(a["ignore_boxes"], [[0, 40, 10, 47]])
    seg = a["segmentation"]
    assert np.all(seg[:10] == SEG["sky"]) and np.all(seg[10:20] == SEG["building"])
    assert np.all(seg[20:30, :32] == SEG["vehicle"]) and np.all(seg[20:30, 32:] == SEG["cyclist"])
    assert np.all(seg[30:] == IGNORE)
    assert a["has_detection"] and a["has_segmentation"] and not a["has_depth"]

    b = bdd100k.load_item(root, "bdd100k-val/b")   # not in det json, drivable mask only
    assert not b["has_detection"] and b["has_segmentation"]
    assert np.all(b["segmentation"][30:, :40] == SEG["road"])
    assert np.all(b["segmentation"][:30] == IGNORE) and np.all(b["segmentation"][30:, 40:] == IGNORE)

    c = bdd100k.load_item(root, "bdd100k-val/c")   # in det json, no objects: labelled empty
    assert c["has_detection"] and len(c["boxes"]) == 0 and not c["has_segmentation"]


def test_bdd100k_bad_inputs_name_the_file(tmp_path):
    root = _bdd(tmp_path)
    (root / "labels" / "sem_seg" / "masks" / "val" / "a.png").unlink()
    (root / "labels" / "drivable" / "masks" / "val" / "b.png").unlink()
    with pytest.raises(BadExample, match="image without label") as error:
        bdd100k.load_item(root, "bdd100k-val/b")
    assert str(root / "images" / "100k" / "val" / "b.jpg") in str(error.value)

    image = root / "images" / "100k" / "val" / "a.jpg"
    image.write_bytes(image.read_bytes()[:-200])
    with pytest.raises(BadExample, match=f"{image}: truncated JPEG"):
        bdd100k.load_item(root, "bdd100k-val/a")

    det = root / "labels" / "det_20" / "det_val.json"
    det.write_text(json.dumps([{"name": "c.jpg", "labels": [
        {"category": "spaceship", "box2d": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}}]}]))
    with pytest.raises(BadExample, match=f"{det}: frame c.jpg: unknown category 'spaceship'"):
        bdd100k.load_item(root, "bdd100k-val/c")

    shutil.rmtree(root / "images")
    with pytest.raises(UserError, match="images/100k"):
        bdd100k.check_layout(root)
