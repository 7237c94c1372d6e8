"""Latency: timing repeated calls and summarising them in percentiles, written once for every stage
(evaluate's inference speed, export's parity latency, the clip loop's summary, the benchmark), and
the FLOPs of one forward pass (the benchmark and the baselines' cost ratios)."""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np

from pipeline.training import onednn


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


def forward_flops(net, image_size, batch: int = 1) -> dict:
    """FLOPs of one forward pass: TF's profiler (float_operation) on the frozen graph of
    tf.function(net).get_concrete_function(spec), plus DepthwiseConv2dNative counted from its shapes
    (the profiler has no FLOPs statistic for it). Element-wise ops (BN, activations) are left out."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    height, width = image_size
    spec = tf.TensorSpec([batch, height, width, 3], tf.float32)
    concrete = tf.function(lambda x: net({"image": x}, training=False)).get_concrete_function(spec)
    graph_def = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                            options=options)
    by_op = {child.name: int(child.total_float_ops) for child in profile.children}
    depthwise = 0
    for op in graph.get_operations():
        if op.type == "DepthwiseConv2dNative":
            kernel = op.inputs[1].shape  # [kh, kw, in, multiplier]
            depthwise += 2 * int(np.prod(op.outputs[0].shape)) * int(kernel[0]) * int(kernel[1])
    if depthwise:
        by_op["DepthwiseConv2dNative"] = depthwise
    total = sum(by_op.values())
    return {"flops": total // batch, "by_op": {k: v // batch for k, v in by_op.items()},
            "method": "tf.compat.v1.profiler float_operation on the frozen forward graph (Conv2D, MatMul) "
                      "+ DepthwiseConv2dNative from its shapes (2 x output elements x kh x kw); "
                      "element-wise ops not counted"}


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
            "onednn": onednn.enabled(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}
