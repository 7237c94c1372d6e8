"""GPU readiness check where TensorFlow is not installed: the network and losses on Keras' JAX backend.

    KERAS_BACKEND=jax python -m pipeline.bench.jax_gpu --inputs DIR --out DIR [--quick] [--budget-s S]

DIR comes from pipeline.bench.gpu_inputs (run with TensorFlow). Prints and writes gpu_check.json,
rewritten after every measurement (a run cut short keeps what it measured), in this order:
  parity     the trained net's outputs and loss on the reference batch against TensorFlow's
             (max abs difference per task; float32 arithmetic: matmul precision "highest")
  training   PortableMultiTask.fit (fixed equal weights, the reference curve's optimizer and
             rate) on the packed training batches in order: ms/step and images/s with XLA on
             (jit_compile) and off (op by op), float32 / mixed_float16 / mixed_bfloat16, at the
             config's batch and at a larger one. Each run at the config's batch also gives its loss
             curve, compared step for step with TensorFlow's on the CPU (the reference): the
             largest relative difference, held to CURVE_TOLERANCE for float32 arithmetic and
             MIXED_CURVE_TOLERANCE for the mixed policies and XLA's default matmul precision (TF32
             on recent GPUs).
  inference  images/s of the jitted forward pass at batch 1, 16 and 64 per policy
--budget-s skips what would start after that many seconds (recorded as skipped), so the check fits
a lent machine's minutes. The TensorFlow trainer (learned task weights, tf.distribute) needs
TensorFlow on the GPU machine.
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
from models.portable_trainer import PortableMultiTask, fit_in_order  # noqa: E402
from pipeline.bench.gpu_reference import (CURVE_TOLERANCE, MIXED_CURVE_TOLERANCE, curve_comparison, curve_optimizer,  # noqa: E402
                                          unflatten, unpack_batches)  # noqa: E402
from pipeline.config import load_config  # noqa: E402

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
LARGER_BATCH = 64


@dataclasses.dataclass(frozen=True)
class Run:
    policy: str
    xla: bool = True
    batch: int | None = None  # None: the config's (the reference curve's)
    precision: str | None = None  # jax_default_matmul_precision; None: XLA's default

    @property
    def name(self) -> str:
        return (f"{self.policy} xla {'on' if self.xla else 'off'} batch {self.batch or 'config'}"
                + (f" precision {self.precision}" if self.precision else ""))


# Most wanted first: the curve against the CPU's, the policies at the config's batch, XLA off, a
# larger batch; then mixed_float16 with XLA off.
RUNS = (Run("float32", precision="highest"), Run("float32"), Run("mixed_float16"), Run("mixed_bfloat16"),
        Run("float32", xla=False), *(Run(policy, batch=LARGER_BATCH) for policy in POLICIES),
        Run("mixed_float16", xla=False))


def _net(config, trained, policy: str, size):
    """The trained net rebuilt under a dtype policy at an input size, with its weights and its frozen layers."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        # Built without ImageNet weights (the trained ones follow, so no weights package is needed on
        # this machine), hence without model.freeze_through: the frozen layers are copied below.
        # Unset, model.shared_through falls back to the frozen levels: keep that trunk under soft sharing.
        model_config = dataclasses.replace(config.model, weights=None, freeze_through=None,
                                           shared_through=config.model.shared_through or config.model.freeze_through)
        net = build_model(model_config, tuple(size))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    net.set_weights(trained.get_weights())
    ours, theirs = net._flatten_layers(include_self=False), trained._flatten_layers(include_self=False)
    if [layer.name for layer in ours] != [layer.name for layer in theirs]:
        raise RuntimeError("the rebuilt net's layers differ from the trained net's")
    for layer, source in zip(ours, theirs):
        if not isinstance(layer, keras.Model):  # leaves only: a nested model's flag would set all of its own
            layer.trainable = source.trainable
    return net


def parity(trained, config, reference) -> dict:
    x, y, expected = unflatten(reference, "x/"), unflatten(reference, "y/"), unflatten(reference, "out/")
    with jax.default_matmul_precision("highest"):
        outputs = trained(x, training=False)
        model = PortableMultiTask(trained, config.model, {t: 1.0 for t in config.model.tasks})
        loss = float(model.compute_loss(x, y, outputs))
    result = {task: float(np.max(np.abs(np.asarray(outputs[task]) - expected[task]))) for task in expected}
    result["scale"] = {task: float(np.max(np.abs(expected[task]))) for task in expected}
    result["loss"] = {"jax": loss, "tensorflow": float(reference["loss"])}
    return result


