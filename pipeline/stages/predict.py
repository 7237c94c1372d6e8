"""`predict` stage: annotate image files with any exported model.

`python -m pipeline predict --model <saved_model dir | .tflite | .onnx | .keras> --images a.png b.png
[--out DIR] [--focal PX]` writes DIR (default runs/<experiment>/predict/; pipeline/deploy/predict.py lists the files).
"""
from __future__ import annotations

import pathlib

from pipeline import classes, layout
from pipeline.config import Config
from pipeline.deploy import predict


def main(config: Config, args) -> pathlib.Path:
    out_dir = pathlib.Path(args.out) if getattr(args, "out", None) else layout.predict_dir(config)
    result = predict.run_predict(args.model, args.images, out_dir, max_depth=config.model.max_depth,
                                 score_threshold=config.export.score_threshold,
                                 class_set=classes.of_config(config),  # when the model file names none
                                 focal_px=getattr(args, "focal", None))
    for record in result["images"]:
        found = len(record.get("detections", []))
        extra = f", resized to {record['model_input_size']}" if record["resized"] else ""
        print(f"predict: {record['file']} -> {out_dir / record['annotated']} ({found} detection(s){extra})")
    print(f"predict: {result['format']} model, wrote {out_dir / 'predictions.json'}")
    return out_dir
