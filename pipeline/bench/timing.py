"""Measurement helpers for the bench stage: alternating timing, statistics, the machine, its peak, FLOPs.

Every comparison in the bench runs its candidates in alternation (A, B, A, B, ... with the order
rotated each round), so drift on a shared machine (another job starting, thermal limits) lands on all
candidates alike; figures are medians over every timed call, ratios are ratios of those medians.
"""
from __future__ import annotations

import os
import platform
from typing import Callable

import numpy as np

from pipeline.timing import forward_flops, median_p90, timed_ms  # noqa: F401 (forward_flops: re-exported)


def timed(fn: Callable[[], object], calls: int) -> list[float]:
    """Seconds of each of `calls` calls of fn (fn must block until its work is done)."""
    return [ms / 1000.0 for ms in timed_ms(fn, calls)]


def alternate(runners: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Runs each runner once per round, the order rotated each round; returns name -> all its samples.

    A runner does its own untimed preparation and returns the seconds of its timed calls."""
    names = list(runners)
    samples = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].extend(runners[name]())
    return samples


def stats(seconds: list[float]) -> dict:
    """median / p90 in milliseconds and the number of samples."""
    values = np.asarray(seconds, np.float64) * 1000.0
    return {**median_p90(values), "samples": int(values.size)}


def median(seconds: list[float]) -> float:
    return float(np.median(np.asarray(seconds, np.float64)))


def machine() -> dict:
    """What the numbers were measured on (TF thread pools: 0 = TensorFlow's default, one per core)."""
    import keras
    import tensorflow as tf

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key = line.split(":", 1)[0].strip().lower()
            if key == "model name" and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif key == "flags" and not flags:
                # The vector ISA decides int8 (VNNI) and bfloat16 (AVX512_BF16 / AMX) speed.
                flags = sorted(f for f in line.split(":", 1)[1].split()
                               if f.startswith(("avx", "fma", "amx")) or "vnni" in f or "bf16" in f or f == "f16c")
    except OSError:
        pass
    try:
        from importlib.metadata import version
        litert = version("ai-edge-litert")
    except Exception:  # noqa: BLE001  (not installed: the TFLite rows say so themselves)
        litert = None
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "gpus": gpus, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "ai_edge_litert": litert,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def matmul_runner(size: int, calls: int) -> tuple[Callable[[], list[float]], float]:
    """(runner timing `calls` float32 [size,size] @ [size,size] products through TF, FLOPs per call).

    The product is reduced to a scalar inside the graph so the timing holds no host copy."""
    import tensorflow as tf

    a = tf.random.uniform([size, size], dtype=tf.float32)
    b = tf.random.uniform([size, size], dtype=tf.float32)
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    for _ in range(2):
        float(product())
    return (lambda: timed(lambda: float(product()), calls)), 2.0 * size ** 3
