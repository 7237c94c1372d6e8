"""`run` stage: every stage in order on one config (what `make run` does on a fresh machine)."""
from __future__ import annotations

import argparse
import importlib
import time

from pipeline.config import Config
from pipeline.errors import ParityError

# (stage module, extra arguments the stage's parser would have set)
STAGES = [
    ("pipeline.prepare", {}),
    ("pipeline.preview", {}),
    ("pipeline.train", {"out": None}),
    ("pipeline.evaluate", {"model": None, "split": None}),
    ("pipeline.export", {}),
    ("pipeline.clip", {"model": None, "input": None, "out": None}),
]


def main(config: Config, args=None) -> dict:
    timings, warnings = {}, []
    for module_name, extra in STAGES:
        start = time.perf_counter()
        print(f"\n=== {module_name.split('.')[-1]} ===", flush=True)
        try:
            importlib.import_module(module_name).main(config, argparse.Namespace(**extra))
        except ParityError as err:
            # Every export file and parity.json are written; `make export` alone fails on this, the
            # whole run goes on to the clip stage and repeats the warning at the end.
            warnings.append(f"export: {err}")
            print(f"warning: {err}", flush=True)
        timings[module_name] = time.perf_counter() - start
    print("\nrun: " + ", ".join(f"{name.split('.')[-1]} {seconds:.0f} s" for name, seconds in timings.items()))
    for warning in warnings:
        print(f"run: warning: {warning}")
    return timings
