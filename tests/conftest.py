"""Shared fixtures: one tiny synthetic data set (and trained model) per test session."""
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("runs")


def tiny(root: pathlib.Path, *overrides: str):
    from pipeline.config import load_config
    return load_config(REPO / "configs" / "tiny.yaml", [f"run_root={root}", *overrides])


@pytest.fixture(scope="session")
def tiny_config(tiny_root):
    """The tiny config with its synthetic data set built (once per session)."""
    from pipeline import prepare
    config = tiny(tiny_root)
    prepare.main(config)
    return config


@pytest.fixture(scope="session")
def tiny_trained(tiny_config):
    """The tiny config after a short training run; returns (config, model_path)."""
    from pipeline.train import run_training
    return tiny_config, run_training(tiny_config, verbose=0)
