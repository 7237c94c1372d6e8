"""Measurement helpers for the bench stage: alternating timing, statistics, the machine, its peak, FLOPs.

Every comparison in the bench runs its candidates in alternation (A, B, A, B, ... with the order
rotated each round), so drift on a shared machine (another job starting, thermal limits) lands on all
candidates alike; figures are medians over every timed call, ratios are ratios of those medians.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.timing import forward_flops, machine, median_p90, timed_ms  # noqa: F401 (forward_flops, machine: re-exported)


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
