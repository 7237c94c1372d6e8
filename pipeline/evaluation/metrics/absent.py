"""How a task with no labels in a split is reported: absent with a reason, never as a metric of zero.

A zero would read as "the model is useless at this task" and would drag Delta_m down; absent says "not
measured here", and consumers (reports, Delta_m) skip it.
"""
from __future__ import annotations


def absent(reason: str) -> dict:
    """The result of a task that could not be measured, e.g. absent("no depth labels in split 'val'")."""
    if not reason:
        raise ValueError(f"An absent task needs a reason. Received: reason={reason!r}")
    return {"absent": True, "reason": str(reason)}


def is_absent(result) -> bool:
    """True for a missing result or one produced by `absent` (evaluators also mark 'no ground truth' so)."""
    return result is None or bool(isinstance(result, dict) and result.get("absent", False))
