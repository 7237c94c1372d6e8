"""`bench-input` stage: examples per second the training input pipeline delivers (augmentation on)."""
from __future__ import annotations

import json

from pipeline import layout
from pipeline.bench import input as input_bench
from pipeline.config import Config


def main(config: Config, args=None) -> dict:
    result = input_bench.measure(config)
    out = layout.bench_input_json(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"bench-input: {result['examples_per_second']:.1f} examples/s "
          f"(batch {result['batch_size']}, {result['batches']} batches after {result['warmup_batches']} warm-up)")
    return result
