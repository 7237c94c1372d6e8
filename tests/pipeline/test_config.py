import subprocess
import sys

import pytest
import yaml

from data.errors import UserError
from pipeline.config import load_config, save_config
from support import REPO, assert_user_error_exit, run_cli


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
    ("train.lr_decay=step", "valid: cosine, linear"),
    ("model.backbone=resnet9000", "valid: builtin"),
    ("model.tasks=[detection,flow]", "unknown model.tasks 'flow'"),
])
def test_bad_choices_list_the_valid_ones(override, message):
    with pytest.raises(UserError, match=message):
        load_config("configs/tiny.yaml", [override])


def test_resolved_config_round_trips(tmp_path):
    config = load_config("configs/default.yaml", ["seed=7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


# The mistakes the issue measured (each once ended in a traceback after TensorFlow loaded and files
# were written, or trained silently with the wrong value), and more of their kind. Each is one line
# naming the key, the value and what is allowed; exit 2; nothing written.
MISTAKES = [
    ("train", "train.epochs=abc", ["train.epochs", "'abc'", "an integer"]),
    ("train", "train.learning_rate=fast", ["train.learning_rate", "'fast'", "a number"]),
    ("train", "train.batch_size=-4", ["train.batch_size", "-4", "> 0"]),
    ("train", "data.image_size=[64]", ["data.image_size", "[64]", "a list of 2 integers"]),
    ("train", "data.augment.enabled=maybe", ["data.augment.enabled", "'maybe'", "true or false"]),
    ("train", 'data.augment.enabled="false"', ["data.augment.enabled", "'false'", "true or false"]),
    ("data", "data.augment.hflip=1.5", ["data.augment.hflip", "1.5", "in [0, 1]"]),
    ("train", "data.image_size=[100,96]", ["data.image_size", "[100, 96]", "multiples of 32"]),
    ("export", "export.latency_runs=0", ["export.latency_runs", "0", "> 0"]),
    ("clip", "clip.batch_size=two", ["clip.batch_size", "'two'", "an integer"]),
    ("evaluate", "model.widths=[8,-16]", ["model.widths", "[8, -16]", "each be > 0"]),
    ("data", "data.synthetic.train_frames=1.5", ["data.synthetic.train_frames", "1.5", "an integer"]),
    ("train", "train.weighting=magic", ["train.weighting", "'magic'", "valid: fixed, uncertainty"]),
    ("train", "train.fixed_weights={detection: heavy}", ["train.fixed_weights.detection", "'heavy'", "a number"]),
    ("train", "train.uncertainty_priority={segmentation: 0}", ["train.uncertainty_priority must each be > 0", "'segmentation': 0.0"]),
    ("train", "train.uncertainty_priority={lidar: 2}", ["train.uncertainty_priority", "unknown task 'lidar'"]),
    ("train", "train.validation_steps=-1", ["train.validation_steps", "-1", "> 0 (or null)"]),
    # Classes and label tables (data/classes.py, data/label_maps.py).
    ("train", "model.classes.detection=[]", ["model.classes.detection", "1 to 255 classes", "Received: 0"]),
    ("train", "model.classes.segmentation=[{name: road, colour: [1, 2, 3]}]",
     ["model.classes.segmentation", "2 to 255 classes", "Received: 1"]),
    ("train", "model.classes.detection=[{name: car, colour: [1, 2, 3]}, {name: car, colour: [4, 5, 6]}]",
     ["model.classes.detection names must be unique", "'car' twice"]),
    ("data", "model.classes.detection=[{name: '', colour: [1, 2, 3]}]",
     ["model.classes.detection.0.name", "''", "a non-empty string"]),
    ("data", "model.classes.detection=[{name: ignore, colour: [1, 2, 3]}]",
     ["model.classes.detection.0.name", "'ignore'", "marker"]),
    ("train", "model.classes.detection=[{name: car, colour: [300, 0, 0]}]",
     ["model.classes.detection.0.colour", "[300, 0, 0]", "each be in [0, 255]"]),
    ("train", "model.classes.detection=[{name: car, colour: [1, 2]}]",
     ["model.classes.detection.0.colour", "[1, 2]", "a list of 3 integers"]),
    ("evaluate", "model.classes.detection=[{name: car}]",
     ["model.classes.detection.0.colour", "None", "a list of 3 integers in [0, 255]"]),
    ("data", "model.classes.detection=[{name: car, colour: [1, 2, 3], size: 4}]",
     ["unknown key 'model.classes.detection.0.size'", "colour, name"]),
    ("data", "data.sources.0.label_map={detection: {vehicle: truck}}",
     ["data.sources.0.label_map.detection.vehicle", "'truck'", "vehicle, pedestrian, cyclist, ignore, drop"]),
    ("data", "data.sources.0.label_map={segmentation: {0: drop}}",
     ["data.sources.0.label_map.segmentation.0", "'drop'", "cyclist, ignore;"]),
    ("data", "data.sources.0.label_map={segmentation: {road: road}}",
     ["data.sources.0.label_map.segmentation", "'road'", "label values 0..255"]),
    ("data", "data.sources.0.label_map={lanes: {0: road}}",
     ["data.sources.0.label_map table 'lanes'", "synthetic", "valid: detection, segmentation"]),
    ("data", "model.classes.detection=[{name: car, colour: [1, 2, 3]}]",
     ["data.sources.0 (synthetic) has no label_map.detection", "'vehicle'", "give data.sources.0.label_map.detection"]),
]


@pytest.mark.parametrize("stage, override, fragments", MISTAKES, ids=[m[1] for m in MISTAKES])
def test_config_mistake_is_one_line_exit_2_and_writes_nothing(tmp_path, stage, override, fragments):
    result = run_cli(stage, "--config", "configs/tiny.yaml", f"run_root={tmp_path / 'runs'}", override,
                     timeout=120)
    assert_user_error_exit(result, *fragments)
    assert not (tmp_path / "runs").exists()


def test_config_is_checked_before_tensorflow_loads():
    code = ("import sys; from pipeline.config import load_config; from data.errors import UserError\n"
            "try: load_config('configs/tiny.yaml', ['train.epochs=abc'])\n"
            "except UserError: pass\n"
            "load_config('configs/default.yaml')\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# configs/ablation*.yaml list the `make ablate` studies' variants; every other file is a config.
VARIANT_FILES = sorted(p.name for p in (REPO / "configs").glob("ablation*.yaml"))


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs").glob("*.yaml") if p.name not in VARIANT_FILES))
def test_every_shipped_config_loads(path):
    load_config(REPO / "configs" / path)


@pytest.mark.parametrize("path", VARIANT_FILES)
def test_every_ablation_variant_loads(path):
    variants = yaml.safe_load((REPO / "configs" / path).read_text())["variants"]
    assert next(iter(variants)) == "reference" and variants["reference"] == []
    for name, overrides in variants.items():
        for base in ("default.yaml", "tiny.yaml"):
            load_config(REPO / "configs" / base, overrides)


@pytest.mark.parametrize("override, value", [
    ("train.learning_rate=3e-3", 0.003),  # YAML 1.1 reads this as a string
    ("train.jit_compile=false", "false"),  # a YAML boolean for a string choice
    ("train.validation_steps=null", None),
    ("train.fixed_weights={detection: 2}", {"detection": 2.0}),
    ("train.uncertainty_priority={segmentation: 2}", {"segmentation": 2.0}),
    ("data.augment.enabled=false", False),
])
def test_values_are_coerced_to_their_type(override, value):
    config = load_config("configs/tiny.yaml", [override])
    key = override.split("=")[0].split(".")
    node = config
    for part in key:
        node = getattr(node, part)
    assert node == value and type(node) is type(value)


def test_the_default_ranks_segmentation_and_an_override_replaces_the_whole_mapping():
    assert load_config(REPO / "configs" / "default.yaml").train.uncertainty_priority == {"segmentation": 2.0}
    cleared = load_config(REPO / "configs" / "default.yaml", ["train.uncertainty_priority={}"])
    assert cleared.train.uncertainty_priority == {}


@pytest.mark.parametrize("override, message", [
    ("data.augment.crop_scale=[0.9,0.5]", "low <= high"),
    ("data.augment.crop_scale=[0,1]", r"each be in \(0, 1\]"),
    ("model.min_depth=90", "below model.max_depth"),
    ("experiment=a/b", "folder name"),
    ("data.sources=[]", "data.sources is empty"),
    ("train.ema=1", r"in \[0, 1\)"),
    ("train.adam_beta_2=1.0", r"train.adam_beta_2 must be in \[0, 1\)"),
    ("train.detection_size_gradient=0", "train.detection_size_gradient"),
    ("model.detection_size_bins=1", "model.detection_size_bins must be 0 .* or at least 2"),
    ("model.detection_size_bins=-3", "model.detection_size_bins must be >= 0"),
    ("train.segmentation_class_balance=-0.5", "train.segmentation_class_balance must be >= 0"),
    ("train.encoder_learning_rate_scale=0", "train.encoder_learning_rate_scale must be > 0"),
    ("model.detection_largest_box=2", "model.detection_largest_box must be > 2"),
    ("model.weights=foo", "valid: imagenet \\(or null\\)"),
    ("train=5", "'train' must be a mapping"),
    ("export.score_threshold=1.5", r"export.score_threshold must be in \[0, 1\]"),
])
def test_ranges_and_rules_between_keys(override, message):
    with pytest.raises(UserError, match=message):
        load_config("configs/tiny.yaml", [override])


def test_a_branch_point_below_the_frozen_levels_is_refused():
    with pytest.raises(UserError, match="model.shared_through cannot be below model.freeze_through"):
        load_config("configs/default.yaml", ["model.shared_through=P2"])  # frozen through P3
    assert load_config("configs/default.yaml", ["model.shared_through=P4"]).model.shared_through == "P4"
    with pytest.raises(UserError, match="unknown model.shared_through 'P5'"):
        load_config("configs/default.yaml", ["model.shared_through=P5"])  # that is hard sharing


def test_the_thaw_level_must_be_below_the_frozen_one():
    config = load_config("configs/default.yaml", ["train.thaw_through=P2", "train.thaw_at=0.75"])  # frozen through P3
    assert (config.train.thaw_through, config.train.thaw_at) == ("P2", 0.75)
    for overrides in (["train.thaw_through=P3"], ["train.thaw_through=P1", "model.freeze_through=null"]):
        with pytest.raises(UserError, match="train.thaw_through must be a level below model.freeze_through"):
            load_config("configs/default.yaml", overrides)
    for value in ("0", "1"):
        with pytest.raises(UserError, match="train.thaw_at"):
            load_config("configs/default.yaml", ["train.thaw_through=P1", f"train.thaw_at={value}"])


def test_classes_default_to_the_unified_three_and_nine():
    config = load_config("configs/tiny.yaml")
    assert [c.name for c in config.model.classes.detection] == ["vehicle", "pedestrian", "cyclist"]
    assert [c.name for c in config.model.classes.segmentation] == [
        "road", "sidewalk", "building", "vegetation", "sky", "pole", "vehicle", "pedestrian", "cyclist"]
    assert config.model.classes.detection[0].colour == (0, 255, 255)
    assert config.data.sources[0].label_map == {}


def test_other_classes_with_their_tables_load():
    config = load_config("configs/tiny.yaml", [
        "model.classes.detection=[{name: car, colour: [1, 2, 3]}]",
        "data.sources.0.label_map={detection: {vehicle: car, pedestrian: ignore, cyclist: drop}}"])
    assert [c.name for c in config.model.classes.detection] == ["car"]
    assert config.data.sources[0].label_map == {"detection": {"vehicle": "car", "pedestrian": "ignore",
                                                              "cyclist": "drop"}}
    camvid = load_config("configs/camvid.yaml")
    assert len(camvid.model.classes.segmentation) == 11
    assert camvid.data.sources[0].label_map["segmentation"]["11"] == "ignore"


def test_an_encoder_rate_scale_needs_an_encoder_whose_variables_the_optimizer_can_find():
    overrides = ["model.backbone=mobilenet_v3_small", "model.weights=null"]
    with pytest.raises(UserError, match="train.encoder_learning_rate_scale needs an encoder built here"):
        load_config("configs/tiny.yaml", overrides + ["train.encoder_learning_rate_scale=0.5"])
    assert load_config("configs/tiny.yaml", overrides).train.encoder_learning_rate_scale == 1
