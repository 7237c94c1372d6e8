"""The GPU readiness check's JAX path, run on the CPU: the network and losses are backend-agnostic."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from models.portable_trainer import PortableMultiTask
from models.trainer import MultiTaskTrainer
from pipeline import trained
from pipeline.bench.gpu_inputs import pack
from pipeline.inputs.dataset import make_dataset


@pytest.mark.slow  # ~65 s of JAX compiles; `make test-all` (and the GPU check itself) runs it
def test_jax_backend_reproduces_tensorflow_and_trains(tiny_trained, tmp_path):
    config, model_path = tiny_trained
    pack(config, tmp_path / "inputs", batches=2)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "pipeline.bench.jax_gpu", "--inputs", str(tmp_path / "inputs"),
                             "--out", str(tmp_path / "out"), "--quick"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert "cpu" in report["devices"][0].lower()
    parity = report["parity"]
    for task in config.model.tasks:
        assert parity[task] <= 1e-4 * max(1.0, parity["scale"][task]), (task, parity)
    assert abs(parity["loss"]["jax"] - parity["loss"]["tensorflow"]) <= 1e-4 * abs(parity["loss"]["tensorflow"])
    assert {(row["policy"], row["batch"]) for row in report["inference"]} == {
        (policy, batch) for policy in ("float32", "mixed_bfloat16") for batch in (1, 2)}
    for row in report["training"]:
        assert row["last_loss"] < row["first_loss"], row  # one batch, eight AdamW steps at 1e-3


def test_portable_loss_equals_tensorflow_trainer_with_fixed_weights(tiny_trained):
    config, model_path = tiny_trained
    net = trained.load(model_path)
    weights = {"detection": 2.0, "segmentation": 0.5, "depth": 1.5}
    x, y = next(iter(make_dataset(config, "train", training=True)))
    y = {**y, "has_depth": np.array([True, False, True, False])}  # partial labels
    outputs = net(x, training=False)
    portable = float(PortableMultiTask(net, config.model, weights).compute_loss(x, y, outputs))
    train_config = dataclasses.replace(config.train, weighting="fixed", fixed_weights=weights)
    total, _, _ = MultiTaskTrainer(net, config.model, train_config).compute_losses(y, outputs)
    np.testing.assert_allclose(portable, float(total), rtol=1e-6)
