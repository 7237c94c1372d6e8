"""`report` stage: runs/<experiment>/report.html rebuilt from whatever the run folder holds.

(pipeline/evaluation/run_report.py says what the page shows; the evaluate stage writes it too.)
"""
from __future__ import annotations

import pathlib

from pipeline.config import Config
from pipeline.evaluation import run_report


def main(config: Config, args=None) -> pathlib.Path:
    path = run_report.write(config)
    print(f"report: wrote {path}")
    return path
