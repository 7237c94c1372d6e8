"""The data stage's records: a rebuild that fails leaves the last finished data set as it was."""
import hashlib
import shutil

import pytest

from data import builder as storage
from data.errors import UserError
from data.schema import SEGMENTATION_CLASSES
from pipeline.inputs import records
from support import FIXTURES, assert_no_partial_output, assert_user_error_exit, run_cli, tiny


def checksums(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failing_rebuild_keeps_the_finished_data_set(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    source = config.data.sources[0]
    records.build_source(config, source)
    target = storage.stored_dir(source.name, config.data_dir)
    finished = checksums(target)
    assert "params.json" in finished and any(name.endswith(".tfrecord-00000-of-00001") for name in finished)

    changed = tiny(tmp_path, "data.synthetic.train_frames=12")  # new parameters: a rebuild
    real_items = records.source_items

    def items_that_break(config, source):
        def broken():
            raise UserError("the source broke half-way")
        return {split: [*list(items)[:1], ("broken", broken)] for split, items in real_items(config, source).items()}

    monkeypatch.setattr(records, "source_items", items_that_break)
    with pytest.raises(UserError, match="half-way"):
        records.build_source(changed, changed.data.sources[0])
    assert checksums(target) == finished
    assert_no_partial_output(target.parent)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]

    monkeypatch.setattr(records, "source_items", real_items)
    report = records.build_source(changed, changed.data.sources[0])  # the next run succeeds
    assert report["examples"]["train"] == 12
    assert storage.builder_for(source.name, config.data_dir).is_prepared()


def test_a_label_value_without_mapping_stops_the_build_naming_file_and_value(tmp_path):
    root = shutil.copytree(FIXTURES / "camvid", tmp_path / "camvid")
    table = "{" + ", ".join(f"{i}: {n}" for i, n in enumerate(SEGMENTATION_CLASSES) if i != 8)
    # CamVid's built-in table without value 8 (Car): a gap, whatever data.bad_examples says.
    table += ", 9: pedestrian, 10: cyclist, 11: ignore}"
    result = run_cli("data", "--config", "configs/tiny.yaml", f"run_root={tmp_path / 'runs'}",
                     f"data.sources=[{{name: camvid, path: '{root}'}}]", "data.bad_examples=drop",
                     f"data.sources.0.label_map={{segmentation: {table}}}", timeout=300)
    labels = sorted((root / "labels").glob("*.png"))
    line = assert_user_error_exit(result, "class index 8 ", "label_map.segmentation")
    assert any(str(label) in line for label in labels), line
    assert not list((tmp_path / "runs").rglob("*.tfrecord*"))
