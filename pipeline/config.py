"""Configs are data: nested dataclasses <- YAML file <- `key=value` overrides.

Unknown keys are rejected by name, so a typo in a config never silently falls back to a default; every
value is checked against its type hint (bool, int, float, str, Optional, tuple, list, dict) and its rule
(RULES: ranges and choices) before TensorFlow is imported and before any file is written.
The resolved config is written into the run folder (`runs/<experiment>/config.yaml`).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import types
import typing
from dataclasses import dataclass, field

import yaml

from data import label_maps
from data.classes import default_dict
from data.errors import UserError
from data.vocabulary import (BACKBONES, BAD_EXAMPLES, BEAM_RUNNERS, CLIP_RESIZE, INT8_IO, JIT_MODES, LEVELLED_BACKBONES,
                             LR_DECAYS, PRECISIONS, SCHEDULES, SCORE_THRESHOLD, SHARING_MODES, SOURCES, STRATEGIES, TASKS,
                             WEIGHTINGS)
from pipeline import atomic


@dataclass
class SourceConfig:
    name: str = "synthetic"
    path: str | None = None  # folder in the data set's own public layout (real sources only)
    weight: float = 1.0  # sampling weight when several sources are mixed
    train_split: str = "train"
    eval_split: str = "validation"
    # Label tables that replace the source's built-in ones (data/label_maps.py), by table name
    # ("detection", "segmentation"; BDD100K also "drivable"): label value -> class name of
    # model.classes, "ignore" or (detection) "drop". Integer label values for mask tables.
    label_map: dict[str, dict[str, str]] = field(default_factory=dict)


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
    # Train on crops of this size (height, width) cut at the model's scale, and evaluate and deploy on
    # whole frames at image_size: small objects get image_size's pixels at train_crop's cost per step.
    # None: train on whole frames.
    train_crop: tuple[int, int] | None = None
    max_boxes: int = 32  # box-list length of a training batch (the losses read dense maps, not the list)
    # Size protocol: boxes shorter than this (model-input px) become ignore regions, in training and
    # evaluation alike. 0 = every object counts.
    min_box_height: float = 0.0
    cache: bool = True
    shuffle_buffer: int = 1024
    # Repeat factor sampling's threshold t (pipeline/inputs/repeat_factor.py): training frames that
    # hold a class in a share f of a source's frames repeat up to sqrt(t / f) times a pass. 0: off.
    repeat_factor_threshold: float = 0.0
    # true: the input pipeline hands over its batches in one order, so two trainings of one seed on one
    # machine repeat (configs/tiny.yaml twice: max weight difference 0 with true, 0.12 with false;
    # the default's 12 epochs twice: bit-identical through the 10th epoch, then a little apart, mAP 0.001
    # at the end). Free: a default training batch took 50-64 ms to make with true, 69-73 ms with false,
    # against a 0.9 s train step (docs/learning-efficiency.md, "A linear decay to zero", "How far one
    # training is from another at the same seed").
    deterministic: bool = True
    bad_examples: str = "error"  # "error": stop naming the example; "drop": count, report and skip it
    # Processes that render or read the examples while the main one encodes and writes them
    # (data/parallel.py); 0: one per usable core. The records are the same bytes for any number.
    workers: int = 0
    # Apache Beam runner that generates the records instead (TFDS's Beam generation, data/beam_build.py),
    # e.g. "DirectRunner" on this machine, or a cluster's runner; null: the worker processes above.
    beam_runner: str | None = None
    # Beam pipeline options for that runner, as command-line flags, e.g. ["--direct_num_workers=2",
    # "--direct_running_mode=multi_processing"], or a cluster's ["--flink_master=host:8081"].
    beam_options: list[str] = field(default_factory=list)
    schedule: str = "joint"  # "joint": all tasks every step; "alternating": steps cycle through tasks
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ClassConfig:
    name: str = ""
    colour: tuple[int, int, int] | None = None  # RGB of the class in every drawing


def _default_classes(task: str) -> list[ClassConfig]:
    return [ClassConfig(c["name"], tuple(c["colour"])) for c in default_dict()[task]]


@dataclass
class ClassesConfig:
    """The classes the heads predict, in output order (data/classes.py); default: the unified 3 + 9."""
    detection: list[ClassConfig] = field(default_factory=lambda: _default_classes("detection"))
    segmentation: list[ClassConfig] = field(default_factory=lambda: _default_classes("segmentation"))


@dataclass
class ModelConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    backbone: str = "builtin"
    weights: str | None = None  # "imagenet" for keras.applications backbones (needs the internet)
    widths: tuple[int, ...] = (24, 48, 96, 160)  # built-in encoder stage widths, strides 4..32
    # EfficientNet's depth coefficient: each encoder stage keeps ceil(depth x its blocks), the first
    # ones (builtin and efficientnet_lite0; Lite0's ImageNet weights cover depth <= 1)
    encoder_depth: float = 1.0
    neck_width: int = 64
    head_width: int = 64
    detection_head_convs: int = 1  # separable 3x3 convs in each of the detection head's two branches
    detection_head_batch_norm: bool = False  # BatchNorm after each of those convs
    # the box is also trained at the 8 cells around each centre cell (models/detection.py)
    detection_neighbour_boxes: bool = False
    # > 0: each box side is a distribution over this many log sizes, trained by GFL's distribution
    # focal loss (models/detection.py); 0: one log size per side
    detection_size_bins: int = 0
    detection_largest_box: int = 384  # px: the size bins' top (the frame's longer side); the smallest is 2 px
    sharing: str = "hard"
    soft_sharing_beta: float = 1e-3
    top_k: int = 100  # decoded peaks per frame: COCO evaluation keeps 100 (maxDets)
    max_depth: float = 80.0  # the depth output's range, and the range depth is trained and scored on
    min_depth: float = 0.5
    # P1..P4: the pretrained encoder's stem and blocks up to that level stay frozen (faster steps)
    freeze_through: str | None = None
    # soft and cross_stitch sharing: the encoder levels up to this one are one shared trunk and each task
    # gets its own copy of the levels above (a branch point); null: the frozen levels. Moot for hard.
    shared_through: str | None = None


@dataclass
class TrainConfig:
    epochs: int = 12
    steps_per_epoch: int = 125
    # A wall-clock budget for the train stage: the epochs are planned after the first one from its
    # measured time (pipeline/training/budget.py), and `epochs` only sizes the schedule until then.
    # null: exactly `epochs`. The baselines and the ablation study always train a fixed `epochs`.
    minutes: float | None = None
    batch_size: int = 16
    learning_rate: float = 3e-3
    # The pretrained encoder's rate as a share of learning_rate (its weight decay follows), the neck
    # and heads at learning_rate itself, as Detectron2-style backbone multipliers do.
    encoder_learning_rate_scale: float = 1.0
    weight_decay: float = 1e-4
    # P1 or P2: once `thaw_at` of the training's steps are done (at the nearest epoch boundary), the
    # encoder blocks that model.freeze_through keeps frozen above this level train too, for the rest of
    # the training, their BatchNorms on the batch's statistics (pipeline/training/callbacks.EncoderThaw).
    # Frozen steps are cheaper; late, the early levels adapt to what the heads learned.
    thaw_through: str | None = None
    thaw_at: float = 0.5
    warmup_steps: int = 100
    # After the warm-up, to 0 at the last step: "cosine" or "linear". configs/default.yaml sets linear;
    # the other configs keep the cosine, with which their documented numbers were measured.
    lr_decay: str = "cosine"
    # Adam's second-moment decay for the network (not the task weights): 0.999 averages the squared
    # gradient over about 1,000 steps, a whole 15-minute training on a slower CPU. configs/default.yaml
    # sets 0.99; the other configs keep 0.999, with which their documented numbers were measured.
    adam_beta_2: float = 0.999
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights at this momentum
    weighting: str = "uncertainty"
    task_weight_learning_rate: float = 0.05  # Adam for uncertainty s / GradNorm w, constant
    # true: the segmentation loss trains on the hard pixels only (OHEM, models/segmentation.py);
    # validation still reports the plain cross-entropy.
    segmentation_ohem: bool = False
    # > 0: each labelled pixel's cross-entropy is weighted by its class's share of the batch's labelled
    # pixels to the power -this, as a weighted mean per example, so rare classes (poles, people), where
    # mIoU is lost, weigh more (models/segmentation.py). configs/default.yaml sets 0.25; larger values
    # trade their precision for recall
    segmentation_class_balance: float = 0.0
    # true: each object's heat-map peak learns the IoU of the box decoded there, not 1 (GFL's quality
    # focal loss, models/detection.py), so scores rank well-fitted boxes first; validation still
    # reports the plain focal loss.
    detection_quality: bool = False
    # The box-size loss's gradient is multiplied by this, its value is not (models/detection.py), so
    # the detection loss that uncertainty weighting reads, and the heat map's share of the detection
    # gradient, stay as at 1.
    detection_size_gradient: float = 1.0
    fixed_weights: dict[str, float] = field(
        default_factory=lambda: {"detection": 1.0, "segmentation": 1.0, "depth": 1.0})
    # Uncertainty weighting's task priorities: k multiplies a task's whole term (its learned weight's
    # optimum is unchanged); a task not named gets 1. Other weightings do not read it.
    uncertainty_priority: dict[str, float] = field(default_factory=dict)
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    famo_beta: float = 0.025  # FAMO: learning rate of the task logits (Adam)
    famo_gamma: float = 0.01  # FAMO: L2 decay of the task logits
    # Task-gradient cosines every N-th training step (0 = never): a measured step costs about 10 % more
    # (one backward pass per task to the shared kernel); every 10th leaves 7 samples per default epoch.
    # An epoch with no measured step (fewer steps than N) logs 0 for every cosine.
    conflict_every: int = 10
    jit_compile: str = "auto"  # "auto" | "true" | "false"
    precision: str = "auto"
    strategy: str = "none"
    validation_steps: int | None = None
    # Validate on every N-th epoch, and always on the first (it fixes history.csv's columns) and the
    # last; the best checkpoint is chosen among the validated epochs. 1: every epoch.
    validate_every: int = 1


@dataclass
class EvaluateConfig:
    split: str = "validation"
    max_examples: int | None = None
    grid_frames: int = 6
    # true: each source's predicted depth is multiplied by its camera's focal length over the training
    # camera's (pipeline/deploy/camera.py), as --focal does on predict and clip; a source whose camera is unknown
    # is scored as it is. metrics.json lists the factors.
    rescale_depth: bool = False
    # true: every frame is also run mirrored and the two predictions averaged before decoding
    # (pipeline/evaluation/flip_test.py): test mAP50 +0.020, mAP +0.022, AbsRel -2 % for a seed-0
    # default, at 1.5-1.75x the batch-1 latency (docs/results-history.md, "The flip test"). Exports and clip run one pass;
    # scored into eval-...-flip/.
    flip_test: bool = False
    # > 1: a second pass on each frame upscaled by this factor supplies the boxes under 36 px (the
    # smaller two AP50 height bands at a 192-px input), the first pass the rest, and segmentation
    # averages the two (pipeline/evaluation/upscale_test.py). 1.5 was chosen on validation over 1.33
    # and 2 (docs/results-history.md, "The upscale test"); 2.7x the batch-1 latency. Scored into eval-...-up<x>/.
    upscale_test: float = 1.0
    # The rows (shares of the frame's height, top and bottom) the upscale test's second pass sees: small
    # objects are far away, near the horizon, so a band around it costs a fraction of the whole frame.
    upscale_rows: tuple[float, float] = (0.0, 1.0)


@dataclass
class ExportConfig:
    representative_frames: int = 200
    latency_runs: int = 50
    # Input/output type of the int8 model: "int8" | "uint8" | "float32". int8 keeps the whole file in
    # XNNPACK's signed int8 path; uint8 adds QUANTIZE ops at both ends that run on TFLite's own kernels
    # (0.1 ms per frame at 128x256, measured: invoke 3 % slower).
    int8_io: str = "int8"
    # The serving contract's one detection threshold: the SavedModel's num_detections and the boxes
    # predict and clip list and draw (every top-K slot is returned either way).
    score_threshold: float = SCORE_THRESHOLD
    tolerance_float: float = 0.5  # metric points (x100) float32/float16 may drift from Keras
    tolerance_int8: float = 2.0
    tolerance_int8_abs_rel: float = 0.01
    # Frames of evaluate.split the parity check scores. At 64 the verdict was a draw: the default's
    # int8 depth drift, 0.0081 on all 200 validation frames, had a standard deviation of 0.0015 over
    # random 64-frame subsets and exceeded the 0.01 tolerance in 1 of 10 of them (README, Exports).
    parity_examples: int = 200


@dataclass
class ClipConfig:
    resize: str = "stretch"  # "stretch" | "letterbox": how a frame is fitted to the model input
    batch_size: int = 4
    full_maps: bool = False


@dataclass
class BaselinesConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # each variant is trained once per seed
    # Which models to train (names as in baselines.md, e.g. [multi-fixed]); empty = all. The single-task
    # models and the configured multi-task model are always trained: every comparison needs them.
    variants: list[str] = field(default_factory=list)


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


def _build(cls, values, where: str):
    """Turns a mapping into dataclass `cls`, rejecting keys the dataclass does not have and values
    that do not fit the field's type hint or its rule (RULES)."""
    if not isinstance(values, dict):
        raise UserError(f"config: '{where or 'top level'}' must be a mapping of keys; Received: {_show(values)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, values)) - names)
    if unknown:
        raise UserError(f"config: unknown key '{_join(where, unknown[0])}'; valid keys here: "
                        f"{', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        key = _join(where, name)
        kwargs[name] = _check_rule(key, _coerce(hints[name], value, key), hints[name])
    return cls(**kwargs)


def _coerce(hint, value, where):
    """`value` as type `hint` (bool, int, float, str, Optional, tuple, list, dict, dataclass), or a
    one-line UserError naming the key, the value and the type allowed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        arms = [arm for arm in args if arm is not type(None)]
        if value is None and len(arms) < len(args):
            return None
        if len(arms) == 1:
            try:
                return _coerce(arms[0], value, where)
            except UserError:
                raise _wrong(where, value, _describe(hint)) from None
        raise TypeError(f"config: no coercion for {hint} at {where}")  # not used by any field
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, value, _describe(hint))
        if len(args) == 2 and args[1] is Ellipsis:
            if not value:
                raise _wrong(where, value, _describe(hint))
            return tuple(_coerce(args[0], v, f"{where}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _wrong(where, value, _describe(hint))
        return tuple(_coerce(arg, v, f"{where}.{i}") for i, (arg, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, value, _describe(hint))
        return [_coerce(args[0], v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, value, _describe(hint))
        return {_coerce(args[0], k, where): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):  # a string "false" is true in Python: never guess
            raise _wrong(where, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, value, "an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _wrong(where, value, "a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _wrong(where, value, "a finite number")
        return float(value)
    if hint is str:
        if isinstance(value, bool):  # `jit_compile: false` in YAML
            return str(value).lower()
        if isinstance(value, int):  # `experiment: 2024`
            return str(value)
        if not isinstance(value, str):
            raise _wrong(where, value, "a string")
        return value
    raise TypeError(f"config: no coercion for {hint} at {where}")  # a new field type needs a branch here


def _describe(hint) -> str:
    """A type hint in the words of an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arm is type(None) else _describe(arm) for arm in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a non-empty list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _plural(hint) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(hint, _describe(hint))


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _wrong(where, value, allowed) -> UserError:
    return UserError(f"config: {where} must be {allowed}; Received: {where}={_show(value)}")


class Range(typing.NamedTuple):
    """A number's allowed interval; applied to each element of a tuple, list or mapping value."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)

# Each config key's rule beyond its type: a Range, or a tuple of valid choices. `*` stands for a list
# index. A list, tuple or mapping value is checked element by element.
RULES: dict[str, Range | tuple] = {
    "seed": NON_NEGATIVE,
    "data.sources.*.name": SOURCES,
    "data.sources.*.weight": POSITIVE,
    "data.synthetic.train_frames": POSITIVE,
    "data.synthetic.validation_frames": POSITIVE,
    "data.synthetic.test_frames": NON_NEGATIVE,
    "data.synthetic.height": POSITIVE,
    "data.synthetic.width": POSITIVE,
    "data.synthetic.clip_frames": POSITIVE,
    "data.synthetic.clip_fps": POSITIVE,
    "data.augment.hflip": PROBABILITY,
    "data.augment.crop_scale": Range(0, 1, low_open=True),
    "data.augment.crop_probability": PROBABILITY,
    "data.augment.brightness_contrast": PROBABILITY,
    "data.augment.hue_saturation": PROBABILITY,
    "data.augment.blur": PROBABILITY,
    "data.augment.noise": PROBABILITY,
    "data.image_size": POSITIVE,
    "data.train_crop": POSITIVE,
    "data.max_boxes": POSITIVE,
    "data.min_box_height": NON_NEGATIVE,
    "data.shuffle_buffer": POSITIVE,
    "data.repeat_factor_threshold": NON_NEGATIVE,
    "data.bad_examples": BAD_EXAMPLES,
    "data.workers": NON_NEGATIVE,
    "data.beam_runner": BEAM_RUNNERS,
    "data.schedule": SCHEDULES,
    "model.tasks": TASKS,
    "model.classes.detection.*.colour": Range(0, 255),
    "model.classes.segmentation.*.colour": Range(0, 255),
    "model.backbone": BACKBONES,
    "model.weights": ("imagenet",),
    "model.widths": POSITIVE,
    "model.encoder_depth": POSITIVE,
    "model.neck_width": POSITIVE,
    "model.head_width": POSITIVE,
    "model.detection_head_convs": POSITIVE,
    "model.detection_size_bins": NON_NEGATIVE,
    "model.detection_largest_box": Range(2, low_open=True),  # px above the smallest bin's 2
    "model.sharing": SHARING_MODES,
    "model.soft_sharing_beta": NON_NEGATIVE,
    "model.top_k": POSITIVE,
    "model.max_depth": POSITIVE,
    "model.min_depth": POSITIVE,
    "model.freeze_through": ("P1", "P2", "P3", "P4"),
    "model.shared_through": ("P1", "P2", "P3", "P4"),
    "train.epochs": POSITIVE,
    "train.steps_per_epoch": POSITIVE,
    "train.minutes": POSITIVE,
    "train.batch_size": POSITIVE,
    "train.learning_rate": POSITIVE,
    "train.encoder_learning_rate_scale": POSITIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.thaw_through": ("P1", "P2", "P3"),
    "train.thaw_at": Range(0, 1, low_open=True, high_open=True),
    "train.warmup_steps": NON_NEGATIVE,
    "train.lr_decay": LR_DECAYS,
    "train.adam_beta_2": Range(0, 1, high_open=True),
    "train.ema": Range(0, 1, high_open=True),
    "train.weighting": WEIGHTINGS,
    "train.task_weight_learning_rate": POSITIVE,
    "train.detection_size_gradient": POSITIVE,  # 0 would leave the box sizes untrained
    "train.segmentation_class_balance": NON_NEGATIVE,
    "train.fixed_weights": NON_NEGATIVE,
    "train.uncertainty_priority": POSITIVE,
    "train.dwa_temperature": POSITIVE,
    "train.gradnorm_alpha": NON_NEGATIVE,
    "train.famo_beta": POSITIVE,
    "train.famo_gamma": NON_NEGATIVE,
    "train.conflict_every": NON_NEGATIVE,
    "train.jit_compile": JIT_MODES,
    "train.precision": PRECISIONS,
    "train.strategy": STRATEGIES,
    "train.validation_steps": POSITIVE,
    "train.validate_every": POSITIVE,
    "evaluate.max_examples": POSITIVE,
    "evaluate.grid_frames": NON_NEGATIVE,
    "evaluate.upscale_test": Range(1, 4),
    "evaluate.upscale_rows": Range(0, 1),
    "export.representative_frames": POSITIVE,
    "export.latency_runs": POSITIVE,
    "export.int8_io": INT8_IO,
    "export.score_threshold": PROBABILITY,
    "export.tolerance_float": NON_NEGATIVE,
    "export.tolerance_int8": NON_NEGATIVE,
    "export.tolerance_int8_abs_rel": NON_NEGATIVE,
    "export.parity_examples": POSITIVE,
    "clip.resize": CLIP_RESIZE,
    "clip.batch_size": POSITIVE,
}


def _check_rule(key: str, value, hint):
    """`value` if it keeps the rule of `key` (None always does: the type hint allowed it)."""
    rule = RULES.get(re.sub(r"\.\d+(?=\.|$)", ".*", key))
    if rule is None or value is None:
        return value
    items = list(value.values()) if isinstance(value, dict) else \
        list(value) if isinstance(value, (list, tuple)) else [value]
    each = "each " if isinstance(value, (dict, list, tuple)) else ""
    null = " (or null)" if type(None) in typing.get_args(hint) else ""
    for item in items:
        if isinstance(rule, Range) and not rule.allows(item):
            shown = list(value) if isinstance(value, tuple) else value
            raise UserError(f"config: {key} must {each}be {rule.describe()}{null}; Received: {key}={_show(shown)}")
        if not isinstance(rule, Range) and item not in rule:
            raise UserError(f"config: unknown {key} {item!r}; valid: {', '.join(rule)}{null}")
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
    loaded = {}
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML: {err}") from None
    return from_dict(loaded, overrides)


def from_dict(values: dict, overrides: typing.Sequence[str] = ()) -> Config:
    """A config from a mapping such as a YAML file or to_dict wrote (a saved run's), then `key=value`
    overrides: keys it lacks (for a saved run, keys added to the config since) read as their defaults."""
    tree = dataclasses.asdict(Config())
    _merge(tree, values, "")
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


def validate(config: Config) -> None:
    """What one key's rule cannot say: rules between keys. Types, ranges and choices of single keys
    are checked while the config is built (RULES)."""
    if not config.experiment or config.experiment in (".", "..") or re.search(r"[/\\]", config.experiment):
        raise UserError(f"config: experiment must be a folder name (no slashes); "
                        f"Received: experiment={config.experiment!r}")
    if not config.model.tasks:
        raise UserError("config: model.tasks is empty; valid tasks: " + ", ".join(TASKS))
    if not config.data.sources:
        raise UserError("config: data.sources is empty; give at least one source, e.g. [{name: synthetic}]")
    for i, source in enumerate(config.data.sources):
        if source.name != "synthetic" and not source.path:
            raise UserError(f"config: data source '{source.name}' needs a path (data.sources.{i}.path)")
    if config.data.beam_options and not config.data.beam_runner:
        raise UserError("config: data.beam_options needs data.beam_runner (e.g. DirectRunner); "
                        f"Received: data.beam_options={config.data.beam_options}")
    for option in config.data.beam_options:
        if not re.fullmatch(r"--[A-Za-z_][\w-]*(=.*)?", option):
            raise UserError(f"config: each data.beam_options entry must be a Beam flag such as "
                            f"--direct_num_workers=2; Received: {option!r}")
    height, width = config.data.image_size
    if height % 32 or width % 32:
        raise UserError(f"config: data.image_size must be multiples of 32 (the encoder's stride); "
                        f"Received: data.image_size={list(config.data.image_size)}")
    crop = config.data.train_crop
    if crop is not None and (crop[0] % 32 or crop[1] % 32 or crop[0] > height or crop[1] > width):
        raise UserError(f"config: data.train_crop must be multiples of 32 no larger than data.image_size "
                        f"{list(config.data.image_size)}; Received: data.train_crop={list(crop)}")
    top, bottom = config.evaluate.upscale_rows
    if top >= bottom:
        raise UserError(f"config: evaluate.upscale_rows must be [top, bottom] with top < bottom; "
                        f"Received: evaluate.upscale_rows={[top, bottom]}")
    low, high = config.data.augment.crop_scale
    if low > high:
        raise UserError(f"config: data.augment.crop_scale must be [low, high] with low <= high; "
                        f"Received: data.augment.crop_scale={[low, high]}")
    if config.model.min_depth >= config.model.max_depth:
        raise UserError(f"config: model.min_depth must be below model.max_depth; Received: "
                        f"model.min_depth={config.model.min_depth}, model.max_depth={config.model.max_depth}")
    shared, frozen = config.model.shared_through, config.model.freeze_through
    if shared is not None and frozen is not None and shared < frozen:  # "P1" < "P4": levels sort by name
        raise UserError(f"config: model.shared_through cannot be below model.freeze_through (frozen levels are "
                        f"always shared); Received: model.shared_through={shared}, model.freeze_through={frozen}")
    thaw = config.train.thaw_through
    if thaw is not None and (frozen is None or thaw >= frozen):
        raise UserError(f"config: train.thaw_through must be a level below model.freeze_through (it trains the "
                        f"frozen blocks between the two late in training); Received: train.thaw_through={thaw}, "
                        f"model.freeze_through={frozen}")
    if config.train.encoder_learning_rate_scale != 1 and config.model.backbone not in LEVELLED_BACKBONES:
        # The optimizer finds the encoder by its layers' name prefix; keras.applications name theirs their own way.
        raise UserError(f"config: train.encoder_learning_rate_scale needs an encoder built here "
                        f"({', '.join(LEVELLED_BACKBONES)}); Received: model.backbone={config.model.backbone}")
    if config.model.detection_size_bins == 1:
        raise UserError("config: model.detection_size_bins must be 0 (one size per side) or at least 2 "
                        "(a distribution needs two bins); Received: model.detection_size_bins=1")
    for key in ("fixed_weights", "uncertainty_priority"):  # train.<key>: task -> number
        unknown = sorted(set(getattr(config.train, key)) - set(TASKS))
        if unknown:
            raise UserError(f"config: train.{key} has unknown task '{unknown[0]}'; valid: {', '.join(TASKS)}")
    _validate_classes(config)


# The most classes a head may have: segmentation labels are uint8 with 255 = ignore.
MAX_CLASSES = {"detection": 255, "segmentation": 255}
MIN_CLASSES = {"detection": 1, "segmentation": 2}  # a softmax over one class learns nothing


def _validate_classes(config: Config) -> None:
    """model.classes: names non-empty, unique, not a marker, each with a colour; every source's label
    tables (its own or the built-in ones) point at those names or at a marker."""
    names = {}
    for task in ("detection", "segmentation"):
        entries = getattr(config.model.classes, task)
        key = f"model.classes.{task}"
        if not MIN_CLASSES[task] <= len(entries) <= MAX_CLASSES[task]:
            raise UserError(f"config: {key} must list {MIN_CLASSES[task]} to {MAX_CLASSES[task]} classes; "
                            f"Received: {len(entries)}")
        seen = set()
        for i, entry in enumerate(entries):
            if not entry.name.strip():
                raise UserError(f"config: {key}.{i}.name must be a non-empty string; "
                                f"Received: {key}.{i}.name={entry.name!r}")
            if entry.name in (label_maps.IGNORE, label_maps.DROP):
                raise UserError(f"config: {key}.{i}.name cannot be {entry.name!r} (a label-table marker); "
                                f"Received: {key}.{i}.name={entry.name!r}")
            if entry.name in seen:
                raise UserError(f"config: {key} names must be unique; Received: {entry.name!r} twice")
            if entry.colour is None:
                raise UserError(f"config: {key}.{i}.colour must be a list of 3 integers in [0, 255] "
                                f"(RGB); Received: {key}.{i}.colour=None")
            seen.add(entry.name)
        names[task] = [entry.name for entry in entries]
    for i, source in enumerate(config.data.sources):
        _validate_label_map(f"data.sources.{i}", source, names)


def _validate_label_map(where: str, source: SourceConfig, names: dict) -> None:
    tables = label_maps.TABLES[source.name]
    for name in source.label_map:
        if name not in tables:
            raise UserError(f"config: unknown {where}.label_map table {name!r} for source {source.name}; "
                            f"valid: {', '.join(tables)}")
    for name, (task, _, integer_keys) in tables.items():
        given = source.label_map.get(name)
        key = f"{where}.label_map.{name}"
        if given is not None:
            for value in given:
                if integer_keys and not (value.isdigit() and int(value) <= 255):
                    raise UserError(f"config: {key} keys must be label values 0..255 (as the source's "
                                    f"label images hold them); Received: {key} key {value!r}")
        allowed = list(names[task]) + list(label_maps.MARKERS[task])
        for value, target in label_maps.table(source.name, name, given).items():
            if target in allowed:
                continue
            if given is not None:
                raise UserError(f"config: {key}.{value} must be one of {', '.join(allowed)}; "
                                f"Received: {key}.{value}={target!r}")
            raise UserError(f"config: {where} ({source.name}) has no label_map.{name} and its built-in table "
                            f"maps {value!r} to {target!r}, not one of model.classes.{task}; give {key}")


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
    atomic.write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))  # a kill never truncates it
