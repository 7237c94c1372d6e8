"""The classes of a config and of a trained model (data/classes.py ClassSet: names and colours).

A config's classes are its `model.classes`. A trained model's are the ones its train stage saved beside
it (train/config.yaml): evaluate, export, clip and predict describe a model with the classes it was
trained with, whatever the current config lists, and evaluate and export refuse a config whose classes
differ (its data set is labelled in the config's classes). Imports no TensorFlow.
"""
from __future__ import annotations

import pathlib

import yaml

from data import classes as class_sets
from data.classes import ClassSet
from data.errors import UserError
from data.mapping import SourceLabels
from pipeline.config import Config, SourceConfig

LABELLED_TASKS = ("detection", "segmentation")  # the tasks that have classes


def of_config(config: Config) -> ClassSet:
    return class_sets.from_dict({task: [{"name": c.name, "colour": c.colour}
                                        for c in getattr(config.model.classes, task)]
                                 for task in LABELLED_TASKS})


def source_labels(config: Config, source: SourceConfig) -> SourceLabels:
    """The source's label tables (the config's label_map, else built-in) onto the config's classes."""
    return SourceLabels.build(source.name, of_config(config), source.label_map)


def saved_beside(model_path) -> ClassSet | None:
    """The classes of the training config saved beside a model file (train/config.yaml), or None when
    there is none. A config saved before classes were configurable means the default classes."""
    path = pathlib.Path(model_path).parent / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text())
        return class_sets.from_dict(saved["model"].get("classes"))
    except (OSError, KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError):
        return None


def of_model(model_path, config: Config) -> ClassSet:
    """A trained model's classes: its run's saved config, else (a model file on its own) the config's."""
    return saved_beside(model_path) or of_config(config)


def check_net(net, classes: ClassSet, path) -> None:
    """UserError unless the net's heads have one channel per class (detection: C + 4 box channels)."""
    outputs = net.output if isinstance(net.output, dict) else dict(zip(net.output_names, net.outputs))
    extra = {"detection": 4, "segmentation": 0}
    for task in LABELLED_TASKS:
        if task in outputs:
            channels = int(outputs[task].shape[-1]) - extra[task]
            if channels != len(classes.names(task)):
                raise UserError(f"model {path} predicts {channels} {task} classes but its classes are "
                                f"{len(classes.names(task))} ({', '.join(classes.names(task))}): give the "
                                f"config it was trained with (model.classes)")


def check_config(classes: ClassSet, config: Config, path, tasks, doing: str) -> None:
    """UserError when the config's classes are not the model's for one of `tasks` (names, in order)."""
    mine = of_config(config)
    for task in LABELLED_TASKS:
        if task in tasks and classes.names(task) != mine.names(task):
            raise UserError(f"model {path} was trained with {task} classes [{', '.join(classes.names(task))}] "
                            f"but model.classes.{task} is [{', '.join(mine.names(task))}]: {doing} with the "
                            f"config it was trained with")
