"""Every path under the run folder `runs/<experiment>/`, written once.

A stage reads what the stage before it wrote here and writes its own sub-folder; nothing else
names these paths.
"""
from __future__ import annotations

import pathlib

MODEL_FILE = "model.keras"  # every trained model (the run's, each baseline's) has this name
CLIP_NAME = "synthetic_clip"  # the labelled clip the data stage renders


def run_dir(config) -> pathlib.Path:
    return config.run_dir


def config_file(config) -> pathlib.Path:
    """The resolved config of the run, written by the data stage."""
    return config.run_dir / "config.yaml"


def data_dir(config) -> pathlib.Path:
    """TFDS records of every source (and the rendered clips)."""
    return config.data_dir


def clips_data_dir(config) -> pathlib.Path:
    return config.data_dir / "clips"


def synthetic_clip(config) -> pathlib.Path:
    """The clip stage's default input."""
    return clips_data_dir(config) / f"{CLIP_NAME}.mp4"


def preview_png(config) -> pathlib.Path:
    return config.run_dir / "preview.png"


def report_html(config) -> pathlib.Path:
    """The run's one-page report (evaluate and report stages)."""
    return config.run_dir / "report.html"


def train_dir(config) -> pathlib.Path:
    return config.run_dir / "train"


def trained_model(config) -> pathlib.Path:
    """The train stage's model, which evaluate, export and clip read by default."""
    return train_dir(config) / MODEL_FILE


def is_run_model(config, model_path) -> bool:
    """True for the train stage's own model of this run (the one the report's baselines section is about)."""
    return pathlib.Path(model_path).resolve() == trained_model(config).resolve()


def eval_dir(config, name: str) -> pathlib.Path:
    """eval/, eval-<split>/ or eval-<model>[-<split>]/ (pipeline/evaluation/evaluate.py names them)."""
    return config.run_dir / name


def baselines_dir(config, quick: bool = False) -> pathlib.Path:
    """baselines/, or baselines-quick/ for the --quick smoke run (it never overwrites the study)."""
    return config.run_dir / ("baselines-quick" if quick else "baselines")


def baselines_summary(config) -> pathlib.Path:
    return baselines_dir(config) / "summary.json"


def ablation_dir(config) -> pathlib.Path:
    return config.run_dir / "ablation"


def export_dir(config) -> pathlib.Path:
    return config.run_dir / "export"


def predict_dir(config) -> pathlib.Path:
    return config.run_dir / "predict"


def clips_dir(config) -> pathlib.Path:
    return config.run_dir / "clips"


def bench_input_json(config) -> pathlib.Path:
    return config.run_dir / "bench_input.json"


def bench_dir(config) -> pathlib.Path:
    """The benchmark's folder: beside the run folders (it measures the machine, not one run)."""
    return pathlib.Path(config.run_root) / "bench"
