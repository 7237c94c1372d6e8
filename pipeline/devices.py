"""Device choices: distribution strategy, precision and XLA, resolved from the config.

`auto` answers come from measurements on the project's machines (see README, Performance):
on the 2-core CPU the default oneDNN path beat XLA and float32 beat bfloat16 for this model;
on a GPU, XLA and mixed_float16 are the usual wins.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

# Measured on the project's 2-core CPU (README, Performance): XLA off is faster for this model.
CPU_JIT_DEFAULT = False


def has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    return "mixed_float16" if has_gpu() else "float32"


def resolve_jit(jit_compile) -> bool:
    value = str(jit_compile).lower()
    if value == "auto":
        return True if has_gpu() else CPU_JIT_DEFAULT
    return value == "true"


def split_cpu(count: int = 2) -> None:
    """Two logical CPU devices, so MirroredStrategy can be exercised without a GPU."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        pass  # already initialised (e.g. an earlier stage in this process); use what exists


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        if has_gpu():
            return tf.distribute.MirroredStrategy()
        split_cpu(2)
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            from pipeline.errors import UserError
            raise UserError("strategy multi_worker needs TF_CONFIG (cluster and task) in the environment")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def task_index() -> int:
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    return int(config.get("task", {}).get("index", 0))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return task_index() == 0
    return True