def train_run(run: Run, config, trained, batches, reference, steps: int) -> dict:
    size = run.batch or len(batches[0][0]["image"])
    crop = batches[0][0]["image"].shape[1:3]
    net = _net(config, trained, run.policy, crop)
    if len(net.trainable_weights) != int(reference["curve_trainable_weights"]):
        raise RuntimeError(f"{len(net.trainable_weights)} trainable weights against the CPU curve's "
                           f"{int(reference['curve_trainable_weights'])}: the frozen layers differ")
    model = PortableMultiTask(net, config.model, {t: 1.0 for t in config.model.tasks})
    optimizer = curve_optimizer(float(reference["curve_learning_rate"]))
    if run.policy == "mixed_float16":  # float16 gradients underflow without a loss scale
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, jit_compile=run.xla)
    with jax.default_matmul_precision(run.precision):
        recorder = fit_in_order(model, batches, size, steps)
    # Steps after the first two (compilation, and the first dispatch) give the rate.
    seconds = (recorder.ends[-1] - recorder.ends[1]) / (len(recorder.ends) - 2)
    row = {"run": run.name, **dataclasses.asdict(run), "batch": size, "steps": steps,
           "ms_per_step": 1e3 * seconds, "images_per_s": size / seconds, "losses": recorder.losses}
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):  # a skipped step shows as a halved scale
        row["final_loss_scale"] = float(optimizer.dynamic_scale)
    if run.batch is None:
        exact = run.policy == "float32" and run.precision == "highest"
        row["curve"] = curve_comparison(recorder.losses, reference["curve"],
                                        CURVE_TOLERANCE if exact else MIXED_CURVE_TOLERANCE, len(batches))
    curve = row.get("curve")
    print(f"  training  {run.name:45s} {1e3 * seconds:8.2f} ms/step {size / seconds:7.0f} images/s"
          + (f"  curve vs CPU: max rel {curve['max_relative_difference']:.2e} "
             f"({'within' if curve['within_tolerance'] else 'OUTSIDE'} {curve['tolerance']:g})" if curve else ""),
          flush=True)
    return row


def _timed(run, repeats: int) -> float:
    run()  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def inference_rows(config, trained, image, policy: str, batch_sizes, repeats: int) -> list[dict]:
    rows = []
    net = _net(config, trained, policy, config.data.image_size)
    state = ([v.value for v in net.trainable_variables], [v.value for v in net.non_trainable_variables])
    forward = jax.jit(lambda tv, ntv, x: net.stateless_call(tv, ntv, {"image": x}, training=False)[0])
    for size in batch_sizes:
        x = jax.device_put(np.repeat(image[:1], size, axis=0))
        seconds = _timed(lambda: jax.block_until_ready(forward(*state, x)), repeats)
        rows.append({"policy": policy, "batch": size, "ms": 1e3 * seconds, "images_per_s": size / seconds})
        print(f"  inference {policy:15s} batch {size:3d}: {1e3 * seconds:7.2f} ms  {size / seconds:8.0f} images/s",
              flush=True)
    return rows


def main(argv=None) -> None:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True, type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--quick", action="store_true",
                        help="the config's batch only, few repeats (a CPU smoke run of every code path)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start nothing after this many seconds (what is left is recorded as skipped)")
    args = parser.parse_args(argv)
    config = load_config(args.inputs / "config.yaml")
    trained = keras.saving.load_model(args.inputs / "model.keras", compile=False)
    reference = np.load(args.inputs / "reference.npz")
    batches = unpack_batches(np.load(args.inputs / "batches.npz"))
    curve_steps = len(reference["curve"])
    runs = [run for run in RUNS if run.batch is None] if args.quick else list(RUNS)
    inference_sizes, repeats = ((1, 2), 2) if args.quick else ((1, 16, LARGER_BATCH), 30)

    device = jax.devices()[0]
    report = {"devices": [str(d) for d in jax.devices()], "device_kind": device.device_kind,
              "jax": jax.__version__, "keras": keras.__version__, "python": platform.python_version(),
              "input_size": list(config.data.image_size), "training_input": list(batches[0][0]["image"].shape[1:3]),
              "config_batch": len(batches[0][0]["image"]), "curve_steps": curve_steps,
              "curve_learning_rate": float(reference["curve_learning_rate"]),
              "curve_onednn": bool(reference["curve_onednn"]),
              "reference_curve": [float(v) for v in reference["curve"]],
              "training": [], "inference": [], "skipped": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def save():  # whole or not at all: a time limit may kill the process at any moment
        report["seconds"] = round(time.monotonic() - started, 1)
        partial = args.out / "gpu_check.json.partial"
        partial.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(partial, args.out / "gpu_check.json")

    def in_budget(what: str) -> bool:
        if args.budget_s is None or time.monotonic() - started < args.budget_s:
            return True
        report["skipped"].append(what)
        print(f"  skipped (budget of {args.budget_s:g} s spent): {what}", flush=True)
        return False

    print(f"devices: {report['devices']} ({device.device_kind})  jax {jax.__version__}  keras {keras.__version__}",
          flush=True)
    report["parity"] = parity(trained, config, reference)
    print(f"  parity (max |JAX - TF|): {json.dumps(report['parity'])}", flush=True)
    save()
    for run in runs:
        if in_budget(run.name):
            # XLA off runs op by op (seconds a step on a GPU's launch overhead): a few steps time it.
            steps = curve_steps if run.xla else min(curve_steps, 12)
            steps = steps if run.batch is None else 20
            try:  # one run's failure (out of memory at batch 64, say) must not cost the others
                report["training"].append(train_run(run, config, trained, batches, reference, steps))
            except Exception as err:  # noqa: BLE001
                report["training"].append({"run": run.name, **dataclasses.asdict(run), "error": repr(err)[:500]})
                print(f"  training  {run.name:45s} failed: {err!r}"[:300], flush=True)
        save()
    image = unflatten(reference, "x/")["image"]
    for policy in POLICIES:
        if in_budget(f"inference {policy}"):
            report["inference"] += inference_rows(config, trained, image, policy, inference_sizes, repeats)
        save()
    print(f"wrote {args.out / 'gpu_check.json'} after {report['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
