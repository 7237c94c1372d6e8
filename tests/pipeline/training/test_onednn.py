"""The stages ask TensorFlow for its oneDNN kernels on every x86 CPU, a user's own choice wins, and
asking after TensorFlow has loaded is an error (TensorFlow reads the choice once, when it loads)."""
import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

from pipeline.training import onednn

ROOT = str(pathlib.Path(onednn.__file__).resolve().parents[2])

# A fresh process: what prefer_onednn() says, what the environment holds and what TensorFlow runs.
PROBE = f"""
import json, os, sys
sys.path.insert(0, {ROOT!r})
from pipeline.training import onednn
asked = onednn.prefer_onednn()
import tensorflow
print(json.dumps({{"asked": asked, "env": os.environ[onednn.ENV], "enabled": onednn.enabled()}}))
"""


def probe(value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != onednn.ENV}
    if value is not None:
        env[onednn.ENV] = value
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="TensorFlow's oneDNN build is x86")
def test_on_by_default_on_any_x86_cpu():
    # Without the setting, TensorFlow would run its Eigen kernels on CPUs without AVX-512 VNNI/BF16,
    # AVX-VNNI or AMX (the project's AMD EPYC among them).
    assert probe(None) == {"asked": True, "env": "1", "enabled": True}


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="TensorFlow's oneDNN build is x86")
def test_every_stage_asks_for_it():
    # `python -m pipeline` with the setting unset: a config mistake ends the stage (exit 2) after the
    # process-wide settings and before any stage work; TensorFlow loaded afterwards runs oneDNN.
    script = f"""
import json, os, sys
sys.path.insert(0, {ROOT!r})
from pipeline.__main__ import main
from pipeline.training import onednn
code = main(["evaluate", "--config", {ROOT + '/configs/default.yaml'!r}, "train.no_such_key=1"])
import tensorflow
print(json.dumps({{"code": code, "env": os.environ.get(onednn.ENV), "enabled": onednn.enabled()}}))
"""
    env = {k: v for k, v in os.environ.items() if k != onednn.ENV}
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"code": 2, "env": "1", "enabled": True}


def test_the_users_choice_wins():
    assert probe("0") == {"asked": False, "env": "0", "enabled": False}


def test_asking_after_tensorflow_loaded_is_an_error():
    import tensorflow  # noqa: F401  (the test process has it loaded already; made explicit)

    with pytest.raises(RuntimeError, match="before TensorFlow is imported"):
        onednn.prefer_onednn()
