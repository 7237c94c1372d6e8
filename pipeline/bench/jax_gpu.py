"""GPU readiness check where TensorFlow is not installed: the network and losses on Keras' JAX backend.

    KERAS_BACKEND=jax python -m pipeline.bench.jax_gpu --inputs DIR --out DIR [--quick]

DIR comes from pipeline.bench.gpu_inputs (run with TensorFlow). Everything JAX runs is XLA-compiled.
Prints and writes gpu_check.json:
  parity     the trained net's outputs and loss on the reference batch against TensorFlow's
             (max abs difference per task; float32)
  inference  images/s of the jitted forward pass at batch 1, 16 and 64, float32 and mixed_bfloat16
  training   steps/s and images/s of PortableMultiTask.fit (fixed equal weights, AdamW,
             jit_compile) at batch 16 and 64, float32 and mixed_bfloat16; loss at the first and the
             last step on the real training batches
The TensorFlow trainer (learned task weights, tf.distribute) needs TensorFlow on the GPU machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import time

import numpy as np

if os.environ.get("KERAS_BACKEND") != "jax":
    raise SystemExit("run with KERAS_BACKEND=jax (this check is for machines without TensorFlow)")

import jax  # noqa: E402
import keras  # noqa: E402

import models  # noqa: E402,F401  (registers the custom layers)
from models.multitask import build_model  # noqa: E402
from models.portable_trainer import PortableMultiTask  # noqa: E402
from pipeline.config import load_config  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16")


def _unflatten(npz, prefix: str) -> dict:
    return {key[len(prefix):]: npz[key] for key in npz.files if key.startswith(prefix)}


def _batches(path: pathlib.Path) -> list[tuple[dict, dict]]:
    npz = np.load(path)
    count = len({key.split("/")[0] for key in npz.files})
    return [({k: v.astype(np.float32) for k, v in _unflatten(npz, f"{i}/x/").items()},
             _unflatten(npz, f"{i}/y/")) for i in range(count)]


def _tile(batches, size: int, steps: int):
    """steps * size examples cycled from the packed batches: x, y as stacked arrays."""
    xs = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    ys = {k: np.concatenate([b[1][k] for b in batches]) for k in batches[0][1]}
    index = np.arange(steps * size) % len(next(iter(xs.values())))
    return {k: v[index] for k, v in xs.items()}, {k: v[index] for k, v in ys.items()}


def _net(config, weights, policy: str):
    keras.mixed_precision.set_global_policy(policy)
    try:
        # The trained weights follow, so no ImageNet weights package is needed on this machine.
        model_config = dataclasses.replace(config.model, weights=None)
        net = build_model(model_config, tuple(config.data.image_size))
        net.set_weights(weights)
        return net
    finally:
        keras.mixed_precision.set_global_policy("float32")


def parity(trained, config, reference) -> dict:
    x, y, expected = _unflatten(reference, "x/"), _unflatten(reference, "y/"), _unflatten(reference, "out/")
    outputs = trained(x, training=False)
    model = PortableMultiTask(trained, config.model, {t: 1.0 for t in config.model.tasks})
    loss = float(model.compute_loss(x, y, outputs))
    result = {task: float(np.max(np.abs(np.asarray(outputs[task]) - expected[task]))) for task in expected}
    result["scale"] = {task: float(np.max(np.abs(expected[task]))) for task in expected}
    result["loss"] = {"jax": loss, "tensorflow": float(reference["loss"])}
    return result


def _timed(run, repeats: int) -> float:
    run()  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def inference(config, weights, image, batch_sizes, repeats: int) -> list[dict]:
    rows = []
    for policy in POLICIES:
        net = _net(config, weights, policy)
        state = ([v.value for v in net.trainable_variables], [v.value for v in net.non_trainable_variables])
        forward = jax.jit(lambda tv, ntv, x: net.stateless_call(tv, ntv, {"image": x}, training=False)[0])
        for size in batch_sizes:
            x = jax.device_put(np.repeat(image[:1], size, axis=0))
            seconds = _timed(lambda: jax.block_until_ready(forward(*state, x)), repeats)
            rows.append({"policy": policy, "batch": size, "ms": 1e3 * seconds, "images_per_s": size / seconds})
            print(f"  inference {policy:15s} batch {size:3d}: {1e3 * seconds:7.2f} ms  {size / seconds:8.0f} images/s")
    return rows


class _StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends, self.losses = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
        self.losses.append(float(logs["loss"]))


def training(config, weights, batches, batch_sizes, steps: int, learning_rate: float) -> list[dict]:
    rows = []
    for policy in POLICIES:
        for size in batch_sizes:
            net = _net(config, weights, policy)
            model = PortableMultiTask(net, config.model, {t: 1.0 for t in config.model.tasks})
            model.compile(optimizer=keras.optimizers.AdamW(learning_rate), jit_compile=True)
            x, y = _tile(batches, size, steps)
            timer = _StepTimer()
            model.fit(x, y, batch_size=size, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            # Steps after the first two (compilation, and the first dispatch) give the rate.
            seconds = (timer.ends[-1] - timer.ends[1]) / (len(timer.ends) - 2)
            row = {"policy": policy, "batch": size, "ms_per_step": 1e3 * seconds,
                   "images_per_s": size / seconds, "first_loss": timer.losses[0], "last_loss": timer.losses[-1]}
            rows.append(row)
            print(f"  training  {policy:15s} batch {size:3d}: {1e3 * seconds:7.2f} ms/step {size / seconds:8.0f} "
                  f"images/s  loss {timer.losses[0]:.3f} -> {timer.losses[-1]:.3f}")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True, type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--quick", action="store_true", help="small batches and few steps (a CPU smoke run)")
    parser.add_argument("--sizes", default="1,16,64", help="batch sizes, comma-separated (training skips 1)")
    args = parser.parse_args(argv)
    config = load_config(args.inputs / "config.yaml")
    trained = keras.saving.load_model(args.inputs / "model.keras", compile=False)
    weights = trained.get_weights()
    reference = np.load(args.inputs / "reference.npz")
    batches = _batches(args.inputs / "batches.npz")
    if args.quick:  # one batch over and over at a high rate: its loss must fall
        sizes, steps, repeats, learning_rate, batches = (1, 2), 8, 2, 1e-3, batches[:1]
    else:
        sizes = tuple(int(size) for size in args.sizes.split(","))
        steps, repeats, learning_rate = 40, 30, 1e-4
    report = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__, "keras": keras.__version__,
              "python": platform.python_version(), "input_size": list(config.data.image_size)}
    print(f"devices: {report['devices']}  jax {jax.__version__}  keras {keras.__version__}")
    report["parity"] = parity(trained, config, reference)
    print(f"  parity (max |JAX - TF|): {json.dumps(report['parity'])}")
    report["inference"] = inference(config, weights, _unflatten(reference, "x/")["image"], sizes, repeats)
    report["training"] = training(config, weights, batches, [s for s in sizes if s > 1], steps,
                                  learning_rate)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
