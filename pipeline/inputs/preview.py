"""The preview grid: a PNG grid of augmented training examples with their labels drawn on top,
so a person can see that boxes, masks and depth line up with the image after augmentation."""
from __future__ import annotations

import numpy as np

from data.vocabulary import STRIDE
from pipeline import classes, draw
from pipeline.config import Config
from pipeline.inputs import dataset as inputs


def render_preview(config: Config, count: int = 8) -> np.ndarray:
    ds = inputs.make_dataset(config, "train", training=True, batch_size=count)
    class_set = classes.of_config(config)
    x, y = next(iter(ds))
    rows = []
    for i in range(count):
        image = x["image"][i].numpy().astype(np.uint8)
        boxes, ids = y["boxes"][i].numpy(), y["classes"][i].numpy()
        heat = y["det_heatmap"][i].numpy().max(axis=-1)
        heat = np.kron(heat, np.ones((STRIDE, STRIDE)))[: image.shape[0], : image.shape[1]]
        heat_rgb = draw.blend(image, np.stack([heat * 255] * 3, -1).astype(np.uint8), 0.6)
        rows.append([
            draw.caption(draw.draw_boxes(image, boxes, ids, class_set=class_set), "image + boxes"),
            draw.caption(draw.blend(image, draw.colorize_segmentation(y["segmentation"][i].numpy(), class_set)),
                         "segmentation"),
            draw.caption(draw.colorize_depth(y["depth"][i].numpy()), "depth"),
            draw.caption(heat_rgb, "centre heat map"),
        ])
    return draw.grid(rows)
