"""`train` stage: fit the multi-task model on the input pipeline and save it.

Writes runs/<experiment>/train/ (pipeline/training/fit.py lists the files), or --out.
"""
from __future__ import annotations

import pathlib

from pipeline.config import Config
from pipeline.training import fit


def main(config: Config, args=None) -> pathlib.Path:
    out = getattr(args, "out", None)
    return fit.run_training(config, pathlib.Path(out) if out else None)
