"""Configs are data: nested dataclasses <- YAML file <- `key=value` overrides.

Unknown keys are rejected by name, so a typo in a config never silently falls back to a default.
The resolved config is written into the run folder (`runs/<experiment>/config.yaml`).
"""
from __future__ import annotations

import dataclasses
import pathlib
import typing
from dataclasses import dataclass, field

import yaml

from data.errors import UserError
from data.vocabulary import BACKBONES, PRECISIONS, SHARING_MODES, SOURCES, STRATEGIES, TASKS, WEIGHTINGS


@dataclass
class SourceConfig:
    name: str = "synthetic"
    path: str | None = None  # folder in the data set's own public layout (real sources only)
    weight: float = 1.0  # sampling weight when several sources are mixed
    train_split: str = "train"
    eval_split: str = "validation"


@dataclass
class SyntheticConfig:
    train_frames: int = 2000
    validation_frames: int = 200
    test_frames: int = 0  # > 0: a held-out test split from its own seed stream
    height: int = 192
    width: int = 384
    clip_frames: int = 48
    clip_fps: int = 12


@dataclass
class AugmentConfig:
    enabled: bool = True
    hflip: float = 0.5
    crop_scale: tuple[float, float] = (0.8, 1.0)  # random crop of this share of the side, then resize
    crop_probability: float = 0.5
    brightness_contrast: float = 0.5
    hue_saturation: float = 0.3
    blur: float = 0.1
    noise: float = 0.2


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    image_size: tuple[int, int] = (128, 256)  # model input (height, width)
    max_boxes: int = 32  # box-list length of a training batch (the losses read dense maps, not the list)
    # Size protocol: boxes shorter than this (model-input px) become ignore regions, in training and
    # evaluation alike. 0 = every object counts.
    min_box_height: float = 0.0
    cache: bool = True
    shuffle_buffer: int = 1024
    deterministic: bool = False
    bad_examples: str = "error"  # "error": stop naming the example; "drop": count, report and skip it
    schedule: str = "joint"  # "joint": all tasks every step; "alternating": steps cycle through tasks
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    backbone: str = "builtin"
    weights: str | None = None  # "imagenet" for keras.applications backbones (needs the internet)
    widths: tuple[int, ...] = (24, 48, 96, 160)  # built-in encoder stage widths, strides 4..32
    neck_width: int = 64
    head_width: int = 64
    sharing: str = "hard"
    soft_sharing_beta: float = 1e-3
    top_k: int = 100  # decoded peaks per frame: COCO evaluation keeps 100 (maxDets)
    max_depth: float = 80.0  # the depth output's range, and the range depth is trained and scored on
    min_depth: float = 0.5


@dataclass
class TrainConfig:
    epochs: int = 12
    steps_per_epoch: int = 125
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights at this momentum
    weighting: str = "uncertainty"
    task_weight_learning_rate: float = 0.05  # Adam for uncertainty s / GradNorm w, constant
    fixed_weights: dict[str, float] = field(
        default_factory=lambda: {"detection": 1.0, "segmentation": 1.0, "depth": 1.0})
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    famo_beta: float = 0.025  # FAMO: learning rate of the task logits (Adam)
    famo_gamma: float = 0.01  # FAMO: L2 decay of the task logits
    conflict_every: int = 1  # log task-gradient cosines every N-th training step (0 = never)
    jit_compile: str = "auto"  # "auto" | "true" | "false"
    precision: str = "auto"
    strategy: str = "none"
    validation_steps: int | None = None


@dataclass
class EvaluateConfig:
    split: str = "validation"
    max_examples: int | None = None
    grid_frames: int = 6


@dataclass
class ExportConfig:
    representative_frames: int = 200
    latency_runs: int = 50
    int8_io: str = "uint8"  # input/output type of the int8 model: "uint8" | "int8" | "float32"
    tolerance_float: float = 0.5  # metric points (x100) float32/float16 may drift from Keras
    tolerance_int8: float = 2.0
    tolerance_int8_abs_rel: float = 0.01
    parity_examples: int = 64


