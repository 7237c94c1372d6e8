"""Synthetic frames and clips: pixel-exact labels, determinism, clip files and the clip-label reader."""
import json

import cv2
import numpy as np
import pytest

from data import schema, synthetic, synthetic_clip
from data.errors import UserError
from support import assert_browser_mp4

HEIGHT, WIDTH = 96, 192
SEG = {name: i for i, name in enumerate(schema.SEGMENTATION_CLASSES)}


@pytest.fixture(scope="module")
def frames():
    return [synthetic.render_frame(seed, HEIGHT, WIDTH, return_instances=True) for seed in range(10)]


def test_frames_pass_the_schema_and_boxes_are_tight_around_visible_pixels(frames):
    boxes = 0
    for seed, (example, extras) in enumerate(frames):
        schema.validate(example, f"seed {seed}")
        assert example["has_detection"] and example["has_segmentation"] and example["has_depth"]
        instances, seg = extras["instances"], example["segmentation"]
        assert len(extras["box_uids"]) == len(example["boxes"]) == len(example["classes"])
        for box, cls, uid in zip(example["boxes"], example["classes"], extras["box_uids"]):
            rows, cols = np.nonzero(instances == uid)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert len(rows) >= synthetic.MIN_VISIBLE_PIXELS
            assert np.all(seg[rows, cols] == SEG[schema.DETECTION_CLASSES[cls]])
        # every vehicle/pedestrian/cyclist pixel belongs to an object, boxed or not
        agent_pixels = np.isin(seg, [SEG["vehicle"], SEG["pedestrian"], SEG["cyclist"]])
        assert np.array_equal(agent_pixels, instances > 0)
        for obj in extras["objects"]:  # objects too hidden for a box keep their pixels labelled
            if not obj["kept"] and obj["visible"]:
                assert np.all(seg[instances == obj["uid"]] == SEG[obj["class"]])
        boxes += len(example["boxes"])
    assert boxes >= len(frames)  # the scenes do contain objects


def test_ground_depth_is_exact_and_grows_toward_the_horizon(frames):
    for example, extras in frames:
        cam, depth = extras["camera"], example["depth"]
        ground = np.isin(example["segmentation"], [SEG["road"], SEG["sidewalk"]])
        rows, cols = np.nonzero(ground)
        expected = cam["focal"] * cam["mount"] / (rows + 0.5 - cam["cy"])  # Z = f h / (v - v_horizon)
        near = expected <= synthetic.MAX_DEPTH
        np.testing.assert_allclose(depth[rows[near], cols[near]], expected[near], rtol=1e-5)
        assert np.all(depth[rows[~near], cols[~near]] == 0)  # beyond range: no measurement
        for c in range(WIDTH):
            column = depth[:, c][ground[:, c] & (depth[:, c] > 0)]
            assert np.all(np.diff(column) < 0)  # going down the image, the road comes closer


def test_sky_has_no_depth_and_objects_sit_at_their_distance(frames):
    for example, extras in frames:
        depth, instances = example["depth"], extras["instances"]
        sky = example["segmentation"] == SEG["sky"]
        assert sky.any() and np.all(depth[sky] == 0)
        for obj in extras["objects"]:
            values = depth[instances == obj["uid"]]
            if not len(values):
                continue
            distance = np.float32(obj["distance"])
            if obj["class"] == "vehicle":  # the near face at its distance, the side wall farther back
                assert values.min() >= distance * (1 - 1e-6)
                assert values.max() <= (distance + obj["length"]) * (1 + 1e-6)
            else:  # people are flat at their distance
                assert np.all(values == distance)


def test_same_seed_same_bytes_and_seed_streams_differ():
    keys = ("image", "boxes", "classes", "segmentation", "depth")
    first, again, other = (synthetic.render_frame(seed, 64, 128) for seed in (3, 3, 4))
    assert all(first[k].tobytes() == again[k].tobytes() for k in keys)
    assert first["image"].tobytes() != other["image"].tobytes()
    train = list(synthetic.generate("train", 3, 64, 128, seed=0))
    train_again = list(synthetic.generate("train", 3, 64, 128, seed=0))
    validation = list(synthetic.generate("validation", 3, 64, 128, seed=0))
    other_seed = list(synthetic.generate("train", 3, 64, 128, seed=1))
    assert [key for key, _ in train] == [f"synthetic-train-{i:06d}" for i in range(3)]
    assert [key for key, _ in validation] == [f"synthetic-validation-{i:06d}" for i in range(3)]
    for (_, a), (_, b), (_, v), (_, o) in zip(train, train_again, validation, other_seed):
        assert all(a[k].tobytes() == b[k].tobytes() for k in keys)
        assert a["image"].tobytes() != v["image"].tobytes()
        assert a["image"].tobytes() != o["image"].tobytes()
    with pytest.raises(ValueError, match="split"):
        next(synthetic.generate("training", 1, 64, 128, seed=0))


