"""`data` stage: render or read every configured source into TFDS records under the run folder.

A source is rebuilt only when its parameters changed (pipeline/inputs/records.py).
"""
from __future__ import annotations

from pipeline import console
from pipeline.config import Config
from pipeline.inputs import records

# console.import_stage leaves TensorFlow to main(): the worker processes start rendering first and
# the import (3 s of one core) runs beside them.
IMPORTS_TENSORFLOW_ITSELF = True


def main(config: Config, args=None) -> list[dict]:
    verbose = bool(getattr(args, "verbose", False))
    return records.build_all(config, meanwhile=lambda: console.import_tensorflow(verbose))
