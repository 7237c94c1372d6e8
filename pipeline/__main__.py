"""`python -m pipeline <stage> --config configs/<name>.yaml [key=value ...]`.

Each stage reads what the stage before it wrote under `runs/<experiment>/` and writes its own
sub-folder there. A user's mistake ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from data.errors import UserError
from pipeline import console
from pipeline.training import allocator, onednn
from pipeline.config import load_config
from pipeline.stages import STAGES

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="stage")
    for name, (module, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text)
        stage.add_argument("--config", default="configs/default.yaml", help="YAML config file")
        stage.add_argument("overrides", nargs="*", metavar="key=value",
                           help="config overrides, e.g. train.epochs=2")
        stage.add_argument("--verbose", action="store_true",
                           help="keep the libraries' start-up logs (TensorFlow, absl, TFDS) and warnings")
        stage.set_defaults(module=module)
    stages = sub.choices
    stages["evaluate"].add_argument("--model", help="a .keras model to evaluate instead of the run's own")
    stages["evaluate"].add_argument("--split", help="split to evaluate (default: evaluate.split)")
    stages["predict"].add_argument("--model", required=True,
                                   help="saved_model folder, .tflite, .onnx or .keras file")
    stages["predict"].add_argument("--images", nargs="+", required=True, help="image files")
    stages["predict"].add_argument("--out", help="output folder (default: runs/<experiment>/predict)")
    stages["clip"].add_argument("--model", help=".keras, saved_model folder, .tflite or .onnx (default: the run's model)")
    stages["clip"].add_argument("--input", help="video file or folder of videos (default: synthetic clip)")
    stages["clip"].add_argument("--out", help="output folder (default: runs/<experiment>/clips)")
    for name in ("predict", "clip"):
        stages[name].add_argument("--focal", type=float, metavar="PX",
                                  help="the input's focal length in its own pixels: depth is rescaled from "
                                       "the training camera to this one (README, Cameras)")
    stages["bench"].add_argument("--quick", action="store_true", help="a reduced run of about a minute")
    stages["baselines"].add_argument("--quick", action="store_true",
                                     help="a tiny budget and one seed into baselines-quick/ (minutes)")
    stages["ablate"].add_argument("--variants", help="YAML of variant name -> overrides (default: configs/ablation.yaml)")
    stages["ablate"].add_argument("--minutes", type=float, help="training minutes per variant (default 4)")
    stages["train"].add_argument("--out", help="run folder to train into (default: runs/<experiment>)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    # Overrides may come before and after a stage's options (`clip x=1 --model m y=2`): argparse
    # hands the later ones back as unknown, so collect them here.
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + extra
    allocator.keep_freed_memory()  # before the stages allocate anything large
    onednn.prefer_onednn()  # before TensorFlow is imported: it reads the choice once, when it loads
    if not args.verbose:
        console.quiet()  # before TensorFlow is imported: the stage modules import it
    try:
        if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
            # The stages are TensorFlow code (tf.data, the trainer, the exports); only the network
            # is backend-agnostic (pipeline/bench/jax_gpu.py runs it on JAX).
            raise UserError(f"the pipeline's stages run on Keras' TensorFlow backend: unset KERAS_BACKEND "
                            f"(it is '{os.environ['KERAS_BACKEND']}')")
        config = load_config(args.config, args.overrides)
        module = console.import_stage(args.module, args.verbose)
        module.main(config, args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
