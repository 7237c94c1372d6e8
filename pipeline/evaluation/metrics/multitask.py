"""Multi-task gain Delta_m (Maninis et al. 2019; Vandenhende et al. 2021): is one shared model better
than one model per task?

  Delta_m = (1/T) sum_t (1/M_t) sum_m (-1)^{l_m} (M_{m,t} - M_{s,t}) / M_{s,t} * 100

M = multi-task, S = single-task baseline, l_m = 1 when lower is better. Positive = the multi-task model
is better on average. A task whose own mean is negative suffers negative transfer.

`lower_is_better` is {task: {metric: bool}}: it says both which metrics count and in which direction,
so STANDARD_METRICS below is the usual argument. Tasks absent (see absent.py) or missing from either
result are skipped, so a split without depth labels still gets a Delta_m over the other tasks.
"""
from __future__ import annotations

import math

from pipeline.evaluation.metrics.absent import is_absent

# The usual choice per task: detection AP (higher), segmentation mIoU (higher), depth errors (lower).
STANDARD_METRICS = {
    "detection": {"mAP50": False, "mAP": False},
    "segmentation": {"mIoU": False},
    "depth": {"abs_rel": True, "rmse": True},
}


def _value(results: dict, task: str, metric: str, which: str) -> float:
    value = results[task].get(metric)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{which} result for task '{task}' has no finite '{metric}'. Received: {value!r}")
    return number


def relative_differences(multi: dict, single: dict, lower_is_better: dict = STANDARD_METRICS) -> dict:
    """{task: {metric: signed % change of multi vs single}}, sign flipped for lower-is-better metrics,
    so that positive always means the multi-task model is better."""
    differences = {}
    for task, metrics in lower_is_better.items():
        if is_absent(multi.get(task)) or is_absent(single.get(task)):
            continue
        differences[task] = {}
        for metric, lower in metrics.items():
            m, s = _value(multi, task, metric, "multi"), _value(single, task, metric, "single")
            if s == 0:
                raise ValueError(f"Single-task '{task}' {metric} is 0: the relative difference is undefined.")
            differences[task][metric] = (-1.0 if lower else 1.0) * (m - s) / s * 100.0
    return differences


def task_gains(multi: dict, single: dict, lower_is_better: dict = STANDARD_METRICS) -> dict:
    """{task: mean relative difference (%) over that task's metrics}."""
    return {task: sum(d.values()) / len(d)
            for task, d in relative_differences(multi, single, lower_is_better).items() if d}


def delta_m(multi: dict, single: dict, lower_is_better: dict = STANDARD_METRICS) -> float:
    """Delta_m in percent over the tasks measured in both results."""
    gains = task_gains(multi, single, lower_is_better)
    if not gains:
        raise ValueError(f"No task can be compared: need a task of {sorted(lower_is_better)} present in both "
                         f"results. Received: multi={sorted(multi)}, single={sorted(single)}")
    return sum(gains.values()) / len(gains)


def negative_transfer(multi: dict, single: dict, lower_is_better: dict = STANDARD_METRICS) -> list:
    """Tasks whose mean relative difference is below 0: sharing made them worse."""
    return [task for task, gain in task_gains(multi, single, lower_is_better).items() if gain < 0]
