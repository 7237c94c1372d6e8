"""The train stage under tf.distribute on a CPU-only machine: MirroredStrategy over two logical CPU
devices, and MultiWorkerMirroredStrategy over two local processes on loopback ports.

Each run is a fresh interpreter: logical devices and collective ops can only be configured before
TensorFlow initialises. Replicas must end with identical weights, BatchNorm statistics included.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from pipeline import trained
from support import REPO

# Trains the tiny config with train.strategy=mirrored and reports, right after fit (before the
# stage reloads its best checkpoint into every replica), whether each variable's per-replica
# copies (MirroredVariable.values) are identical.
MIRRORED = r"""
import json, pathlib, sys
import numpy as np
from models import multitask
from pipeline.config import load_config
from pipeline.training.fit import run_training

TRAINERS = []

class Recording(multitask.MultiTaskTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        TRAINERS.append(self)

    def fit(self, *args, **kwargs):
        history = super().fit(*args, **kwargs)
        strategy = self.distribute_strategy
        checked, unequal, unmirrored = 0, [], []
        for variable in list(self.variables) + list(self.optimizer.variables):
            copies = getattr(variable.value, "values", None)
            if copies is None or len(copies) < 2:
                unmirrored.append(variable.path)
                continue
            arrays = [np.asarray(copy.numpy()) for copy in copies]
            checked += 1
            if not all(np.array_equal(arrays[0], other) for other in arrays[1:]):
                unequal.append(variable.path)
        self.verdict = {"replicas": strategy.num_replicas_in_sync,
                        "devices": list(strategy.extended.worker_devices),
                        "checked": checked, "unequal": unequal, "unmirrored": unmirrored}
        return history

multitask.MultiTaskTrainer = Recording  # run_training looks the class up at call time
config = load_config("configs/tiny.yaml", sys.argv[2:])
run_training(config, pathlib.Path(sys.argv[1]), verbose=0)
print("VERDICT " + json.dumps(TRAINERS[-1].verdict))
"""


def _env(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


# The default's late thaw (train.thaw_through) on the pretrained encoder: the second epoch retraces
# the train step with blocks 1-4 trainable inside the strategy, and the replicas must still agree.
THAW = ["model.backbone=efficientnet_lite0", "model.weights=imagenet", "model.freeze_through=P3",
        "train.thaw_through=P1", "train.thaw_at=0.5"]


@pytest.mark.slow  # 40-110 s on the shared 2-core machine: tracing for two replicas
@pytest.mark.parametrize("overrides", [[], THAW], ids=["builtin", "thawed_lite0"])
def test_mirrored_strategy_over_two_cpu_devices_keeps_replicas_identical(tiny_config, tmp_path, overrides):
    out = tmp_path / "train"
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(out), f"run_root={tiny_config.run_root}",
         "train.strategy=mirrored", "train.epochs=2", "train.conflict_every=2", *overrides],  # the conflict log's tf.cond too
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("blocks above P1 (34 layers) train from epoch 2 on" in result.stdout) == bool(overrides)
    verdict = json.loads(result.stdout.split("VERDICT ", 1)[1].splitlines()[0])
    assert verdict["replicas"] == 2 and len(verdict["devices"]) == 2, verdict
    assert not verdict["unmirrored"], verdict["unmirrored"]
    assert verdict["checked"] > 100
    assert not verdict["unequal"], f"replicas diverged: {verdict['unequal']}"
    speed = json.loads((out / "speed.json").read_text())
    assert speed["replicas"] == 2 and speed["batch_size"] == 2 * tiny_config.train.batch_size
    assert (out / "model.keras").is_file()
    assert "ran out of data" not in result.stderr  # validation steps fit the split


def _free_ports(count):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
# The pretrained encoder's first epoch takes most of a minute (tracing for two workers): two minutes
# hold epochs after the thaw, so both workers thaw at the same epoch and train on after it.
@pytest.mark.parametrize("overrides", [[], THAW + ["train.minutes=2"]], ids=["builtin", "thawed_lite0"])
def test_multi_worker_strategy_over_two_local_processes(tiny_config, tmp_path, overrides):
    out = tmp_path / "train"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs, logs = [], []
    try:
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            logs.append((tmp_path / f"worker{index}.log").open("w"))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pipeline", "train", "--config", "configs/tiny.yaml",
                 f"run_root={tiny_config.run_root}", "train.strategy=multi_worker", "train.conflict_every=2",
                 # a time budget: each worker times its own epochs, both must plan the same ones
                 "train.minutes=1", *overrides, "--out", str(out)],
                cwd=REPO, env=_env(TF_CONFIG=json.dumps(tf_config)), stdout=logs[-1],
                stderr=subprocess.STDOUT))
        codes = [proc.wait(timeout=500) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for log in logs:
            log.close()
    tails = [(tmp_path / f"worker{i}.log").read_text()[-2000:] for i in range(2)]
    assert codes == [0, 0], tails
    thawed = ["blocks above P1 (34 layers) train from epoch" in (tmp_path / f"worker{i}.log").read_text()
              for i in range(2)]
    assert thawed == [bool(overrides)] * 2, tails

    scratch = out.with_name(f".{out.name}.worker-1")  # a non-chief worker's own folder, beside the run's
    chief, worker = out / "model.keras", scratch / "model.keras"
    assert chief.is_file() and worker.is_file()
    plans = []
    for folder in (out, scratch):
        speed = json.loads((folder / "speed.json").read_text())
        assert speed["replicas"] == 2 and speed["batch_size"] == 2 * tiny_config.train.batch_size
        plans.append(json.loads((folder / "budget.json").read_text()))
        assert (speed["epochs"], speed["steps"]) == (plans[-1]["epochs"], plans[-1]["steps"])
    # The same steps (a partial last epoch stops both workers at the same step: no collective left waiting).
    assert plans[0]["steps"] == plans[1]["steps"] and plans[0]["epoch_seconds"] == plans[1]["epoch_seconds"]
    chief_weights = trained.load(chief).get_weights()
    worker_weights = trained.load(worker).get_weights()
    assert len(chief_weights) == len(worker_weights) > 100
    unequal = [i for i, (a, b) in enumerate(zip(chief_weights, worker_weights)) if not np.array_equal(a, b)]
    assert not unequal, f"{len(unequal)} arrays differ between the chief and the worker"
