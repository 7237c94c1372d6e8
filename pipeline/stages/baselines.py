"""`baselines` stage: is one multi-task model better than one model per task, and which weighting wins?

Writes runs/<experiment>/baselines/ (pipeline/training/baselines.py says what it trains and compares).
"""
from __future__ import annotations

from pipeline.config import Config
from pipeline.training import baselines


def main(config: Config, args=None) -> dict:
    return baselines.run_baselines(config, quick=bool(getattr(args, "quick", False)))
