"""`data` stage: render or read every configured source into TFDS records under the run folder.

A source is rebuilt only when its parameters changed (pipeline/inputs/records.py).
"""
from __future__ import annotations

from pipeline.config import Config
from pipeline.inputs import records


def main(config: Config, args=None) -> list[dict]:
    return records.build_all(config)