@dataclass
class ClipConfig:
    resize: str = "stretch"  # "stretch" | "letterbox": how a frame is fitted to the model input
    batch_size: int = 4
    full_maps: bool = False


@dataclass
class BaselinesConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # each variant is trained once per seed


@dataclass
class Config:
    experiment: str = "default"
    seed: int = 0
    run_root: str = "runs"
    tiny: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)

    @property
    def run_dir(self) -> pathlib.Path:
        return pathlib.Path(self.run_root) / self.experiment

    @property
    def data_dir(self) -> pathlib.Path:
        return self.run_dir / "data"


def _build(cls, values: dict, where: str):
    """Turns a mapping into dataclass `cls`, rejecting keys the dataclass does not have."""
    if not isinstance(values, dict):
        raise UserError(f"config: '{where or 'top level'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"config: unknown key '{_join(where, unknown[0])}'; valid keys here: "
                        f"{', '.join(sorted(names))}")
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in values.items()}
    return cls(**kwargs)


def _coerce(hint, value, where):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise UserError(f"config: '{where}' must be a list")
        return [_build(args[0], v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _join(where, name):
    return f"{where}.{name}" if where else str(name)


def _apply_override(tree: dict, dotted: str, value):
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_config(path: str | pathlib.Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Loads a YAML config (or the defaults), applies `key=value` overrides, validates choices."""
    tree = dataclasses.asdict(Config())
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML: {err}") from None
        _merge(tree, loaded, "")
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            _apply_override(tree, key, yaml.safe_load(raw))
        except (ValueError, IndexError, AttributeError, TypeError):
            raise UserError(f"override '{item}' does not name a config key") from None
    config = _build(Config, tree, "")
    validate(config)
    return config


def _merge(base: dict, new: dict, where: str):
    if not isinstance(new, dict):
        raise UserError(f"config: '{where or 'top level'}' must be a mapping")
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "fixed_weights":
            _merge(base[key], value, _join(where, key))
        else:
            base[key] = value


def _choice(value, valid, what):
    if value not in valid:
        raise UserError(f"unknown {what} '{value}'; valid: {', '.join(valid)}")


def validate(config: Config) -> None:
    for task in config.model.tasks:
        _choice(task, TASKS, "task")
    if not config.model.tasks:
        raise UserError("model.tasks is empty; valid tasks: " + ", ".join(TASKS))
    _choice(config.train.weighting, WEIGHTINGS, "weighting")
    if config.train.conflict_every < 0 or config.train.famo_beta <= 0 or config.train.famo_gamma < 0:
        raise UserError("train.conflict_every must be >= 0, train.famo_beta > 0 and train.famo_gamma >= 0; "
                        f"Received: {config.train.conflict_every}, {config.train.famo_beta}, {config.train.famo_gamma}")
    _choice(config.model.sharing, SHARING_MODES, "sharing mode")
    _choice(config.model.backbone, BACKBONES, "backbone")
    _choice(config.train.strategy, STRATEGIES, "strategy")
    _choice(config.train.precision, PRECISIONS, "precision")
    _choice(str(config.train.jit_compile).lower(), ("auto", "true", "false"), "jit_compile")
    _choice(config.data.bad_examples, ("error", "drop"), "data.bad_examples")
    _choice(config.data.schedule, ("joint", "alternating"), "data.schedule")
    _choice(config.clip.resize, ("stretch", "letterbox"), "clip.resize")
    _choice(config.export.int8_io, ("uint8", "int8", "float32"), "export.int8_io")
    for source in config.data.sources:
        _choice(source.name, SOURCES, "data source")
        if source.name != "synthetic" and not source.path:
            raise UserError(f"data source '{source.name}' needs a path (data.sources[].path)")
    height, width = config.data.image_size
    if height % 32 or width % 32:
        raise UserError(f"data.image_size must be multiples of 32 (the encoder's stride); "
                        f"Received: image_size={list(config.data.image_size)}")
    unknown = sorted(set(config.train.fixed_weights) - set(TASKS))
    if unknown:
        raise UserError(f"train.fixed_weights has unknown task '{unknown[0]}'; valid: {', '.join(TASKS)}")


def to_dict(config: Config) -> dict:
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
