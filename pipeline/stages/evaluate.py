"""`evaluate` stage: metrics.json, report.md and plots for a trained model on one split, then the
run's report.html.

`python -m pipeline evaluate [--model X.keras] [--split S]` writes runs/<experiment>/eval*/
(pipeline/evaluation/evaluate.py says which folder and what is in it).
"""
from __future__ import annotations

import pathlib

from pipeline import layout
from pipeline.config import Config
from pipeline.evaluation import evaluate, report, run_report


def main(config: Config, args=None) -> pathlib.Path:
    split = getattr(args, "split", None) or config.evaluate.split
    given = getattr(args, "model", None)
    model_path = pathlib.Path(given) if given else layout.trained_model(config)
    out = evaluate.output_dir(config, split, model_path if given else None)
    metrics = evaluate.evaluate_into(config, model_path, split, out)
    print(f"evaluate: {report.headline(metrics)}")
    print(f"evaluate: wrote {out / 'metrics.json'} and {out / 'report.md'}")
    print(f"evaluate: wrote {run_report.write(config)}")
    return out
