"""`run` stage: every stage in order on one config (what `make run` does on a fresh machine)."""
from __future__ import annotations

import argparse
import importlib
import time

from pipeline.config import Config
from pipeline.deploy.parity import ParityError
from pipeline.stages import RUN_ORDER, STAGES


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main(config: Config, args=None) -> dict:
    timings, warnings = {}, []
    for name, options in RUN_ORDER:
        start = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        try:
            # Dispatched through the command line's stage table, like `python -m pipeline <name>`.
            importlib.import_module(STAGES[name][0]).main(config, argparse.Namespace(**options))
        except ParityError as err:
            # Every export file and parity.json are written; `make export` alone fails on this, the
            # whole run goes on to the clip stage and repeats the warning at the end.
            warnings.append(f"export: {err}")
            print(f"warning: {err}", flush=True)
        timings[name] = time.perf_counter() - start
    total = sum(timings.values())
    print("\nrun: wall time per stage: " + ", ".join(f"{name} {_minutes(seconds)}" for name, seconds in timings.items())
          + f"; total {_minutes(total)}")
    for warning in warnings:
        print(f"run: warning: {warning}")
    return timings
