"""`clip` stage: run a model over dashcam videos -> annotated video, per-frame results, speed, stability.

    python -m pipeline clip [--model M] [--input video-or-folder] [--out DIR] [--focal PX]

Each clip gets <out>/<clip name>/ (pipeline/video/clip.py lists the files); a folder input processes
every video in it and writes <out>/index.json.
"""
from __future__ import annotations

import pathlib

from data.errors import UserError
from pipeline import layout
from pipeline.deploy import camera
from pipeline.video.io import VideoSource, list_videos


def main(config, args=None) -> list[dict]:
    given_input, given_model = getattr(args, "input", None), getattr(args, "model", None)
    source = pathlib.Path(given_input) if given_input else layout.synthetic_clip(config)
    if not given_input and not source.exists():
        raise UserError(f"no clip at {source}: run `make data` first (it renders the labelled synthetic "
                        f"clip), or pass --input VIDEO_OR_FOLDER")
    videos = list_videos(source)
    if len(videos) == 1 and source.is_file():
        VideoSource(videos[0]).release()  # a bad video fails now, before the model is loaded
    model = pathlib.Path(given_model) if given_model else layout.trained_model(config)
    if not model.exists():
        raise UserError(f"model not found: {model}; run `make train` first or pass --model")
    out = pathlib.Path(getattr(args, "out", None) or layout.clips_dir(config))

    if source.is_dir():  # one unwritable folder must not read as "every video is bad"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot write to the output folder {out}: {err.strerror or err}") from None

    # Heavy (TensorFlow): imported only once the inputs are checked, so a bad video or a missing model
    # fails fast with its one line and nothing else on stderr.
    from pipeline.deploy import runtimes
    from pipeline.video import clip

    predictor = runtimes.load_predictor(model, score_threshold=config.export.score_threshold)
    if getattr(args, "focal", None) is not None:  # depth for the clip's camera (pipeline/deploy/camera.py)
        predictor = camera.Rescaled(predictor, args.focal, camera.read_beside(model))
    return clip.process_videos(predictor, source, videos, out, config, model)
