"""The GPU check's reference (pipeline/bench/gpu_inputs.py packs it, jax_gpu.py measures against it):
its arrays (nested dicts flattened to "prefix/key") and how a run's loss curve is held to the CPU's.
NumPy and Keras only, since the GPU machine has no TensorFlow."""
from __future__ import annotations

import keras
import numpy as np

# Set on the CPU before any GPU run (docs/performance.md, section 8): on the default net JAX's float32
# curve (20 steps of curve_optimizer) stayed within 4.3e-4 of TensorFlow's; the loss falls by a third
# over those steps, so a wrong gradient or update cannot hide under 1 %. Mixed precision rounds at
# 1e-3 (bfloat16: 4e-3) from the first step: a looser bound, not measured on the CPU.
CURVE_TOLERANCE = 1e-2
MIXED_CURVE_TOLERANCE = 5e-2


def flat(prefix: str, tree: dict) -> dict:
    return {f"{prefix}{key}": np.asarray(value) for key, value in tree.items()}


def unflatten(npz, prefix: str) -> dict:
    return {key[len(prefix):]: npz[key] for key in npz.files if key.startswith(prefix)}


def unpack_batches(npz) -> list[tuple[dict, dict]]:
    """The packed training batches as (x, y) with float32 images, exactly as both frameworks train on them."""
    count = len({key.split("/")[0] for key in npz.files})
    return [({k: v.astype(np.float32) for k, v in unflatten(npz, f"{i}/x/").items()}, unflatten(npz, f"{i}/y/"))
            for i in range(count)]


def curve_comparison(losses, reference, tolerance: float, cycle: int) -> dict:
    """The run's per-step losses against the CPU's over the steps both have."""
    steps = min(len(losses), len(reference))
    ours, theirs = np.asarray(losses[:steps]), np.asarray(reference[:steps])
    relative = np.abs(ours - theirs) / np.abs(theirs)
    # How far training moved the loss: the last pass over the packed batches against the first.
    moved = float(theirs[-cycle:].mean() / theirs[:cycle].mean()) if steps >= 2 * cycle else None
    return {"steps": steps, "max_relative_difference": float(relative.max()),
            "step_of_max": int(relative.argmax()), "tolerance": tolerance,
            "within_tolerance": bool(relative.max() <= tolerance), "reference_last_over_first_pass": moved}


def curve_optimizer(learning_rate: float):
    """What the curves train with, on both machines: SGD with momentum, whose step is proportional to
    the gradient. Adam scales every gradient to a step of about the learning rate, rounding noise
    too: the offsets of BatchNorms that a later BatchNorm cancels have a true gradient of 0 and a
    float32 one of noise, so two correct implementations part within a few Adam steps (measured:
    docs/performance.md, section 8)."""
    return keras.optimizers.SGD(learning_rate, momentum=0.9)
