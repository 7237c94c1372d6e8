"""Input pipeline speed (the bench-input stage): examples per second the training input pipeline delivers (augmentation on)."""
from __future__ import annotations

import math
import time

from pipeline.config import Config
from pipeline.inputs import dataset as inputs


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
            "warmup_batches": warmup, "image_size": list(inputs.output_size(config, crop=True)),
            "augmentation": config.data.augment.enabled}
