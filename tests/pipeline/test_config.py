import pytest

from pipeline.config import load_config, save_config
from data.errors import UserError


def test_defaults_load_and_overrides_apply():
    config = load_config("configs/tiny.yaml", ["train.epochs=5", "model.tasks=[depth]", "data.sources.0.weight=2"])
    assert config.train.epochs == 5
    assert config.model.tasks == ["depth"]
    assert config.data.sources[0].weight == 2
    assert config.data.image_size == (64, 96)


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(UserError, match="train.epoch'"):
        load_config("configs/tiny.yaml", ["train.epoch=3"])


def test_unknown_key_in_yaml_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backbon: builtin\n")
    with pytest.raises(UserError, match="model.backbon"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("train.weighting=magic", "valid: fixed, uncertainty, dwa, gradnorm"),
    ("model.sharing=partial", "valid: hard, soft, cross_stitch"),
    ("model.backbone=resnet9000", "valid: builtin"),
    ("model.tasks=[detection,flow]", "unknown task 'flow'"),
])
def test_bad_choices_list_the_valid_ones(override, message):
    with pytest.raises(UserError, match=message):
        load_config("configs/tiny.yaml", [override])


def test_resolved_config_round_trips(tmp_path):
    config = load_config("configs/default.yaml", ["seed=7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
