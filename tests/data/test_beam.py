"""The data stage on Apache Beam (issue 15): TFDS's Beam generation on the local DirectRunner stores
the same examples as the worker-process build, and treats bad examples the same way."""
import functools
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import builder as storage
from data import parallel, schema, synthetic
from data.errors import UserError
from data.schema import SEGMENTATION_CLASSES
from pipeline.config import load_config
from pipeline.inputs import records
from support import FIXTURES, REPO, assert_no_partial_output, assert_user_error_exit, run_cli, tiny

BEAM = "data.beam_runner=DirectRunner"
KITTI = f"data.sources=[{{name: kitti, path: '{FIXTURES / 'kitti'}'}}]"


def stored_examples(config, source: str) -> dict:
    """split -> [(key, {feature: (shape, dtype, bytes)})] in stored order, read back through as_dataset."""
    builder = storage.builder_for(source, config.data_dir)

    def plain(value):
        value = np.asarray(value)
        return value.shape, str(value.dtype), value.tobytes()
    return {split: [(example["key"].decode(), {name: plain(value) for name, value in example.items()})
                    for example in tfds.as_numpy(builder.as_dataset(split=split))]
            for split in builder.info.splits}


def not_in_this_process(*args, **kwargs):
    raise AssertionError("the Beam build loaded an example through the worker-process loader")


@pytest.mark.parametrize("source, overrides", [("synthetic", ()), ("kitti", (KITTI,))], ids=["synthetic", "kitti"])
def test_beam_stores_the_same_examples_as_the_process_build(tmp_path, monkeypatch, source, overrides):
    processes = tiny(tmp_path / "processes", *overrides)
    beam = tiny(tmp_path / "beam", *overrides, BEAM)
    report = records.build_source(processes, processes.data.sources[0])
    monkeypatch.setattr(parallel.Loader, "loaded", not_in_this_process)  # the loaders run in Beam's workers
    assert records.build_source(beam, beam.data.sources[0]) == report
    one, two = stored_examples(processes, source), stored_examples(beam, source)
    assert {split: len(examples) for split, examples in two.items()} == report["examples"]
    assert one == two  # every feature's bytes, key by key, in the same stored order
    assert_no_partial_output(beam.data_dir)


def items():
    broken = schema.placeholder(32, 48)
    broken["depth"][3, 3] = np.nan
    frames = synthetic.frame_loaders("train", 4, 32, 48, seed=3)
    frames.insert(2, ("broken-7", functools.partial(dict, broken)))  # picklable, unlike a lambda
    return {"train": frames, "validation": synthetic.frame_loaders("validation", 1, 32, 48, seed=3)}


def test_a_bad_example_stops_the_beam_build_with_the_same_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "source_items", lambda config, source: items())
    config = tiny(tmp_path, BEAM)
    with pytest.raises(UserError, match=r"^bad example broken-7: depth has NaN.*data.bad_examples=drop"):
        records.build_source(config, config.data.sources[0])
    assert not storage.stored_dir("synthetic", config.data_dir).exists()
    assert_no_partial_output(config.data_dir)


def test_the_beam_build_drops_counts_and_lists_bad_examples(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(records, "source_items", lambda config, source: items())
    config = tiny(tmp_path, BEAM, "data.bad_examples=drop")
    report = records.build_source(config, config.data.sources[0])
    assert report["examples"] == {"train": 4, "validation": 1} and report["dropped"] == 1
    assert "data: dropped broken-7: broken-7: depth has NaN" in capsys.readouterr().out
    dropped = (storage.stored_dir("synthetic", config.data_dir) / "dropped.json").read_text()
    assert "broken-7" in dropped


def test_an_unmapped_label_stops_the_beam_build_with_one_line_even_when_dropping(tmp_path):
    root = shutil.copytree(FIXTURES / "camvid", tmp_path / "camvid")
    table = "{" + ", ".join(f"{i}: {n}" for i, n in enumerate(SEGMENTATION_CLASSES) if i != 8)
    table += ", 9: pedestrian, 10: cyclist, 11: ignore}"  # CamVid's table without value 8 (Car)
    result = run_cli("data", "--config", "configs/tiny.yaml", f"run_root={tmp_path / 'runs'}", BEAM,
                     f"data.sources=[{{name: camvid, path: '{root}'}}]", "data.bad_examples=drop",
                     f"data.sources.0.label_map={{segmentation: {table}}}", timeout=300)
    line = assert_user_error_exit(result, "class index 8 ", "label_map.segmentation")  # no Beam traceback
    assert any(str(label) in line for label in sorted((root / "labels").glob("*.png"))), line
    assert not list((tmp_path / "runs").rglob("*.tfrecord*"))
    assert_no_partial_output(tmp_path / "runs")


@pytest.mark.parametrize("overrides, message", [
    (["data.beam_runner=direct"], "unknown data.beam_runner 'direct'; valid: DirectRunner"),
    (["data.beam_options=[--direct_num_workers=2]"], "data.beam_options needs data.beam_runner"),
    ([BEAM, "data.beam_options=[direct_num_workers=2]"], "must be a Beam flag"),
])
def test_beam_settings_are_checked_before_anything_runs(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(REPO / "configs" / "tiny.yaml", overrides)


def test_a_bad_runner_name_is_one_line_on_the_command_line(tmp_path):
    result = run_cli("data", "--config", "configs/tiny.yaml", f"run_root={tmp_path}", "data.beam_runner=Spark",
                     timeout=120)
    assert_user_error_exit(result, "data.beam_runner 'Spark'", "SparkRunner")
    assert not list(tmp_path.rglob("*"))
