"""`preview` stage: a PNG grid of augmented training examples with their labels drawn on top,
so a person can see that boxes, masks and depth line up with the image after augmentation."""
from __future__ import annotations

import pathlib

from pipeline import draw, layout
from pipeline.config import Config
from pipeline.inputs import preview


def main(config: Config, args=None) -> pathlib.Path:
    out = layout.preview_png(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw.save_png(out, preview.render_preview(config))
    print(f"preview: wrote {out}")
    return out
