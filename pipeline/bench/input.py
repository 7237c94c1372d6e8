"""`bench-input` stage: examples per second the training input pipeline delivers (augmentation on)."""
from __future__ import annotations

import json
import math
import time

from pipeline import inputs
from pipeline.config import Config


def measure(config: Config, batches: int = 40, warmup: int | None = None) -> dict:
    """Steady-state rate: the warm-up reads one pass of the training split, which fills the cache,
    the shuffle buffer and the prefetch queue, so the timed batches are what every later epoch sees."""
    ds = inputs.make_dataset(config, "train", training=True)
    if warmup is None:
        frames = sum(inputs.split_size(config, source, "train") for source in config.data.sources)
        warmup = math.ceil(frames / config.train.batch_size) + 2
    iterator = iter(ds)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    batch = config.train.batch_size
    return {"examples_per_second": batches * batch / seconds, "batches": batches, "batch_size": batch,
            "warmup_batches": warmup, "image_size": list(config.data.image_size),
            "augmentation": config.data.augment.enabled}


def main(config: Config, args=None) -> dict:
    result = measure(config)
    out = config.run_dir / "bench_input.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"bench-input: {result['examples_per_second']:.1f} examples/s "
          f"(batch {result['batch_size']}, {result['batches']} batches after {result['warmup_batches']} warm-up)")
    return result
