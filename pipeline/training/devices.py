"""Device choices: distribution strategy, precision and XLA, resolved from the config.

`auto` answers come from measurements on the project's machines (see README, Performance):
on the 2-core CPU the default oneDNN path beat XLA and float32 beat bfloat16 for this model (on an
Intel Xeon with AMX too: mixed_bfloat16 steps 1.31x slower; docs/performance.md);
on a GPU, XLA and mixed_float16 are the usual wins.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from data.errors import UserError

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


def split_cpu(count: int = 2) -> bool:
    """Two logical CPU devices, so MirroredStrategy can be exercised without a GPU.

    Must run before TensorFlow initialises its devices (before the first op); returns whether the
    CPU now has `count` logical devices (False when TensorFlow was already initialised unsplit).
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        pass  # already initialised (e.g. an earlier stage in this process); use what exists
    return len(tf.config.list_logical_devices("CPU")) >= count


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        if has_gpu():
            return tf.distribute.MirroredStrategy()
        if not split_cpu(2):
            print("train: strategy mirrored: TensorFlow was initialised before the CPU could be split "
                  "into 2 logical devices; mirroring over 1 device (run the train stage in its own process "
                  "for 2 replicas)")
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("strategy multi_worker needs TF_CONFIG (cluster and task) in the environment")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as err:
            raise UserError(f"TF_CONFIG is not valid JSON: {err}") from None
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:  # collectives can only be set up before TensorFlow initialises
            raise UserError(f"strategy multi_worker must be created before TensorFlow starts: run the "
                            f"train stage in its own process ({err})") from None
    return tf.distribute.get_strategy()


def _task(strategy) -> tuple[str, int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type is not None:
        return resolver.task_type, int(resolver.task_id or 0)
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    return task.get("type", "worker"), int(task.get("index", 0))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The task that writes the run folder: the "chief" task, else worker 0 (TF_CONFIG's rule)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, index = _task(strategy)
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in cluster


def worker_folder(strategy: tf.distribute.Strategy) -> str:
    """Scratch sub-folder of a non-chief task, e.g. "worker-1"."""
    task_type, index = _task(strategy)
    return f"{task_type}-{index}"