def test_render_clip_writes_a_readable_video_and_matching_labels(tmp_path):
    frames, fps, height, width = 6, 10, 64, 128
    video = synthetic_clip.render_clip(tmp_path, "drive", seed=5, frames=frames, height=height, width=width,
                                       fps=fps)
    assert video == tmp_path / "drive.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive.labels", "drive.labels.jsonl", "drive.mp4"]
    assert_browser_mp4(video, frames=frames)
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(fps)
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(image)
    capture.release()
    assert len(decoded) == frames and decoded[0].shape == (height, width, 3)
    lines = (tmp_path / "drive.labels.jsonl").read_text().splitlines()
    assert len(lines) == frames and json.loads(lines[0])["segmentation"] == "drive.labels/000000_seg.png"
    labels = synthetic_clip.read_clip_labels(tmp_path / "drive.labels.jsonl")
    rendered = list(synthetic_clip.simulate(5, frames, height, width, fps))
    assert [label["frame"] for label in labels] == list(range(frames))
    for label, (example, _) in zip(labels, rendered):
        np.testing.assert_array_equal(label["segmentation"], example["segmentation"])
        np.testing.assert_allclose(label["depth"], example["depth"], atol=0.5 / synthetic_clip.DEPTH_SCALE)
        np.testing.assert_allclose(label["boxes"], example["boxes"], atol=0.01)
        np.testing.assert_array_equal(label["classes"], example["classes"])
    # the video shows the rendered frames (up to the codec's loss)
    error = np.abs(decoded[0][..., ::-1].astype(int) - rendered[0][0]["image"]).mean()
    assert error < 20


def test_clip_objects_come_closer_as_the_ego_car_drives_forward():
    fps = 10
    steps = list(synthetic_clip.simulate(2, 8, 64, 128, fps))
    speed = steps[0][1]["ego_speed"]
    assert 10 <= speed <= 15
    closer = 0
    for (example0, extras0), (example1, extras1) in zip(steps, steps[1:]):
        before = {o["uid"]: o for o in extras0["objects"]}
        for obj in extras1["objects"]:
            if obj["uid"] not in before:
                continue
            moved = obj["distance"] - before[obj["uid"]]["distance"]
            assert moved == pytest.approx((obj["velocity"][1] - speed) / fps, abs=1e-6)
            if obj["velocity"][1] < speed:
                closer += 1
                if obj["class"] != "vehicle" and obj["visible"] and before[obj["uid"]]["visible"]:
                    d0 = example0["depth"][extras0["instances"] == obj["uid"]]
                    d1 = example1["depth"][extras1["instances"] == obj["uid"]]
                    assert d1.max() < d0.min()  # its labelled depth shrinks too
    assert closer > 0


GOOD = '{"frame": 0, "boxes": [[1, 2, 30, 40]], "classes": ["vehicle"]}'


@pytest.mark.parametrize("bad, message", [
    ('{"frame": 1, "boxes": [[1, 2, 3]], "classes": ["vehicle"]}', "box 0 has 3 numbers, expected 4"),
    ('{"frame": 1, "boxes": [[1, 2, 3, 4]], "classes": ["car"]}', "unknown class name 'car'"),
    ('{"frame": 1, "boxes": []}', "missing key(s) classes"),
    ('{"frame": 1, "boxes": [[1, 2, 3, 4]], "classes": []}', "1 boxes but 0 classes"),
    ('{"frame": 1, "boxes": [], "classes": [], "segmentation": "gone.png"}', "segmentation PNG not found"),
    ('{"frame": 0, "boxes": [], "classes": []}', "does not come after frame 0"),
    ('{"frame": 1, "boxes": [[5, 2, 3, 4]], "classes": ["cyclist"]}', "needs x2 > x1"),
    ("not json", "not valid JSON"),
])
def test_read_clip_labels_names_the_file_and_line_of_a_bad_line(tmp_path, bad, message):
    path = tmp_path / "mine.labels.jsonl"
    path.write_text(GOOD + "\n" + bad + "\n")
    with pytest.raises(UserError) as caught:
        synthetic_clip.read_clip_labels(path)
    assert f"{path}:2:" in str(caught.value) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_read_clip_labels_accepts_boxes_only_and_rejects_a_missing_file(tmp_path):
    path = tmp_path / "boxes.jsonl"
    path.write_text(GOOD + "\n\n")
    (label,) = synthetic_clip.read_clip_labels(path)
    assert label["segmentation"] is None and label["depth"] is None
    np.testing.assert_array_equal(label["classes"], [0])
    with pytest.raises(UserError, match="not found"):
        synthetic_clip.read_clip_labels(tmp_path / "missing.jsonl")
