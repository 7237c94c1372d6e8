"""Packs what the JAX GPU check (pipeline/bench/jax_gpu.py) needs, for a machine without TensorFlow.

    python -m pipeline.bench.gpu_inputs --config configs/default.yaml --out DIR [--batches 4]

DIR gets model.keras (the run's trained net), config.yaml, batches.npz (training batches from the
real input pipeline: augmentation and detection targets included, images stored as float16 to keep
the folder small) and reference.npz (one validation batch, float32, with TensorFlow's outputs and
losses on it: what the JAX run must reproduce).
"""
from __future__ import annotations

import argparse
import pathlib
import shutil

import numpy as np

from models.portable_trainer import PortableMultiTask
from pipeline import layout, trained
from pipeline.config import load_config, save_config
from pipeline.inputs.dataset import make_dataset


def _flat(prefix: str, tree: dict) -> dict:
    return {f"{prefix}{key}": np.asarray(value) for key, value in tree.items()}


def pack(config, out: pathlib.Path, batches: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    net = trained.load(layout.trained_model(config))
    shutil.copyfile(layout.trained_model(config), out / "model.keras")
    save_config(config, out / "config.yaml")

    train = make_dataset(config, "train", training=True, crop=False)  # the saved net takes whole frames
    packed = {}
    for index, (x, y) in enumerate(train.take(batches)):
        packed.update(_flat(f"{index}/x/", {"image": x["image"].numpy().astype(np.float16)}))
        packed.update(_flat(f"{index}/y/", {k: v.numpy() for k, v in y.items()}))
    np.savez_compressed(out / "batches.npz", **packed)

    x, y = next(iter(make_dataset(config, "validation", training=False)))
    y = {key: value for key, value in y.items() if key in train.element_spec[1]}
    outputs = net(x, training=False)
    model = PortableMultiTask(net, config.model, {task: 1.0 for task in config.model.tasks})
    loss = model.compute_loss(x, y, outputs)
    np.savez_compressed(out / "reference.npz", **_flat("x/", {k: v.numpy() for k, v in x.items()}),
                        **_flat("y/", {k: v.numpy() for k, v in y.items()}),
                        **_flat("out/", {k: v.numpy() for k, v in outputs.items()}),
                        loss=np.float32(loss))
    print(f"packed {batches} training batches and a reference batch into {out} "
          f"({sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    pack(load_config(args.config, args.overrides), args.out, args.batches)


if __name__ == "__main__":
    main()
