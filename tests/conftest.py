"""Shared fixtures: one tiny synthetic data set (and trained model) per test session."""
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.training import onednn  # noqa: E402

onednn.prefer_onednn()  # the kernels the stages run (`python -m pipeline` asks for them too)

from pipeline.inputs import records  # noqa: E402
from pipeline.training.fit import run_training  # noqa: E402
from support import tiny  # noqa: E402

# `make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`). Most fixtures are per
# module, so each file goes to one worker whole; the files that share the tiny export (about a
# minute to build) go together, so that it is built once.
SHARED_EXPORT_GROUP = "tiny_exported"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items):
    def file_of(item):
        return item.nodeid.split("::")[0]

    exporting = {file_of(item) for item in items if "tiny_exported" in getattr(item, "fixturenames", ())}
    for item in items:
        group = SHARED_EXPORT_GROUP if file_of(item) in exporting else file_of(item)
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def tiny_config(tiny_root):
    """The tiny config with its synthetic data set built (once per session)."""
    config = tiny(tiny_root)
    records.build_all(config)
    return config


@pytest.fixture(scope="session")
def tiny_trained(tiny_config):
    """The tiny config after a short training run; returns (config, model_path)."""
    return tiny_config, run_training(tiny_config, verbose=0)


@pytest.fixture(scope="session")
def tiny_exported(tiny_trained):
    """(config, export folder, parity report) after one export of the tiny model (about a minute on 2
    cores); shared by the deploy tests (export, ONNX, detector)."""
    from pipeline.deploy import export

    config, _ = tiny_trained
    out, report = export.run_export(config, progress=lambda line: None)
    return config, out, report
