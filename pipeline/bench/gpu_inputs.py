"""Packs what the JAX GPU check (pipeline/bench/jax_gpu.py) needs, for a machine without TensorFlow.

    python -m pipeline.bench.gpu_inputs --config configs/default.yaml --out DIR [--batches 4] [--curve-steps 20]
        [--learning-rate 0.01] [OVERRIDES...]

DIR gets model.keras (the run's trained net), config.yaml, batches.npz (training batches from the
real input pipeline, as training sees them: crops of data.train_crop, augmentation and detection
targets included; images stored as float16 to keep the folder small) and reference.npz: four
validation frames (float32, whole frames) with TensorFlow's outputs and loss on it, and the CPU loss
curve: TensorFlow's PortableMultiTask.fit on this CPU (float32 on its Eigen kernels, no XLA) from
the trained weights, over the packed batches in order for --curve-steps steps of
gpu_reference.curve_optimizer at --learning-rate. The JAX run must reproduce the outputs and the
loss, and its training runs are measured against that curve.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil

if __name__ == "__main__":
    # The reference is as close to float32 as TensorFlow gets: its Eigen kernels, not oneDNN's. On an
    # AVX-512 Xeon the default net's step-0 gradients were off from float64's by up to 1.8e-3 with
    # oneDNN and 9.6e-5 without (docs/performance.md, section 8).
    # TensorFlow reads this once, when it loads, so only as a program (reference.npz records it).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

from models.multitask import rebuild_at  # noqa: E402
from models.portable_trainer import PortableMultiTask, fit_in_order  # noqa: E402
from pipeline import layout, trained  # noqa: E402
from pipeline.bench.gpu_reference import curve_optimizer, flat, unpack_batches  # noqa: E402
from pipeline.config import load_config, save_config  # noqa: E402
from pipeline.inputs.dataset import make_dataset, output_size  # noqa: E402
from pipeline.training import onednn  # noqa: E402

# High enough that 20 steps lower the loss on the same four batches visibly (the default's last pass
# over them averages 0.64 of its first: a path wrong gradients could not follow), low enough for the
# trained net to follow it smoothly (docs/performance.md, section 8).
CURVE_LEARNING_RATE = 1e-2
PARITY_FRAMES = 4


def cpu_curve(net, config, batches, steps: int, learning_rate: float) -> np.ndarray:
    """Per-step training losses of TensorFlow's PortableMultiTask.fit on the packed batches."""
    model = PortableMultiTask(net, config.model, {task: 1.0 for task in config.model.tasks})
    model.compile(optimizer=curve_optimizer(learning_rate), jit_compile=False)
    return np.asarray(fit_in_order(model, batches, len(batches[0][0]["image"]), steps).losses, np.float64)


def pack(config, out: pathlib.Path, batches: int, curve_steps: int,
         learning_rate: float = CURVE_LEARNING_RATE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    net = trained.load(layout.trained_model(config))
    shutil.copyfile(layout.trained_model(config), out / "model.keras")
    save_config(config, out / "config.yaml")

    train = make_dataset(config, "train", training=True)
    packed = {}
    for index, (x, y) in enumerate(train.take(batches)):
        packed.update(flat(f"{index}/x/", {"image": x["image"].numpy().astype(np.float16)}))
        packed.update(flat(f"{index}/y/", {k: v.numpy() for k, v in y.items()}))
    np.savez_compressed(out / "batches.npz", **packed)

    x, y = next(iter(make_dataset(config, "validation", training=False)))
    # Four frames are enough for parity and keep the folder small enough to travel (full-size
    # segmentation logits are 2.3 MiB a frame).
    x = {key: value[:PARITY_FRAMES] for key, value in x.items()}
    y = {key: value[:PARITY_FRAMES] for key, value in y.items() if key in train.element_spec[1]}
    outputs = net(x, training=False)
    model = PortableMultiTask(net, config.model, {task: 1.0 for task in config.model.tasks})
    loss = model.compute_loss(x, y, outputs)
    # The curve trains a copy at the training input's size (the crop), as the train stage does.
    cropped = rebuild_at(net, output_size(config, crop=True))
    # Read back: the float16-rounded images, as the JAX run trains on them.
    curve = cpu_curve(cropped, config, unpack_batches(np.load(out / "batches.npz")), curve_steps, learning_rate)
    np.savez_compressed(out / "reference.npz", **flat("x/", {k: v.numpy() for k, v in x.items()}),
                        **flat("y/", {k: v.numpy() for k, v in y.items()}),
                        **flat("out/", {k: v.numpy() for k, v in outputs.items()}),
                        loss=np.float32(loss), curve=curve, curve_learning_rate=np.float64(learning_rate),
                        curve_trainable_weights=np.int64(len(cropped.trainable_weights)),
                        curve_onednn=np.bool_(onednn.enabled()))
    fall = curve[-batches:].mean() / curve[:batches].mean()
    print(f"packed {batches} training batches, a reference batch and a {curve_steps}-step CPU loss curve "
          f"(last pass over the batches {fall:.2f} of the first; oneDNN {'on' if onednn.enabled() else 'off'}) "
          f"into {out} ({sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--curve-steps", type=int, default=20,
                        help="at least 3: the first two steps (compilation, first dispatch) are not timed")
    parser.add_argument("--learning-rate", type=float, default=CURVE_LEARNING_RATE,
                        help="the curve's (a barely trained net needs less to stay on a smooth path)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.curve_steps < 3:
        parser.error(f"--curve-steps must be at least 3; Received: {args.curve_steps}")
    pack(load_config(args.config, args.overrides), args.out, args.batches, args.curve_steps, args.learning_rate)


if __name__ == "__main__":
    main()
