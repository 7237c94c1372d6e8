"""The data stage's records: a rebuild that fails leaves the last finished data set as it was."""
import hashlib

import pytest

from data import builder as storage
from data.errors import UserError
from pipeline.inputs import records
from support import assert_no_partial_output, tiny


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
