"""Latency: timing repeated calls and summarising them in percentiles, written once for every stage
(evaluate's inference speed, export's parity latency, the clip loop's summary, the benchmark)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def timed_ms(fn: Callable[[], object], runs: int, warmup: int = 0) -> list[float]:
    """Milliseconds of each of `runs` calls of fn(), after `warmup` untimed calls (tracing and
    first-call allocations are not latency). fn must wait for its result, not just dispatch it."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def median_p90(times_ms) -> dict:
    """{"median_ms", "p90_ms"} of a list of milliseconds."""
    return {"median_ms": float(np.median(times_ms)), "p90_ms": float(np.percentile(times_ms, 90))}


def percentiles(values, digits: int = 3) -> dict:
    """p50, p90, p99 and mean, rounded; all None for no values."""
    if not len(values):
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    values = np.asarray(values, np.float64)
    return {"p50": round(float(np.percentile(values, 50)), digits),
            "p90": round(float(np.percentile(values, 90)), digits),
            "p99": round(float(np.percentile(values, 99)), digits), "mean": round(float(values.mean()), digits)}
