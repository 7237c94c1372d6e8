"""TFDS storage: bad examples stop the build or are counted; no half-built data set is left."""
import numpy as np
import pytest

from data import builder as storage
from data import schema
from data.errors import UserError
from pipeline.inputs import records
from support import tiny


def good(seed):
    example = schema.placeholder(32, 48)
    example["image"] = np.random.default_rng(seed).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    example["boxes"] = np.array([[4, 4, 20, 30]], np.float32)
    example["classes"] = np.array([1], np.int32)
    example["depth"][:] = 12.5
    example["has_detection"] = example["has_depth"] = True
    return example


def bad():
    example = good(0)
    example["depth"][3, 3] = np.nan
    return example


def items(with_bad: bool):
    train = [(f"ok-{i}", lambda i=i: good(i)) for i in range(4)]
    if with_bad:
        train.insert(2, ("broken-7", bad))
    return {"train": train, "validation": [("ok-v", lambda: good(9))]}


def build(config, with_bad, monkeypatch):
    monkeypatch.setattr(records, "source_items", lambda config, source: items(with_bad))
    return records.build_source(config, config.data.sources[0])


def test_round_trip_keeps_labels(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    report = build(config, False, monkeypatch)
    assert report["examples"] == {"train": 4, "validation": 1}
    ds = storage.builder_for("synthetic", config.data_dir).as_dataset(split="validation")
    example = next(iter(ds))
    np.testing.assert_array_equal(example["image"].numpy(), good(9)["image"])
    np.testing.assert_allclose(example["depth"].numpy()[..., 0] / storage.DEPTH_SCALE, 12.5)
    np.testing.assert_array_equal(example["boxes"].numpy(), [[4, 4, 20, 30]])
    assert bool(example["has_depth"]) and not bool(example["has_segmentation"])


def test_bad_example_stops_the_build_naming_it_and_leaves_nothing(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    with pytest.raises(UserError, match="broken-7.*NaN"):
        build(config, True, monkeypatch)
    assert not storage.stored_dir("synthetic", config.data_dir).exists()


def test_drop_policy_counts_and_lists_the_dropped(tmp_path, monkeypatch):
    config = tiny(tmp_path, "data.bad_examples=drop")
    report = build(config, True, monkeypatch)
    assert report["examples"]["train"] == 4 and report["dropped"] == 1
    dropped = (storage.stored_dir("synthetic", config.data_dir) / "dropped.json").read_text()
    assert "broken-7" in dropped


def test_split_items_is_deterministic_and_disjoint():
    keys = [f"k{i:03d}" for i in range(25)]
    splits = storage.split_items(list(reversed(keys)))
    assert splits == storage.split_items(keys)
    assert set(splits["train"]).isdisjoint(splits["validation"])
    assert len(splits["validation"]) == 2 and len(splits["train"]) == 23


def test_official_splits_are_kept_when_keys_carry_them():
    keys = ["cityscapes-train/a/x1", "cityscapes-val/b/x2", "cityscapes-train/a/x3"]
    assert storage.split_items(keys) == {"train": ["cityscapes-train/a/x1", "cityscapes-train/a/x3"],
                                         "validation": ["cityscapes-val/b/x2"]}
    assert storage.split_items(["kitti-000001"]) == {"train": ["kitti-000001"]}
