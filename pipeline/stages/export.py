"""`export` stage: SavedModel, TFLite float32/float16/int8, ONNX and the standard TFLite detector of the
trained net, with parity checks.

`python -m pipeline export` reads runs/<experiment>/train/model.keras and writes
runs/<experiment>/export/ (pipeline/deploy/export.py lists the files). A format that drifts from
Keras beyond export.tolerance_* ends the stage with one line and exit 2; the export is kept.
"""
from __future__ import annotations

import pathlib

from pipeline.config import Config
from pipeline.deploy import export, parity


def main(config: Config, args=None) -> pathlib.Path:
    out, report = export.run_export(config)
    print(parity.table(report))
    print(f"export: wrote {out}")
    parity.check_verdict(config, report, out)
    return out
