"""TensorFlow Datasets storage for every source, in the one example schema (data/schema.py).

One `GeneratorBasedBuilder` with a config per source, so sharding, splits, serialisation and
`as_dataset` (PNG decoding included) come from TFDS. TFDS writes into an `incomplete.*` folder and
renames it only when the build finished, so a crash never leaves a data set that the next stage
would read as complete.

The generator yields examples already in their stored form (data/stored.py: PNG bytes, made by the
process that loaded the example), so TFDS only serialises and writes them.
"""
from __future__ import annotations

import pathlib
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from data import parallel, schema
from data.vocabulary import DEPTH_SCALE  # noqa: F401  (tests read it here)

VALIDATION_EVERY = 10  # real sources: every 10th frame (sorted by key) goes to validation


def features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "key": tfds.features.Text(),
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        "classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        # Regions a detector must not be punished for (KITTI DontCare); empty for most sources.
        "ignore_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        "segmentation": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "depth": tfds.features.Image(shape=(None, None, 1), dtype=np.uint16, encoding_format="png"),
        "has_detection": tfds.features.Scalar(dtype=np.bool_),
        "has_segmentation": tfds.features.Scalar(dtype=np.bool_),
        "has_depth": tfds.features.Scalar(dtype=np.bool_),
    })


class DashcamScenes(tfds.core.GeneratorBasedBuilder):
    """Dashcam frames with detection, segmentation and depth labels, one config per source.

    `items` maps a split name to a list of (key, loader) pairs; a loader returns a schema example or
    raises schema.BadExample. `on_bad` decides what a bad example does (raise, or count and drop);
    a label value with no mapping (data.mapping.UnmappedLabel, also a UserError) always stops the
    build. `loader` (data/parallel.py) runs the loaders, in worker processes when it has more than
    one, and bounds the class ids an example may hold by its class set. With `beam` (a
    data.beam_build.Generation) the splits are Beam transforms instead, whose loaders run in the
    runner's workers: build it with beam_build.prepare.
    """

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in
                       ("synthetic", "kitti", "cityscapes", "camvid", "bdd100k")]

    def __init__(self, *, items: dict[str, list[tuple[str, Callable[[], dict]]]] | None = None,
                 on_bad: Callable[[str, Exception], None] | None = None,
                 loader: parallel.Loader | None = None, beam=None, **kwargs):
        self._items = items
        self._on_bad = on_bad
        self._loader = loader or parallel.Loader(1)
        self._beam = beam
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=features(), description=__doc__)

    def _split_generators(self, dl_manager):
        if self._items is None:
            raise RuntimeError("DashcamScenes needs `items` to build; use data.builder.build()")
        return {split: self._generate_examples(split) for split in self._items}

    # TFDS announces "Downloading and preparing dataset Unknown size ..." although nothing is
    # downloaded, and "downloaded and prepared" after: say what is built instead (the data stage
    # prints the counts and size when done).
    def _log_download_bytes(self) -> None:
        splits = ", ".join(self._items or {})
        print(f"data: building {self.builder_config.name} records ({splits}) in {self.data_dir}", flush=True)

    def _log_download_done(self) -> None:
        pass

    def _generate_examples(self, split):
        if self._beam is not None:
            return self._beam.examples(split, self._items[split])
        return self._generated(split)

    def _generated(self, split):
        for key, example in self._loader.loaded(self._items[split]):
            if isinstance(example, schema.BadExample):
                self._on_bad(key, example)
                continue
            yield key, example


OFFICIAL_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def official_split(key: str) -> str | None:
    """The data set's own split when the key carries it (`cityscapes-val/frankfurt/...`)."""
    rest = key.split("-", 1)[-1]
    return OFFICIAL_SPLITS.get(rest.split("/", 1)[0]) if "/" in rest else None


def split_items(keys: list[str]) -> dict[str, list[str]]:
    """Train/validation split of a real source's keys: the data set's own splits where the keys
    carry them, else deterministic (sorted, every Nth to validation). Empty splits are left out."""
    keys = sorted(keys)
    if keys and all(official_split(k) for k in keys):
        splits = {}
        for key in keys:
            splits.setdefault(official_split(key), []).append(key)
        return splits
    validation = [k for i, k in enumerate(keys) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    if not validation and len(keys) > 1:
        validation = keys[-1:]
    chosen = set(validation)
    splits = {"train": [k for k in keys if k not in chosen], "validation": validation}
    return {name: split_keys for name, split_keys in splits.items() if split_keys}


def builder_for(source: str, data_dir: pathlib.Path, **kwargs) -> DashcamScenes:
    return DashcamScenes(config=source, data_dir=str(data_dir), **kwargs)


def stored_dir(source: str, data_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(data_dir) / "dashcam_scenes" / source
